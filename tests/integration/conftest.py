"""Fixtures shared by the integration tests: an in-process API server, and the kube-proxy rig
(``proxy_rig``: a throwaway node namespace and TCP listeners on its pod IPs)."""

from __future__ import annotations

from typing import Iterator

import pytest
from proxy_rig import POD_IPS, Listeners, Node, node_namespace

from netk8s.apiserver.registry import Registry
from netk8s.apiserver.server import ApiServer, listen
from netk8s.client.rest import ApiClient
from netk8s.store.sqlite import SQLiteStore


@pytest.fixture
def api() -> Iterator[ApiClient]:
    """An API server on loopback in this process, with an in-memory store, and a client for it."""
    store = SQLiteStore()
    server = ApiServer(Registry(store))
    sock = listen()
    server.start_in_thread(sock)
    client = ApiClient(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=10)
    try:
        yield client
    finally:
        client.close()
        server.stop()
        sock.close()
        store.close()


@pytest.fixture
def node() -> Iterator[Node]:
    """kube-proxy's node namespace (``proxy_rig.node_namespace``), deleted even when the test fails."""
    yield from node_namespace()


@pytest.fixture
def listeners(node: Node) -> Iterator[Listeners]:
    servers = Listeners(node.name, POD_IPS, 8080)
    try:
        yield servers
    finally:
        servers.close()
