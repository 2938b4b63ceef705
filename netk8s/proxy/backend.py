"""The mode-neutral contract between the proxier (sync loop) and a proxy mode (iptables, nftables).

The ``Proxier`` (``netk8s.proxy.proxier``) owns *when* to sync and *what*
changed; a ``RuleSet`` owns *how* one mode renders and applies rules in one
node namespace. Each sync the proxier hands the ruleset a ``ProxyState`` (all
service ports and their endpoints) and either asks for a full sync or names
the services whose inputs changed since the last successful sync.

Contract of ``RuleSet.sync(state, full, changed)``:

* ``full=True``: render everything; read the kernel's current ruleset as
  needed; remove every stale object the mode owns (chains of services that are
  gone, chains left by a previous run); restore jump rules / base chains
  someone removed. The proxier asks for a full sync on the first sync, after
  any failed sync, and periodically (``sync_period``).
* ``full=False`` (partial): ``changed`` holds the ``ServiceKey``s
  (``"namespace/name"``) whose service ports or endpoints differ from the last
  successful sync (services added, changed or deleted). Rewrite the
  top-level structures (iptables: KUBE-SERVICES, KUBE-NODEPORTS,
  KUBE-EXTERNAL-SERVICES, ...; nftables: the service maps/sets) plus the
  per-service objects of the ``changed`` services only; leave every other
  per-service object untouched and unmentioned. Objects a changed service no
  longer uses (an old endpoint chain, every chain of a deleted service) are
  removed in the same transaction. A partial sync need not read the kernel.
* Raise (``KernelError`` for a failed apply) without updating the ruleset's
  memory of what is installed; the proxier then forces ``full=True`` next time.
* Return a ``SyncResult``: whether it was full, the exact payload applied and
  counts of what it wrote, for tests, ``netk8s`` status output and benchmarks.

``RuleSet.dump()`` returns the mode's current kernel ruleset as text
(``iptables-save`` output / ``nft list table ...``), which the mode's tracer
(``netk8s.proxy.trace.trace_iptables`` / ``netk8s.proxy.nftables_trace.trace_nftables``)
accepts; ``RuleSet.trace`` runs that tracer over ``dump()``.

Implementations: ``netk8s.proxy.iptables.IptablesRuleSet`` (pure rendering
and bookkeeping; the kernel side is a ``RuleBackend`` such as
``netk8s.kernel.iptables.NetnsIptables``) and the nftables mode's ruleset in
``netk8s.proxy.nftables``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol, runtime_checkable

from netk8s.proxy.model import Endpoint, ServicePort
from netk8s.proxy.trace import Packet, TraceResult
from netk8s.topology.schema import ProxyMode

__all__ = [
    "ProxyMode",
    "ServiceKey",
    "group_ports",
    "port_order",
    "service_key",
    "service_order",
    "ProxyState",
    "SyncResult",
    "RuleSet",
    "RuleBackend",
    "changed_services",
]

ServiceKey = str  # "namespace/name": the unit of change for partial syncs (kube-proxy's NamespacedName)


def service_key(sp: ServicePort) -> ServiceKey:
    """The ``namespace/name`` of the service a port belongs to."""
    return f"{sp.namespace}/{sp.name}"


def _spn_service(service_port_name: str) -> ServiceKey:
    # "ns/name:port" or "ns/name" -> "ns/name"
    return service_port_name.split(":", 1)[0]


@dataclass(frozen=True)
class ProxyState:
    """Everything one sync renders: service ports (sorted) and endpoints per service port name."""

    service_ports: tuple[ServicePort, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, service_ports: Sequence[ServicePort],
           endpoints: Mapping[str, Sequence[Endpoint]]) -> "ProxyState":
        ports = tuple(sorted(set(service_ports), key=port_order))
        return cls(ports, {spn: tuple(eps) for spn, eps in endpoints.items()})

    def ports_of(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, list[ServicePort]]:
        """The ports of each of ``keys`` that has any, found by bisection (``service_ports`` is sorted).

        O(k log n): a partial sync at 10,000 services must not scan them all.
        """
        out: dict[ServiceKey, list[ServicePort]] = {}
        for key in keys:
            namespace, name = key.split("/", 1)
            i = bisect.bisect_left(self.service_ports, (namespace, name), key=lambda p: (p.namespace, p.name))
            while i < len(self.service_ports) and (self.service_ports[i].namespace,
                                                   self.service_ports[i].name) == (namespace, name):
                out.setdefault(key, []).append(self.service_ports[i])
                i += 1
        return out

    def by_service(self) -> dict[ServiceKey, tuple[tuple[ServicePort, ...], tuple[tuple[str, tuple[Endpoint, ...]],
                                                                              ...]]]:
        """Per service: its ports and the endpoints of its port names (the inputs a partial sync compares)."""
        ports: dict[ServiceKey, list[ServicePort]] = {}
        for sp in self.service_ports:
            ports.setdefault(service_key(sp), []).append(sp)
        eps: dict[ServiceKey, list[tuple[str, tuple[Endpoint, ...]]]] = {}
        for spn in sorted(self.endpoints):
            eps.setdefault(_spn_service(spn), []).append((spn, tuple(self.endpoints[spn])))
        return {key: (tuple(ports.get(key, ())), tuple(eps.get(key, ()))) for key in set(ports) | set(eps)}


def service_order(key: ServiceKey) -> tuple[str, ...]:
    """Services are laid out by (namespace, name), the order of their sorted ports."""
    return tuple(key.split("/", 1))


def port_order(sp: ServicePort) -> tuple[str, str, str, str]:
    """The layout order of service ports: namespace, service name, port name, protocol."""
    return (sp.namespace, sp.name, sp.port_name, sp.protocol.value)


def group_ports(service_ports: Iterable[ServicePort]) -> dict[ServiceKey, list[ServicePort]]:
    """Service ports (de-duplicated) by service, in layout order (``port_order``)."""
    grouped: dict[ServiceKey, list[ServicePort]] = {}
    for sp in sorted(set(service_ports), key=port_order):
        grouped.setdefault(service_key(sp), []).append(sp)
    return grouped


def changed_services(old: ProxyState | None, new: ProxyState) -> frozenset[ServiceKey]:
    """Services whose ports or endpoints differ between two states (added and removed ones included)."""
    if old is None:
        return frozenset(new.by_service())
    before, after = old.by_service(), new.by_service()
    return frozenset(key for key in set(before) | set(after) if before.get(key) != after.get(key))


@dataclass(frozen=True)
class SyncResult:
    """What one sync applied."""

    mode: ProxyMode
    full: bool
    payload: str  # the exact text applied (iptables-restore input / nft -f script)
    services: int  # service ports rendered in total (the whole state)
    changed: frozenset[ServiceKey] = frozenset()  # services whose objects were rewritten (all of them when full)
    objects_written: int = 0  # per-service chains (iptables) / chains+maps (nft) declared in the payload
    objects_deleted: int = 0  # stale per-service objects removed

    @property
    def payload_bytes(self) -> int:
        return len(self.payload.encode())


@runtime_checkable
class RuleSet(Protocol):
    """One node's kube-proxy rules in one mode. See the module docstring for the sync contract."""

    mode: ProxyMode

    def sync(self, state: ProxyState, full: bool, changed: frozenset[ServiceKey]) -> SyncResult:
        """Apply ``state``: everything when ``full``, else top-level objects + the ``changed`` services."""
        ...

    def dump(self) -> str:
        """The mode's rules as the kernel has them now, in the text form the mode's tracer reads."""
        ...

    def trace(self, packet: Packet, local_addresses: set[IPv4Address]) -> TraceResult:
        """Trace ``packet`` through ``dump()`` with the mode's tracer."""
        ...


class RuleBackend(Protocol):
    """The kernel side of the iptables mode: read and apply one namespace's tables (fakes in tests)."""

    def save(self) -> str:
        """``iptables-save`` output (all tables)."""
        ...

    def restore(self, text: str) -> None:
        """Apply ``text`` with ``iptables-restore --noflush``; raise ``KernelError`` on failure."""
        ...
