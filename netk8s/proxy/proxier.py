"""The per-node kube-proxy agent (iptables mode).

A ``Proxier`` watches Services and EndpointSlices in all namespaces through the
API server and keeps one node namespace's iptables in step with them. Every
change schedules a full sync; bursts coalesce and syncs are spaced at least
``min_sync_interval`` apart (kube-proxy's minSyncPeriod). A sync reads
``iptables-save`` once, renders the whole ruleset (dropping stale chains,
restoring missing jump rules) and applies it with one
``iptables-restore --noflush`` run. A failed sync is logged and retried with
back-off by the ``Controller`` machinery; a periodic resync repairs rules
someone else removed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from netk8s.api.resources import ResourceType, by_plural
from netk8s.client.controller import Controller
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient
from netk8s.kernel.iptables import NetnsIptables
from netk8s.proxy.iptables import RenderResult, plan
from netk8s.proxy.model import ProxyConfig, build_endpoints, build_service_ports

log = logging.getLogger(__name__)

_SYNC_KEY = "sync"


class RuleBackend(Protocol):
    """Reads and writes one node's ruleset (``NetnsIptables`` in production, fakes in tests)."""

    def save(self) -> str: ...

    def restore(self, text: str) -> None: ...


def _resource(group: str, plural: str) -> ResourceType:
    resource = by_plural(group, plural)
    if resource is None:
        raise LookupError(f"resource {plural}.{group or 'core'} is not in netk8s.api.resources")
    return resource


class Proxier(Controller):
    name = "kube-proxy"
    workers = 1  # syncs are whole-ruleset: never two at once

    def __init__(self, client: ApiClient, config: ProxyConfig, netns_name: str, min_sync_interval: float = 0.05,
                 backend: RuleBackend | None = None, sync_period: float = 30.0) -> None:
        super().__init__(client)
        self.name = f"kube-proxy-{config.node_name}"
        self.config = config
        self.netns_name = netns_name
        self.min_sync_interval = min_sync_interval
        self.sync_period = sync_period
        self.backend: RuleBackend = backend if backend is not None else NetnsIptables(netns_name)
        self.sync_count = 0
        self.failed_sync_count = 0
        self.last_sync_error: str | None = None  # message of the latest attempt's failure; None after a success
        self.last_result: RenderResult | None = None
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

    # -- sync ------------------------------------------------------------------------------

    def sync(self, key: str) -> None:
        wait = self._last_sync_end + self.min_sync_interval - time.monotonic()
        if wait > 0 and self._stop.wait(wait):
            return
        assert self._services is not None and self._slices is not None
        with self._cond:
            generation = self._generation
        started = time.monotonic()
        try:
            service_ports = build_service_ports(self._services.list())
            endpoints = build_endpoints(self._slices.list(), self.config.node_name)
            result = plan(service_ports, endpoints, self.config, self.backend.save())
            self.backend.restore(result.text)
        except Exception as exc:
            with self._cond:
                self.failed_sync_count += 1
                self.last_sync_error = str(exc) or type(exc).__name__
                self._cond.notify_all()
            raise  # the Controller logs it and re-queues the sync with back-off
        finally:
            self._last_sync_end = time.monotonic()
        with self._cond:
            self.sync_count += 1
            self.last_sync_error = None
            self.last_result = result
            self._synced_generation = max(self._synced_generation, generation)
            self._cond.notify_all()
        log.debug("%s: synced %d service ports in %.3fs", self.name, len(service_ports), time.monotonic() - started)
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
