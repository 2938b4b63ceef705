"""Announcing load balancer IPs on the underlay, the way MetalLB's layer 2 mode does.

A Service's load balancer address (``status.loadBalancer.ingress``, given by
``netk8s.controllers.loadbalancer``) is not configured on any interface.
Instead one node per address answers ARP for it on its underlay interface, so
machines on that segment send the traffic to that node, where kube-proxy's
rules DNAT it to the Service's endpoints. ``plan_announcements`` (pure) picks
the node: among the Ready nodes with an interface on the pool's subnet that do
not carry ``node.kubernetes.io/exclude-from-external-load-balancers`` (kind and
kubeadm put it on control-plane nodes), the first by name, restricted for
``externalTrafficPolicy: Local`` to nodes with a ready local endpoint. Like
MetalLB, a Service without any ready endpoint is not announced. When the node
goes NotReady or away, the next one takes over and sends gratuitous ARP so
neighbours update their caches at once.

In the chosen node's namespace an announcement is:

- a proxy neighbour entry ``ip neigh add proxy <IP> dev eth0``
  (``ip neigh show proxy`` lists them), answered without the kernel's default
  random delay (``net.ipv4.neigh.eth0.proxy_delay=0``; MetalLB answers at once);
- a route ``<IP>/32 dev lo proto 78``. Kernel quirk: ``arp_process`` only
  proxies for an address routed out of *another* interface than the one the
  request came in on, and the pool lies in eth0's own subnet. Packets that
  kube-proxy DNATs never use this route (the DNAT happens in PREROUTING);
  anything else sent to the address (a port no Service has) circles on lo
  until its TTL expires, i.e. is dropped.

No address is added to the node and nothing is touched in the root
namespace. Hosts behind routers reach the pool through the routes routers
already have to the switch subnet the pool is carved from.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from netk8s.api import meta
from netk8s.api.resources import ENDPOINTSLICES, NODES, SERVICES
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, EventRecorder
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient
from netk8s.cluster.naming import node_netns
from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.topology import Topology

log = logging.getLogger(__name__)

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SERVICE_NAME_LABEL = meta.SERVICE_NAME_LABEL
RTPROT_NETK8S_LB = 78  # routing protocol number of announcement routes (host-gw/VXLAN routes use 77)
NTF_PROXY = 0x08
ETH_P_ARP = 0x0806
_ARP_REQUEST, _ARP_REPLY = 1, 2
_BROADCAST = b"\xff" * 6
_AF_INET = 2
_ENOENT = errno.ENOENT
_ESRCH = errno.ESRCH


@dataclass(frozen=True)
class Announcement:
    """``node`` answers ARP for ``ip`` on ``interface`` on behalf of Service ``service`` (``ns/name``)."""

    ip: IPv4Address
    node: str
    interface: str
    service: str


# -- pure planning ---------------------------------------------------------------------------------

def announcing_interfaces(topology: Topology, pool: tuple[IPv4Address, IPv4Address]) -> dict[str, str]:
    """Node -> its interface on the segment holding the pool (nodes elsewhere cannot announce it)."""
    out: dict[str, str] = {}
    for node in topology.nodes:
        for iface in topology.interfaces_of(node.name):
            if iface.address is not None and pool[0] in iface.address.network and pool[1] in iface.address.network:
                out[node.name] = iface.ifname
                break
    return out


def eligible_nodes(nodes: Iterable[dict], interfaces: Mapping[str, str]) -> set[str]:
    """Nodes that may announce: Ready, not being deleted, not excluded, on the pool's segment."""
    out = set()
    for node in nodes:
        name = meta.name_of(node)
        if name not in interfaces or EXCLUDE_LABEL in meta.labels_of(node):
            continue
        if (node.get("metadata") or {}).get("deletionTimestamp") or not meta.node_is_ready(node):
            continue
        out.add(name)
    return out


def ready_endpoint_nodes(slices: Iterable[dict]) -> dict[str, set[str]]:
    """Service (``ns/name``) -> nodes with at least one ready endpoint of it."""
    out: dict[str, set[str]] = {}
    for eps in slices:
        service = meta.labels_of(eps).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        nodes = out.setdefault(f"{meta.namespace_of(eps)}/{service}", set())
        for ep in eps.get("endpoints") or []:
            ready = (ep.get("conditions") or {}).get("ready")
            if (ready is None or ready) and ep.get("nodeName"):
                nodes.add(ep["nodeName"])
    return out


def plan_announcements(services: Iterable[dict], slices: Iterable[dict], nodes: Iterable[dict],
                       interfaces: Mapping[str, str],
                       pool: tuple[IPv4Address, IPv4Address]) -> dict[IPv4Address, Announcement]:
    """Which node announces each load balancer address of the pool (addresses nobody can announce are absent)."""
    eligible = eligible_nodes(nodes, interfaces)
    with_endpoints = ready_endpoint_nodes(slices)
    first, last = int(pool[0]), int(pool[1])
    plan: dict[IPv4Address, Announcement] = {}
    for svc in sorted(services, key=meta.key_of):
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer":
            continue
        key = meta.key_of(svc)
        ready_nodes = with_endpoints.get(key, set())
        if not ready_nodes:
            continue  # MetalLB withdraws a Service that has no ready endpoint anywhere
        candidates = eligible & ready_nodes if spec.get("externalTrafficPolicy") == "Local" else eligible
        if not candidates:
            continue
        node = min(candidates)
        for entry in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            try:
                ip = IPv4Address((entry or {}).get("ip") or "")
            except ValueError:
                continue
            if first <= int(ip) <= last and ip not in plan:
                plan[ip] = Announcement(ip, node, interfaces[node], key)
    return plan


def gratuitous_arp_frames(mac: bytes, ip: IPv4Address) -> list[bytes]:
    """A broadcast ARP request and reply both saying "``ip`` is at ``mac``" (MetalLB sends both)."""
    frames = []
    for op in (_ARP_REQUEST, _ARP_REPLY):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip.packed, _BROADCAST, ip.packed)
        frames.append(_BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp)
    return frames


# -- kernel side -----------------------------------------------------------------------------------

def announced(netns_name: str) -> set[IPv4Address]:
    """Addresses announced from the namespace (read back from the proto-78 /32 routes)."""
    with netns.iproute(netns_name) as ipr:
        return {IPv4Address(msg.get_attr("RTA_DST")) for msg in ipr.get_routes(
            family=_AF_INET, proto=RTPROT_NETK8S_LB, table=254) if msg["dst_len"] == 32 and msg.get_attr("RTA_DST")}


def announce(netns_name: str, ifname: str, ip: IPv4Address) -> None:
    """Make the namespace answer ARP for ``ip`` on ``ifname``, then tell the segment (gratuitous ARP)."""
    from pyroute2.netlink.exceptions import NetlinkError

    netns.write_sysctl(netns_name, f"net.ipv4.neigh.{ifname}.proxy_delay", 0)
    with netns.iproute(netns_name) as ipr:
        index = netns.link_index(ipr, netns_name, ifname)
        lo = netns.link_index(ipr, netns_name, "lo")
        try:
            ipr.route("replace", dst=f"{ip}/32", oif=lo, proto=RTPROT_NETK8S_LB)
            ipr.neigh("replace", dst=str(ip), ifindex=index, flags=NTF_PROXY)
        except NetlinkError as exc:
            raise KernelError(f"cannot announce {ip} on {ifname} in {netns_name}: {exc}") from None
    send_gratuitous_arp(netns_name, ifname, ip)


def withdraw(netns_name: str, ifname: str, ip: IPv4Address) -> None:
    """Stop answering for ``ip``; a namespace or entry already gone counts as withdrawn."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not netns.exists(netns_name):
        return
    with netns.iproute(netns_name) as ipr:
        index = netns.find_link(ipr, ifname)
        try:
            if index is not None:
                ipr.neigh("del", dst=str(ip), ifindex=index, flags=NTF_PROXY)
        except NetlinkError as exc:
            if exc.code != _ENOENT:
                raise KernelError(f"cannot withdraw {ip} from {ifname} in {netns_name}: {exc}") from None
        try:
            ipr.route("del", dst=f"{ip}/32", proto=RTPROT_NETK8S_LB)
        except NetlinkError as exc:
            if exc.code != _ESRCH:
                raise KernelError(f"cannot delete the route for {ip} in {netns_name}: {exc}") from None


def send_gratuitous_arp(netns_name: str, ifname: str, ip: IPv4Address) -> None:
    """Broadcast ``ip``'s new owner on ``ifname`` from inside the namespace (a raw packet socket)."""
    sock = netns.socket_in(netns_name, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((ifname, ETH_P_ARP))
        mac = sock.getsockname()[4]  # (ifname, proto, pkttype, hatype, hardware address)
        for frame in gratuitous_arp_frames(mac, ip):
            sock.send(frame)
    except OSError as exc:
        raise KernelError(f"cannot send gratuitous ARP for {ip} on {ifname} in {netns_name}: {exc}") from None
    finally:
        sock.close()


class KernelAnnouncer:
    """The kernel operations ``LbAnnouncer`` drives (replaced by a fake in unit tests)."""

    def announced(self, netns_name: str) -> set[IPv4Address]:
        return announced(netns_name) if netns.exists(netns_name) else set()

    def announce(self, netns_name: str, ifname: str, ip: IPv4Address) -> None:
        announce(netns_name, ifname, ip)

    def withdraw(self, netns_name: str, ifname: str, ip: IPv4Address) -> None:
        withdraw(netns_name, ifname, ip)


# -- the controller --------------------------------------------------------------------------------

_SYNC_KEY = "announce"


class LbAnnouncer(Controller):
    """Keeps each load balancer address announced by exactly one suitable node (MetalLB L2 speakers' job)."""

    name = "lb-announcer"

    def __init__(self, client: ApiClient, cluster_name: str, topology: Topology,
                 kernel: KernelAnnouncer | None = None) -> None:
        super().__init__(client)
        self.cluster_name = cluster_name
        self.pool = topology.lb_pool()
        self.interfaces = announcing_interfaces(topology, self.pool) if self.pool is not None else {}
        self.kernel = kernel if kernel is not None else KernelAnnouncer()
        self._applied: dict[IPv4Address, Announcement] | None = None  # None: read from the kernel first
        self._lock = threading.Lock()
        self._services: Informer | None = None
        self._slices: Informer | None = None
        self._nodes: Informer | None = None
        self.recorder: EventRecorder | None = None
        if self.pool is not None and not self.interfaces:
            log.warning("no node has an interface on the load balancer pool %s-%s: its addresses stay "
                        "unannounced", *self.pool)

    def setup(self) -> None:
        self._services = self.informer(SERVICES)
        self._slices = self.informer(ENDPOINTSLICES)
        self._nodes = self.informer(NODES)
        for inf in (self._services, self._slices, self._nodes):
            inf.add_handler(lambda event, old, new: self.queue.add(_SYNC_KEY))

    def start(self) -> None:
        self.recorder = EventRecorder(self.client, "lb-announcer")
        self.queue.add(_SYNC_KEY)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.recorder is not None:
            self.recorder.stop()

    def announcements(self) -> dict[IPv4Address, Announcement]:
        """What is announced now (as last applied)."""
        with self._lock:
            return dict(self._applied or {})

    def _netns(self, node: str) -> str:
        return node_netns(self.cluster_name, node)

    def _read_kernel(self) -> dict[IPv4Address, Announcement]:
        """Announcements found in the nodes (left by an earlier run): withdrawn unless still wanted."""
        assert self.pool is not None
        found: dict[IPv4Address, Announcement] = {}
        first, last = self.pool
        for node, ifname in sorted(self.interfaces.items()):
            for ip in self.kernel.announced(self._netns(node)):
                if first <= ip <= last:
                    found[ip] = Announcement(ip, node, ifname, "")
        return found

    def sync(self, key: str) -> None:
        if self.pool is None:
            return
        assert self._services is not None and self._slices is not None and self._nodes is not None
        wanted = plan_announcements(self._services.list(), self._slices.list(), self._nodes.list(),
                                    self.interfaces, self.pool)
        with self._lock:
            if self._applied is None:
                self._applied = self._read_kernel()
            applied = self._applied
        errors: list[str] = []
        for ip, old in sorted(applied.items()):
            new = wanted.get(ip)
            if new is not None and (new.node, new.interface) == (old.node, old.interface):
                continue
            try:
                self.kernel.withdraw(self._netns(old.node), old.interface, ip)
            except KernelError as exc:
                errors.append(str(exc))
                continue
            log.info("%s: %s no longer announced from %s", old.service or "stale", ip, old.node)
            with self._lock:
                applied.pop(ip, None)
        for ip, new in sorted(wanted.items()):
            current = applied.get(ip)
            if current is not None and (current.node, current.interface) == (new.node, new.interface):
                if current.service != new.service:
                    with self._lock:
                        applied[ip] = new
                continue
            try:
                self.kernel.announce(self._netns(new.node), new.interface, ip)
            except KernelError as exc:
                errors.append(str(exc))
                continue
            with self._lock:
                applied[ip] = new
            log.info("%s: %s announced from %s (%s)", new.service, ip, new.node, new.interface)
            self._event(new)
        if errors:
            raise KernelError(errors[0])  # retried with back-off by the Controller machinery

    def _event(self, announcement: Announcement) -> None:
        if self.recorder is None or self._services is None:
            return
        svc = self._services.get(announcement.service)
        if svc is not None:
            self.recorder.event({"kind": "Service", "apiVersion": "v1", **svc}, NORMAL, "nodeAssigned",
                                f'announcing from node "{announcement.node}" with protocol "layer2"')

