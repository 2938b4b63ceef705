"""The emulated cloud load balancer: ingress IPs for Services of type LoadBalancer.

What a cloud provider's service controller (or MetalLB's controller on bare
metal, as in kind) does: every Service of type LoadBalancer gets one address
from the topology's load balancer pool (``Topology.lb_pool()``, 172.18.255.200-250
by default), written to ``status.loadBalancer.ingress`` as
``[{"ip": ..., "ipMode": "VIP"}]`` through the status subresource. Making the
address reachable on the underlay is ``netk8s.emulator.announce``'s job; the
node's kube-proxy rules DNAT it.

Semantics follow MetalLB's controller:

- addresses are handed out lowest first; ``spec.loadBalancerIP`` is honoured
  when it is in the pool and free, otherwise the Service stays pending with a
  ``Warning AllocationFailed`` event;
- when the pool is exhausted the Service stays pending (no ingress) with
  ``Warning AllocationFailed`` "Failed to allocate IP for "ns/name": no IP
  addresses available in the load balancer pool <first>-<last>", and gets an
  address as soon as another Service releases one;
- an assignment is announced with ``Normal IPAllocated`` "Assigned IP ["<ip>"]";
- the address is released when the Service is deleted or stops being of type
  LoadBalancer (its ingress status is then cleared);
- Services naming a ``spec.loadBalancerClass`` belong to another implementation
  and are left alone.

Allocations are rebuilt from the Services' existing status on start, so a
restarted controller keeps every address where it is. ``LoadBalancerPool`` is
the pure allocator.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address

from netk8s.api import meta
from netk8s.api.resources import SERVICES
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, WARNING, EventRecorder
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.errors import ValidationError

log = logging.getLogger(__name__)

IP_MODE_VIP = "VIP"
REASON_ALLOCATED = "IPAllocated"
REASON_FAILED = "AllocationFailed"


class PoolError(Exception):
    """An address could not be assigned; the message says why (used in the AllocationFailed event)."""


@dataclass(frozen=True)
class AddressRange:
    """An inclusive IPv4 address range ``first-last``."""

    first: IPv4Address
    last: IPv4Address

    def __post_init__(self) -> None:
        if int(self.last) < int(self.first):
            raise ValidationError("loadBalancerPool", f"range {self} ends before it starts")

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and int(self.first) <= int(ip) <= int(self.last)

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class LoadBalancerPool:
    """Which Service (``namespace/name``) holds which pool address. Pure; not thread-safe by itself."""

    def __init__(self, first: IPv4Address, last: IPv4Address) -> None:
        self.range = AddressRange(first, last)
        self._by_ip: dict[IPv4Address, str] = {}
        self._by_key: dict[str, IPv4Address] = {}

    @property
    def free(self) -> int:
        return len(self.range) - len(self._by_ip)

    def ip_of(self, key: str) -> IPv4Address | None:
        return self._by_key.get(key)

    def owner(self, ip: IPv4Address) -> str | None:
        return self._by_ip.get(ip)

    def assign(self, key: str, ip: IPv4Address) -> IPv4Address:
        """Give ``ip`` to ``key`` (its previous address, if any, is released)."""
        if ip not in self.range:
            raise PoolError(f'"{ip}" is not in the load balancer pool {self.range}')
        holder = self._by_ip.get(ip)
        if holder is not None and holder != key:
            raise PoolError(f'"{ip}" is already in use by {holder}')
        self.release(key)
        self._by_ip[ip] = key
        self._by_key[key] = ip
        return ip

    def allocate(self, key: str) -> IPv4Address:
        """``key``'s address, or the lowest free one (MetalLB walks its ranges from the start)."""
        held = self._by_key.get(key)
        if held is not None:
            return held
        for value in range(int(self.range.first), int(self.range.last) + 1):
            ip = IPv4Address(value)
            if ip not in self._by_ip:
                return self.assign(key, ip)
        raise PoolError(f"no IP addresses available in the load balancer pool {self.range}")

    def release(self, key: str) -> IPv4Address | None:
        ip = self._by_key.pop(key, None)
        if ip is not None:
            self._by_ip.pop(ip, None)
        return ip


def wants_address(svc: dict) -> bool:
    """A Service this controller serves: type LoadBalancer, no other loadBalancerClass, not being deleted."""
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass"):
        return False
    return not (svc.get("metadata") or {}).get("deletionTimestamp")


def requested_ip(svc: dict) -> IPv4Address | None:
    """``spec.loadBalancerIP`` (deprecated in Kubernetes, still honoured by MetalLB and by us)."""
    raw = (svc.get("spec") or {}).get("loadBalancerIP")
    if not raw:
        return None
    try:
        return IPv4Address(raw)
    except ValueError:
        raise PoolError(f'invalid spec.loadBalancerIP "{raw}"') from None


def ingress_ips(svc: dict) -> list[IPv4Address]:
    out = []
    for entry in (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []):
        try:
            out.append(IPv4Address((entry or {}).get("ip") or ""))
        except ValueError:
            continue
    return out


def ingress_for(ip: IPv4Address) -> list[dict]:
    return [{"ip": str(ip), "ipMode": IP_MODE_VIP}]


class LoadBalancerController(Controller):
    name = "loadbalancer-controller"

    def __init__(self, client: ApiClient, pool: tuple[IPv4Address, IPv4Address]) -> None:
        super().__init__(client)
        self.pool = LoadBalancerPool(ipaddress.IPv4Address(pool[0]), ipaddress.IPv4Address(pool[1]))
        self._lock = threading.Lock()
        self._seeded = False
        self._pending: set[str] = set()  # LoadBalancer Services that got no address yet
        self._services: Informer | None = None
        self.recorder: EventRecorder | None = None

    def setup(self) -> None:
        self._services = self.informer(SERVICES)
        self._services.add_handler(self._on_service)

    def start(self) -> None:
        self.recorder = EventRecorder(self.client, "loadbalancer-controller")
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.recorder is not None:
            self.recorder.stop()

    def _on_service(self, event: str, old: dict | None, new: dict | None) -> None:
        self.queue.add(meta.key_of(new if new is not None else old or {}))

    def _seed(self) -> None:
        """Take back the addresses Services already show, oldest Service first (a clash goes to the elder)."""
        assert self._services is not None
        services = sorted((s for s in self._services.list() if wants_address(s)),
                          key=lambda s: ((s.get("metadata") or {}).get("creationTimestamp") or "", meta.key_of(s)))
        for svc in services:
            for ip in ingress_ips(svc)[:1]:
                try:
                    self.pool.assign(meta.key_of(svc), ip)
                except PoolError as exc:
                    log.info("service %s: its status address cannot be kept (%s); it gets a new one",
                             meta.key_of(svc), exc)
        self._seeded = True

    def sync(self, key: str) -> None:
        assert self._services is not None
        svc = self._services.get(key)
        with self._lock:
            if not self._seeded:
                self._seed()
            if svc is None or not wants_address(svc):
                released = self.pool.release(key)
                self._pending.discard(key)
            else:
                released = None
        if released is not None:
            log.info("service %s: released %s", key, released)
            self._retry_pending()
        if svc is None:
            return
        if not wants_address(svc):
            if released is not None or self._shows_pool_address(svc):
                self._write_ingress(svc, None)
            return
        self._converge(key, svc)

    def _shows_pool_address(self, svc: dict) -> bool:
        spec = svc.get("spec") or {}
        if spec.get("loadBalancerClass"):
            return False  # another implementation's status: not ours to clear
        return any(ip in self.pool.range for ip in ingress_ips(svc))

    def _converge(self, key: str, svc: dict) -> None:
        allocated = False
        try:
            wanted = requested_ip(svc)
            with self._lock:
                current = self.pool.ip_of(key)
                if current is None or (wanted is not None and wanted != current):
                    ip = self.pool.assign(key, wanted) if wanted is not None else self.pool.allocate(key)
                    allocated = True
                else:
                    ip = current
                self._pending.discard(key)
        except PoolError as exc:
            with self._lock:
                self._pending.add(key)
                dropped = self.pool.release(key)
            self._event(svc, WARNING, REASON_FAILED, f'Failed to allocate IP for "{key}": {exc}')
            log.info("service %s: no load balancer address: %s", key, exc)
            if ingress_ips(svc):
                self._write_ingress(svc, None)
            if dropped is not None:
                self._retry_pending()
            return
        if ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") != ingress_for(ip):
            self._write_ingress(svc, ip)
        if allocated:
            log.info("service %s: assigned %s", key, ip)
            self._event(svc, NORMAL, REASON_ALLOCATED, f'Assigned IP ["{ip}"]')

    def _write_ingress(self, svc: dict, ip: IPv4Address | None) -> None:
        body = {"status": {"loadBalancer": {"ingress": ingress_for(ip) if ip is not None else None}}}
        with ignore_not_found():
            self.client.patch(SERVICES, meta.name_of(svc), body, meta.namespace_of(svc), subresource="status")

    def _retry_pending(self) -> None:
        with self._lock:
            pending = sorted(self._pending)
        for key in pending:
            self.queue.add(key)

    def _event(self, svc: dict, event_type: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event({"kind": "Service", "apiVersion": "v1", **svc}, event_type, reason, message)
