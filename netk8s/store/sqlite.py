"""SQLite-backed store: the embedded default.

Each write goes through to SQLite in one transaction, together with the
global revision counter, so a store reopened from its file carries on from
the same revision. Reads, watches and history are ``CachedStore``'s.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from netk8s.store.cache import CachedStore, stamp

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, revision INTEGER NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteStore(CachedStore):
    def __init__(self, path: str | Path = ":memory:", history: int = 50_000) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        objects = [(key, json.loads(value)) for key, value in self._db.execute("SELECT key, value FROM objects")]
        super().__init__(objects, int(row[0]) if row else 1, history)

    def _persist(self, key: str, obj: dict | None, current: int | None) -> int:
        revision = self._revision + 1
        if obj is not None:
            stamp(obj, revision)
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
        return revision

    def _close(self) -> None:
        self._db.close()
