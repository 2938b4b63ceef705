"""ClusterIP, NodePort and pod CIDR allocators."""

from __future__ import annotations

import ipaddress
import random

import pytest

from netk8s.controllers.allocators import (
    AllocationError,
    CIDRAllocator,
    IPAllocator,
    PortAllocator,
)


def test_ip_allocator_never_hands_out_reserved_network_or_broadcast() -> None:
    net = ipaddress.IPv4Network("10.96.0.0/29")
    alloc = IPAllocator(net, reserved=[ipaddress.IPv4Address("10.96.0.1")], rng=random.Random(1))
    got = {alloc.allocate() for _ in range(5)}
    assert got == {ipaddress.IPv4Address(f"10.96.0.{i}") for i in range(2, 7)}
    with pytest.raises(AllocationError, match="range is full"):
        alloc.allocate()


def test_ip_allocator_specific_address_errors_use_kubernetes_wording() -> None:
    alloc = IPAllocator(ipaddress.IPv4Network("10.96.0.0/16"))
    alloc.allocate(ipaddress.IPv4Address("10.96.0.10"))
    with pytest.raises(AllocationError, match="provided IP is already allocated"):
        alloc.allocate(ipaddress.IPv4Address("10.96.0.10"))
    with pytest.raises(AllocationError, match="provided IP is not in the valid range. The range of valid IPs is "
                                              "10.96.0.0/16"):
        alloc.allocate(ipaddress.IPv4Address("10.97.0.1"))
    alloc.release(ipaddress.IPv4Address("10.96.0.10"))
    assert alloc.allocate(ipaddress.IPv4Address("10.96.0.10")) == ipaddress.IPv4Address("10.96.0.10")


def test_port_allocator() -> None:
    alloc = PortAllocator(30000, 30002)
    assert alloc.allocate(30001) == 30001
    with pytest.raises(AllocationError, match="provided port is already allocated"):
        alloc.allocate(30001)
    with pytest.raises(AllocationError, match="valid range. The range of valid ports is 30000-30002"):
        alloc.allocate(80)
    assert {alloc.allocate(), alloc.allocate()} == {30000, 30002}
    with pytest.raises(AllocationError, match="range is full"):
        alloc.allocate()


def test_cidr_allocator_is_sequential_and_reuses_released() -> None:
    alloc = CIDRAllocator(ipaddress.IPv4Network("10.244.0.0/22"), 24)
    alloc.occupy(ipaddress.IPv4Network("10.244.1.0/24"))
    assert alloc.allocate() == ipaddress.IPv4Network("10.244.0.0/24")
    assert alloc.allocate() == ipaddress.IPv4Network("10.244.2.0/24")
    assert alloc.allocate() == ipaddress.IPv4Network("10.244.3.0/24")
    with pytest.raises(AllocationError):
        alloc.allocate()
    alloc.release(ipaddress.IPv4Network("10.244.2.0/24"))
    assert alloc.allocate() == ipaddress.IPv4Network("10.244.2.0/24")
