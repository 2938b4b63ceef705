"""Topology loader: YAML text, files or plain dicts -> a validated, fully addressed Topology.

Responsibilities: strict YAML parsing (one document, no duplicate keys), field-by-field
validation with exact paths (``nodes[1].lables: unknown field; did you mean "labels"?``),
defaults (cluster name, subnets, taints, capacity, the implicit switch ``s1``),
deterministic interface naming and address assignment, manifest path resolution, and
the inverse ``to_dict``. Every problem raises ``netk8s.errors.ValidationError(path, msg)``
with a one-line message. Pure code: reads only the topology file itself and checks that
listed manifest files exist.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from netk8s.errors import NotFoundError, UserError, ValidationError
from netk8s.topology.schema import (
    API_VERSION,
    CONTROL_PLANE_TAINT,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_POD_SUBNET,
    DEFAULT_SERVICE_SUBNET,
    DEFAULT_SWITCH_NAME,
    DEFAULT_UNDERLAY_SUBNET,
    DNS_SERVICE_OFFSET,
    KIND,
    MAX_CLUSTER_NAME,
    MAX_HOST_NAME,
    MAX_NODE_NAME,
    MAX_ROUTER_NAME,
    MAX_SWITCH_NAME,
    P2P_POOL,
    P2P_PREFIXLEN,
    POD_CIDR_PREFIXLEN,
    CniPlugin,
    ControlPlaneSpec,
    Endpoint,
    HostSpec,
    LinkSpec,
    NetworkingMode,
    NodeRole,
    NodeSpec,
    ProxyMode,
    RouterSpec,
    StoreKind,
    SwitchSpec,
    Taint,
    TaintEffect,
    Topology,
    check_name,
    default_capacity,
    is_label_value,
    is_qualified_name,
    render,
)

logger = logging.getLogger(__name__)

_TOP_FIELDS = ("apiVersion", "kind", "name", "podSubnet", "serviceSubnet", "nodePortRange", "loadBalancerPool",
               "networking",
               "proxyMode", "store", "controlPlane", "nodes", "hosts", "switches", "routers", "links", "manifests")
_CONTROL_PLANE_FIELDS = ("nodeMonitorGracePeriod", "podEvictionTimeout")
_NETWORKING_FIELDS = ("mode", "cni")
_NODE_FIELDS = ("name", "role", "labels", "taints", "capacity", "ip")
_TAINT_FIELDS = ("key", "value", "effect")
_HOST_FIELDS = ("name", "ip")
_SWITCH_FIELDS = ("name", "subnet")
_ROUTER_FIELDS = ("name",)
_LINK_FIELDS = ("endpoints", "bandwidth", "loss", "delay")

# Kubernetes resource quantities as capacity uses them: 4, 500m, 8Gi, 1.5, 1e3.
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?")
_PORT_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")

E = TypeVar("E", bound=Enum)


# --------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" may legitimately be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key; SafeConstructor reports it with its own message
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {render(key)}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValidationError(source, f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(source, "invalid YAML: " + " ".join(str(exc).split())) from None
    if not documents:
        raise ValidationError(source, f"empty topology; it needs at least apiVersion: {API_VERSION}, kind: {KIND} "
                                      "and nodes")
    if len(documents) > 1:
        raise ValidationError(source, f"holds {len(documents)} YAML documents; a topology is exactly one document")
    return documents[0]


# ---------------------------------------------------------------------- public API

def load_file(path: str | Path) -> Topology:
    """Load a topology file; manifest paths resolve against the file's directory."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"topology file not found: {file}") from None
    except IsADirectoryError:
        raise UserError(f"{file}: is a directory; pass a topology YAML file") from None
    except UnicodeDecodeError:
        raise ValidationError(str(file), "not UTF-8 text; a topology is a YAML file") from None
    except OSError as exc:
        raise UserError(f"{file}: cannot read topology file: {exc.strerror}") from None
    absolute = Path(os.path.abspath(file))
    topology = load_text(text, source=str(file), base_dir=absolute.parent)
    logger.debug("loaded topology %s from %s", topology.name, absolute)
    return _with_source(topology, absolute)


def load_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> Topology:
    """Load a topology from YAML text; ``source`` names it in document-level errors."""
    return load_dict(_parse_yaml(text, source), source=source, base_dir=base_dir)


def load_dict(data: Any, source: str = "<dict>", base_dir: Path | None = None,
              check_manifest_files: bool = True) -> Topology:
    """Validate a YAML-shaped mapping and build the Topology (addresses assigned).

    ``check_manifest_files=False`` is for a running cluster's recorded topology: its manifests were
    applied at ``up``, and a file moved since must not make the cluster's topology unreadable.
    """
    if not isinstance(data, dict):
        raise ValidationError(source, f"expected a mapping with apiVersion, kind and nodes at the top level, "
                                      f"got {_type_name(data)}")
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    return _Builder(data, base, check_manifest_files).build()


def to_dict(topology: Topology) -> dict[str, Any]:
    """A YAML-able dict that ``load_dict`` turns back into an equal Topology.

    Everything is explicit: taints, capacity, links and each node's/host's first
    switch address (as ``ip``); the remaining addresses re-derive identically.
    """
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": topology.name,
        "podSubnet": str(topology.pod_subnet),
        "serviceSubnet": str(topology.service_subnet),
        "nodePortRange": f"{topology.node_port_range[0]}-{topology.node_port_range[1]}",
        **({"loadBalancerPool": f"{topology.load_balancer_pool[0]}-{topology.load_balancer_pool[1]}"}
           if topology.load_balancer_pool else {}),
        "networking": {"mode": topology.networking_mode.value, "cni": topology.cni_plugin.value},
        "proxyMode": topology.proxy_mode.value,
        "store": topology.store.value,
        "controlPlane": {"nodeMonitorGracePeriod": f"{topology.control_plane_spec.node_monitor_grace_period:g}s",
                         "podEvictionTimeout": f"{topology.control_plane_spec.pod_eviction_timeout:g}s"},
    }
    nodes = []
    for node in topology.nodes:
        entry: dict[str, Any] = {"name": node.name, "role": node.role.value}
        if node.labels:
            entry["labels"] = dict(node.labels)
        entry["taints"] = [t.to_api() for t in node.taints]
        entry["capacity"] = dict(node.capacity)
        ip = _first_switch_address(topology, node.name)
        if ip is not None:
            entry["ip"] = str(ip)
        nodes.append(entry)
    out["nodes"] = nodes
    hosts = []
    for host in topology.hosts:
        entry = {"name": host.name}
        ip = _first_switch_address(topology, host.name)
        if ip is not None:
            entry["ip"] = str(ip)
        hosts.append(entry)
    out["hosts"] = hosts
    out["switches"] = [{"name": s.name, "subnet": str(s.subnet)} for s in topology.switches]
    out["routers"] = [{"name": r.name} for r in topology.routers]
    links = []
    for link in topology.links:
        entry = {"endpoints": [link.a.name, link.b.name]}
        if link.bandwidth_mbit is not None:
            bw = link.bandwidth_mbit
            entry["bandwidth"] = int(bw) if float(bw).is_integer() else bw
        if link.loss_percent is not None:
            entry["loss"] = f"{link.loss_percent:g}%"
        if link.delay_ms is not None:
            entry["delay"] = f"{link.delay_ms:g}ms"
        links.append(entry)
    out["links"] = links
    out["manifests"] = [str(m) if isinstance(m, Path) else copy.deepcopy(m) for m in topology.manifests]
    return out


# ------------------------------------------------------------------------ helpers

def _with_source(topology: Topology, source: Path) -> Topology:
    return dataclasses.replace(topology, source=source)


def _first_switch_address(topology: Topology, name: str) -> ipaddress.IPv4Address | None:
    for link in topology.links:
        if link.switch is None:
            continue
        for end in link.ends():
            if end.name == name and end.address is not None:
                return end.address.ip
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"the string {render(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return type(value).__name__


def _sub(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _at(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _fields(obj: Any, path: str, allowed: tuple[str, ...], what: str) -> dict:
    """Check ``obj`` is a mapping with only ``allowed`` keys; return it."""
    if not isinstance(obj, dict):
        raise ValidationError(path, f"expected {what}, got {_type_name(obj)}")
    for key in obj:
        if not isinstance(key, str) or key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else "allowed fields: " + ", ".join(allowed)
            raise ValidationError(_sub(path, key), f"unknown field; {hint}")
    return obj


def _list(value: Any, path: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValidationError(path, f"expected a list of {what}, got {_type_name(value)}")
    return list(value)


def _enum(value: Any, path: str, enum_type: type[E], default: E) -> E:
    if value is None:
        return default
    for member in enum_type:
        if isinstance(value, str) and value == member.value:
            return member
    allowed = ", ".join(m.value for m in enum_type)
    raise ValidationError(path, f"unsupported value {render(value)}; use one of: {allowed}")


def _cidr(value: Any, path: str, example: str) -> ipaddress.IPv4Network:
    if isinstance(value, ipaddress.IPv4Network):
        return value
    wrong = f"expected a CIDR like {example}, got {render(value)}"
    if not isinstance(value, str) or "/" not in value:
        raise ValidationError(path, wrong)
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValidationError(path, wrong) from None
    if iface.version != 4:
        raise ValidationError(path, f"only IPv4 is supported; {wrong}")
    if iface.ip != iface.network.network_address:
        raise ValidationError(path, f"{render(value)} has host bits set; did you mean {iface.network}?")
    return ipaddress.IPv4Network(iface.network)


def _address(value: Any, path: str) -> ipaddress.IPv4Address:
    if isinstance(value, ipaddress.IPv4Address):
        return value
    wrong = f"expected an IPv4 address like 172.18.0.2, got {render(value)}"
    if not isinstance(value, str):
        raise ValidationError(path, wrong)
    try:
        return ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValidationError(path, wrong) from None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(value: Any, path: str, default: float) -> float:
    """A duration like 10s, 1.5m, 500ms or a number of seconds; must be > 0."""
    if value is None:
        return default
    match = _DURATION.match(str(value).strip()) if not isinstance(value, bool) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValidationError(path, f"expected a positive duration like 10s, 2m or 500ms, got {render(value)}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _address_range(value: Any, path: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
    """"172.18.255.200-172.18.255.250" or a CIDR like 172.18.255.192/27 (its usable addresses)."""
    if value is None:
        return None
    text = str(value).strip()
    hint = "expected a range like 172.18.255.200-172.18.255.250 or a CIDR like 172.18.255.192/27"
    try:
        if "/" in text:
            net = ipaddress.IPv4Network(text, strict=False)
            hosts = list(net.hosts()) if net.num_addresses > 2 else list(net)
            first, last = hosts[0], hosts[-1]
        else:
            a, _, b = text.partition("-")
            first, last = ipaddress.IPv4Address(a.strip()), ipaddress.IPv4Address(b.strip())
    except (ValueError, IndexError):
        raise ValidationError(path, f"{hint}, got {render(value)}") from None
    if first > last:
        raise ValidationError(path, f"the first address {first} is after the last {last}")
    return first, last


def _port_range(value: Any, path: str) -> tuple[int, int]:
    if value is None:
        return DEFAULT_NODE_PORT_RANGE
    wrong = f'expected "first-last" like 30000-32767, got {render(value)}'
    match = _PORT_RANGE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValidationError(path, wrong)
    first, last = int(match.group(1)), int(match.group(2))
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise ValidationError(path, f"ports must be between 1 and 65535, got {render(value)}")
    if first > last:
        raise ValidationError(path, f"first port {first} is greater than last port {last}; write it as {last}-{first}")
    return (first, last)


def _labels(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(path, f"expected a mapping of label keys to string values, got {_type_name(value)}")
    labels: dict[str, str] = {}
    for key, val in value.items():
        kpath = _sub(path, key)
        if not isinstance(key, str) or not is_qualified_name(key):
            raise ValidationError(kpath, f"invalid label key {render(key)}: use an optional DNS prefix and '/', then "
                                         "up to 63 letters, digits, '-', '_' or '.', starting and ending with a "
                                         "letter or digit")
        if not isinstance(val, str):
            raise ValidationError(kpath, f"expected a string value, got {render(val)}; quote it in YAML")
        if not is_label_value(val):
            raise ValidationError(kpath, f"invalid label value {render(val)}: use up to 63 letters, digits, '-', '_' "
                                         "or '.', starting and ending with a letter or digit")
        labels[key] = val
    return labels


def _taints(value: Any, path: str) -> tuple[Taint, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValidationError(path, "expected a list of taints like [{key: k, value: v, effect: NoSchedule}], "
                                    f"got {_type_name(value)}")
    taints: list[Taint] = []
    seen: dict[tuple[str, TaintEffect], str] = {}
    for i, raw in enumerate(value):
        tpath = _at(path, i)
        obj = _fields(raw, tpath, _TAINT_FIELDS, "a taint like {key: k, value: v, effect: NoSchedule}")
        key = obj.get("key")
        if key is None or key == "":
            raise ValidationError(_sub(tpath, "key"), "required; give the taint a key like dedicated")
        if not isinstance(key, str) or not is_qualified_name(key):
            raise ValidationError(_sub(tpath, "key"), f"invalid taint key {render(key)}: use an optional DNS prefix "
                                                      "and '/', then up to 63 letters, digits, '-', '_' or '.'")
        val = obj.get("value")
        val = "" if val is None else val
        if not isinstance(val, str):
            raise ValidationError(_sub(tpath, "value"), f"expected a string, got {render(val)}; quote it in YAML")
        if not is_label_value(val):
            raise ValidationError(_sub(tpath, "value"), f"invalid taint value {render(val)}: use up to 63 letters, "
                                                        "digits, '-', '_' or '.', starting and ending with a "
                                                        "letter or digit")
        if obj.get("effect") is None:
            allowed = ", ".join(m.value for m in TaintEffect)
            raise ValidationError(_sub(tpath, "effect"), f"required; use one of: {allowed}")
        effect = _enum(obj["effect"], _sub(tpath, "effect"), TaintEffect, TaintEffect.NO_SCHEDULE)
        if (key, effect) in seen:
            raise ValidationError(tpath, f'duplicate taint "{key}" with effect {effect.value} '
                                         f"(also {seen[key, effect]})")
        seen[key, effect] = tpath
        taints.append(Taint(key, val, effect))
    return tuple(taints)


def _capacity(value: Any, path: str) -> dict[str, str]:
    capacity = default_capacity()
    if value is None:
        return capacity
    if not isinstance(value, dict):
        raise ValidationError(path, f'expected a mapping like {{cpu: "4", memory: 8Gi, pods: "110"}}, '
                                    f"got {_type_name(value)}")
    for key, val in value.items():
        kpath = _sub(path, key)
        if not isinstance(key, str) or not is_qualified_name(key):
            raise ValidationError(kpath, f"invalid resource name {render(key)}; use names like cpu, memory, pods")
        if isinstance(val, bool) or not isinstance(val, (str, int)):
            raise ValidationError(kpath, f'expected a quantity as a string or integer like "4" or 8Gi, '
                                         f"got {render(val)}; quote it in YAML")
        text = str(val).strip()
        if not _QUANTITY.fullmatch(text):
            raise ValidationError(kpath, f"invalid quantity {render(val)}; use forms like 4, 500m, 8Gi")
        capacity[key] = text
    return capacity


def _loss(value: Any, path: str) -> float | None:
    """Packet loss in percent: 1.5, "1.5%"; 0 < loss < 100."""
    if value is None:
        return None
    text = str(value).strip().removesuffix("%") if not isinstance(value, bool) else ""
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not 0 < number < 100:
        raise ValidationError(path, f"expected a loss percentage between 0 and 100 like 1% or 0.5%, "
                                    f"got {render(value)}")
    return number


def _delay_ms(value: Any, path: str) -> float | None:
    """One-way delay: "10ms", "0.5s", or a number of milliseconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{value}ms"
    return _duration(value, path, 0.0) * 1000.0


def _bandwidth(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValidationError(path, f"expected a number of Mbit/s greater than 0, got {render(value)}")
    return float(value)


# ------------------------------------------------------------------------ builder

@dataclass
class _Member:
    """A node, host, switch or router while its topology is being assembled."""

    kind: str  # "node" | "host" | "switch" | "router"
    name: str
    path: str  # e.g. "nodes[1]"
    ip: ipaddress.IPv4Address | None = None
    ends: list[tuple[int, int]] = field(default_factory=list)  # (link index, side 0|1), in link order


@dataclass
class _RawLink:
    path: str
    names: tuple[str, str]
    bandwidth: float | None
    switch: str | None
    loss: float | None = None
    delay_ms: float | None = None


class _Pool:
    """Next-free address allocation on one switch subnet (.1 reserved, from .2 upward)."""

    def __init__(self, switch: SwitchSpec, path: str) -> None:
        self.switch = switch
        self.path = path
        self.owners: dict[ipaddress.IPv4Address, str] = {}
        self.gateway_taken = False
        self._next = switch.subnet.network_address + 2

    def take(self, owner: str) -> ipaddress.IPv4Address:
        last = self.switch.subnet.broadcast_address
        while self._next < last:
            candidate = self._next
            self._next += 1
            if candidate not in self.owners:
                self.owners[candidate] = owner
                return candidate
        raise ValidationError(_sub(self.path, "subnet"), f"no free address left in {self.switch.subnet} for {owner}; "
                                                         "use a larger subnet")


class _Builder:
    def __init__(self, data: dict, base_dir: Path, check_manifest_files: bool = True) -> None:
        self.data = _fields(data, "", _TOP_FIELDS, "a mapping")
        self.base_dir = base_dir
        self.check_manifest_files = check_manifest_files
        self.members: dict[str, _Member] = {}

    def build(self) -> Topology:
        d = self.data
        self._check_header()
        name = DEFAULT_CLUSTER_NAME if d.get("name") is None else check_name(d["name"], "name", "cluster",
                                                                                  MAX_CLUSTER_NAME)
        pod_subnet = (DEFAULT_POD_SUBNET if d.get("podSubnet") is None
                      else _cidr(d["podSubnet"], "podSubnet", "10.244.0.0/16"))
        service_subnet = (DEFAULT_SERVICE_SUBNET if d.get("serviceSubnet") is None
                          else _cidr(d["serviceSubnet"], "serviceSubnet", "10.96.0.0/16"))
        port_range = _port_range(d.get("nodePortRange"), "nodePortRange")
        networking = {} if d.get("networking") is None else _fields(
            d["networking"], "networking", _NETWORKING_FIELDS, "a mapping like {mode: host-gw}")
        mode = _enum(networking.get("mode"), "networking.mode", NetworkingMode, NetworkingMode.HOST_GW)
        cni = _enum(networking.get("cni"), "networking.cni", CniPlugin, CniPlugin.NETK8S)
        proxy_mode = _enum(d.get("proxyMode"), "proxyMode", ProxyMode, ProxyMode.IPTABLES)
        store = _enum(d.get("store"), "store", StoreKind, StoreKind.SQLITE)
        control_plane = self._control_plane()
        lb_pool = _address_range(d.get("loadBalancerPool"), "loadBalancerPool")

        nodes = self._nodes()
        hosts = self._hosts()
        switches = self._switches()
        routers = self._routers()
        self._check_subnets(pod_subnet, service_subnet, switches, len(nodes))
        raw_links = self._links(switches)
        self._check_linked()
        addresses = self._assign_addresses(raw_links, switches, pod_subnet, service_subnet)
        links = self._link_specs(raw_links, addresses)
        manifests = self._manifests()
        return Topology(
            name=name, pod_subnet=pod_subnet, service_subnet=service_subnet, node_port_range=port_range,
            networking_mode=mode, proxy_mode=proxy_mode, store=store, nodes=tuple(nodes), hosts=tuple(hosts),
            switches=tuple(switches), routers=tuple(routers), links=tuple(links), manifests=tuple(manifests),
            control_plane_spec=control_plane, cni_plugin=cni, load_balancer_pool=lb_pool, source=None,
        )

    def _control_plane(self) -> ControlPlaneSpec:
        raw = self.data.get("controlPlane")
        if raw is None:
            return ControlPlaneSpec()
        cp = _fields(raw, "controlPlane", _CONTROL_PLANE_FIELDS, "a mapping like {nodeMonitorGracePeriod: 10s}")
        defaults = ControlPlaneSpec()
        grace = _duration(cp.get("nodeMonitorGracePeriod"), "controlPlane.nodeMonitorGracePeriod",
                          defaults.node_monitor_grace_period)
        eviction = _duration(cp.get("podEvictionTimeout"), "controlPlane.podEvictionTimeout",
                             defaults.pod_eviction_timeout)
        return ControlPlaneSpec(grace, eviction)

    def _check_header(self) -> None:
        for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
            value = self.data.get(key)
            if value is None:
                raise ValidationError(key, f"required; set it to {expected}")
            if value != expected:
                raise ValidationError(key, f"unsupported value {render(value)}; use {expected}")

    def _add_member(self, kind: str, name: str, path: str, ip: ipaddress.IPv4Address | None = None) -> None:
        if name in self.members:
            raise ValidationError(_sub(path, "name"), f'duplicate name "{name}" (also {self.members[name].path})')
        self.members[name] = _Member(kind, name, path, ip)

    def _nodes(self) -> list[NodeSpec]:
        raw_nodes = self.data.get("nodes")
        if raw_nodes is None:
            raise ValidationError("nodes", "required; list at least one node, e.g. [{name: control-plane, "
                                           "role: control-plane}]")
        raw_nodes = _list(raw_nodes, "nodes", "nodes")
        if not raw_nodes:
            raise ValidationError("nodes", "at least one node is required")
        nodes: list[NodeSpec] = []
        for i, raw in enumerate(raw_nodes):
            path = _at("nodes", i)
            obj = _fields(raw, path, _NODE_FIELDS, "a node like {name: worker, role: worker}")
            name = check_name(obj.get("name"), _sub(path, "name"), "node", MAX_NODE_NAME)
            role = _enum(obj.get("role"), _sub(path, "role"), NodeRole, NodeRole.WORKER)
            if obj.get("taints") is None:  # absent (or null): kind's default; [] means no taints
                taints: tuple[Taint, ...] = (CONTROL_PLANE_TAINT,) if role is NodeRole.CONTROL_PLANE else ()
            else:
                taints = _taints(obj["taints"], _sub(path, "taints"))
            node = NodeSpec(name=name, role=role, labels=_labels(obj.get("labels"), _sub(path, "labels")),
                            taints=taints, capacity=_capacity(obj.get("capacity"), _sub(path, "capacity")))
            ip = None if obj.get("ip") is None else _address(obj["ip"], _sub(path, "ip"))
            self._add_member("node", name, path, ip)
            nodes.append(node)
        if not any(n.role is NodeRole.CONTROL_PLANE for n in nodes):
            raise ValidationError("nodes", "no node has role: control-plane; give at least one node that role")
        return nodes

    def _hosts(self) -> list[HostSpec]:
        hosts: list[HostSpec] = []
        for i, raw in enumerate(_list(self.data.get("hosts"), "hosts", "hosts")):
            path = _at("hosts", i)
            obj = _fields(raw, path, _HOST_FIELDS, "a host like {name: client}")
            name = check_name(obj.get("name"), _sub(path, "name"), "host", MAX_HOST_NAME)
            ip = None if obj.get("ip") is None else _address(obj["ip"], _sub(path, "ip"))
            self._add_member("host", name, path, ip)
            hosts.append(HostSpec(name))
        return hosts

    def _switches(self) -> list[SwitchSpec]:
        raw_switches = self.data.get("switches")
        if raw_switches is None and self.data.get("links") is None:
            if DEFAULT_SWITCH_NAME in self.members:
                clash = self.members[DEFAULT_SWITCH_NAME]
                raise ValidationError(_sub(clash.path, "name"), f'"{DEFAULT_SWITCH_NAME}" is the name of the implicit '
                                                                "default switch; rename it or list switches explicitly")
            self._add_member("switch", DEFAULT_SWITCH_NAME, "switches[0]")
            return [SwitchSpec(DEFAULT_SWITCH_NAME, DEFAULT_UNDERLAY_SUBNET)]
        switches: list[SwitchSpec] = []
        for i, raw in enumerate(_list(raw_switches, "switches", "switches")):
            path = _at("switches", i)
            obj = _fields(raw, path, _SWITCH_FIELDS, "a switch like {name: s1, subnet: 172.18.0.0/16}")
            name = check_name(obj.get("name"), _sub(path, "name"), "switch", MAX_SWITCH_NAME)
            if obj.get("subnet") is None:
                if i > 0:
                    raise ValidationError(_sub(path, "subnet"), "required for every switch but the first; "
                                                                "give a CIDR like 172.19.0.0/16")
                subnet = DEFAULT_UNDERLAY_SUBNET
            else:
                subnet = _cidr(obj["subnet"], _sub(path, "subnet"), "172.18.0.0/16")
            if subnet.prefixlen > 30:
                raise ValidationError(_sub(path, "subnet"), f"{subnet} is too small for a gateway and a host; "
                                                            "use /30 or shorter")
            self._add_member("switch", name, path)
            switches.append(SwitchSpec(name, subnet))
        return switches

    def _routers(self) -> list[RouterSpec]:
        routers: list[RouterSpec] = []
        for i, raw in enumerate(_list(self.data.get("routers"), "routers", "routers")):
            path = _at("routers", i)
            obj = _fields(raw, path, _ROUTER_FIELDS, "a router like {name: r1}")
            name = check_name(obj.get("name"), _sub(path, "name"), "router", MAX_ROUTER_NAME)
            self._add_member("router", name, path)
            routers.append(RouterSpec(name))
        return routers

    def _check_subnets(self, pod: ipaddress.IPv4Network, service: ipaddress.IPv4Network,
                       switches: list[SwitchSpec], node_count: int) -> None:
        if pod.prefixlen > POD_CIDR_PREFIXLEN:
            raise ValidationError("podSubnet", f"{pod} is smaller than the /{POD_CIDR_PREFIXLEN} each node gets; "
                                               f"use a prefix of /{POD_CIDR_PREFIXLEN} or shorter")
        room = 2 ** (POD_CIDR_PREFIXLEN - pod.prefixlen)
        if room < node_count:
            raise ValidationError("podSubnet", f"{pod} holds {room} node /{POD_CIDR_PREFIXLEN}s but the topology has "
                                               f"{node_count} nodes; use a larger subnet")
        if service.num_addresses <= DNS_SERVICE_OFFSET + 1:
            raise ValidationError("serviceSubnet", f"{service} is too small for cluster DNS at +{DNS_SERVICE_OFFSET}; "
                                                   "use /28 or shorter")
        ranges = [("podSubnet", pod), ("serviceSubnet", service)]
        ranges += [(f"{self.members[s.name].path}.subnet", s.subnet) for s in switches]
        for j, (path_j, net_j) in enumerate(ranges):
            for path_i, net_i in ranges[:j]:
                if net_i.overlaps(net_j):
                    raise ValidationError(path_j, f"{net_j} overlaps {path_i} {net_i}; use non-overlapping ranges")

    def _links(self, switches: list[SwitchSpec]) -> list[_RawLink]:
        raw_links = self.data.get("links")
        if raw_links is None:
            routers = [m for m in self.members.values() if m.kind == "router"]
            if routers:
                raise ValidationError("links", f'required when the topology has routers (router "{routers[0].name}"); '
                                               "list the links explicitly")
            if len(switches) > 1:
                raise ValidationError("links", f"required when the topology has {len(switches)} switches; "
                                               "list which switch each node and host plugs into")
            if not switches:
                return []
            switch = switches[0].name
            # Implicit wiring: every node, then every host, into the only switch.
            entries: list[Any] = [{"endpoints": [m.name, switch]} for m in self.members.values() if m.kind == "node"]
            entries += [{"endpoints": [m.name, switch]} for m in self.members.values() if m.kind == "host"]
        else:
            entries = _list(raw_links, "links", "links")
        links: list[_RawLink] = []
        for i, raw in enumerate(entries):
            links.append(self._link(i, raw))
        return links

    def _link(self, index: int, raw: Any) -> _RawLink:
        path = _at("links", index)
        obj = _fields(raw, path, _LINK_FIELDS, "a link like {endpoints: [worker, s1]}")
        epath = _sub(path, "endpoints")
        ends = obj.get("endpoints")
        if ends is None:
            raise ValidationError(epath, "required; name the two ends, e.g. [worker, s1]")
        if not isinstance(ends, (list, tuple)) or len(ends) != 2:
            raise ValidationError(epath, f"expected a list of exactly two names, got {render(ends)}")
        members: list[_Member] = []
        for j, end in enumerate(ends):
            if not isinstance(end, str):
                raise ValidationError(_at(epath, j), f"expected a name, got {render(end)}")
            if end not in self.members:
                raise ValidationError(_at(epath, j), f'unknown node, host, switch or router "{end}"')
            members.append(self.members[end])
        a, b = members
        if a.name == b.name:
            raise ValidationError(epath, f'both ends are "{a.name}"; a link joins two different things')
        if a.kind == "switch" and b.kind == "switch":
            raise ValidationError(epath, f'cannot link switch "{a.name}" to switch "{b.name}"; '
                                         "join switch segments through a router")
        switch = a.name if a.kind == "switch" else b.name if b.kind == "switch" else None
        if switch is None and "router" not in (a.kind, b.kind):
            raise ValidationError(epath, f'{a.kind} "{a.name}" and {b.kind} "{b.name}" cannot be linked directly; '
                                         "link each to a switch, or put a router between them")
        link = _RawLink(path, (a.name, b.name), _bandwidth(obj.get("bandwidth"), _sub(path, "bandwidth")), switch,
                        _loss(obj.get("loss"), _sub(path, "loss")), _delay_ms(obj.get("delay"), _sub(path, "delay")))
        for side, member in enumerate(members):
            if member.kind != "switch":
                member.ends.append((index, side))
        return link

    def _check_linked(self) -> None:
        for member in self.members.values():
            if member.kind != "switch" and not member.ends:
                raise ValidationError(member.path, f'{member.kind} "{member.name}" is not linked to anything; '
                                                   "add a link from it to a switch")

    def _assign_addresses(self, links: list[_RawLink], switches: list[SwitchSpec], pod: ipaddress.IPv4Network,
                          service: ipaddress.IPv4Network) -> dict[tuple[int, int], ipaddress.IPv4Interface]:
        pools = {s.name: _Pool(s, self.members[s.name].path) for s in switches}
        addresses: dict[tuple[int, int], ipaddress.IPv4Interface] = {}
        ordered = ([m for m in self.members.values() if m.kind == "node"]
                   + [m for m in self.members.values() if m.kind == "host"])
        routers = [m for m in self.members.values() if m.kind == "router"]

        def switch_ends(member: _Member) -> list[tuple[int, int]]:
            return [end for end in member.ends if links[end[0]].switch is not None]

        # 1. Explicit addresses are reserved first, on each member's first switch link.
        for member in ordered:
            if member.ip is None:
                continue
            ip_path = _sub(member.path, "ip")
            ends = switch_ends(member)
            if not ends:
                raise ValidationError(ip_path, f'{member.kind} "{member.name}" has no link to a switch, so it cannot '
                                               "take an ip; remove ip or link it to a switch")
            pool = pools[links[ends[0][0]].switch or ""]
            subnet, where = pool.switch.subnet, f'switch "{pool.switch.name}" ({pool.switch.subnet})'
            ip = member.ip
            if ip not in subnet:
                raise ValidationError(ip_path, f"{ip} is outside subnet {subnet} of switch \"{pool.switch.name}\", "
                                               "its first switch link; pick an address inside it")
            if ip == subnet.network_address:
                raise ValidationError(ip_path, f"{ip} is the network address of {where}; pick another address")
            if ip == subnet.broadcast_address:
                raise ValidationError(ip_path, f"{ip} is the broadcast address of {where}; pick another address")
            if ip == pool.switch.gateway:
                raise ValidationError(ip_path, f"{ip} is the gateway address reserved on {where}; "
                                               "pick another address")
            if ip in pool.owners:
                raise ValidationError(ip_path, f"duplicate address {ip} (also {pool.owners[ip]})")
            pool.owners[ip] = ip_path
            addresses[ends[0]] = ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}")

        # 2. Nodes, then hosts, take the next free address for each remaining switch link.
        for member in ordered:
            for end in switch_ends(member):
                if end not in addresses:
                    pool = pools[links[end[0]].switch or ""]
                    ip = pool.take(f'{member.path} "{member.name}"')
                    addresses[end] = ipaddress.IPv4Interface(f"{ip}/{pool.switch.subnet.prefixlen}")

        # 3. Routers: the first router on a switch is its .1 gateway; others take the next free address.
        for member in routers:
            for end in switch_ends(member):
                pool = pools[links[end[0]].switch or ""]
                if not pool.gateway_taken:
                    pool.gateway_taken = True
                    ip = pool.switch.gateway
                else:
                    ip = pool.take(f'{member.path} "{member.name}"')
                addresses[end] = ipaddress.IPv4Interface(f"{ip}/{pool.switch.subnet.prefixlen}")

        # 4. Router point-to-point links: consecutive /30s from the pool, .1 for a and .2 for b.
        p2p = [i for i, link in enumerate(links) if link.switch is None]
        if p2p:
            taken = [("podSubnet", pod), ("serviceSubnet", service)]
            taken += [(f"{self.members[s.name].path}.subnet", s.subnet) for s in switches]
            for path, net in taken:
                if net.overlaps(P2P_POOL):
                    raise ValidationError(path, f"{net} overlaps {P2P_POOL}, where router point-to-point links take "
                                                "their /30s; use another range")
            capacity = P2P_POOL.num_addresses // 2 ** (32 - P2P_PREFIXLEN)
            if len(p2p) > capacity:
                raise ValidationError(links[p2p[capacity]].path, f"more than {capacity} router point-to-point "
                                                                 f"links; {P2P_POOL} is full")
            for k, index in enumerate(p2p):
                base = P2P_POOL.network_address + k * 2 ** (32 - P2P_PREFIXLEN)
                for side in (0, 1):
                    addresses[index, side] = ipaddress.IPv4Interface(f"{base + side + 1}/{P2P_PREFIXLEN}")
        return addresses

    def _link_specs(self, links: list[_RawLink],
                    addresses: dict[tuple[int, int], ipaddress.IPv4Interface]) -> list[LinkSpec]:
        ifnames: dict[tuple[int, int], str] = {}
        for member in self.members.values():
            for k, end in enumerate(member.ends):
                ifnames[end] = f"eth{k}"
        ports: dict[str, int] = {}
        specs: list[LinkSpec] = []
        for index, link in enumerate(links):
            ends: list[Endpoint] = []
            for side, name in enumerate(link.names):
                if self.members[name].kind == "switch":
                    ports[name] = ports.get(name, 0) + 1
                    ends.append(Endpoint(name, f"{name}-p{ports[name]}", None))
                else:
                    ends.append(Endpoint(name, ifnames[index, side], addresses[index, side]))
            specs.append(LinkSpec(ends[0], ends[1], link.bandwidth, link.switch, link.loss, link.delay_ms))
        return specs

    def _manifests(self) -> list[Path | dict]:
        manifests: list[Path | dict] = []
        for i, entry in enumerate(_list(self.data.get("manifests"), "manifests", "manifest paths or objects")):
            path = _at("manifests", i)
            if isinstance(entry, (str, Path)):
                if not str(entry).strip():
                    raise ValidationError(path, "empty path; give a manifest file path")
                full = Path(os.path.abspath(self.base_dir / Path(entry).expanduser()))
                if self.check_manifest_files and not full.exists():
                    raise ValidationError(path, f"file not found: {full}")
                if self.check_manifest_files and full.is_dir():
                    raise ValidationError(path, f"{full} is a directory; list the manifest files in it")
                manifests.append(full)
            elif isinstance(entry, dict):
                for key in ("apiVersion", "kind"):
                    value = entry.get(key)
                    if not isinstance(value, str) or not value:
                        raise ValidationError(_sub(path, key), f"required for an inline manifest, got "
                                                               f"{_type_name(value)}; set it, e.g. apiVersion: v1, "
                                                               "kind: Namespace")
                manifests.append(copy.deepcopy(entry))
            else:
                raise ValidationError(path, "expected a file path or an inline object with apiVersion and kind, "
                                            f"got {_type_name(entry)}")
        return manifests
