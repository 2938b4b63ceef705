"""VXLAN pod networking (flannel's vxlan backend): an L3 overlay between nodes.

Each node has a VTEP device ``flannel.1`` (VNI 1, UDP 8472, local = node IP,
no learning) holding ``<its podCIDR network address>/32``, and publishes its
VTEP MAC and public IP in its Node object, as flanneld does::

    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/backend-data: {"VNI":1,"VtepMAC":"0e:..."}
    flannel.alpha.coreos.com/public-ip: 172.18.0.3

For every other node that has published, a node holds::

    <their podCIDR> via <their podCIDR .0> dev flannel.1 onlink   (route, proto 77)
    <their .0> lladdr <their VTEP MAC> dev flannel.1 PERMANENT     (neighbour, proto 77)
    <their VTEP MAC> dst <their public IP> dev flannel.1 self      (FDB)

so a pod packet for a remote pod is routed to flannel.1, its inner Ethernet
header is addressed to the peer's VTEP MAC, and the FDB tells the kernel which
node IP the UDP datagram goes to. Like ``flanneld --ip-masq``, traffic between
the pod network and the outside is masqueraded (chain ``FLANNEL-POSTRTG``), so
a client outside the overlay that enters it through one node gets its answers
back through that node.

External hosts are not in the overlay: they route the whole pod subnet via one
node on their segment (``external_host_gateway``).

The desired state is computed by pure functions from Node objects;
``VxlanAgent`` (one per node) keeps the kernel equal to it through the API.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from dataclasses import dataclass, field

from netk8s.api import meta
from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.cni.types import MULTICAST_NET
from netk8s.kernel import vxlan as kvxlan
from netk8s.kernel.routes import Route, sync_routes
from netk8s.topology import Topology

log = logging.getLogger(__name__)

VXLAN_DEVICE = "flannel.1"
VXLAN_VNI = 1
VXLAN_PORT = 8472  # flannel's default (the Linux kernel's historical VXLAN port), not IANA's 4789
BACKEND_TYPE = "vxlan"
BACKEND_TYPE_ANNOTATION = "flannel.alpha.coreos.com/backend-type"
BACKEND_DATA_ANNOTATION = "flannel.alpha.coreos.com/backend-data"
PUBLIC_IP_ANNOTATION = "flannel.alpha.coreos.com/public-ip"


def overlay_mtu(underlay_mtu: int) -> int:
    """The MTU of flannel.1 and of pod interfaces: the underlay's minus the VXLAN encapsulation."""
    return underlay_mtu - kvxlan.VXLAN_OVERHEAD


def vtep_address(pod_cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """flannel.1's address: the network address of the node's pod CIDR, as a /32."""
    return ipaddress.IPv4Interface(f"{pod_cidr.network_address}/32")


def vtep_mac(node_name: str, node_ip: ipaddress.IPv4Address) -> str:
    """A stable, locally administered unicast MAC for a node's VTEP (the same on every bring-up)."""
    digest = hashlib.sha256(f"{node_name}/{node_ip}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0e, *digest[:5]))


def node_annotations(mac: str, public_ip: ipaddress.IPv4Address) -> dict[str, str]:
    """The annotations flanneld writes on its Node (backend-data is compact JSON, as Go writes it)."""
    return {
        BACKEND_TYPE_ANNOTATION: BACKEND_TYPE,
        BACKEND_DATA_ANNOTATION: json.dumps({"VNI": VXLAN_VNI, "VtepMAC": mac}, separators=(",", ":")),
        PUBLIC_IP_ANNOTATION: str(public_ip),
    }


@dataclass(frozen=True)
class VtepPeer:
    node: str
    pod_cidr: ipaddress.IPv4Network
    vtep_mac: str
    public_ip: ipaddress.IPv4Address

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address


def _normal_mac(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    parts = value.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        return None
    if int(parts[0], 16) & 1 or value.lower() == "00:00:00:00:00:00":
        return None  # multicast or zero: never a VTEP
    return ":".join(parts)


def peer_of(node: dict) -> VtepPeer | None:
    """The node as an overlay peer, or None until it has a pod CIDR and has published valid vxlan data."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    cidr = (node.get("spec") or {}).get("podCIDR")
    if not cidr or annotations.get(BACKEND_TYPE_ANNOTATION) != BACKEND_TYPE:
        return None
    try:
        data = json.loads(annotations.get(BACKEND_DATA_ANNOTATION) or "")
        pod_cidr = ipaddress.IPv4Network(cidr)
        public_ip = ipaddress.IPv4Address(annotations.get(PUBLIC_IP_ANNOTATION) or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("VNI") != VXLAN_VNI:
        return None
    mac = _normal_mac(data.get("VtepMAC"))
    return VtepPeer(meta.name_of(node), pod_cidr, mac, public_ip) if mac else None


def peers(nodes: list[dict], own_node: str) -> list[VtepPeer]:
    """Every other node's peer entry, by node name; a MAC or pod CIDR claimed twice goes to the first name."""
    out: list[VtepPeer] = []
    macs: set[str] = set()
    cidrs: set[ipaddress.IPv4Network] = set()
    for node in sorted(nodes, key=meta.name_of):
        if meta.name_of(node) == own_node:
            continue
        peer = peer_of(node)
        if peer is None:
            continue
        if peer.vtep_mac in macs or peer.pod_cidr in cidrs:
            log.warning("node %s: VTEP MAC %s or pod CIDR %s already used by another node; ignored",
                        peer.node, peer.vtep_mac, peer.pod_cidr)
            continue
        macs.add(peer.vtep_mac)
        cidrs.add(peer.pod_cidr)
        out.append(peer)
    return out


@dataclass(frozen=True)
class OverlayState:
    routes: tuple[Route, ...]
    neighbours: dict[ipaddress.IPv4Address, str] = field(hash=False)  # peer VTEP IP -> VTEP MAC
    fdb: dict[str, ipaddress.IPv4Address] = field(hash=False)  # VTEP MAC -> peer public IP


def desired_overlay(peer_list: list[VtepPeer], device: str = VXLAN_DEVICE) -> OverlayState:
    routes = tuple(Route(p.pod_cidr, p.vtep_ip, device, onlink=True) for p in peer_list)
    return OverlayState(routes, {p.vtep_ip: p.vtep_mac for p in peer_list},
                        {p.vtep_mac: p.public_ip for p in peer_list})


def masquerade_rules(cluster_cidr: ipaddress.IPv4Network, pod_cidr: ipaddress.IPv4Network) -> list[str]:
    """flanneld's ``--ip-masq`` rules for chain FLANNEL-POSTRTG, in ``iptables-save`` form.

    In order: leave kube-proxy's marked traffic to kube-proxy; no NAT inside the pod
    network; no NAT for outside traffic to this node's own pods (they answer through this
    node anyway); masquerade pods going out (not multicast); masquerade outside traffic
    entering the overlay through this node, so its answers come back through this node.
    """
    comment = f'-m comment --comment "{kvxlan.MASQ_COMMENT}"'
    return [
        f"-m mark --mark 0x4000/0x4000 {comment} -j RETURN",
        f"-s {pod_cidr} -d {cluster_cidr} {comment} -j RETURN",
        f"-s {cluster_cidr} -d {pod_cidr} {comment} -j RETURN",
        f"! -s {cluster_cidr} -d {pod_cidr} {comment} -j RETURN",
        f"-s {cluster_cidr} ! -d {MULTICAST_NET} {comment} -j MASQUERADE --random-fully",
        f"! -s {cluster_cidr} -d {cluster_cidr} {comment} -j MASQUERADE --random-fully",
    ]


def external_host_gateway(topology: Topology, host: str) -> ipaddress.IPv4Address | None:
    """The node an external host sends pod traffic to in vxlan mode: the first control-plane node on one of
    the host's segments, else the first node on one; its address on that segment. None when no node is near."""
    host_nets = [end.address.network for end in topology.interfaces_of(host) if end.address is not None]
    candidates = sorted(topology.nodes, key=lambda n: not n.is_control_plane)  # stable: keeps topology order
    for node in candidates:
        for end in topology.interfaces_of(node.name):
            if end.address is not None and end.address.network in host_nets:
                return end.address.ip
    return None


def route_external_host(topology: Topology, host: str, netns_name: str) -> None:
    """Route the pod subnet from an external host via its ``external_host_gateway`` (when it has one)."""
    gateway = external_host_gateway(topology, host)
    if gateway is None:
        log.info("external host %s has no node on its segments: no route to the pod subnet", host)
        return
    sync_routes(netns_name, {topology.pod_subnet: gateway})
    log.info("external host %s: %s via %s", host, topology.pod_subnet, gateway)


# -- agent ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VxlanConfig:
    node_name: str
    netns: str
    node_ip: ipaddress.IPv4Address
    underlay: str  # the node's interface holding node_ip
    cluster_cidr: ipaddress.IPv4Network

    @classmethod
    def for_node(cls, topology: Topology, node_name: str, netns_name: str) -> VxlanConfig:
        primary = topology.interfaces_of(node_name)[0]
        assert primary.address is not None  # interfaces_of lists addressed ends only
        return cls(node_name, netns_name, primary.address.ip, primary.ifname, topology.pod_subnet)


class VxlanAgent(Controller):
    """flanneld for one node: VTEP device, Node annotations, overlay routes/neighbours/FDB, masquerade."""

    name = "vxlan"

    def __init__(self, client: ApiClient, config: VxlanConfig) -> None:
        super().__init__(client)
        self.config = config
        self.name = f"vxlan-{config.node_name}"
        self._masq_for: ipaddress.IPv4Network | None = None

    def setup(self) -> None:
        self.nodes = self.informer(NODES)
        # Every Node event re-syncs, status heartbeats included: like flanneld's periodic check, that
        # also repairs entries someone deleted by hand.
        self.nodes.add_handler(lambda e, o, n: self.queue.add("overlay"))

    def sync(self, key: str) -> None:
        cfg = self.config
        own = self.nodes.get(cfg.node_name)
        cidr = (own.get("spec") or {}).get("podCIDR") if own else None
        if own is None or not cidr:
            return  # like flanneld: no lease until the node has a pod CIDR; its update re-queues us
        pod_cidr = ipaddress.IPv4Network(cidr)
        device = kvxlan.VtepDevice(VXLAN_DEVICE, VXLAN_VNI, VXLAN_PORT, cfg.node_ip, cfg.underlay,
                                   vtep_mac(cfg.node_name, cfg.node_ip), vtep_address(pod_cidr))
        mac = kvxlan.ensure_vtep(cfg.netns, device)
        wanted = node_annotations(mac, cfg.node_ip)
        have = (own.get("metadata") or {}).get("annotations") or {}
        if any(have.get(k) != v for k, v in wanted.items()):
            self.client.patch(NODES, cfg.node_name, {"metadata": {"annotations": wanted}})
            log.info("%s: published VTEP %s at %s", self.name, mac, cfg.node_ip)
        if self._masq_for != pod_cidr:
            kvxlan.ensure_masquerade(cfg.netns, masquerade_rules(cfg.cluster_cidr, pod_cidr))
            self._masq_for = pod_cidr
        state = desired_overlay(peers(self.nodes.list(), cfg.node_name))
        kvxlan.sync_overlay(cfg.netns, VXLAN_DEVICE, state.routes, state.neighbours, state.fdb)
        log.debug("%s: %d overlay peers", self.name, len(state.routes))
