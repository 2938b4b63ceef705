"""kube-proxy's runtime endpoints on a node: healthz/livez, metrics/proxyMode, service health checks.

Like kube-proxy (pkg/proxy/healthcheck and cmd/kube-proxy), each node serves,
inside its own network namespace:

- ``0.0.0.0:10256`` ``/healthz`` and ``/livez``: 200 while the proxier's last
  successful sync is younger than the healthz timeout (kube-proxy: twice the
  sync period), else 503; ``/healthz`` is also 503 when the node is being
  deleted or tainted ``ToBeDeletedByClusterAutoscaler``. The JSON body is
  kube-proxy's (``lastUpdated``, ``currentTime``, ``nodeEligible``, ``healthy``,
  per-family ``status``) plus ``nodeName``, which netk8s adds so a probe shows
  which node answered;
- ``127.0.0.1:10249`` ``/proxyMode`` (``iptables`` or ``nftables``),
  ``/metrics`` (a few kube-proxy metrics in Prometheus text) and ``/healthz``;
- one HTTP server per ``healthCheckNodePort`` of the LoadBalancer Services with
  ``externalTrafficPolicy: Local``: 200 when this node has ready local
  endpoints for the Service and the proxier is healthy, else 503, with
  kube-proxy's exact body and headers. Cloud load balancers probe this port to
  send traffic only to nodes that can serve it locally.

The response logic is pure (``healthz_response``, ``service_health_response``,
``health_checks``, ...) and unit-tested with a fake clock. ``ProxyHealth`` is
the Controller that runs the servers: sockets are created in the node
namespace with ``netns.socket_in`` and served from threads, so no process is
started. As in kube-proxy, the service health checks follow what the proxier
installed, not the API: the proxier's ``after_sync`` hook hands each sync's
state to ``ProxyHealth.after_sync``, which recomputes the checks of the
services that changed only. It watches nothing but its own Node.
``prepare_node`` sets the sysctls kube-proxy sets before its first sync.
"""

from __future__ import annotations

import datetime as _dt
import http.server
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import NamedTuple

from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.events import WARNING, EventRecorder
from netk8s.client.informer import Informer
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.proxy.backend import ProxyState, ServiceKey
from netk8s.proxy.model import Endpoint, ServicePort, ServiceType
from netk8s.topology import ProxyMode

log = logging.getLogger(__name__)

HEALTHZ_PORT = 10256
METRICS_PORT = 10249
DEFAULT_SYNC_PERIOD = 30.0
# kube-proxy's healthz timeout is twice its iptables/nftables sync period.
DEFAULT_HEALTHZ_TIMEOUT = 2 * DEFAULT_SYNC_PERIOD
# Set by the cluster autoscaler on a node it is about to remove: kube-proxy's healthz then fails.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
IPV4 = "IPv4"

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class HealthConfig:
    """Where one node's kube-proxy serves its health and metrics endpoints (kube-proxy's defaults)."""

    healthz_address: IPv4Address = IPv4Address("0.0.0.0")
    healthz_port: int = HEALTHZ_PORT
    metrics_address: IPv4Address = IPv4Address("127.0.0.1")
    metrics_port: int = METRICS_PORT
    healthz_timeout: float = DEFAULT_HEALTHZ_TIMEOUT
    # Health check node ports listen on every node address, as with kube-proxy's default nodePortAddresses.
    health_check_address: IPv4Address = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status code, body, content type and extra headers."""

    status: int
    body: str
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()

    def json(self) -> dict:
        return json.loads(self.body)


NOT_FOUND = Response(404, "404 page not found\n", TEXT, (("X-Content-Type-Options", "nosniff"),))


class ServiceName(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class HealthCheck:
    """The health check node port of one Service on this node, and its ready local endpoint count."""

    service: ServiceName
    port: int
    local_endpoints: int


# -- pure logic ---------------------------------------------------------------------------------

def go_time(seconds: float | None) -> str:
    """A Unix time as Go marshals a UTC time.Time in JSON (RFC 3339, fraction without trailing zeros).

    None is Go's zero time, which kube-proxy reports before its first sync.
    """
    if seconds is None:
        return _GO_ZERO_TIME
    # A float Unix time carries about microsecond precision; Go would print nanoseconds, trailing zeros cut.
    micros = round(seconds * 1_000_000)
    whole, frac = divmod(micros, 1_000_000)
    stamp = _dt.datetime.fromtimestamp(whole, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:06d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def proxier_healthy(last_sync: float | None, now: float, started: float, timeout: float) -> bool:
    """The proxier is healthy while its last successful sync is younger than ``timeout``.

    Before the first sync it counts as healthy for ``timeout`` after start-up
    (kube-proxy: "the proxier is healthy while it's starting up").
    """
    reference = last_sync if last_sync is not None else started
    return now - reference < timeout


def node_eligible(node: dict | None, deleted: bool = False) -> bool:
    """kube-proxy's node eligibility: not deleted, not being deleted, not tainted for autoscaler removal.

    An unknown node (not registered yet) is eligible, as kube-proxy assumes while it starts.
    """
    if deleted:
        return False
    if node is None:
        return True
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return not any(t.get("key") == TO_BE_DELETED_TAINT for t in (node.get("spec") or {}).get("taints") or [])


_NOSNIFF = (("X-Content-Type-Options", "nosniff"),)


def _health_body(last_sync: float | None, now: float, healthy: bool, answer_ok: bool,
                 extra: Mapping[str, object]) -> str:
    """kube-proxy's ProxyHealth JSON (Go field order), with ``extra`` fields after ``currentTime``.

    As in kube-proxy, ``lastUpdated`` is the current time when the answer is 200
    (older releases reported every sync loop run there), else the last sync;
    the per-family ``status`` is left out before the first sync.
    """
    body: dict[str, object] = {"lastUpdated": go_time(now if answer_ok else last_sync),
                               "currentTime": go_time(now), **extra, "healthy": healthy}
    if last_sync is not None:
        body["status"] = {IPV4: {"lastUpdated": go_time(last_sync), "healthy": healthy}}
    return json.dumps(body, separators=(",", ":"))


def healthz_response(node_name: str, last_sync: float | None, now: float, healthy: bool, eligible: bool) -> Response:
    """``/healthz``: 200 when the proxier is healthy and the node eligible, else 503."""
    ok = healthy and eligible
    body = _health_body(last_sync, now, healthy, ok, {"nodeName": node_name, "nodeEligible": eligible})
    return Response(200 if ok else 503, body, JSON, _NOSNIFF)


def livez_response(last_sync: float | None, now: float, healthy: bool) -> Response:
    """``/livez``: like ``/healthz`` but about the proxier alone (node eligibility does not count)."""
    return Response(200 if healthy else 503, _health_body(last_sync, now, healthy, healthy, {}), JSON, _NOSNIFF)


def service_health_response(service: ServiceName, local_endpoints: int, proxy_healthy: bool) -> Response:
    """A health check node port's answer, byte for byte kube-proxy's (tab-indented JSON, no final newline)."""
    body = "\n".join([
        "{",
        '\t"service": {',
        f'\t\t"namespace": {json.dumps(service.namespace)},',
        f'\t\t"name": {json.dumps(service.name)}',
        "\t},",
        f'\t"localEndpoints": {local_endpoints},',
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}',
        "}",
    ])
    ok = local_endpoints != 0 and proxy_healthy
    headers = _NOSNIFF + (("X-Load-Balancing-Endpoint-Weight", str(local_endpoints)),)
    return Response(200 if ok else 503, body, JSON, headers)


def proxy_mode_response(mode: ProxyMode) -> Response:
    return Response(200, mode.value, TEXT, _NOSNIFF)


def health_checks(service_ports: Iterable[ServicePort],
                  endpoints: Mapping[str, Sequence[Endpoint]]) -> dict[ServiceName, HealthCheck]:
    """The Services this node serves a health check node port for, with their ready local endpoint counts.

    Only LoadBalancer Services with ``externalTrafficPolicy: Local`` and a
    ``healthCheckNodePort`` get one (kube-proxy's NeedsHealthCheck). Endpoints
    count once per IP across the Service's ports (10.0.0.1:80 and 10.0.0.1:443
    are one endpoint); terminating ones do not count, even though they may
    still serve traffic, so load balancers stop choosing the node.
    """
    ports: dict[ServiceName, int] = {}
    local_ips: dict[ServiceName, set[IPv4Address]] = {}
    for sp in service_ports:
        if (sp.service_type is not ServiceType.LOAD_BALANCER or not sp.external_policy_local
                or not sp.health_check_node_port):
            continue
        name = ServiceName(sp.namespace, sp.name)
        ports[name] = sp.health_check_node_port
        ips = local_ips.setdefault(name, set())
        ips.update(ep.ip for ep in endpoints.get(sp.service_port_name, ()) if ep.is_local and ep.ready)
    return {name: HealthCheck(name, port, len(local_ips[name])) for name, port in sorted(ports.items())}


def metrics_text(last_sync: float | None, healthz_counts: Mapping[int, int],
                 livez_counts: Mapping[int, int]) -> str:
    """A minimal kube-proxy ``/metrics`` page in the Prometheus text format."""
    lines = [
        "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were "
        "successfully synced",
        "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
        f"kubeproxy_sync_proxy_rules_last_timestamp_seconds {last_sync if last_sync is not None else 0:.9g}",
    ]
    for name, what, counts in (("kubeproxy_healthz_total", "healthz", healthz_counts),
                               ("kubeproxy_livez_total", "livez", livez_counts)):
        lines += [f"# HELP {name} [ALPHA] Cumulative proxy {what} HTTP status", f"# TYPE {name} counter"]
        lines += [f'{name}{{code="{code}"}} {count}' for code, count in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def node_sysctls(mode: ProxyMode) -> dict[str, str]:
    """The sysctls kube-proxy sets in a node before its first sync.

    iptables mode serves NodePorts on 127.0.0.1 too, which needs
    ``route_localnet`` (the kernel otherwise drops packets to 127/8 that
    are not on lo once DNAT sends them elsewhere); the nftables mode does not
    support localhost NodePorts and leaves it alone.
    """
    return {"net.ipv4.conf.all.route_localnet": "1"} if mode is ProxyMode.IPTABLES else {}


def prepare_node(netns_name: str, mode: ProxyMode | str) -> dict[str, str]:
    """Set ``node_sysctls(mode)`` in the node namespace; call before the proxier's first sync."""
    values = node_sysctls(ProxyMode(mode))
    for key, value in values.items():
        netns.write_sysctl(netns_name, key, value)
    return values


# -- HTTP servers inside a namespace ----------------------------------------------------------------

Router = Callable[[str], "Response | None"]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds an idle kept-alive connection may hold its thread

    def send_response(self, code: int, message: str | None = None) -> None:
        # Like Go's net/http: a Date header but no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            response = self.server.router(path) or NOT_FOUND
        except Exception:  # a handler bug must not kill the server thread
            log.exception("health endpoint %s failed", path)
            response = Response(500, "internal error\n", TEXT)
        data = response.body.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(True)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a prober's kept-alive connection

    def __init__(self, sock: socket.socket, router: Router) -> None:
        # BaseServer, not TCPServer: the listening socket already exists (made inside the namespace).
        socketserver.BaseServer.__init__(self, sock.getsockname(), _Handler)
        self.socket = sock
        self.router = router


class NetnsHttpServer:
    """An HTTP server whose listening socket lives in a network namespace, served from a thread."""

    def __init__(self, netns_name: str, address: IPv4Address, port: int, router: Router, name: str) -> None:
        self.netns_name = netns_name
        self.address = address
        self.requested_port = port
        self.router = router
        self.name = name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the kernel's pick when 0 was asked for)."""
        return self._server.server_address[1] if self._server is not None else self.requested_port

    def start(self) -> "NetnsHttpServer":
        sock = netns.socket_in(self.netns_name, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self.address), self.requested_port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise KernelError(f"cannot listen on {self.address}:{self.requested_port} in {self.netns_name} "
                              f"for {self.name}: {exc.strerror or exc}") from None
        self._server = _Server(sock, self.router)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"http-{self.name}", daemon=True)
        self._thread.start()
        log.debug("%s: serving %s on %s:%d", self.netns_name, self.name, self.address, self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)


# -- the controller ---------------------------------------------------------------------------------

_SYNC_KEY = "health"


class ProxyHealth(Controller):
    """One node's kube-proxy health servers, driven by Services, EndpointSlices and the Node.

    ``last_sync`` returns the Unix time (``time.time()``) of the proxier's last
    successful sync, or None before the first one.
    """

    name = "kube-proxy-health"

    def __init__(self, client: ApiClient, node_name: str, netns_name: str, mode: ProxyMode | str,
                 last_sync: Callable[[], float | None], config: HealthConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(client)
        self.name = f"kube-proxy-health-{node_name}"
        self.node_name = node_name
        self.netns_name = netns_name
        self.mode = ProxyMode(mode)
        self.last_sync = last_sync
        self.config = config or HealthConfig()
        self.clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._checks: dict[ServiceName, HealthCheck] = {}
        self._check_servers: dict[ServiceName, NetnsHttpServer] = {}
        self._node_deleted = False
        self._healthz_counts: dict[int, int] = {}
        self._livez_counts: dict[int, int] = {}
        self._servers: list[NetnsHttpServer] = []
        self._recorder: EventRecorder | None = None
        self._nodes: Informer | None = None

    # -- responses (what the servers answer; callable without any server) ------------------------

    def proxier_healthy(self) -> bool:
        return proxier_healthy(self.last_sync(), self.clock(), self._started, self.config.healthz_timeout)

    def node_eligible(self) -> bool:
        node = self._nodes.get(self.node_name) if self._nodes is not None else None
        return node_eligible(node, self._node_deleted)

    def healthz(self) -> Response:
        last, now = self.last_sync(), self.clock()
        healthy = proxier_healthy(last, now, self._started, self.config.healthz_timeout)
        response = healthz_response(self.node_name, last, now, healthy, self.node_eligible())
        with self._lock:
            self._healthz_counts[response.status] = self._healthz_counts.get(response.status, 0) + 1
        return response

    def livez(self) -> Response:
        last, now = self.last_sync(), self.clock()
        response = livez_response(last, now, proxier_healthy(last, now, self._started, self.config.healthz_timeout))
        with self._lock:
            self._livez_counts[response.status] = self._livez_counts.get(response.status, 0) + 1
        return response

    def metrics(self) -> Response:
        with self._lock:
            healthz, livez = dict(self._healthz_counts), dict(self._livez_counts)
        return Response(200, metrics_text(self.last_sync(), healthz, livez), PROMETHEUS)

    def service_health(self, service: ServiceName) -> Response | None:
        """The health check answer for ``service``; None when this node serves no check for it."""
        with self._lock:
            check = self._checks.get(service)
        if check is None:
            return None
        return service_health_response(service, check.local_endpoints, self.proxier_healthy())

    def health_checks(self) -> dict[ServiceName, HealthCheck]:
        with self._lock:
            return dict(self._checks)

    def _healthz_router(self, path: str) -> Response | None:
        return {"/healthz": self.healthz, "/livez": self.livez}.get(path, lambda: None)()

    def _metrics_router(self, path: str) -> Response | None:
        if path == "/proxyMode":
            return proxy_mode_response(self.mode)
        if path == "/metrics":
            return self.metrics()
        if path == "/healthz":
            return Response(200, "ok", TEXT, _NOSNIFF)
        return None

    # -- wiring ----------------------------------------------------------------------------------

    def setup(self) -> None:
        self._nodes = self.informer(NODES, field_selector=f"metadata.name={self.node_name}")
        self._nodes.add_handler(self._on_node)

    def after_sync(self, old: ProxyState | None, new: ProxyState, changed: frozenset[ServiceKey]) -> None:
        """The proxier applied ``new``: update the health checks of the ``changed`` services (all on
        the first sync) and have the worker open and close their servers."""
        if old is None:
            wanted = health_checks(new.service_ports, new.endpoints)
        else:
            with self._lock:
                wanted = dict(self._checks)
            for key in changed:
                wanted.pop(ServiceName(*key.split("/", 1)), None)
            ports = new.ports_of(changed)
            wanted.update(health_checks((sp for key in changed for sp in ports.get(key, ())), new.endpoints))
        with self._lock:
            self._checks = wanted
        self.queue.add(_SYNC_KEY)

    def _on_node(self, event: str, old: dict | None, new: dict | None) -> None:
        self._node_deleted = event == "DELETED"

    def start(self) -> None:
        self._started = self.clock()
        cfg = self.config
        self._recorder = EventRecorder(self.client, "kube-proxy", self.node_name)
        for address, port, router, what in (
                (cfg.healthz_address, cfg.healthz_port, self._healthz_router, "healthz"),
                (cfg.metrics_address, cfg.metrics_port, self._metrics_router, "metrics")):
            server = NetnsHttpServer(self.netns_name, address, port, router, f"kube-proxy-{what}-{self.node_name}")
            server.start()
            self._servers.append(server)
        self.queue.add(_SYNC_KEY)
        super().start()

    @property
    def healthz_port(self) -> int:
        return self._servers[0].port if self._servers else self.config.healthz_port

    @property
    def metrics_port(self) -> int:
        return self._servers[1].port if len(self._servers) > 1 else self.config.metrics_port

    def sync(self, key: str) -> None:
        wanted = self.health_checks()
        failed: list[str] = []
        for name, server in list(self._check_servers.items()):
            if name not in wanted or wanted[name].port != server.requested_port:
                log.info("%s: closing health check %s on port %d", self.node_name, name, server.requested_port)
                server.stop()
                del self._check_servers[name]
        for name, check in wanted.items():
            if name in self._check_servers:
                continue
            server = NetnsHttpServer(self.netns_name, self.config.health_check_address, check.port,
                                     self._check_router(name), f"healthcheck-{name}")
            try:
                server.start()
            except KernelError as exc:
                message = (f"node {self.node_name} failed to start healthcheck \"{name}\" on port "
                           f"{check.port}: {exc}")
                self._record_failure(name, message)
                failed.append(message)
                continue
            log.info("%s: opened health check %s on port %d", self.node_name, name, check.port)
            self._check_servers[name] = server
        if failed:
            raise KernelError(failed[0])  # retried with back-off, like kube-proxy's next sync

    def _check_router(self, name: ServiceName) -> Router:
        # kube-proxy's health check servers answer on every path.
        return lambda path: self.service_health(name)

    def _record_failure(self, name: ServiceName, message: str) -> None:
        if self._recorder is None:
            return
        ref = {"kind": "Service", "apiVersion": "v1",
               "metadata": {"namespace": name.namespace, "name": name.name, "uid": str(name)}}
        self._recorder.event(ref, WARNING, "FailedToStartServiceHealthcheck", message)

    def stop(self) -> None:
        super().stop()
        for server in list(self._check_servers.values()) + self._servers:
            server.stop()
        self._check_servers.clear()
        self._servers.clear()
        if self._recorder is not None:
            self._recorder.stop()
            self._recorder = None
