"""The ``netk8s/echo`` built-in image: an HTTP server that tells clients who answered.

Run as ``python -m netk8s.kubelet.images.echo --pod P --namespace N --node X
--pod-ip IP --port 8080 [--port ...]`` inside a pod's network namespace. Every
port gets its own ThreadingHTTPServer (bound to 0.0.0.0) in its own thread.
Any path answers JSON naming the pod, namespace, node, podIP, the client's
``ip:port`` as this server saw it, the local port, the path and the method;
``/healthz`` answers ``ok``. One access-log line per request goes to stdout.
SIGTERM (or SIGINT) stops the servers and exits 0.

Pod processes start often, so this imports only the stdlib.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Sequence

from netk8s.kubelet.images.serving import (
    BindError,
    QuietServer,
    SignalWaiter,
    add_port_option,
    bind_all,
    ports_of,
    serve_in_thread,
    shutdown_all,
)
from netk8s.kubelet.images.serving import write_line as _log

DEFAULT_PORT = 8080


class EchoHandler(BaseHTTPRequestHandler):
    """Answers every method and path with the echo JSON; ``/healthz`` with ``ok``."""

    protocol_version = "HTTP/1.1"
    server_version = "netk8s-echo/1"
    server: "EchoServer"

    def _drain_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > 0:
            self.rfile.read(length)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self._drain_body()
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        client_ip, client_port = self.client_address[0], self.client_address[1]
        body: dict[str, Any] = {
            "pod": self.server.identity["pod"],
            "namespace": self.server.identity["namespace"],
            "node": self.server.identity["node"],
            "podIP": self.server.identity["podIP"],
            "client": f"{client_ip}:{client_port}",
            "port": self.server.server_address[1],
            "path": self.path,
            "method": self.command,
        }
        self._send(200, (json.dumps(body) + "\n").encode(), "application/json")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        _log(f'{self.client_address[0]}:{self.client_address[1]} - - [{stamp}] '
             f'"{self.requestline}" {code} :{self.server.server_address[1]}')

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Errors (bad requests, timeouts) also go to the pod log, not stderr.
        _log(f"{self.client_address[0]}:{self.client_address[1]} - - {format % args}")


class EchoServer(QuietServer):
    """One listening port; carries the pod identity the handler reports."""

    def __init__(self, port: int, identity: dict[str, str]) -> None:
        self.identity = identity
        super().__init__(port, EchoHandler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m netk8s.kubelet.images.echo",
                                     description="netk8s/echo: HTTP server that reports who answered")
    parser.add_argument("--pod", default="", help="pod name")
    parser.add_argument("--namespace", default="", help="pod namespace")
    parser.add_argument("--node", default="", help="node name")
    parser.add_argument("--pod-ip", default="", help="pod IP")
    add_port_option(parser, DEFAULT_PORT)
    args = parser.parse_args(argv)
    args.port = ports_of(parser, args, DEFAULT_PORT)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    identity = {"pod": args.pod, "namespace": args.namespace, "node": args.node, "podIP": args.pod_ip}
    ports = args.port
    signals = SignalWaiter((signal.SIGTERM, signal.SIGINT))

    try:
        servers = bind_all(ports, lambda port: EchoServer(port, identity))
    except BindError as exc:
        sys.stderr.write(f"netk8s/echo: cannot listen on 0.0.0.0:{exc.port}: {exc.strerror}\n")
        return 1

    for server in servers:
        serve_in_thread(server, f"echo-{server.server_address[1]}")
        _log(f"netk8s/echo pod={args.pod} namespace={args.namespace} node={args.node} "
             f"podIP={args.pod_ip} listening on 0.0.0.0:{server.server_address[1]}")

    signals.wait()
    shutdown_all(servers)
    _log("netk8s/echo: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
