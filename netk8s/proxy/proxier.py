"""The per-node kube-proxy agent: watches the API and drives one mode's ``RuleSet`` with full and partial syncs.

A ``Proxier`` watches Services and EndpointSlices in all namespaces through the
API server and keeps one node namespace's rules in step with them. Every
change schedules a sync; bursts coalesce and syncs are spaced at least
``min_sync_interval`` apart (kube-proxy's minSyncPeriod).

Each sync builds a ``ProxyState`` from the informer caches and finds the
services whose inputs differ from what the last successful sync applied (see
below). It then calls ``RuleSet.sync`` (contract in ``netk8s.proxy.backend``):

* **full** on the first sync, after any failed sync (a failed restore leaves
  the kernel in an unknown state) and when ``sync_period`` has passed since
  the last full sync (kube-proxy's periodic full resync, which also repairs
  rules someone else removed);
* **partial** otherwise: only the changed services' own chains (plus the
  top-level chains) are written;
* nothing at all when no service changed and no full sync is due.

Building the state costs O(change), not O(services): the informer
handlers record which services' objects changed (a Service, or an
EndpointSlice labelled with its name), and each sync converts only those
(``ServiceInputs``) and reuses the rest; ``changed`` is computed the same way.
At 10,000 services rebuilding everything and diffing two whole states
(``current_state`` and ``backend.changed_services``, kept as the reference
that tests compare with) took ~0.5 s per sync.

Counters for tests, status and benchmarks: ``sync_count`` (successful syncs),
``full_sync_count``, ``partial_sync_count``, ``skipped_sync_count``,
``failed_sync_count``, ``last_payload_bytes`` and ``last_result``;
``last_sync_time`` (Unix time of the last successful sync, skipped ones
included: the rules were confirmed current) feeds the health server.

``after_sync``: hooks ``(old_state, new_state, changed)`` run, in order, after
every sync that applied rules (the conntrack clean-up of removed UDP
endpoints, the service health checks); ``changed`` names the services whose
inputs differ from what the previous sync applied. A hook's errors are logged
and fail neither the sync nor the other hooks.

The mode is chosen by passing a ``ruleset``; without one the proxier runs the
iptables mode (``IptablesRuleSet``) on ``backend`` or, by default, on the
node namespace's real iptables (``NetnsIptables``).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable, Iterable, Mapping, Sequence

from netk8s.api import meta
from netk8s.api.resources import ResourceType, by_plural
from netk8s.client.controller import Controller
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient
from netk8s.kernel.iptables import NetnsIptables
from netk8s.proxy.backend import ProxyState, RuleBackend, RuleSet, ServiceKey, SyncResult, service_order
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import (
    SERVICE_NAME_LABEL,
    Endpoint,
    ProxyConfig,
    ServicePort,
    build_endpoints,
    build_service_ports,
)

__all__ = ["Proxier", "RuleBackend", "RuleSet", "ServiceInputs"]

log = logging.getLogger(__name__)

_SYNC_KEY = "sync"

# A hook run after each sync that applied rules: (state applied before, state applied now, changed services).
AfterSync = Callable[[ProxyState | None, ProxyState, frozenset[ServiceKey]], object]


def _resource(group: str, plural: str) -> ResourceType:
    resource = by_plural(group, plural)
    if resource is None:
        raise LookupError(f"resource {plural}.{group or 'core'} is not in netk8s.api.resources")
    return resource


Inputs = tuple[tuple[ServicePort, ...], tuple[tuple[str, tuple[Endpoint, ...]], ...]]


@dataclass
class ServiceInputs:
    """The rule inputs per service (its ports, its endpoints per port name), kept between syncs.

    ``state`` assembles a ``ProxyState`` equal to what ``ProxyState.of`` of
    everything gives (ports sorted by namespace, name, port name, protocol),
    without sorting or converting the services that did not change.
    """

    ports: dict[ServiceKey, tuple[ServicePort, ...]] = field(default_factory=dict)
    endpoints: dict[ServiceKey, dict[str, tuple[Endpoint, ...]]] = field(default_factory=dict)
    _order: list[tuple[str, ...]] = field(default_factory=list)  # (namespace, name) of services with ports
    _flat: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)  # every service's endpoints

    def inputs(self, key: ServiceKey) -> Inputs:
        return self.ports.get(key, ()), tuple(sorted(self.endpoints.get(key, {}).items()))

    def set(self, key: ServiceKey, ports: Iterable[ServicePort], endpoints: Mapping[str, Iterable[Endpoint]]) -> None:
        """Replace one service's inputs (no ports and no endpoints: forget it)."""
        new_ports = tuple(sorted(set(ports), key=lambda p: (p.port_name, p.protocol.value)))
        new_eps = {spn: tuple(eps) for spn, eps in endpoints.items()}
        order = service_order(key)
        had = key in self.ports
        if new_ports and not had:
            bisect.insort(self._order, order)
        elif had and not new_ports:
            del self._order[bisect.bisect_left(self._order, order)]
        if new_ports:
            self.ports[key] = new_ports
        else:
            self.ports.pop(key, None)
        for spn in self.endpoints.pop(key, {}):
            self._flat.pop(spn, None)
        if new_eps:
            self.endpoints[key] = new_eps
            self._flat.update(new_eps)

    def state(self) -> ProxyState:
        ports = tuple(chain.from_iterable(self.ports["/".join(order)] for order in self._order))
        return ProxyState(ports, dict(self._flat))


def _slice_service(obj: dict) -> ServiceKey | None:
    service = meta.labels_of(obj).get(SERVICE_NAME_LABEL)
    return f"{meta.namespace_of(obj)}/{service}" if service else None


class Proxier(Controller):
    name = "kube-proxy"
    workers = 1  # one sync at a time: partial syncs build on the previous one

    def __init__(self, client: ApiClient, config: ProxyConfig, netns_name: str, min_sync_interval: float = 0.05,
                 backend: RuleBackend | None = None, sync_period: float = 30.0,
                 ruleset: RuleSet | None = None,
                 after_sync: AfterSync | Sequence[AfterSync] | None = None) -> None:
        super().__init__(client)
        self.name = f"kube-proxy-{config.node_name}"
        self.config = config
        self.netns_name = netns_name
        self.min_sync_interval = min_sync_interval
        self.sync_period = sync_period
        if ruleset is None:
            ruleset = IptablesRuleSet(backend if backend is not None else NetnsIptables(netns_name), config)
        self.ruleset: RuleSet = ruleset
        self.after_sync: tuple[AfterSync, ...] = (
            () if after_sync is None else (after_sync,) if callable(after_sync) else tuple(after_sync))
        self.sync_count = 0
        self.full_sync_count = 0
        self.partial_sync_count = 0
        self.skipped_sync_count = 0  # syncs with nothing changed and no full sync due
        self.failed_sync_count = 0
        self.last_sync_error: str | None = None  # message of the latest attempt's failure; None after a success
        self.last_result: SyncResult | None = None
        self.last_payload_bytes = 0
        self.last_sync_time: float | None = None  # time.time() of the last successful (or skipped) sync
        self._applied: ProxyState | None = None  # the state the kernel has, after the last successful sync
        self._need_full = True
        self._last_full = float("-inf")
        self._cond = threading.Condition()
        self._generation = 0  # bumped by every informer event
        self._synced_generation = -1  # generation the last successful sync had seen
        self._last_sync_end = float("-inf")
        self._periodic_due = float("-inf")
        self._services: Informer | None = None
        self._slices: Informer | None = None
        self._inputs: ServiceInputs | None = None  # None: rebuild from the informers at the next sync
        self._dirty: set[ServiceKey] = set()  # services whose objects changed since they were converted
        self._slices_of: dict[ServiceKey, set[str]] = {}  # EndpointSlice keys per service, from their labels
        self._unapplied: set[ServiceKey] = set()  # converted since the last successful sync
        self._applied_inputs: dict[ServiceKey, Inputs] = {}  # what the last successful sync applied

    # -- wiring ----------------------------------------------------------------------------

    def setup(self) -> None:
        self._services = self.informer(_resource("", "services"))
        self._slices = self.informer(_resource("discovery.k8s.io", "endpointslices"))
        self._services.add_handler(self._on_service_event)
        self._slices.add_handler(self._on_slice_event)

    def start(self) -> None:
        # The first sync installs the base chains and jumps even in an empty cluster.
        self.queue.add(_SYNC_KEY)
        super().start()

    def _on_service_event(self, event_type: str, old: dict | None, new: dict | None) -> None:
        obj = new if new is not None else old
        with self._cond:
            if obj is not None:
                self._dirty.add(meta.key_of(obj))
            self._generation += 1
        self.queue.add(_SYNC_KEY)

    def _on_slice_event(self, event_type: str, old: dict | None, new: dict | None) -> None:
        with self._cond:
            for obj, present in ((old, False), (new, True)):
                if obj is None:
                    continue
                service = _slice_service(obj)
                if service is None:
                    continue
                self._dirty.add(service)
                slices = self._slices_of.setdefault(service, set())
                if present:
                    slices.add(meta.key_of(obj))
                else:
                    slices.discard(meta.key_of(obj))
                    if not slices:
                        del self._slices_of[service]
            self._generation += 1
        self.queue.add(_SYNC_KEY)

    def request_full_sync(self) -> None:
        """Make the next sync a full one (e.g. after someone flushed the node's tables) and schedule it."""
        with self._cond:
            self._need_full = True
            self._generation += 1
        self.queue.add(_SYNC_KEY)

    # -- sync ------------------------------------------------------------------------------

    def current_state(self) -> ProxyState:
        """The state the informer caches describe now (built from every object)."""
        assert self._services is not None and self._slices is not None
        return ProxyState.of(build_service_ports(self._services.list()),
                             build_endpoints(self._slices.list(), self.config.node_name))

    def _convert(self, key: ServiceKey, inputs: ServiceInputs) -> None:
        """Re-read one service's Service and EndpointSlices from the informer caches into ``inputs``."""
        assert self._services is not None and self._slices is not None
        service = self._services.get(key)
        with self._cond:
            slice_keys = sorted(self._slices_of.get(key, ()))
        slices = [obj for obj in (self._slices.get(k) for k in slice_keys)
                  if obj is not None and _slice_service(obj) == key]
        ports = build_service_ports([service]) if service is not None else []
        inputs.set(key, ports, build_endpoints(slices, self.config.node_name) if slices else {})

    def _build(self) -> tuple[ProxyState, frozenset[ServiceKey]]:
        """The current state and the services whose inputs differ from what was last applied."""
        assert self._services is not None and self._slices is not None
        with self._cond:
            dirty, self._dirty = self._dirty, set()
        if self._inputs is None:
            # First sync (or after a failure): convert everything. The slice index is complete:
            # the handlers saw every slice (informers announce each listed object).
            with self._cond:
                with_slices = set(self._slices_of)
            dirty |= {meta.key_of(obj) for obj in self._services.list()} | with_slices | set(self._applied_inputs)
            self._inputs = ServiceInputs()
        for key in dirty:
            self._convert(key, self._inputs)
        self._unapplied |= dirty
        changed = frozenset(key for key in self._unapplied
                            if self._inputs.inputs(key) != self._applied_inputs.get(key, ((), ())))
        return self._inputs.state(), changed

    def sync(self, key: str) -> None:
        wait = self._last_sync_end + self.min_sync_interval - time.monotonic()
        if wait > 0 and self._stop.wait(wait):
            return
        with self._cond:
            generation = self._generation
        started = time.monotonic()
        try:
            state, changed = self._build()
            full = self._need_full or started - self._last_full >= self.sync_period > 0
            if not full and not changed:
                result = None
            else:
                result = self.ruleset.sync(state, full=full, changed=changed)
        except Exception as exc:
            with self._cond:
                self._need_full = True  # what the kernel holds is unknown now
                self._inputs = None  # and re-read every object next time
                self.failed_sync_count += 1
                self.last_sync_error = str(exc) or type(exc).__name__
                self._cond.notify_all()
            raise  # the Controller logs it and re-queues the sync with back-off
        finally:
            self._last_sync_end = time.monotonic()
        previous = self._applied
        if result is not None:
            # Before the sync counts as done, so waiting for a sync also waits for the clean-up.
            for hook in self.after_sync:
                try:
                    hook(previous, state, changed)
                except Exception:
                    log.exception("%s: after-sync hook %s failed", self.name, getattr(hook, "__qualname__", hook))
        for key in self._unapplied:
            inputs = self._inputs.inputs(key) if self._inputs is not None else ((), ())
            if inputs == ((), ()):
                self._applied_inputs.pop(key, None)
            else:
                self._applied_inputs[key] = inputs
        self._unapplied = set()
        with self._cond:
            self._applied = state
            self.last_sync_time = time.time()
            if result is None:
                self.skipped_sync_count += 1
            else:
                self.sync_count += 1
                self.last_result = result
                self.last_payload_bytes = result.payload_bytes
                if result.full:
                    self.full_sync_count += 1
                    self._need_full = False
                    self._last_full = started
                else:
                    self.partial_sync_count += 1
            self.last_sync_error = None
            self._synced_generation = max(self._synced_generation, generation)
            self._cond.notify_all()
        if result is not None:
            log.debug("%s: %s sync of %d service ports (%d services changed, %d bytes) in %.3fs", self.name,
                      "full" if result.full else "partial", result.services, len(changed), result.payload_bytes,
                      time.monotonic() - started)
        self._schedule_periodic()

    def _schedule_periodic(self) -> None:
        now = time.monotonic()
        if self.sync_period > 0 and self._periodic_due <= now:
            self._periodic_due = now + self.sync_period
            self.queue.add_after(_SYNC_KEY, self.sync_period)

    # -- test and status hooks ---------------------------------------------------------------

    def wait_for_sync(self, timeout: float) -> bool:
        """Wait until a sync has applied every change the informers had delivered when called."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._generation
            while self._synced_generation < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 0.5))
            return True
