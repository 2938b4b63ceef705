"""Topology data model: the validated, fully addressed description of one cluster.

These frozen dataclasses are what the loader produces and what the emulator, the
CLI and the cluster bring-up consume. Every address is already assigned and every
interface already named, so consumers never re-derive them. This module also holds
the defaults and the small name rules shared by the loader and ``Topology.with_name``.
Pure values only: no file, kernel or network access.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from netk8s.api.validation import is_dns1123_label, is_dns1123_subdomain
from netk8s.errors import NotFoundError, ValidationError

API_VERSION = "netk8s.io/v1alpha1"
KIND = "Cluster"

DEFAULT_CLUSTER_NAME = "netk8s"
DEFAULT_POD_SUBNET = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_SUBNET = ipaddress.IPv4Network("10.96.0.0/16")
DEFAULT_NODE_PORT_RANGE: tuple[int, int] = (30000, 32767)
DEFAULT_SWITCH_NAME = "s1"
DEFAULT_UNDERLAY_SUBNET = ipaddress.IPv4Network("172.18.0.0/16")
# Point-to-point links that involve a router get consecutive /30s from this pool.
P2P_POOL = ipaddress.IPv4Network("172.31.0.0/16")
P2P_PREFIXLEN = 30
POD_CIDR_PREFIXLEN = 24  # one /24 per node, carved from podSubnet
DNS_SERVICE_OFFSET = 10  # cluster DNS lives at serviceSubnet + 10

CONTROL_PLANE_TAINT_KEY = "node-role.kubernetes.io/control-plane"

MAX_CLUSTER_NAME = 20
MAX_NODE_NAME = 40
MAX_HOST_NAME = 40
MAX_ROUTER_NAME = 40
MAX_SWITCH_NAME = 8  # switch ports are "<switch>-p<N>" and must fit in 15 characters


class NetworkingMode(str, Enum):
    HOST_GW = "host-gw"
    VXLAN = "vxlan"


class CniPlugin(str, Enum):
    """The CNI plugin the kubelets call: netk8s's own, or the reference bridge + host-local."""

    NETK8S = "netk8s"
    BRIDGE = "bridge"

    @property
    def plugin_type(self) -> str:
        """The CNI ``type`` (executable name) in the node's network configuration."""
        return "netk8s-cni" if self is CniPlugin.NETK8S else "bridge"


class ProxyMode(str, Enum):
    IPTABLES = "iptables"
    NFTABLES = "nftables"


class StoreKind(str, Enum):
    SQLITE = "sqlite"
    ETCD = "etcd"


class NodeRole(str, Enum):
    CONTROL_PLANE = "control-plane"
    WORKER = "worker"


class TaintEffect(str, Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


def default_capacity() -> dict[str, str]:
    """A node's capacity when the topology gives none (a fresh dict each call)."""
    return {"cpu": "4", "memory": "8Gi", "pods": "110"}


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: TaintEffect

    def to_api(self) -> dict[str, str]:
        """The taint as it appears in ``Node.spec.taints``."""
        out = {"key": self.key}
        if self.value:
            out["value"] = self.value
        out["effect"] = self.effect.value
        return out


CONTROL_PLANE_TAINT = Taint(CONTROL_PLANE_TAINT_KEY, "", TaintEffect.NO_SCHEDULE)


@dataclass(frozen=True)
class Endpoint:
    """One end of a link: ``name`` is the node/host/router/switch it belongs to.

    ``address`` is None on switch ports; on node/host/router ends it carries the
    prefix length of the segment (the switch subnet, or /30 on router links).
    """

    name: str
    ifname: str
    address: ipaddress.IPv4Interface | None


@dataclass(frozen=True)
class LinkSpec:
    a: Endpoint
    b: Endpoint
    bandwidth_mbit: float | None
    switch: str | None  # the switch this link plugs into; None for router point-to-point links
    loss_percent: float | None = None
    delay_ms: float | None = None

    def ends(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: NodeRole = NodeRole.WORKER
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Taint, ...] = ()
    capacity: dict[str, str] = field(default_factory=default_capacity, hash=False)

    @property
    def is_control_plane(self) -> bool:
        return self.role is NodeRole.CONTROL_PLANE


@dataclass(frozen=True)
class HostSpec:
    name: str


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The subnet's .1 address, reserved like a docker network's gateway."""
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class RouterSpec:
    name: str


@dataclass(frozen=True)
class ControlPlaneSpec:
    """Control-plane timings. Kubernetes waits 40 s before calling a silent node Unknown and
    tolerates it for 300 s before evicting its pods; the emulator defaults to much less so
    node failures play out while you watch."""

    node_monitor_grace_period: float = 10.0
    pod_eviction_timeout: float = 30.0


@dataclass(frozen=True)
class Topology:
    name: str
    pod_subnet: ipaddress.IPv4Network
    service_subnet: ipaddress.IPv4Network
    node_port_range: tuple[int, int]
    networking_mode: NetworkingMode
    proxy_mode: ProxyMode
    store: StoreKind
    nodes: tuple[NodeSpec, ...]
    hosts: tuple[HostSpec, ...]
    switches: tuple[SwitchSpec, ...]
    routers: tuple[RouterSpec, ...]
    links: tuple[LinkSpec, ...]
    manifests: tuple[Path | dict, ...] = field(default=(), hash=False)
    control_plane_spec: ControlPlaneSpec = ControlPlaneSpec()
    cni_plugin: CniPlugin = CniPlugin.NETK8S
    # Addresses the emulated cloud load balancer hands to LoadBalancer Services (first, last);
    # None: the top 51 addresses of the first switch's subnet (172.18.255.200-250 by default, as with kind + MetalLB).
    load_balancer_pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None

    def lb_pool(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None:
        """The load balancer address range, or None when there is no switch subnet to take it from."""
        if self.load_balancer_pool is not None:
            return self.load_balancer_pool
        if not self.switches:
            return None
        subnet = self.switches[0].subnet
        last = subnet.broadcast_address - 5
        first = last - 50
        return (first, last) if first > subnet.network_address + 1 else None
    # Where the topology was read from; provenance only, so not part of equality.
    source: Path | None = field(default=None, compare=False)

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        known = ", ".join(n.name for n in self.nodes)
        raise NotFoundError(f'node "{name}" not found in topology "{self.name}"; its nodes are: {known}')

    def control_plane(self) -> NodeSpec:
        for spec in self.nodes:
            if spec.is_control_plane:
                return spec
        raise NotFoundError(f'topology "{self.name}" has no control-plane node; give one node role: control-plane')

    def interfaces_of(self, name: str) -> list[Endpoint]:
        """The link ends inside node/host/router ``name``, in link (eth0, eth1, ...) order."""
        owners = [n.name for n in self.nodes] + [h.name for h in self.hosts] + [r.name for r in self.routers]
        if name not in owners:
            raise NotFoundError(f'no node, host or router named "{name}" in topology "{self.name}"')
        return [end for link in self.links for end in link.ends() if end.name == name and end.address is not None]

    def primary_address(self, name: str) -> ipaddress.IPv4Address:
        """The address of the first interface (eth0) of node/host/router ``name``."""
        ifaces = self.interfaces_of(name)
        if not ifaces or ifaces[0].address is None:
            raise NotFoundError(f'"{name}" has no addressed interface in topology "{self.name}"')
        return ifaces[0].address.ip

    def dns_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_subnet.network_address + DNS_SERVICE_OFFSET

    def with_name(self, name: str) -> Topology:
        """A copy under another cluster name, validated like the ``name`` field."""
        return dataclasses.replace(self, name=check_name(name, "name", "cluster", MAX_CLUSTER_NAME))


def render(value: Any, limit: int = 60) -> str:
    """A value as it should appear in a one-line error message (strings quoted)."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_name(value: Any, path: str, what: str, max_len: int) -> str:
    """Validate a DNS-1123 label name of at most ``max_len`` characters; return it."""
    if value is None or value == "":
        raise ValidationError(path, f"required; give the {what} a name like {_EXAMPLE_NAMES.get(what, 'x1')}")
    if not isinstance(value, str):
        raise ValidationError(path, f"expected a {what} name (a string), got {render(value)}")
    if len(value) > max_len:
        raise ValidationError(path, f'{what} name "{value}" is {len(value)} characters long; use at most {max_len}')
    if not is_dns1123_label(value):
        raise ValidationError(path, f'invalid {what} name "{value}": use lowercase letters, digits and "-", '
                                    "starting and ending with a letter or digit")
    return value


_EXAMPLE_NAMES = {"cluster": "demo", "node": "worker1", "host": "client", "switch": "s1", "router": "r1"}

# Kubernetes qualified names (label keys, taint keys, resource names): optional DNS
# subdomain prefix and "/", then 1-63 alphanumerics with '-', '_' or '.' inside.
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_qualified_name(value: str) -> bool:
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or not is_dns1123_subdomain(prefix)):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None
