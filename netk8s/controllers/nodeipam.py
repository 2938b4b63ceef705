"""Node IPAM controller: give every node a pod CIDR from the cluster's pod subnet.

Like kube-controller-manager's range allocator: sequential /24s (the first
node to register gets x.y.0.0/24), recorded in ``spec.podCIDR`` and
``spec.podCIDRs``; rebuilt from the nodes' existing CIDRs on start and
released when a node is deleted.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

from netk8s.api import meta
from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.controllers.allocators import CIDRAllocator
from netk8s.errors import ApiError

log = logging.getLogger(__name__)



class NodeIpamController(Controller):
    name = "nodeipam-controller"

    def __init__(self, client: ApiClient, pod_subnet: ipaddress.IPv4Network, node_prefix: int = 24) -> None:
        super().__init__(client)
        self.allocator = CIDRAllocator(pod_subnet, node_prefix)
        self._lock = threading.Lock()
        self._seeded = False

    def setup(self) -> None:
        self.nodes = self.informer(NODES)
        self.nodes.add_handler(self._on_node)

    def _on_node(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is None and old is not None:
            cidr = (old.get("spec") or {}).get("podCIDR")
            if cidr:
                with self._lock:
                    self.allocator.release(ipaddress.IPv4Network(cidr))
            return
        if new is not None:
            self.queue.add(meta.name_of(new))

    def _seed(self) -> None:
        # Before the first allocation, mark every CIDR nodes already hold.
        for node in self.nodes.list():
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr:
                self.allocator.occupy(ipaddress.IPv4Network(cidr))
        self._seeded = True

    def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None or (node.get("spec") or {}).get("podCIDR"):
            return
        with self._lock:
            if not self._seeded:
                self._seed()
            cidr = self.allocator.allocate()
        try:
            self.client.patch(NODES, key, {"spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]}})
        except ApiError:
            with self._lock:
                self.allocator.release(cidr)
            raise
        log.info("node %s: podCIDR %s", key, cidr)
