"""The etcd store: the store contract of ``tests/unit/test_store.py`` run against a real etcd server,
what is stored (no resourceVersion in the value), writes made behind the API server's back, and the
cluster's etcd process (recorded with the cluster, stopped by its own PID)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from netk8s.cluster.etcd import EtcdServer, etcd_argv
from netk8s.cluster.state import StateDir
from netk8s.kernel import procs
from netk8s.store import ConflictError, Store
from netk8s.store.etcd import EtcdClient, EtcdStore, prefix_end

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_store import (  # noqa: E402  (the contract tests, collected here with this module's make_store)
    KEY,
    pod,
    test_create_twice_update_missing_and_stale_revision_fail,
    test_every_write_takes_the_next_global_revision,
    test_list_by_prefix_only_returns_that_prefix,
    test_reopened_store_keeps_objects_and_revision,
    test_watch_from_a_compacted_revision_is_too_old,
    test_watch_replays_history_after_a_revision_then_streams_live,
)

# Imported, the contract tests are collected in this module and use its make_store (named here so
# that the imports count as used).
CONTRACT = (test_create_twice_update_missing_and_stale_revision_fail, test_every_write_takes_the_next_global_revision,
            test_list_by_prefix_only_returns_that_prefix, test_reopened_store_keeps_objects_and_revision,
            test_watch_from_a_compacted_revision_is_too_old,
            test_watch_replays_history_after_a_revision_then_streams_live)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(StateDir("etcd-test", tmp_path_factory.mktemp("state")))
    server.state.path.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_store(etcd: EtcdServer) -> Iterator[Callable[..., Store]]:
    """Each test starts from an empty /registry; each call opens a store over it (the second is a reopen)."""
    EtcdClient(etcd.endpoint).call("/v3/kv/deleterange", {
        "key": base64.b64encode(b"/registry/").decode(), "range_end": base64.b64encode(b"/registry0").decode()})
    opened: list[Store] = []

    def make(history: int = 50_000) -> Store:
        opened.append(EtcdStore(etcd.endpoint, history=history))
        return opened[-1]
    yield make
    for store in opened:
        store.close()


def test_values_are_json_without_resource_version(make_store: Callable[..., Store], etcd: EtcdServer) -> None:
    store = make_store()
    created = store.create(KEY + "a", pod("a"))
    kvs, revision = EtcdClient(etcd.endpoint).range_prefix(KEY + "a")
    [(key, value, mod_revision)] = kvs
    assert key == KEY + "a" and json.loads(value) == {"apiVersion": "v1", "kind": "Pod",
                                                      "metadata": {"name": "a", "namespace": "default"}}
    assert int(created["metadata"]["resourceVersion"]) == mod_revision == revision == store.revision


def test_a_write_behind_the_api_servers_back_is_a_conflict(make_store: Callable[..., Store],
                                                           etcd: EtcdServer) -> None:
    store = make_store()
    store.create(KEY + "a", pod("a"))
    client = EtcdClient(etcd.endpoint)
    client.call("/v3/kv/put", {"key": base64.b64encode((KEY + "a").encode()).decode(),
                               "value": base64.b64encode(b'{"metadata":{"name":"a"}}').decode()})
    with pytest.raises(ConflictError):
        store.update(KEY + "a", pod("a"))
    with pytest.raises(ConflictError):
        store.delete(KEY + "a")
    assert store.get(KEY + "a") is not None  # the cache is left as it was


def test_the_etcd_process_is_recorded_and_stopped_by_pid(tmp_path: Path) -> None:
    server = EtcdServer(StateDir("etcd-pid", tmp_path))
    server.state.path.mkdir(parents=True)
    endpoint = server.start()
    [(pid, started, what)] = server.state.pids()
    assert what == "etcd" and procs.is_running(pid, started) and endpoint.startswith("http://127.0.0.1:")
    server.stop()
    assert not procs.is_running(pid, started) and server.state.pids() == []
    server.stop()  # idempotent


def test_pure_helpers() -> None:
    assert prefix_end("/registry/") == "/registry0"
    argv = etcd_argv(Path("/d"), 1, 2)
    assert argv[:3] == ["etcd", "--name", "netk8s"] and "http://127.0.0.1:1" in argv and "netk8s=http://127.0.0.1:2" in argv
