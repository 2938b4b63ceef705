"""The in-memory side every store shares: the object cache, the watch history and the watchers.

Like kube-apiserver's watch cache, reads are served from memory (every object,
grouped by resource) and watches replay a bounded log of recent events before
streaming live ones. A store subclasses ``CachedStore`` and persists each
write in ``_persist``, which returns the write's revision (the new global
revision) or raises ``ConflictError`` when the backend holds something other
than what the cache says. The netk8s API server is the store's only writer,
so the cache is updated and the event published in the same call as the
write: readers see their own writes at once.

Ownership: ``create``/``update`` take ownership of the dict passed in, and the
dicts returned by reads are the stored ones; callers must not mutate them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Iterable

from netk8s.store import (
    ConflictError,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    TooOldError,
    WatchCallback,
    WatchEvent,
)

log = logging.getLogger(__name__)


def bucket_of(key: str) -> str:
    """The resource-level prefix of a key: '/registry/<group>/<plural>/'."""
    parts = key.split("/", 4)
    return "/".join(parts[:4]) + "/" if len(parts) >= 4 else key


def revision_of(obj: dict) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


def stamp(obj: dict, revision: int) -> None:
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)


class _Watcher:
    __slots__ = ("prefix", "callback", "store", "active")

    def __init__(self, store: "CachedStore", prefix: str, callback: WatchCallback) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.active = True

    def cancel(self) -> None:
        self.active = False
        self.store._remove_watcher(self)


class CachedStore:
    """A store's cache and watch machinery; subclasses persist (``_persist``) and close (``_close``)."""

    def __init__(self, objects: Iterable[tuple[str, dict]], revision: int, history: int) -> None:
        """``objects``: (key, object) pairs as persisted, each stamped with its resourceVersion;
        ``revision``: the backend's current global revision."""
        self._lock = threading.RLock()
        self._buckets: dict[str, dict[str, dict]] = {}  # bucket -> key -> object
        for key, obj in objects:
            self._buckets.setdefault(bucket_of(key), {})[key] = obj
        self._revision = revision
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._watchers: list[_Watcher] = []
        # Highest revision whose event can no longer be replayed: nothing that
        # happened before this store was opened is in the in-memory history.
        self._compacted_through = revision

    def _persist(self, key: str, obj: dict | None, current: int | None) -> int:
        """Write ``obj`` under ``key`` (delete it when None); ``current`` is the revision the cache
        holds for the key (None: absent). Returns the write's revision."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the backend."""

    # -- reads ---------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._buckets.get(bucket_of(key), {}).get(key)

    def list(self, prefix: str) -> tuple[list[dict], int]:
        with self._lock:
            bucket = self._buckets.get(bucket_of(prefix), {})
            if prefix.endswith("/") and prefix == bucket_of(prefix):
                items = list(bucket.values())
            else:
                items = [obj for key, obj in bucket.items() if key.startswith(prefix)]
            return items, self._revision

    # -- writes --------------------------------------------------------------

    def _write(self, key: str, obj: dict | None, current: int | None) -> int:
        revision = self._persist(key, obj, current)
        self._revision = max(self._revision, revision)
        return revision

    def _existing_bucket(self, key: str, expected_revision: int | None) -> dict[str, dict]:
        """The bucket holding ``key``, after the existence and revision preconditions."""
        bucket = self._buckets.get(bucket_of(key), {})
        if key not in bucket:
            raise KeyNotFoundError(key)
        current = revision_of(bucket[key])
        if expected_revision is not None and expected_revision != current:
            raise ConflictError(key, expected_revision, current)
        return bucket

    def create(self, key: str, obj: dict) -> dict:
        with self._lock:
            bucket = self._buckets.setdefault(bucket_of(key), {})
            if key in bucket:
                raise KeyExistsError(key)
            revision = self._write(key, obj, None)
            stamp(obj, revision)
            bucket[key] = obj
            self._publish(WatchEvent(EventType.ADDED, key, obj, revision))
            return obj

    def update(self, key: str, obj: dict, expected_revision: int | None = None) -> dict:
        with self._lock:
            bucket = self._existing_bucket(key, expected_revision)
            previous = bucket[key]
            revision = self._write(key, obj, revision_of(previous))
            stamp(obj, revision)
            bucket[key] = obj
            self._publish(WatchEvent(EventType.MODIFIED, key, obj, revision, previous))
            return obj

    def delete(self, key: str, expected_revision: int | None = None) -> dict:
        with self._lock:
            bucket = self._existing_bucket(key, expected_revision)
            revision = self._write(key, None, revision_of(bucket[key]))
            old = bucket.pop(key)
            # The DELETED event carries the deletion revision, as etcd3 watches do.
            tombstone = dict(old)
            tombstone["metadata"] = dict(old.get("metadata") or {}, resourceVersion=str(revision))
            self._publish(WatchEvent(EventType.DELETED, key, tombstone, revision, old))
            return tombstone

    # -- watch ---------------------------------------------------------------

    def _publish(self, event: WatchEvent) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._compacted_through = self._history[0].revision
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.active and event.key.startswith(watcher.prefix):
                try:
                    watcher.callback(event)
                except Exception:  # a broken watcher must not fail the write
                    log.exception("watch callback failed; cancelling watch on %s", watcher.prefix)
                    watcher.cancel()

    def watch(self, prefix: str, since: int, callback: WatchCallback) -> _Watcher:
        """Deliver every event under ``prefix`` with revision > ``since``, then live ones."""
        with self._lock:
            if since < self._compacted_through:
                raise TooOldError(since, self._compacted_through + 1)
            if since < self._revision:
                for event in self._history:
                    if event.revision > since and event.key.startswith(prefix):
                        callback(event)
            watcher = _Watcher(self, prefix, callback)
            self._watchers.append(watcher)
            return watcher

    def _remove_watcher(self, watcher: _Watcher) -> None:
        with self._lock:
            try:
                self._watchers.remove(watcher)
            except ValueError:
                pass

    def close(self) -> None:
        with self._lock:
            for watcher in self._watchers:
                watcher.active = False
            self._watchers.clear()
            self._close()
