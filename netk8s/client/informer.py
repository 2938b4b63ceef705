"""Informers and work queues: list+watch caches that drive every controller.

An ``Informer`` lists a resource, keeps a local cache keyed ``namespace/name``,
follows a watch from the list's resourceVersion, re-watches after a dropped
stream and re-lists (diffing against its cache) after ``410 Gone``. Handlers
get ``(event_type, old, new)``. A ``WorkQueue`` de-duplicates keys so a
controller reconciles each object once per burst of changes.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from typing import Callable

from netk8s.api import meta
from netk8s.api.resources import ResourceType
from netk8s.client.rest import ApiClient, ApiUnavailable, WatchStream
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

Handler = Callable[[str, "dict | None", "dict | None"], None]


class Informer:
    def __init__(self, client: ApiClient, resource: ResourceType, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._cache: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._handlers: list[Handler] = []
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._revision = ""

    # -- cache -------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def list(self) -> list[dict]:
        with self._lock:
            return list(self._cache.values())

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._cache.get(key)

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self._synced.wait(timeout)

    # -- loop ----------------------------------------------------------------------------

    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _notify(self, event_type: str, old: dict | None, new: dict | None) -> None:
        for handler in self._handlers:
            try:
                handler(event_type, old, new)
            except Exception:
                log.exception("informer handler for %s failed", self.resource.plural)

    def _relist(self) -> None:
        listed = self.client.list(self.resource, self.namespace, self.label_selector, self.field_selector)
        fresh = {meta.key_of(obj): obj for obj in listed.get("items") or []}
        with self._lock:
            old_cache = self._cache
            self._cache = fresh
        for key, obj in fresh.items():
            prev = old_cache.get(key)
            if prev is None:
                self._notify("ADDED", None, obj)
            elif prev.get("metadata", {}).get("resourceVersion") != obj.get("metadata", {}).get("resourceVersion"):
                self._notify("MODIFIED", prev, obj)
        for key, prev in old_cache.items():
            if key not in fresh:
                self._notify("DELETED", prev, None)
        self._revision = listed.get("metadata", {}).get("resourceVersion", "")
        self._synced.set()

    def _apply(self, event_type: str, obj: dict) -> None:
        key = meta.key_of(obj)
        self._revision = obj.get("metadata", {}).get("resourceVersion", self._revision)
        with self._lock:
            old = self._cache.get(key)
            if event_type == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        if event_type == "DELETED":
            self._notify("DELETED", old or obj, None)
        elif event_type in ("ADDED", "MODIFIED"):
            self._notify("MODIFIED" if old is not None else "ADDED", old, obj)

    def _run(self) -> None:
        backoff = 0.05
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._stream = self.client.watch(self.resource, self.namespace, self._revision,
                                                  self.label_selector, self.field_selector)
                if self._stop.is_set():
                    self._stream.close()
                    break
                for event_type, obj in self._stream:
                    if event_type == "BOOKMARK":
                        self._revision = obj.get("metadata", {}).get("resourceVersion", self._revision)
                        continue
                    self._apply(event_type, obj)
                backoff = 0.05
            except ApiError as exc:
                if exc.code == 410:
                    need_list = True
                    continue
                log.warning("watch of %s failed: %s", self.resource.plural, exc)
            except (ApiUnavailable, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                log.debug("watch of %s interrupted: %s", self.resource.plural, exc)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 2.0)


class WorkQueue:
    """A de-duplicating queue of keys with delayed re-adds (back-off retries)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty_while_processing: set[str] = set()
        self._delayed: list[tuple[float, str]] = []
        self._shutdown = False
        self._failures: dict[str, int] = {}

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._processing:
                self._dirty_while_processing.add(key)
                return
            self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        """Queue ``key`` unless it is queued already (the caller holds the lock)."""
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, key))
            self._cond.notify()

    def retry(self, key: str) -> None:
        """Re-add with exponential back-off (5 ms doubling, capped at 10 s)."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        self.add_after(key, min(0.005 * (2 ** n), 10.0))

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def get(self, timeout: float | None = None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, key = heapq.heappop(self._delayed)
                    if key in self._processing:
                        self._dirty_while_processing.add(key)
                    else:
                        self._enqueue(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutdown:
                    return None
                wait = None
                if self._delayed:
                    wait = max(self._delayed[0][0] - now, 0)
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty_while_processing:
                self._dirty_while_processing.discard(key)
                self._enqueue(key)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
