"""The per-node kube-proxy agent: watches the API and drives one mode's ``RuleSet`` with full and partial syncs.

A ``Proxier`` watches Services and EndpointSlices in all namespaces through the
API server and keeps one node namespace's rules in step with them. Every
change schedules a sync; bursts coalesce and syncs are spaced at least
``min_sync_interval`` apart (kube-proxy's minSyncPeriod).

Each sync builds a ``ProxyState`` from the informer caches and compares it,
service by service, with the state of the last successful sync
(``changed_services``). It then calls ``RuleSet.sync`` (contract in
``netk8s.proxy.backend``):

* **full** on the first sync, after any failed sync (a failed restore leaves
  the kernel in an unknown state) and when ``sync_period`` has passed since
  the last full sync (kube-proxy's periodic full resync, which also repairs
  rules someone else removed);
* **partial** otherwise: only the changed services' own chains (plus the
  top-level chains) are written;
* nothing at all when no service changed and no full sync is due.

Counters for tests, status and benchmarks: ``sync_count`` (successful syncs),
``full_sync_count``, ``partial_sync_count``, ``skipped_sync_count``,
``failed_sync_count``, ``last_payload_bytes`` and ``last_result``;
``last_sync_time`` (Unix time of the last successful sync, skipped ones
included: the rules were confirmed current) feeds the health server.

``after_sync(old_state, new_state)``, when given, runs after every sync that
applied rules (e.g. the conntrack clean-up of removed UDP endpoints); its
errors are logged and never fail the sync.

The mode is chosen by passing a ``ruleset``; without one the proxier runs the
iptables mode (``IptablesRuleSet``) on ``backend`` or, by default, on the
node namespace's real iptables (``NetnsIptables``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from netk8s.api.resources import ResourceType, by_plural
from netk8s.client.controller import Controller
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient
from netk8s.kernel.iptables import NetnsIptables
from netk8s.proxy.backend import ProxyState, RuleBackend, RuleSet, SyncResult, changed_services
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import ProxyConfig, build_endpoints, build_service_ports

__all__ = ["Proxier", "RuleBackend", "RuleSet"]

log = logging.getLogger(__name__)

_SYNC_KEY = "sync"


def _resource(group: str, plural: str) -> ResourceType:
    resource = by_plural(group, plural)
    if resource is None:
        raise LookupError(f"resource {plural}.{group or 'core'} is not in netk8s.api.resources")
    return resource


class Proxier(Controller):
    name = "kube-proxy"
    workers = 1  # one sync at a time: partial syncs build on the previous one

    def __init__(self, client: ApiClient, config: ProxyConfig, netns_name: str, min_sync_interval: float = 0.05,
                 backend: RuleBackend | None = None, sync_period: float = 30.0,
                 ruleset: RuleSet | None = None,
                 after_sync: Callable[[ProxyState | None, ProxyState], object] | None = None) -> None:
        super().__init__(client)
        self.name = f"kube-proxy-{config.node_name}"
        self.config = config
        self.netns_name = netns_name
        self.min_sync_interval = min_sync_interval
        self.sync_period = sync_period
        if ruleset is None:
            ruleset = IptablesRuleSet(backend if backend is not None else NetnsIptables(netns_name), config)
        self.ruleset: RuleSet = ruleset
        self.after_sync = after_sync
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

    # -- wiring ----------------------------------------------------------------------------

    def setup(self) -> None:
        self._services = self.informer(_resource("", "services"))
        self._slices = self.informer(_resource("discovery.k8s.io", "endpointslices"))
        self._services.add_handler(self._on_event)
        self._slices.add_handler(self._on_event)

    def start(self) -> None:
        # The first sync installs the base chains and jumps even in an empty cluster.
        self.queue.add(_SYNC_KEY)
        super().start()

    def _on_event(self, event_type: str, old: dict | None, new: dict | None) -> None:
        with self._cond:
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
        """The state the informer caches describe now."""
        assert self._services is not None and self._slices is not None
        return ProxyState.of(build_service_ports(self._services.list()),
                             build_endpoints(self._slices.list(), self.config.node_name))

    def sync(self, key: str) -> None:
        wait = self._last_sync_end + self.min_sync_interval - time.monotonic()
        if wait > 0 and self._stop.wait(wait):
            return
        with self._cond:
            generation = self._generation
        started = time.monotonic()
        try:
            state = self.current_state()
            changed = changed_services(self._applied, state)
            full = self._need_full or started - self._last_full >= self.sync_period > 0
            if not full and not changed:
                result = None
            else:
                result = self.ruleset.sync(state, full=full, changed=changed)
        except Exception as exc:
            with self._cond:
                self._need_full = True  # what the kernel holds is unknown now
                self.failed_sync_count += 1
                self.last_sync_error = str(exc) or type(exc).__name__
                self._cond.notify_all()
            raise  # the Controller logs it and re-queues the sync with back-off
        finally:
            self._last_sync_end = time.monotonic()
        previous = self._applied
        if result is not None and self.after_sync is not None:
            # Before the sync counts as done, so waiting for a sync also waits for the clean-up.
            try:
                self.after_sync(previous, state)
            except Exception:
                log.exception("%s: after-sync hook failed", self.name)
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
