"""hostPort: DNAT from the node's addresses to pods, laid out as the CNI portmap plugin does it.

Rendering is pure. In the node's nat table (iptables-save form)::

    -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    -A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ   (first)
    -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"netk8s\\" id: \\"<id>\\"" \\
        -m multiport --dports 8080 -j CNI-DN-<hash>                   (newest pod first)
    -A CNI-DN-<hash> -s 10.244.1.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK   (hairpin)
    -A CNI-DN-<hash> -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK    (localhost)
    -A CNI-DN-<hash> -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.1.2:80
    -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
    -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE

``CNI-DN-`` + hex(sha512(network name + container ID)), cut to 28 characters,
as portmap names it. A ``hostIP`` adds ``-d <hostIP>/32`` to that entry's rules.
``HostportManager`` keeps every pod's mappings of one node and applies the
whole set with one ``iptables-restore --noflush`` per change (stale per-pod
chains flushed and deleted in the same payload); it also finds conflicts
(the same hostPort and protocol on overlapping host IPs), which the kubelet
rejects like its NodePorts admission check.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, ip_address
from typing import Callable, Iterable

from netk8s.api.network import Protocol
from netk8s.cni.types import masq_chain_name
from netk8s.proxy.iptables import quote, rules_by_chain

log = logging.getLogger(__name__)

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
DN_PREFIX = "CNI-DN-"
MARK_BIT = 13
MULTIPORT_MAX = 15
UNSPECIFIED = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: Protocol = Protocol.TCP
    host_ip: IPv4Address = UNSPECIFIED

    def describe(self) -> str:
        where = f"{self.host_ip}:" if self.host_ip != UNSPECIFIED else ""
        return f"{where}{self.host_port}/{self.protocol.value}"

    def overlaps(self, other: "PortMapping") -> bool:
        """Same port and protocol on a host IP both would bind (0.0.0.0 overlaps every address)."""
        return (self.host_port == other.host_port and self.protocol is other.protocol
                and (self.host_ip == other.host_ip or UNSPECIFIED in (self.host_ip, other.host_ip)))


@dataclass(frozen=True)
class PodPortMappings:
    """One pod sandbox's mappings; ``pod_net`` is the pod's address with its prefix (the CNI result)."""

    container_id: str
    pod_net: IPv4Interface
    mappings: tuple[PortMapping, ...]


@dataclass
class Conflict:
    mapping: PortMapping
    holder: str  # the pod key that holds the port


def pod_port_mappings(pod: dict) -> list[PortMapping]:
    """Every container port of the pod with a hostPort (hostNetwork pods: every port, on the node itself)."""
    spec = pod.get("spec") or {}
    host_network = bool(spec.get("hostNetwork"))
    out: list[PortMapping] = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if not isinstance(port, dict) or port.get("containerPort") is None:
                continue
            host_port = port.get("hostPort") or (port["containerPort"] if host_network else 0)
            if not host_port:
                continue
            try:
                protocol = Protocol(str(port.get("protocol") or "TCP").upper())
            except ValueError:
                continue
            host_ip = UNSPECIFIED
            if port.get("hostIP"):
                parsed = ip_address(str(port["hostIP"]))
                if parsed.version != 4:
                    continue  # an IPv6 hostIP does not apply to an IPv4 pod (portmap skips it too)
                host_ip = IPv4Address(parsed)
            out.append(PortMapping(int(host_port), int(port["containerPort"]), protocol, host_ip))
    return out


def dnat_chain(network: str, container_id: str) -> str:
    """portmap's per-pod DNAT chain: ``CNI-DN-`` + the reference plugins' hash of network and container id."""
    return masq_chain_name(network, container_id, DN_PREFIX)


def dnat_comment(network: str, container_id: str) -> str:
    return f'dnat name: "{network}" id: "{container_id}"'[:255]


def _mark() -> str:
    value = 1 << MARK_BIT
    return f"{value:#x}/{value:#x}"


def _dst(mapping: PortMapping) -> list[str]:
    return [f"-d {mapping.host_ip}/32"] if mapping.host_ip != UNSPECIFIED else []


def _port_match(mapping: PortMapping) -> str:
    proto = mapping.protocol.lowercase
    return f"-p {proto} -m {proto} --dport {mapping.host_port}"


def entry_rules(network: str, pod: PodPortMappings) -> list[str]:
    """The pod's rules in CNI-HOSTPORT-DNAT (one per protocol and 15 ports), iptables-save form."""
    chain = dnat_chain(network, pod.container_id)
    comment = quote(dnat_comment(network, pod.container_id))
    by_proto: dict[Protocol, list[int]] = {}
    for mapping in pod.mappings:
        by_proto.setdefault(mapping.protocol, []).append(mapping.host_port)
    rules = []
    for proto in sorted(by_proto, key=lambda p: p.lowercase):
        ports = by_proto[proto]
        for i in range(0, len(ports), MULTIPORT_MAX):
            chunk = ",".join(str(p) for p in ports[i:i + MULTIPORT_MAX])
            rules.append(f"-A {DNAT_CHAIN} -p {proto.lowercase} -m comment --comment {comment} "
                         f"-m multiport --dports {chunk} -j {chain}")
    return rules


def pod_chain_rules(network: str, pod: PodPortMappings) -> list[str]:
    """Rules of the pod's CNI-DN- chain: hairpin and localhost masquerade marks, then the DNAT."""
    chain = dnat_chain(network, pod.container_id)
    rules = []
    for mapping in pod.mappings:
        dst = _dst(mapping)
        match = _port_match(mapping)
        rules.append(" ".join([f"-A {chain} -s {pod.pod_net.network}", *dst, match, f"-j {SETMARK_CHAIN}"]))
        rules.append(" ".join([f"-A {chain} -s 127.0.0.1/32", *dst, match, f"-j {SETMARK_CHAIN}"]))
        rules.append(" ".join([f"-A {chain}", *dst, match,
                               f"-j DNAT --to-destination {pod.pod_net.ip}:{mapping.container_port}"]))
    return rules


@dataclass(frozen=True)
class JumpRule:
    chain: str
    spec: str
    prepend: bool

    @property
    def save_line(self) -> str:
        return f"-A {self.chain} {self.spec}"

    @property
    def restore_line(self) -> str:
        return f"-I {self.chain} 1 {self.spec}" if self.prepend else self.save_line


JUMPS = (
    JumpRule("PREROUTING", f"-m addrtype --dst-type LOCAL -j {DNAT_CHAIN}", prepend=False),
    JumpRule("OUTPUT", f"-m addrtype --dst-type LOCAL -j {DNAT_CHAIN}", prepend=False),
    JumpRule("POSTROUTING", f'-m comment --comment "CNI portfwd requiring masquerade" -j {MASQ_CHAIN}',
             prepend=True),
)


def missing_jumps(nat_save: str) -> list[JumpRule]:
    """The jump rules from built-in chains that an ``iptables-save -t nat`` dump lacks."""
    present = {line for lines in rules_by_chain(nat_save).values() for line in lines}
    return [jump for jump in JUMPS if jump.save_line not in present]


def render(network: str, pods: Iterable[PodPortMappings], stale_chains: Iterable[str] = (),
           jumps: Iterable[JumpRule] = ()) -> str:
    """One ``iptables-restore --noflush`` payload: every pod's chains (``pods`` oldest first; the
    newest pod's entry rules come first, as portmap prepends them), stale CNI-DN chains deleted."""
    pods = list(pods)
    stale = sorted(set(stale_chains) - {dnat_chain(network, p.container_id) for p in pods})
    lines = ["*nat", f":{DNAT_CHAIN} - [0:0]", f":{SETMARK_CHAIN} - [0:0]", f":{MASQ_CHAIN} - [0:0]"]
    lines += [f":{dnat_chain(network, p.container_id)} - [0:0]" for p in pods]
    lines += [f":{chain} - [0:0]" for chain in stale]
    lines.append(f'-A {SETMARK_CHAIN} -m comment --comment "CNI portfwd masquerade mark" -j MARK '
                 f"--set-xmark {_mark()}")
    lines.append(f"-A {MASQ_CHAIN} -m mark --mark {_mark()} -j MASQUERADE")
    for pod in reversed(pods):
        lines += entry_rules(network, pod)
    for pod in pods:
        lines += pod_chain_rules(network, pod)
    lines += [f"-X {chain}" for chain in stale]
    lines += [jump.restore_line for jump in jumps]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass
class HostportManager:
    """All hostPort mappings of one node, applied with one restore per change."""

    network: str
    restore: Callable[[str], None]   # iptables-restore --noflush in the node namespace
    save_nat: Callable[[], str]      # iptables-save -t nat in the node namespace
    _pods: dict[str, PodPortMappings] = field(default_factory=dict)
    _claims: dict[str, list[PortMapping]] = field(default_factory=dict)
    _stale: set[str] = field(default_factory=set)
    _jumps_checked: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def conflicts(self, key: str, mappings: list[PortMapping]) -> list[Conflict]:
        """Mappings already claimed by another pod (or twice by this one)."""
        found: list[Conflict] = []
        with self._lock:
            for i, mapping in enumerate(mappings):
                for other in mappings[:i]:
                    if mapping.overlaps(other):
                        found.append(Conflict(mapping, key))
                for holder, claimed in self._claims.items():
                    if holder != key and any(mapping.overlaps(c) for c in claimed):
                        found.append(Conflict(mapping, holder))
        return found

    def claim(self, key: str, mappings: list[PortMapping]) -> None:
        """Reserve ports (hostNetwork pods claim without DNAT rules)."""
        with self._lock:
            if mappings:
                self._claims[key] = list(mappings)

    def add(self, key: str, pod: PodPortMappings) -> None:
        with self._lock:
            self._claims[key] = list(pod.mappings)
            self._pods.pop(key, None)
            self._pods[key] = pod  # re-inserted: newest last
            self._apply_locked()

    def remove(self, key: str) -> None:
        with self._lock:
            self._claims.pop(key, None)
            pod = self._pods.pop(key, None)
            if pod is None:
                return
            self._stale.add(dnat_chain(self.network, pod.container_id))
            self._apply_locked()

    def _apply_locked(self) -> None:
        jumps: list[JumpRule] = []
        if not self._jumps_checked:
            jumps = missing_jumps(self.save_nat())
        payload = render(self.network, self._pods.values(), self._stale, jumps)
        self.restore(payload)
        self._jumps_checked = True
        self._stale.clear()
        log.debug("hostports: applied %d pods", len(self._pods))


def pod_net_of(cni_result: dict | None, pod_ip: str) -> IPv4Interface:
    """The pod's address with its prefix from the CNI result (portmap's containerNet)."""
    for ip in (cni_result or {}).get("ips") or []:
        try:
            iface = IPv4Interface(str(ip.get("address", "")))
        except ValueError:
            continue
        if str(iface.ip) == pod_ip:
            return iface
    return IPv4Interface(f"{pod_ip}/32")
