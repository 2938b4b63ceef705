"""host-gw pod routing (flannel's host-gw backend): a route to every other node's
pod CIDR via that node's underlay IP, in each node and on external hosts.

``desired_routes`` is pure; ``HostGwAgent`` watches Nodes through the API and
keeps one namespace's routes equal to it. The node agents run one per node;
the emulator runs one per external host (the emulated "cloud route
controller"), so clients outside the cluster can reach pod IPs directly.
Only nodes on a directly connected subnet get a route: host-gw needs L2
adjacency.
"""

from __future__ import annotations

import ipaddress
import logging

from netk8s.api import meta
from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.kernel.routes import sync_routes

log = logging.getLogger(__name__)



def desired_routes(nodes: list[dict], own_node: str | None,
                   local_subnets: list[ipaddress.IPv4Network]) -> dict[ipaddress.IPv4Network, ipaddress.IPv4Address]:
    routes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
    for node in nodes:
        if meta.name_of(node) == own_node:
            continue
        cidr = (node.get("spec") or {}).get("podCIDR")
        ip = meta.node_internal_ip(node)
        if not cidr or not ip:
            continue
        gateway = ipaddress.IPv4Address(ip)
        if not any(gateway in subnet for subnet in local_subnets):
            continue
        routes[ipaddress.IPv4Network(cidr)] = gateway
    return routes


class HostGwAgent(Controller):
    name = "hostgw"

    def __init__(self, client: ApiClient, netns_name: str, own_node: str | None,
                 local_subnets: list[ipaddress.IPv4Network]) -> None:
        super().__init__(client)
        self.netns_name = netns_name
        self.own_node = own_node
        self.local_subnets = local_subnets
        self.name = f"hostgw-{netns_name}"

    def setup(self) -> None:
        self.nodes = self.informer(NODES)
        self.nodes.add_handler(lambda e, o, n: self.queue.add("routes"))

    def sync(self, key: str) -> None:
        sync_routes(self.netns_name, desired_routes(self.nodes.list(), self.own_node, self.local_subnets))
