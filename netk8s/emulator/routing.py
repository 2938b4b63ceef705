"""Underlay routing of routed topologies: the router graph and the static routes it implies.

Pure code (values in, values out), used by the emulator to program routers,
nodes and external hosts, and by the route agents of routers in host-gw mode.

A *segment* is one underlay L2 network: a switch (its subnet, every node, host
and router plugged into it) or a point-to-point link involving a router (its
/30 and the two ends). Routers are adjacent when they share a segment. Each
router gets a static route for every segment it is not attached to, via the
next router on a shortest path (fewest routers crossed); among equally short
paths the first hop with the smallest (router name, segment network) wins, so
the plan never depends on dict or set order. Nodes and external hosts whose
segment has a router get a default route via it: the switch's .1 gateway (the
loader gives it to the first router on the switch), or the router's end of a
point-to-point link.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from netk8s.topology import Topology

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address


@dataclass(frozen=True)
class Segment:
    """One underlay L2 network and the address each member has on it."""

    network: IPv4Net
    switch: str | None  # None for a point-to-point link
    addresses: Mapping[str, IPv4Addr] = field(hash=False)

    @property
    def name(self) -> str:
        return self.switch or f"p2p {self.network}"


@dataclass(frozen=True)
class RoutingPlan:
    """The static routing a topology needs (empty for topologies without routers)."""

    segments: tuple[Segment, ...]
    # router -> destination segment network -> next-hop router address
    router_routes: Mapping[str, Mapping[IPv4Net, IPv4Addr]] = field(hash=False)
    # node or external host -> default gateway
    default_gateways: Mapping[str, IPv4Addr] = field(hash=False)

    def connected(self, member: str) -> list[IPv4Net]:
        """The segment networks ``member`` has an address on, in topology order."""
        return [seg.network for seg in self.segments if member in seg.addresses]

    def next_hop(self, router: str, address: IPv4Addr) -> IPv4Addr | None:
        """Where ``router`` sends a packet for underlay ``address``: the address itself when it is on an
        attached segment, else the next router towards its segment; None when it is unreachable."""
        for network in self.connected(router):
            if address in network:
                return address
        for network, via in self.router_routes.get(router, {}).items():
            if address in network:
                return via
        return None


def segments_of(topology: Topology) -> list[Segment]:
    """Every underlay segment: the switches (in topology order), then point-to-point links (in link order)."""
    out: list[Segment] = []
    for sw in topology.switches:
        members: dict[str, IPv4Addr] = {}
        for link in topology.links:
            if link.switch != sw.name:
                continue
            for end in link.ends():
                if end.address is not None:
                    members.setdefault(end.name, end.address.ip)
        out.append(Segment(sw.subnet, sw.name, members))
    for link in topology.links:
        if link.switch is not None or link.a.address is None or link.b.address is None:
            continue
        out.append(Segment(link.a.address.network, None,
                           {link.a.name: link.a.address.ip, link.b.name: link.b.address.ip}))
    return out


def _router_distances(routers: list[str], segments: list[Segment]) -> dict[tuple[str, IPv4Net], int]:
    """Fewest routers to cross from each router to reach each segment (0 when attached)."""
    dist: dict[tuple[str, IPv4Net], int] = {}
    for seg in segments:
        frontier = [r for r in routers if r in seg.addresses]
        for r in frontier:
            dist[r, seg.network] = 0
        hops = 0
        while frontier:
            hops += 1
            nxt: list[str] = []
            for r in frontier:
                for other in segments:
                    if r not in other.addresses:
                        continue
                    for n in routers:
                        if n in other.addresses and (n, seg.network) not in dist:
                            dist[n, seg.network] = hops
                            nxt.append(n)
            frontier = nxt
    return dist


def plan_routes(topology: Topology) -> RoutingPlan:
    """Static routes for every router and default gateways for nodes and hosts."""
    segments = segments_of(topology)
    routers = [r.name for r in topology.routers]
    dist = _router_distances(routers, segments)
    router_routes: dict[str, dict[IPv4Net, IPv4Addr]] = {}
    for router in routers:
        table: dict[IPv4Net, IPv4Addr] = {}
        for dest in segments:
            if router in dest.addresses or (router, dest.network) not in dist:
                continue  # attached (the kernel's connected route) or unreachable
            want = dist[router, dest.network] - 1
            candidates = sorted(
                (n, shared.network.network_address, shared.addresses[n])
                for shared in segments if router in shared.addresses
                for n in routers if n != router and n in shared.addresses and dist.get((n, dest.network)) == want)
            table[dest.network] = candidates[0][2]
        router_routes[router] = table
    gateways: dict[str, IPv4Addr] = {}
    for name in [n.name for n in topology.nodes] + [h.name for h in topology.hosts]:
        for end in topology.interfaces_of(name):
            seg = next(s for s in segments if end.address is not None and s.network == end.address.network)
            on_segment = [r for r in routers if r in seg.addresses]
            if not on_segment:
                continue
            if seg.switch is not None:
                gateways[name] = seg.network.network_address + 1
            else:
                gateways[name] = seg.addresses[on_segment[0]]
            break
    return RoutingPlan(tuple(segments), router_routes, gateways)
