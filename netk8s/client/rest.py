"""A small synchronous Kubernetes REST client over ``http.client``.

Every netk8s component (controllers, scheduler, kubelets, kube-proxies, CLI)
talks to the API server through this client only. One keep-alive connection
per thread; failures come back as ``ApiError`` carrying the server's Status;
``watch`` yields ``(type, object)`` pairs from a chunked watch stream.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any, Iterator

from netk8s.api.resources import ResourceType
from netk8s.errors import ApiError, NetK8sError

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class ApiUnavailable(NetK8sError):
    """The API server could not be reached."""


@contextlib.contextmanager
def ignore_not_found() -> Iterator[None]:
    """Swallow a 404 from the body: the object is already gone, which is what the caller wanted."""
    try:
        yield
    except ApiError as exc:
        if exc.code != 404:
            raise


class WatchStream:
    """An open watch; iterate for ``(type, object)``; ``close()`` from any thread."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        try:
            while not self._closed:
                line = self._response.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise ApiError(int(obj.get("code") or 500), obj.get("reason", ""), obj.get("message", ""), obj)
                yield event["type"], event["object"]
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            # close() from another thread tears the response down under readline();
            # http.client then fails in assorted ways, all of which mean "closed".
            if not self._closed:
                raise ApiUnavailable(f"watch stream broken: {exc!r}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conn.close()


class ApiClient:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme != "http" or not parsed.hostname:
            raise NetK8sError(f"unsupported API server address {server!r}: expected http://host:port")
        self.server = server.rstrip("/")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.timeout = timeout
        self._local = threading.local()

    # -- transport -------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json") -> Any:
        status, data = self._raw(method, path, body, query, content_type)
        return self._decode(status, data)

    def get_text(self, path: str, query: dict[str, Any] | None = None) -> str:
        """GET a non-JSON resource (pods/log); failures still come back as ApiError."""
        status, data = self._raw("GET", path, None, query, "application/json")
        if status >= 400:
            self._decode(status, data)
        return data.decode(errors="replace")

    @staticmethod
    def _url(path: str, query: dict[str, Any] | None) -> str:
        """``path`` with the query's set parameters (None and "" are left out)."""
        params = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
        return f"{path}?{urllib.parse.urlencode(params)}" if params else path

    def _raw(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
             content_type: str) -> tuple[int, bytes]:
        url = self._url(path, query)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, url, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as exc:
                # A kept-alive connection the server closed: retry once on a new one.
                self._drop_connection()
                if attempt == 2:
                    raise ApiUnavailable(f"cannot reach the API server at {self.server}: {exc}") from None
        return response.status, data

    @staticmethod
    def _decode(status: int, data: bytes) -> Any:
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        if status >= 400:
            raise ApiError(status, decoded.get("reason", ""), decoded.get("message", f"HTTP {status}"), decoded)
        return decoded

    # -- verbs ---------------------------------------------------------------------------

    def get(self, resource: ResourceType, name: str, namespace: str | None = None,
            subresource: str | None = None) -> dict:
        path = resource.object_path(name, namespace)
        return self.request("GET", f"{path}/{subresource}" if subresource else path)

    def list(self, resource: ResourceType, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None, continue_token: str | None = None) -> dict:
        return self.request("GET", resource.collection_path(namespace), query={
            "labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
            "continue": continue_token})

    def create(self, resource: ResourceType, obj: dict, namespace: str | None = None, dry_run: bool = False) -> dict:
        ns = namespace or (obj.get("metadata") or {}).get("namespace") if resource.namespaced else None
        return self.request("POST", resource.collection_path(ns), obj, {"dryRun": "All" if dry_run else None})

    def update(self, resource: ResourceType, obj: dict, subresource: str | None = None,
               dry_run: bool = False) -> dict:
        md = obj.get("metadata") or {}
        path = resource.object_path(md["name"], md.get("namespace") if resource.namespaced else None)
        return self.request("PUT", f"{path}/{subresource}" if subresource else path, obj,
                            {"dryRun": "All" if dry_run else None})

    def update_status(self, resource: ResourceType, obj: dict) -> dict:
        return self.update(resource, obj, subresource="status")

    def patch(self, resource: ResourceType, name: str, patch: Any, namespace: str | None = None,
              patch_type: str = "merge", subresource: str | None = None) -> dict:
        path = resource.object_path(name, namespace)
        return self.request("PATCH", f"{path}/{subresource}" if subresource else path, patch,
                            content_type=PATCH_TYPES[patch_type])

    def delete(self, resource: ResourceType, name: str, namespace: str | None = None,
               propagation: str | None = None, grace_period: int | None = None,
               preconditions: dict | None = None) -> dict:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation:
            body["propagationPolicy"] = propagation
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if preconditions:
            body["preconditions"] = preconditions
        return self.request("DELETE", resource.object_path(name, namespace), body)

    def bind(self, namespace: str, pod_name: str, node_name: str) -> dict:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod_name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}}
        return self.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod_name}/binding", body)

    def watch(self, resource: ResourceType, namespace: str | None = None, resource_version: str | int = "",
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int | None = None) -> WatchStream:
        query = {"watch": "true", "resourceVersion": str(resource_version or ""),
                 "labelSelector": label_selector, "fieldSelector": field_selector,
                 "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true"}
        return WatchStream(*self._open_stream(self._url(resource.collection_path(namespace), query)))

    def stream_text(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """GET a streamed non-JSON resource (``pods/log?follow=true``): its chunks as they come."""
        conn, response = self._open_stream(self._url(path, query))
        try:
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    return
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnavailable(f"stream from the API server broken: {exc!r}") from None
        finally:
            conn.close()

    def _open_stream(self, url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        # A dedicated connection with no read timeout: a stream is idle until something happens.
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            response = conn.getresponse()
            conn.sock.settimeout(None)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ApiUnavailable(f"cannot reach the API server at {self.server}: {exc}") from None
        if response.status >= 400:
            data = response.read()
            conn.close()
            self._decode(response.status, data)
        return conn, response

    def close(self) -> None:
        self._drop_connection()
