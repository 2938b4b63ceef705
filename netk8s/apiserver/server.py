"""HTTP front of the API server (aiohttp): Kubernetes paths, verbs and watch streams.

Routes ``/api/v1/...`` and ``/apis/<group>/<version>/...`` onto the
``Registry``; serves discovery (``/api``, ``/apis``, ``/version``) and health
endpoints; streams watches as newline-delimited JSON events over chunked
HTTP, like kube-apiserver. Every failure leaves as a ``Status`` object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from netk8s.api.resources import PODS, ResourceType, all_groups, by_plural, resources_in
from netk8s.api.selectors import (
    FieldRequirement,
    FieldSelector,
    parse_field_selector,
    parse_label_selector,
)
from netk8s.apiserver import openapi, protobuf, tables
from netk8s.apiserver import status as st
from netk8s.apiserver.registry import ListOptions, Registry
from netk8s.cluster.naming import container_log_path
from netk8s.errors import ValidationError

log = logging.getLogger(__name__)

KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-netk8s", "gitCommit": "netk8s",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "python",
                "compiler": "cpython", "platform": "linux/amd64"}

# A watcher that falls this far behind is cut off; its client re-lists.
_MAX_WATCH_BACKLOG = 20_000
_DEFAULT_WATCH_TIMEOUT = 1800.0
# Watches that asked for bookmarks get one after this long without events (kube-apiserver: about a minute).
_BOOKMARK_INTERVAL = 60.0
APPLY_PATCH = "application/apply-patch+yaml"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _json_response(obj: Any, code: int = 200, warnings: list[str] | None = None) -> web.Response:
    response = web.Response(text=_dumps(obj), status=code, content_type="application/json")
    for text in warnings or ():
        # RFC 7234 warning headers, as kube-apiserver sends them (kubectl prints "Warning: ...").
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{quoted}"')
    return response


def _status_response(err: st.StatusError) -> web.Response:
    return _json_response(err.to_status(), err.code)


def container_log(logs_dir: Path | None, pod: dict, container: str | None, previous: bool) -> Path:
    """The log file ``kubectl logs`` asks for, with kube-apiserver's errors when there is none."""
    name = pod["metadata"]["name"]
    spec = pod.get("spec") or {}
    containers = [c.get("name") for c in spec.get("containers") or []]
    init_containers = [c.get("name") for c in spec.get("initContainers") or []]
    if not container:
        if len(containers) != 1:
            raise st.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                 f"[{' '.join(containers)}]")
        container = containers[0]
    if container not in containers + init_containers:
        raise st.bad_request(f"container {container} is not valid for pod {name}")
    status_of = pod.get("status") or {}
    statuses = {c.get("name"): c for c in (status_of.get("containerStatuses") or [])
                + (status_of.get("initContainerStatuses") or [])}
    status = statuses.get(container) or {}
    restarts = int(status.get("restartCount", 0))
    if previous:
        if restarts == 0:
            raise st.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        restarts -= 1
    path = container_log_path(logs_dir, pod, container, restarts) if logs_dir else None
    if path is None or not path.exists():
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "ContainerCreating")
        raise st.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    return path


def _read_log(path: Path, tail: int | None, limit: int | None) -> tuple[bytes, int]:
    """The part of the log to send, and how far the file was read (where following continues)."""
    data = path.read_bytes()
    size = len(data)
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail > 0 else b""
    if limit is not None:
        data = data[:limit]
    return data, size


@dataclass(frozen=True)
class Target:
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_target(group: str, version: str, tail: str) -> Target:
    """Resolve the part of a path after ``/api/v1/`` or ``/apis/<g>/<v>/``."""
    parts = [p for p in tail.split("/") if p]
    if parts and parts[0] == "watch":  # legacy /watch/ prefix
        parts = parts[1:]
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        candidate = by_plural(group, parts[2])
        if candidate is not None and candidate.namespaced and candidate.version == version:
            namespace = parts[1]
            parts = parts[2:]
    if not parts:
        raise st.path_not_found(tail)
    resource = by_plural(group, parts[0])
    if resource is None or resource.version != version:
        raise st.path_not_found(tail)
    name = parts[1] if len(parts) > 1 else None
    sub = parts[2] if len(parts) > 2 else None
    if len(parts) > 3 or (sub is not None and sub not in resource.subresources):
        raise st.path_not_found(tail)
    return Target(resource, namespace, name, sub)


class ApiServer:
    def __init__(self, registry: Registry, logs_dir: Path | None = None,
                 bookmark_interval: float = _BOOKMARK_INTERVAL) -> None:
        self.registry = registry
        self.logs_dir = logs_dir
        self.bookmark_interval = bookmark_interval
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_get("/version", self._version)
        for path in ("/healthz", "/livez", "/readyz"):
            self.app.router.add_get(path, self._health)
        self.app.router.add_get("/api", self._api_versions)
        self.app.router.add_get("/apis", self._api_groups)
        self.app.router.add_get("/api/v1", self._core_resources)
        self.app.router.add_get("/apis/{group}/{version}", self._group_resources)
        self.app.router.add_get("/openapi/v3", self._openapi_v3_index)
        self.app.router.add_get("/openapi/v3/{path:.*}", self._openapi_v3)
        self.app.router.add_get("/openapi/v2", self._openapi_v2)
        self.app.router.add_route("*", "/api/v1/{tail:.*}", self._core)
        self.app.router.add_route("*", "/apis/{group}/{version}/{tail:.*}", self._grouped)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watch_tasks: set[asyncio.Task] = set()
        self._closing = False

    # -- discovery -----------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return _json_response(KUBE_VERSION)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _api_versions(self, request: web.Request) -> web.Response:
        return _json_response({"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                               "serverAddress": request.host}]})

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups = []
        for group, versions in all_groups().items():
            if not group:
                continue
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return _json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    @staticmethod
    def _resource_list(group: str, version: str) -> dict:
        resources = []
        for r in resources_in(group, version):
            entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                                     "kind": r.kind, "verbs": list(r.verbs)}
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            if r.categories:
                entry["categories"] = list(r.categories)
            resources.append(entry)
            for sub in r.subresources:
                sub_verbs = ["create"] if sub == "binding" else ["get", "patch", "update"]
                resources.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                                  "kind": "Binding" if sub == "binding" else r.kind, "verbs": sub_verbs})
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    async def _core_resources(self, request: web.Request) -> web.Response:
        return _json_response(self._resource_list("", "v1"))

    async def _group_resources(self, request: web.Request) -> web.Response:
        group, version = request.match_info["group"], request.match_info["version"]
        if version not in all_groups().get(group, []):
            return _status_response(st.path_not_found(request.path))
        return _json_response(self._resource_list(group, version))

    # -- OpenAPI ---------------------------------------------------------------------------

    async def _openapi_v3_index(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi.openapi_v3_index_bytes(), content_type="application/json")

    async def _openapi_v3(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = openapi.openapi_v3_document_bytes(path)
        if body is None:
            return _status_response(st.path_not_found(request.path))
        wanted = request.query.get("hash")
        if wanted and wanted != openapi.openapi_v3_hash(path):
            raise web.HTTPMovedPermanently(openapi.openapi_v3_url(path))
        headers = {"Cache-Control": "public, immutable"} if wanted else {}
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _openapi_v2(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "*/*")
        if "json" not in accept and "*/*" not in accept:
            # kubectl asks for the protobuf encoding only; netk8s serves JSON (and v3).
            return _status_response(st.StatusError(406, "NotAcceptable",
                                                   "only application/json is served for /openapi/v2"))
        return web.Response(body=openapi.openapi_v2_bytes(), content_type="application/json")

    # -- resources -------------------------------------------------------------------------

    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, "", "v1", request.match_info["tail"])

    async def _grouped(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, request.match_info["group"], request.match_info["version"],
                                    request.match_info["tail"])

    async def _dispatch(self, request: web.Request, group: str, version: str, tail: str) -> web.StreamResponse:
        try:
            target = parse_target(group, version, tail)
            return await self._handle(request, target, tail)
        except st.StatusError as err:
            return _status_response(err)
        except ValidationError as err:
            return _status_response(st.bad_request(str(err)))
        except Exception as exc:  # never a bare 500 without a Status body
            log.exception("API request %s %s failed", request.method, request.path)
            return _status_response(st.internal(str(exc)))

    @staticmethod
    def _list_options(request: web.Request) -> ListOptions:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise st.bad_request(f"invalid limit: {q.get('limit')!r}") from None
        return ListOptions(parse_label_selector(q.get("labelSelector")),
                           parse_field_selector(q.get("fieldSelector")), limit, q.get("continue", ""))

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == protobuf.CONTENT_TYPE:  # `kubectl create ...` sends typed objects this way
            try:
                return protobuf.decode(raw)
            except protobuf.UnsupportedKind as err:
                raise st.StatusError(415, "UnsupportedMediaType", str(err)) from None
            except protobuf.ProtobufError as err:
                raise st.bad_request(str(err)) from None
        try:
            return json.loads(raw)
        except ValueError:
            pass
        try:  # kubectl and curl users sometimes send YAML
            import yaml
            return yaml.safe_load(raw)
        except Exception:
            raise st.bad_request("the request body is not valid JSON or YAML") from None

    async def _handle(self, request: web.Request, target: Target, tail: str) -> web.StreamResponse:
        reg = self.registry
        res, ns, name, sub = target.resource, target.namespace, target.name, target.subresource
        method = request.method
        q = request.query
        dry_run = q.get("dryRun") == "All"
        is_watch = q.get("watch") in ("1", "true", "True") or tail.lstrip("/").startswith("watch/")
        if res.namespaced is False:
            ns = None
        if name is not None and sub in ("log", "scale", "binding"):
            return await self._subresource(request, res, ns, name, sub, dry_run)
        table = tables.table_version(request.headers.get("Accept"))
        validation = q.get("fieldValidation") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise st.bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", got {validation!r}')
        warnings: list[str] = []
        if method == "GET":
            if name is None or is_watch:
                options = self._list_options(request)
                if name is not None:
                    options = ListOptions(options.label_selector, FieldSelector(
                        options.field_selector.requirements + (FieldRequirement("metadata.name", name),)))
                if is_watch:
                    return await self._watch(request, res, ns, options, table)
                listed = reg.list_objects(res, ns, options)
                if table:
                    return _json_response(self._table(res, listed["items"], request, table, listed["metadata"]))
                return _json_response(listed)
            obj = reg.get(res, ns, name)
            if table and sub is None:
                return _json_response(self._table(res, [obj], request, table))
            return _json_response(obj)
        if method == "POST":
            if name is not None:
                raise st.method_not_allowed()
            created = reg.create(res, ns, await self._body(request), dry_run, validation, warnings)
            return _json_response(created, 201, warnings)
        if method == "PUT":
            if name is None:
                raise st.method_not_allowed()
            updated = reg.update(res, ns, name, await self._body(request), sub, dry_run, validation, warnings)
            return _json_response(updated, 200, warnings)
        if method == "PATCH":
            if name is None:
                raise st.method_not_allowed()
            body = await self._body(request)
            if request.content_type == APPLY_PATCH:
                if sub is not None:
                    raise st.method_not_allowed("server-side apply of subresources is not supported")
                obj, created = reg.apply(res, ns, name, body, q.get("fieldManager", ""),
                                         q.get("force") in ("true", "1"), dry_run)
                return _json_response(obj, 201 if created else 200)
            patched = reg.patch(res, ns, name, request.content_type, body, sub, dry_run, validation, warnings)
            return _json_response(patched, 200, warnings)
        if method == "DELETE":
            if name is None:
                return await self._delete_collection(request, res, ns, dry_run)
            body = await self._body(request) or {}
            propagation = q.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
            if propagation not in ("Background", "Foreground", "Orphan"):
                raise st.bad_request(f'unsupported propagationPolicy "{propagation}"')
            grace_text = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
            try:
                grace = None if grace_text in (None, "") else int(grace_text)
            except (TypeError, ValueError):
                raise st.bad_request(f"invalid gracePeriodSeconds {grace_text!r}") from None
            dry_run = dry_run or body.get("dryRun") == ["All"]
            return _json_response(reg.delete(res, ns, name, propagation, body.get("preconditions"), dry_run,
                                             grace))
        raise st.method_not_allowed()

    @staticmethod
    def _table(res: ResourceType, items: list[dict], request: web.Request, version: str,
               list_meta: dict | None = None) -> dict:
        """Server-side printing (``kubectl get``): a meta.k8s.io Table instead of the objects."""
        table = tables.to_table(res, items, request.query.get("includeObject", "Metadata"), list_meta=list_meta)
        if version == "v1beta1":
            table["apiVersion"] = "meta.k8s.io/v1beta1"
        return table

    async def _subresource(self, request: web.Request, res: ResourceType, ns: str | None, name: str, sub: str,
                           dry_run: bool) -> web.StreamResponse:
        reg, method = self.registry, request.method
        if sub == "binding" and method == "POST" and res is PODS:
            return _json_response(reg.bind(ns or "default", name, await self._body(request)), 201)
        if sub == "scale":
            if method == "GET":
                return _json_response(reg.get_scale(res, ns, name))
            if method == "PUT":
                return _json_response(reg.update_scale(res, ns, name, await self._body(request), dry_run))
            if method == "PATCH":
                return _json_response(reg.patch_scale(res, ns, name, request.content_type,
                                                      await self._body(request), dry_run))
        if sub == "log" and method == "GET" and res is PODS:
            return await self._log(request, ns or "default", name)
        raise st.method_not_allowed()

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        q = request.query
        pod = self.registry.get(PODS, namespace, name)
        try:
            tail = int(q["tailLines"]) if q.get("tailLines") else None
            limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        except ValueError:
            raise st.bad_request("tailLines and limitBytes must be integers") from None
        path = container_log(self.logs_dir, pod, q.get("container"), q.get("previous") in ("true", "1"))
        data, position = _read_log(path, tail, limit)
        if q.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        # Follow from where the read ended (not the size now: lines written meanwhile would be lost).
        await response.write(data)
        key = PODS.storage_key(name, namespace)
        uid = pod["metadata"].get("uid")
        try:
            while not self._closing:
                await asyncio.sleep(0.2)
                current = self.registry.store.get(key)
                if path.exists() and path.stat().st_size > position:
                    with open(path, "rb") as f:
                        f.seek(position)
                        chunk = f.read()
                    position += len(chunk)
                    await response.write(chunk)
                if current is None or current["metadata"].get("uid") != uid:
                    break  # the pod is gone: its log ends
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _delete_collection(self, request: web.Request, res: ResourceType, ns: str | None,
                                 dry_run: bool) -> web.Response:
        if "deletecollection" not in res.verbs:
            raise st.method_not_allowed()
        listed = self.registry.list_objects(res, ns, self._list_options(request))
        deleted = []
        for obj in listed["items"]:
            md = obj["metadata"]
            try:
                deleted.append(self.registry.delete(res, md.get("namespace"), md["name"], dry_run=dry_run))
            except st.StatusError as err:
                if err.code != 404:
                    raise
        listed["items"] = deleted
        return _json_response(listed)

    async def _watch(self, request: web.Request, res: ResourceType, ns: str | None,
                     options: ListOptions, table: str | None = None) -> web.StreamResponse:
        q = request.query
        try:
            since = int(q.get("resourceVersion") or 0)
            timeout = float(q.get("timeoutSeconds") or _DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise st.bad_request("resourceVersion and timeoutSeconds must be numbers") from None
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict] | None] = asyncio.Queue()

        def send(event_type: str, obj: dict) -> None:
            # Store callbacks run on whichever thread wrote; hop onto our loop.
            loop.call_soon_threadsafe(queue.put_nowait, (event_type, obj))

        include = q.get("includeObject", "Metadata")
        first = [True]

        def encode(item: tuple[str, dict]) -> str:
            if not table:
                return _dumps({"type": item[0], "object": item[1]})
            event = tables.table_for_watch_event(res, item[0], item[1], include, with_columns=first[0])
            first[0] = False
            if table == "v1beta1":
                event["object"]["apiVersion"] = "meta.k8s.io/v1beta1"
            return _dumps(event)

        cancel = self.registry.watch(res, ns, since, options, send)  # may raise 410 before we start
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            await response.prepare(request)
            deadline = loop.time() + timeout
            while not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if queue.qsize() > _MAX_WATCH_BACKLOG:
                    log.warning("watch on %s fell %d events behind; closing it", res.plural, queue.qsize())
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(remaining, self.bookmark_interval)
                                                  if bookmarks else remaining)
                except asyncio.TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        # Nothing happened for a while: tell the client how far it is up to date.
                        marker = {"kind": res.kind, "apiVersion": res.api_version,
                                  "metadata": {"resourceVersion": str(self.registry.store.revision)}}
                        await response.write((encode(("BOOKMARK", marker)) + "\n").encode())
                        continue
                    break
                if item is None:
                    break
                chunks = [encode(item)]
                while not queue.empty() and len(chunks) < 256:
                    nxt = queue.get_nowait()
                    if nxt is None:
                        break
                    chunks.append(encode(nxt))
                await response.write(("\n".join(chunks) + "\n").encode())
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            cancel()
            if task is not None:
                self._watch_tasks.discard(task)
        return response

    # -- lifecycle -----------------------------------------------------------------------

    def start_in_thread(self, sock: socket.socket) -> None:
        """Serve on an already-bound listening socket from a background thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                             shutdown_timeout=1.0)
                loop.run_until_complete(self._runner.setup())
                site = web.SockSite(self._runner, sock)
                loop.run_until_complete(site.start())
            except BaseException as exc:  # report start-up failures to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="apiserver", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        self._closing = True

        def shutdown() -> None:
            for task in list(self._watch_tasks):
                task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        self._thread.join(timeout=10)


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, listening TCP socket; port 0 picks a free one race-free."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock
