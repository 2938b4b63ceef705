"""Container probes (httpGet, tcpSocket, exec), run the way the kubelet runs them.

httpGet and tcpSocket probes connect from the *node's* network namespace to
the pod IP (the kubelet is a node process); exec probes run the command inside
the pod's namespace. ``ProbeState`` applies initialDelaySeconds, periodSeconds,
successThreshold and failureThreshold.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass
from enum import Enum

from netk8s.kernel import netns


class ProbeResult(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"


def _resolve_port(port: int | str, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for cport in container.get("ports") or []:
        if cport.get("name") == port:
            return int(cport["containerPort"])
    return None


def run_probe(probe: dict, container: dict, pod_ip: str, node_netns: str, pod_netns: str | None) -> tuple[ProbeResult, str]:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "exec" in probe:
        command = (probe["exec"] or {}).get("command") or []
        if not command:
            return ProbeResult.FAILURE, "exec probe without command"
        argv = ["ip", "netns", "exec", pod_netns, *command] if pod_netns else list(command)
        try:
            result = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ProbeResult.FAILURE, f"command timed out after {timeout:g}s"
        except OSError as exc:
            return ProbeResult.FAILURE, str(exc)
        if result.returncode == 0:
            return ProbeResult.SUCCESS, ""
        return ProbeResult.FAILURE, f"command exited with {result.returncode}"
    handler = probe.get("httpGet") or probe.get("tcpSocket")
    if handler is None:
        return ProbeResult.FAILURE, "probe has no handler (httpGet, tcpSocket or exec)"
    port = _resolve_port(handler.get("port", 0), container)
    if port is None:
        return ProbeResult.FAILURE, f"unknown named port {handler.get('port')!r}"
    host = handler.get("host") or pod_ip
    sock = netns.socket_in(node_netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        if "tcpSocket" in probe:
            return ProbeResult.SUCCESS, ""
        path = handler.get("path") or "/"
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock  # reuse the socket made inside the node namespace
        headers = {h.get("name", ""): h.get("value", "") for h in handler.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.32")
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if 200 <= response.status < 400:
            return ProbeResult.SUCCESS, ""
        return ProbeResult.FAILURE, f"HTTP probe failed with statuscode: {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult.FAILURE, f'Get "http://{host}:{port}{handler.get("path", "/")}": {exc}' \
            if "httpGet" in probe else f"dial tcp {host}:{port}: {exc}"
    finally:
        sock.close()


@dataclass
class ProbeState:
    probe: dict
    started_at: float
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    result: bool = False
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started_at + float(self.probe.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, result: ProbeResult, message: str, now: float) -> bool:
        """Fold one probe result in; returns True when the probe's verdict changed."""
        self.next_at = now + float(self.probe.get("periodSeconds", 10))
        self.last_message = message
        before = self.result
        if result is ProbeResult.SUCCESS:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.probe.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.probe.get("failureThreshold", 3)):
                self.result = False
        return before != self.result
