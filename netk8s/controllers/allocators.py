"""Pure allocators: Service ClusterIPs, NodePorts and node pod CIDRs.

The API server allocates ClusterIPs and NodePorts while it admits a Service
(as kube-apiserver's service registry does) and the node IPAM controller hands
each node a pod CIDR. Each allocator is rebuilt from the objects in the store
on start (``occupy``) and raises ``AllocationError`` with Kubernetes' wording.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Iterable


class AllocationError(Exception):
    """``reason`` is "Invalid" (bad request) or "Full" (range exhausted)."""

    def __init__(self, message: str, reason: str = "Invalid") -> None:
        super().__init__(message)
        self.reason = reason


class _IntRange:
    """Allocation state of the integers ``first..last``: what both Service allocators share.

    Only in-range values are kept, so ``free`` is a subtraction, not a scan.
    """

    def __init__(self, first: int, last: int, rng: random.Random | None) -> None:
        self.first = first
        self.last = last
        self._used: set[int] = set()
        self._rng = rng or random.Random()

    @property
    def size(self) -> int:
        return max(self.last - self.first + 1, 0)

    @property
    def free(self) -> int:
        return self.size - len(self._used)

    def contains(self, value: int) -> bool:
        return self.first <= value <= self.last

    def occupy(self, value: int) -> None:
        if self.contains(value):
            self._used.add(value)

    def take(self, value: int, what: str) -> None:
        """Allocate ``value`` (in range) or raise "provided ``what`` is already allocated"."""
        if value in self._used:
            raise AllocationError(f"provided {what} is already allocated")
        self._used.add(value)

    def pick(self) -> int:
        """A free value: random probing like kube-apiserver's bitmap allocator, then a scan."""
        if self.free <= 0:
            raise AllocationError("range is full", reason="Full")
        for _ in range(64):
            candidate = self._rng.randint(self.first, self.last)
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate
        for candidate in range(self.first, self.last + 1):
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate
        raise AllocationError("range is full", reason="Full")

    def release(self, value: int) -> None:
        self._used.discard(value)


class IPAllocator:
    """Addresses of one subnet, minus the network and broadcast addresses and
    any reserved ones (the first host address is the ``kubernetes`` Service's)."""

    def __init__(self, network: ipaddress.IPv4Network, reserved: Iterable[ipaddress.IPv4Address] = (),
                 rng: random.Random | None = None) -> None:
        self.network = network
        self._range = _IntRange(int(network.network_address) + 1, int(network.broadcast_address) - 1, rng)
        for ip in reserved:
            self._range.occupy(int(ip))

    @property
    def size(self) -> int:
        return self._range.size

    @property
    def free(self) -> int:
        return self._range.free

    def contains(self, ip: ipaddress.IPv4Address) -> bool:
        return self._range.contains(int(ip))

    def occupy(self, ip: ipaddress.IPv4Address) -> None:
        """Mark an address allocated without checks (rebuilding from the store)."""
        self._range.occupy(int(ip))

    def allocate(self, ip: ipaddress.IPv4Address | None = None) -> ipaddress.IPv4Address:
        if ip is None:
            return ipaddress.IPv4Address(self._range.pick())
        if not self.contains(ip):
            raise AllocationError(f"provided IP is not in the valid range. The range of valid IPs is {self.network}")
        self._range.take(int(ip), "IP")
        return ip

    def release(self, ip: ipaddress.IPv4Address) -> None:
        self._range.release(int(ip))


class PortAllocator:
    def __init__(self, first: int, last: int, rng: random.Random | None = None) -> None:
        self.first = first
        self.last = last
        self._range = _IntRange(first, last, rng)

    def occupy(self, port: int) -> None:
        self._range.occupy(port)

    def allocate(self, port: int | None = None) -> int:
        if port is None:
            return self._range.pick()
        if not self._range.contains(port):
            raise AllocationError(
                f"provided port is not in the valid range. The range of valid ports is {self.first}-{self.last}")
        self._range.take(port, "port")
        return port

    def release(self, port: int) -> None:
        self._range.release(port)


class CIDRAllocator:
    """Sequential per-node subnets of ``prefixlen`` carved out of the pod subnet,
    like kube-controller-manager's range allocator (first node gets .0.0/24)."""

    def __init__(self, network: ipaddress.IPv4Network, prefixlen: int = 24) -> None:
        if prefixlen < network.prefixlen:
            raise AllocationError(f"node CIDR size /{prefixlen} is larger than the pod subnet {network}")
        self.network = network
        self.prefixlen = prefixlen
        self._used: set[ipaddress.IPv4Network] = set()

    def occupy(self, cidr: ipaddress.IPv4Network) -> None:
        self._used.add(cidr)

    def allocate(self) -> ipaddress.IPv4Network:
        for subnet in self.network.subnets(new_prefix=self.prefixlen):
            if subnet not in self._used:
                self._used.add(subnet)
                return subnet
        raise AllocationError(f"no remaining CIDRs of size /{self.prefixlen} in {self.network}", reason="Full")

    def release(self, cidr: ipaddress.IPv4Network) -> None:
        self._used.discard(cidr)
