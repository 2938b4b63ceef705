"""Fixtures for unit tests: an in-process API server on a loopback port (no root needed)."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from netk8s.apiserver.registry import Registry
from netk8s.apiserver.server import ApiServer, listen
from netk8s.client.rest import ApiClient
from netk8s.store.sqlite import SQLiteStore


@pytest.fixture
def api_factory() -> Iterator[Callable[..., ApiClient]]:
    """Start API servers (optionally with a short watch history); all stopped at the end."""
    started: list[tuple[ApiClient, ApiServer, SQLiteStore]] = []

    def start(history: int = 50_000) -> ApiClient:
        store = SQLiteStore(history=history)
        server = ApiServer(Registry(store))
        sock = listen()
        server.start_in_thread(sock)
        client = ApiClient(f"http://127.0.0.1:{sock.getsockname()[1]}")
        started.append((client, server, store))
        return client

    try:
        yield start
    finally:
        for client, server, store in started:
            client.close()
            server.stop()
            store.close()


@pytest.fixture
def api(api_factory: Callable[..., ApiClient]) -> ApiClient:
    return api_factory()
