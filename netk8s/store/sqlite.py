"""SQLite-backed store: the embedded default.

Reads are served from an in-memory copy of every object (the API server's
"watch cache"); writes go through to SQLite in one transaction each, together
with the global revision counter, so a store reopened from its file carries on
from the same revision. Watch history is a bounded in-memory log: a watch from
a revision older than the log's start raises ``TooOldError``.

Ownership: ``create``/``update`` take ownership of the dict passed in, and the
dicts returned by reads are the stored ones; callers must not mutate them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import deque
from pathlib import Path

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, revision INTEGER NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _bucket_of(key: str) -> str:
    """The resource-level prefix of a key: '/registry/<group>/<plural>/'."""
    parts = key.split("/", 4)
    return "/".join(parts[:4]) + "/" if len(parts) >= 4 else key


class _Watcher:
    __slots__ = ("prefix", "callback", "store", "active")

    def __init__(self, store: "SQLiteStore", prefix: str, callback: WatchCallback) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.active = True

    def cancel(self) -> None:
        self.active = False
        self.store._remove_watcher(self)


class SQLiteStore:
    def __init__(self, path: str | Path = ":memory:", history: int = 50_000) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # bucket -> key -> object
        self._buckets: dict[str, dict[str, dict]] = {}
        self._revisions: dict[str, int] = {}
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._watchers: list[_Watcher] = []
        row = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        self._revision = int(row[0]) if row else 1
        for key, revision, value in self._db.execute("SELECT key, revision, value FROM objects"):
            self._buckets.setdefault(_bucket_of(key), {})[key] = json.loads(value)
            self._revisions[key] = revision
        # Highest revision whose event can no longer be replayed: nothing that
        # happened before this store was opened is in the in-memory history.
        self._compacted_through = self._revision

    # -- reads ---------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._buckets.get(_bucket_of(key), {}).get(key)

    def list(self, prefix: str) -> tuple[list[dict], int]:
        with self._lock:
            bucket = self._buckets.get(_bucket_of(prefix), {})
            if prefix.endswith("/") and prefix == _bucket_of(prefix):
                items = list(bucket.values())
            else:
                items = [obj for key, obj in bucket.items() if key.startswith(prefix)]
            return items, self._revision

    # -- writes --------------------------------------------------------------

    def _stamp(self, obj: dict, revision: int) -> None:
        obj.setdefault("metadata", {})["resourceVersion"] = str(revision)

    def _commit(self, key: str, obj: dict | None) -> int:
        revision = self._revision + 1
        if obj is not None:
            self._stamp(obj, revision)
            value = json.dumps(obj, separators=(",", ":"))
        self._db.execute("BEGIN")
        try:
            if obj is None:
                self._db.execute("DELETE FROM objects WHERE key=?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO objects(key, revision, value) VALUES (?,?,?)",
                                 (key, revision, value))
            self._db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('revision', ?)", (revision,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._revision = revision
        return revision

    def _existing_bucket(self, key: str, expected_revision: int | None) -> dict[str, dict]:
        """The bucket holding ``key``, after the existence and revision preconditions."""
        bucket = self._buckets.get(_bucket_of(key), {})
        if key not in bucket:
            raise KeyNotFoundError(key)
        current = self._revisions[key]
        if expected_revision is not None and expected_revision != current:
            raise ConflictError(key, expected_revision, current)
        return bucket

    def create(self, key: str, obj: dict) -> dict:
        with self._lock:
            bucket = self._buckets.setdefault(_bucket_of(key), {})
            if key in bucket:
                raise KeyExistsError(key)
            revision = self._commit(key, obj)
            bucket[key] = obj
            self._revisions[key] = revision
            self._publish(WatchEvent(EventType.ADDED, key, obj, revision))
            return obj

    def update(self, key: str, obj: dict, expected_revision: int | None = None) -> dict:
        with self._lock:
            bucket = self._existing_bucket(key, expected_revision)
            revision = self._commit(key, obj)
            previous = bucket[key]
            bucket[key] = obj
            self._revisions[key] = revision
            self._publish(WatchEvent(EventType.MODIFIED, key, obj, revision, previous))
            return obj

    def delete(self, key: str, expected_revision: int | None = None) -> dict:
        with self._lock:
            bucket = self._existing_bucket(key, expected_revision)
            revision = self._commit(key, None)
            old = bucket.pop(key)
            del self._revisions[key]
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
            self._db.close()
