"""host-gw pod routing (flannel's host-gw backend): a route to every other node's
pod CIDR via that node's underlay IP, in each node, on external hosts and on routers.

``desired_routes`` is pure; ``HostGwAgent`` watches Nodes through the API and
keeps one namespace's proto-77 routes equal to it. The node agents run one per
node; the daemon runs one per external host and one per router (the emulated
"cloud routes" / route reflector), so clients outside the cluster and nodes
behind other routers can reach pod IPs directly.

Nodes and external hosts only route to nodes on a directly connected subnet:
host-gw needs L2 adjacency, and everything else goes to their default gateway.
A router routes every node's pod CIDR: via the node when it is on an attached
segment, else via the next router towards the node's segment (``remote``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from netk8s.api import meta
from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.kernel.routes import sync_routes

log = logging.getLogger(__name__)


def desired_routes(nodes: list[dict], own_node: str | None, local_subnets: list[ipaddress.IPv4Network],
                   remote: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address] | None = None,
                   ) -> dict[ipaddress.IPv4Network, ipaddress.IPv4Address]:
    """Pod CIDR -> gateway for every other node: adjacent nodes directly; with ``remote`` (underlay
    network -> next-hop router), nodes on those networks via that router; other nodes not at all."""
    routes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
    for node in nodes:
        if meta.name_of(node) == own_node:
            continue
        cidr = (node.get("spec") or {}).get("podCIDR")
        ip = meta.node_internal_ip(node)
        if not cidr or not ip:
            continue
        node_ip = ipaddress.IPv4Address(ip)
        if any(node_ip in subnet for subnet in local_subnets):
            routes[ipaddress.IPv4Network(cidr)] = node_ip
            continue
        for network, via in (remote or {}).items():
            if node_ip in network:
                routes[ipaddress.IPv4Network(cidr)] = via
                break
    return routes


class HostGwAgent(Controller):
    name = "hostgw"

    def __init__(self, client: ApiClient, netns_name: str, own_node: str | None,
                 local_subnets: list[ipaddress.IPv4Network],
                 remote: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address] | None = None) -> None:
        super().__init__(client)
        self.netns_name = netns_name
        self.own_node = own_node
        self.local_subnets = local_subnets
        self.remote = dict(remote or {})
        self.name = f"hostgw-{netns_name}"

    def setup(self) -> None:
        self.nodes = self.informer(NODES)
        # Every Node event re-syncs, status heartbeats included: that also repairs routes someone deleted.
        self.nodes.add_handler(lambda e, o, n: self.queue.add("routes"))

    def sync(self, key: str) -> None:
        sync_routes(self.netns_name, desired_routes(self.nodes.list(), self.own_node, self.local_subnets,
                                                    self.remote))
