"""The reconcile-loop skeleton shared by controllers, the scheduler and node agents.

A ``Controller`` owns informers and a work queue; event handlers enqueue keys,
worker threads call ``sync(key)``, and a failing sync is retried with back-off.
Subclasses implement ``setup()`` (create informers, wire handlers) and ``sync``.
"""

from __future__ import annotations

import logging
import threading

from netk8s.api.resources import ResourceType
from netk8s.client.informer import Informer, WorkQueue
from netk8s.client.rest import ApiClient
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

CONFLICT_RETRY_DELAY = 0.05


class Controller:
    name = "controller"
    workers = 1

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.queue = WorkQueue()
        self.informers: list[Informer] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def informer(self, resource: ResourceType, namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None) -> Informer:
        inf = Informer(self.client, resource, namespace, label_selector, field_selector)
        self.informers.append(inf)
        return inf

    def setup(self) -> None:
        """Create informers and register handlers that enqueue keys."""

    def sync(self, key: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.setup()
        for inf in self.informers:
            inf.start()
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return all(inf.wait_synced(timeout) for inf in self.informers)

    def _worker(self) -> None:
        for inf in self.informers:
            while not inf.wait_synced(0.5):
                if self._stop.is_set():
                    return
        while not self._stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self.sync(key)
                self.queue.forget(key)
            except ApiError as exc:
                if exc.code == 409:
                    # A conflict only means our cache was a version behind: the watch brings the
                    # newer one within milliseconds, so retry soon and without growing back-off.
                    log.debug("%s: sync of %s conflicted (will retry): %s", self.name, key, exc)
                    self.queue.add_after(key, CONFLICT_RETRY_DELAY)
                else:
                    log.warning("%s: sync of %s failed (will retry): %s", self.name, key, exc)
                    self.queue.retry(key)
            except Exception as exc:
                log.warning("%s: sync of %s failed (will retry): %s", self.name, key, exc)
                log.debug("%s: sync of %s failed", self.name, key, exc_info=True)
                self.queue.retry(key)
            finally:
                self.queue.done(key)

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()
        for inf in self.informers:
            inf.stop()

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)
        for inf in self.informers:
            inf.join(timeout)
