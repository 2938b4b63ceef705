"""The store contract, on SQLite: revisions, conflicts, watch replay, compaction, persistence.

``tests/integration/test_store_etcd.py`` runs the same tests on etcd by overriding
``make_store``: each call opens a store over the same data (a second call is a reopen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from netk8s.store import (
    ConflictError,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    Store,
    TooOldError,
)
from netk8s.store.sqlite import SQLiteStore

KEY = "/registry/core/pods/default/"


MakeStore = Callable[..., Store]


@pytest.fixture
def make_store(tmp_path: Path) -> MakeStore:
    def make(history: int = 50_000) -> Store:
        return SQLiteStore(tmp_path / "store.db", history=history)
    return make


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}}


def test_every_write_takes_the_next_global_revision(make_store: MakeStore) -> None:
    store = make_store()
    start = store.revision
    a = store.create(KEY + "a", pod("a"))
    b = store.create("/registry/core/services/default/b", pod("b"))
    assert int(a["metadata"]["resourceVersion"]) == start + 1
    assert int(b["metadata"]["resourceVersion"]) == start + 2
    updated = store.update(KEY + "a", pod("a"))
    assert int(updated["metadata"]["resourceVersion"]) == start + 3
    deleted = store.delete(KEY + "a")
    assert int(deleted["metadata"]["resourceVersion"]) == start + 4
    assert store.revision == start + 4


def test_create_twice_update_missing_and_stale_revision_fail(make_store: MakeStore) -> None:
    store = make_store()
    created = store.create(KEY + "a", pod("a"))
    with pytest.raises(KeyExistsError):
        store.create(KEY + "a", pod("a"))
    with pytest.raises(KeyNotFoundError):
        store.update(KEY + "missing", pod("missing"))
    rv = int(created["metadata"]["resourceVersion"])
    store.update(KEY + "a", pod("a"), expected_revision=rv)
    with pytest.raises(ConflictError):
        store.update(KEY + "a", pod("a"), expected_revision=rv)
    with pytest.raises(KeyNotFoundError):
        store.delete(KEY + "missing")


def test_list_by_prefix_only_returns_that_prefix(make_store: MakeStore) -> None:
    store = make_store()
    store.create(KEY + "a", pod("a"))
    store.create("/registry/core/pods/other/b", pod("b"))
    store.create("/registry/core/services/default/c", pod("c"))
    names = sorted(o["metadata"]["name"] for o in store.list(KEY)[0])
    assert names == ["a"]
    assert sorted(o["metadata"]["name"] for o in store.list("/registry/core/pods/")[0]) == ["a", "b"]


def test_watch_replays_history_after_a_revision_then_streams_live(make_store: MakeStore) -> None:
    store = make_store()
    store.create(KEY + "a", pod("a"))
    mark = store.revision
    store.update(KEY + "a", pod("a"))
    store.create("/registry/core/services/default/x", pod("x"))  # other prefix: filtered
    events = []
    sub = store.watch(KEY, mark, events.append)
    store.delete(KEY + "a")
    sub.cancel()
    store.create(KEY + "b", pod("b"))  # after cancel: not delivered
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        (EventType.MODIFIED, "a"), (EventType.DELETED, "a")]
    assert events[0].previous is not None and events[1].previous is not None


def test_watch_from_a_compacted_revision_is_too_old(make_store: MakeStore) -> None:
    store = make_store(history=3)
    first = store.revision
    for i in range(5):
        store.create(KEY + f"p{i}", pod(f"p{i}"))
    with pytest.raises(TooOldError):
        store.watch(KEY, first, lambda e: None)
    events = []
    store.watch(KEY, store.revision - 2, events.append)
    assert [e.object["metadata"]["name"] for e in events] == ["p3", "p4"]


def test_reopened_store_keeps_objects_and_revision(make_store: MakeStore) -> None:
    store = make_store()
    store.create(KEY + "a", pod("a"))
    rev = store.revision
    store.close()
    reopened = make_store()
    assert reopened.revision == rev
    assert reopened.get(KEY + "a")["metadata"]["name"] == "a"
    # History before the reopen cannot be replayed; from the current revision it can.
    with pytest.raises(TooOldError):
        reopened.watch(KEY, rev - 1, lambda e: None)
    events = []
    reopened.watch(KEY, rev, events.append)
    reopened.create(KEY + "b", pod("b"))
    assert [e.object["metadata"]["name"] for e in events] == ["b"]
    assert int(events[0].object["metadata"]["resourceVersion"]) == rev + 1
