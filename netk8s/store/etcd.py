"""etcd-backed store: objects under ``/registry/...`` in an etcd v3 server, as Kubernetes keeps them.

``EtcdClient`` speaks etcd's v3 JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``;
keys and values base64-encoded) over one keep-alive HTTP connection, with the
stdlib only. ``EtcdStore`` loads every object under the prefix at start and
writes each change in a transaction guarded on the key's ``mod_revision``
(``create_revision == 0`` for a create), so a change made behind the API
server's back (``etcdctl put``) fails the next write with a conflict instead
of being overwritten. As in Kubernetes, an object's resourceVersion is its
``mod_revision`` and is not stored in the value; objects are JSON (Kubernetes
stores protobuf for built-in kinds, JSON for custom ones), so ``etcdctl get
/registry/core/pods/default/NAME`` shows them readably (netk8s keys name the
API group, ``core`` for the legacy one, where Kubernetes' own keys vary).
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from netk8s.store import ConflictError, StoreError
from netk8s.store.cache import CachedStore, stamp

REGISTRY_PREFIX = "/registry/"


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """etcd's range_end for every key starting with ``prefix`` (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdClient:
    """The few etcd v3 calls the store needs, through the JSON gateway at ``endpoint``."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise StoreError(f"etcd endpoint {endpoint!r}: give http://HOST:PORT")
        self.endpoint = endpoint
        self._host, self._port, self._timeout = parts.hostname, parts.port or 2379, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        with self._lock:
            for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
                try:
                    self._conn.request("POST", path, data, {"Content-Type": "application/json"})
                    response = self._conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise StoreError(f"etcd at {self.endpoint}: {exc}") from None
                    continue
                break
        try:
            answer = json.loads(payload or b"{}")
        except ValueError:
            raise StoreError(f"etcd at {self.endpoint} answered {path} with {payload[:200]!r}") from None
        if response.status != 200 or "error" in answer:
            raise StoreError(f"etcd at {self.endpoint}: {path}: {answer.get('message') or answer.get('error')}")
        return answer

    def range_prefix(self, prefix: str) -> tuple[list[tuple[str, bytes, int]], int]:
        """(key, value, mod_revision) of every key under ``prefix``, and the store revision."""
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        kvs = [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                int(kv.get("mod_revision", 0))) for kv in answer.get("kvs") or []]
        return kvs, int(answer["header"]["revision"])

    def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, int]:
        """Run ``success`` if every ``compare`` holds: (whether it did, the store revision after)."""
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(answer.get("succeeded")), int(answer["header"]["revision"])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class EtcdStore(CachedStore):
    def __init__(self, endpoint: str, history: int = 50_000, prefix: str = REGISTRY_PREFIX) -> None:
        self._client = EtcdClient(endpoint)
        self._prefix = prefix
        kvs, revision = self._client.range_prefix(prefix)
        objects = []
        for key, value, mod_revision in kvs:
            obj = json.loads(value)
            stamp(obj, mod_revision)
            objects.append((key, obj))
        super().__init__(objects, revision, history)

    def _persist(self, key: str, obj: dict | None, current: int | None) -> int:
        encoded_key = _b64(key)
        if current is None:
            guard = {"key": encoded_key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        else:
            guard = {"key": encoded_key, "target": "MOD", "result": "EQUAL", "mod_revision": str(current)}
        if obj is None:
            operation = {"request_delete_range": {"key": encoded_key}}
        else:
            # resourceVersion is the key's mod_revision, not part of the stored value.
            md = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
            value = json.dumps(dict(obj, metadata=md), separators=(",", ":"))
            operation = {"request_put": {"key": encoded_key, "value": _b64(value)}}
        succeeded, revision = self._client.txn([guard], [operation])
        if not succeeded:
            # Someone wrote the key behind the API server's back: report what etcd holds now.
            kvs, _ = self._client.range_prefix(key)
            actual = next((mod for k, _, mod in kvs if k == key), 0)
            raise ConflictError(key, current or 0, actual)
        return revision

    def _close(self) -> None:
        self._client.close()
