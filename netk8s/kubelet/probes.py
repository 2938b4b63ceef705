"""Container probes: startup, liveness and readiness, run the way the kubelet's prober runs them.

``ProbeSpec`` is a probe with the API defaults applied (period 10 s, timeout
1 s, success 1, failure 3). ``ProbeWorker`` is pkg/kubelet/prober's per
container worker as a pure state machine: a result is published only after
``successThreshold``/``failureThreshold`` consecutive equal outcomes; the
initial result is Failure for readiness, Success for liveness and unknown for
startup; nothing runs before ``initialDelaySeconds``; liveness and readiness
wait until the startup probe has succeeded; a failing liveness or startup
probe puts the worker on hold until the next container instance (the kubelet
kills and restarts the container).

``run_probe`` performs one check: httpGet and tcpSocket connect from the
*node's* network namespace to the pod IP (the kubelet is a node process);
exec runs the command inside the pod (its namespaces, via an argv prefix the
sandbox provides). Messages use the kubelet's (Go's) wording, e.g.
``HTTP probe failed with statuscode: 500`` or ``dial tcp 10.244.1.2:80:
connect: connection refused``. gRPC probes are not run: the result is
reported as success with a warning.
"""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from netk8s.kernel import netns

DEFAULT_PERIOD = 10.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_SUCCESS = 1
DEFAULT_FAILURE = 3
MAX_BODY = 10 * 1024
USER_AGENT = "kube-probe/1.32"
GRPC_UNSUPPORTED = "gRPC probes are not supported by netk8s; treated as passing"


class ProbeKind(str, Enum):
    LIVENESS = "Liveness"
    READINESS = "Readiness"
    STARTUP = "Startup"

    @property
    def field(self) -> str:
        return f"{self.value[0].lower()}{self.value[1:]}Probe"


class ProbeResult(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    WARNING = "warning"  # success with a remark (the kubelet's probe.Warning)
    UNKNOWN = "unknown"  # the probe itself errored: the result is thrown away


class ProbeVerdict(str, Enum):
    """What a recorded result means for the container."""

    NONE = "none"
    CHANGED = "changed"  # the published result flipped (readiness, startup success)
    KILL = "kill"        # liveness or startup failed: kill and (per restartPolicy) restart


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    handler: dict
    initial_delay: float = 0.0
    period: float = DEFAULT_PERIOD
    timeout: float = DEFAULT_TIMEOUT
    success_threshold: int = DEFAULT_SUCCESS
    failure_threshold: int = DEFAULT_FAILURE
    termination_grace: float | None = None

    @classmethod
    def from_api(cls, kind: ProbeKind, probe: dict) -> "ProbeSpec":
        def number(key: str, default: float) -> float:
            value = probe.get(key)
            return float(value) if isinstance(value, (int, float)) and value > 0 else default

        success = int(number("successThreshold", DEFAULT_SUCCESS))
        if kind is not ProbeKind.READINESS:
            success = 1  # validation requires 1 for liveness and startup probes
        grace = probe.get("terminationGracePeriodSeconds")
        return cls(kind, probe, initial_delay=number("initialDelaySeconds", 0.0),
                   period=number("periodSeconds", DEFAULT_PERIOD), timeout=number("timeoutSeconds", DEFAULT_TIMEOUT),
                   success_threshold=success, failure_threshold=int(number("failureThreshold", DEFAULT_FAILURE)),
                   termination_grace=float(grace) if isinstance(grace, (int, float)) and grace >= 0 else None)


class ProbeWorker:
    """One probe of one container across its instances (pkg/kubelet/prober/worker.go)."""

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self.result: bool | None = self._initial()
        self.last_result: ProbeResult | None = None
        self.result_run = 0
        self.on_hold = False
        self.in_flight = False
        self.running_since: float | None = None
        self.next_at = 0.0
        self.last_message = ""

    def _initial(self) -> bool | None:
        if self.spec.kind is ProbeKind.READINESS:
            return False
        if self.spec.kind is ProbeKind.LIVENESS:
            return True
        return None

    def container_started(self, now: float) -> None:
        """A new container instance runs: probing starts over."""
        self.result = self._initial()
        self.last_result = None
        self.result_run = 0
        self.on_hold = False
        self.running_since = now
        self.next_at = now + self.spec.initial_delay

    def container_stopped(self) -> None:
        self.running_since = None
        if self.spec.kind is ProbeKind.READINESS:
            self.result = False

    def due(self, now: float, started: bool) -> bool:
        """Whether to probe now. ``started``: the container passed its startup probe (or has none)."""
        if self.running_since is None or self.on_hold or self.in_flight or now < self.next_at:
            return False
        if self.spec.kind is ProbeKind.STARTUP:
            return not started
        return started

    def record(self, result: ProbeResult, message: str, now: float) -> ProbeVerdict:
        self.next_at = now + self.spec.period
        self.last_message = message
        if result is ProbeResult.UNKNOWN:
            return ProbeVerdict.NONE
        outcome = ProbeResult.FAILURE if result is ProbeResult.FAILURE else ProbeResult.SUCCESS
        if outcome is self.last_result:
            self.result_run += 1
        else:
            self.last_result = outcome
            self.result_run = 1
        failed = outcome is ProbeResult.FAILURE
        if (failed and self.result_run < self.spec.failure_threshold) or \
                (not failed and self.result_run < self.spec.success_threshold):
            return ProbeVerdict.NONE
        before = self.result
        self.result = not failed
        if failed and self.spec.kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
            self.on_hold = True
            self.result_run = 0
            return ProbeVerdict.KILL
        return ProbeVerdict.CHANGED if before != self.result else ProbeVerdict.NONE


# -- running one probe ------------------------------------------------------------------------------

def _resolve_port(port: int | str, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for cport in container.get("ports") or []:
        if cport.get("name") == port:
            return int(cport["containerPort"])
    return None


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connect: connection refused",
    errno.EHOSTUNREACH: "connect: no route to host",
    errno.ENETUNREACH: "connect: network is unreachable",
    errno.ECONNRESET: "read: connection reset by peer",
}


def _go_dial_error(host: str, port: int, exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"dial tcp {host}:{port}: i/o timeout"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return f"dial tcp {host}:{port}: {_ERRNO_TEXT[exc.errno]}"
    return f"dial tcp {host}:{port}: {exc}"


def run_exec(command: Sequence[str], prefix: Sequence[str], timeout: float,
             env: dict[str, str] | None = None) -> tuple[ProbeResult, str]:
    """An exec probe: the command's combined output is the message; exit 0 passes."""
    if not command:
        return ProbeResult.UNKNOWN, "exec probe without command"
    try:
        proc = subprocess.Popen([*prefix, *command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as exc:
        return ProbeResult.UNKNOWN, f"{command[0]}: {exc.strerror}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return ProbeResult.FAILURE, f"command {' '.join(command)!r} timed out"
    text = out.decode(errors="replace")[:MAX_BODY]
    return (ProbeResult.SUCCESS if proc.returncode == 0 else ProbeResult.FAILURE), text


def run_tcp(host: str, port: int, node_netns: str, timeout: float) -> tuple[ProbeResult, str]:
    sock = netns.socket_in(node_netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        return ProbeResult.SUCCESS, ""
    except OSError as exc:
        return ProbeResult.FAILURE, _go_dial_error(host, port, exc)
    finally:
        sock.close()


def run_http(handler: dict, host: str, port: int, node_netns: str, timeout: float) -> tuple[ProbeResult, str]:
    scheme = str(handler.get("scheme") or "HTTP").lower()
    path = str(handler.get("path") or "")
    url = f"{scheme}://{host}:{port}{path}"
    sock = netns.socket_in(node_netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect((host, port))
        except OSError as exc:
            return ProbeResult.FAILURE, f'Get "{url}": {_go_dial_error(host, port, exc)}'
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
            conn.sock = context.wrap_socket(sock, server_hostname=host)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.sock = sock  # a socket made inside the node namespace
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        for header in handler.get("httpHeaders") or []:
            if header.get("name"):
                headers[str(header["name"])] = str(header.get("value", ""))
        conn.request("GET", path or "/", headers=headers)
        response = conn.getresponse()
        body = response.read(MAX_BODY).decode(errors="replace")
        if 200 <= response.status < 400:
            return ProbeResult.SUCCESS, body
        return ProbeResult.FAILURE, f"HTTP probe failed with statuscode: {response.status}"
    except (socket.timeout, TimeoutError):
        return ProbeResult.FAILURE, \
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult.FAILURE, f'Get "{url}": {exc}'
    finally:
        sock.close()


def run_probe(spec: ProbeSpec, container: dict, pod_ip: str, node_netns: str,
              exec_prefix: Sequence[str], exec_env: dict[str, str] | None = None) -> tuple[ProbeResult, str]:
    """Run one probe once; returns the outcome and the kubelet-style message."""
    probe = spec.handler
    if "exec" in probe:
        return run_exec([str(c) for c in (probe.get("exec") or {}).get("command") or []], exec_prefix, spec.timeout,
                        exec_env)
    if "grpc" in probe:
        return ProbeResult.WARNING, GRPC_UNSUPPORTED
    handler = probe.get("httpGet") if "httpGet" in probe else probe.get("tcpSocket")
    if not isinstance(handler, dict):
        return ProbeResult.UNKNOWN, "probe has no handler (httpGet, tcpSocket, exec or grpc)"
    port = _resolve_port(handler.get("port", 0), container)
    if port is None:
        return ProbeResult.UNKNOWN, f"unknown named port {handler.get('port')!r}"
    host = str(handler.get("host") or pod_ip)
    if "httpGet" in probe:
        return run_http(handler, host, port, node_netns, spec.timeout)
    return run_tcp(host, port, node_netns, spec.timeout)
