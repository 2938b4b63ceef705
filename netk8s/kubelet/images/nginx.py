"""The ``nginx`` built-in image: a stand-in that answers like a fresh nginx container.

Run as ``python -m netk8s.kubelet.images.nginx --port 80 [--port ...]
[--server-version 1.27.4] [-- NGINX-ARGS...]`` inside a pod's network
namespace (the catalogue passes each declared TCP containerPort, 80 when
none). ``/`` and ``/index.html`` serve a "Welcome to nginx!" page (with a
note that netk8s serves it), ``/50x.html`` the error page, anything else 404;
methods other than GET and HEAD get 405, as nginx's static handler answers.
The access log goes to stdout in the official image's ``main`` format and
notices to stderr (the image links access.log and error.log there). SIGTERM,
SIGINT or SIGQUIT stop it with exit code 0. NGINX-ARGS (e.g. ``-g 'daemon
off;'``) are accepted and ignored.

Pod processes start often, so this imports only the stdlib.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Sequence

from netk8s.kubelet.images.serving import (
    BindError,
    QuietServer,
    SignalWaiter,
    add_port_option,
    bind_all,
    ports_of,
    serve_in_thread,
    shutdown_all,
    write_line,
)

DEFAULT_PORT = 80
DEFAULT_VERSION = "1.27.4"

WELCOME_PAGE = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
body { max-width: 40em; margin: 2em auto; font-family: sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>The web server answered: this page is what a new nginx container serves
before it is configured.</p>
<p><em>netk8s note:</em> this is netk8s's built-in stand-in for the nginx
image, run as a process in the pod's network namespace. It serves this page
on / and /index.html and logs each request to the pod's log
(<code>netk8s logs POD</code>).</p>
</body>
</html>
"""


def error_page(code: int, reason: str, version: str) -> str:
    """nginx's built-in error page layout."""
    return (f"<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx/{version}</center>\r\n"
            f"</body>\r\n</html>\r\n")


def access_log_line(remote: str, stamp: float, request_line: str, status: int, size: int,
                    referer: str, user_agent: str, forwarded_for: str) -> str:
    """The official image's ``main`` log format:
    ``$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer"
    "$http_user_agent" "$http_x_forwarded_for"``."""
    local = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(stamp))
    return (f'{remote} - - [{local}] "{request_line}" {status} {size} "{referer or "-"}" '
            f'"{user_agent or "-"}" "{forwarded_for or "-"}"')


def error_log_line(level: str, message: str) -> str:
    """An error.log line: ``2006/01/02 15:04:05 [notice] PID#PID: message``."""
    pid = os.getpid()
    return f"{time.strftime('%Y/%m/%d %H:%M:%S')} [{level}] {pid}#{pid}: {message}"


class NginxServer(QuietServer):
    def __init__(self, port: int, version: str, started: float) -> None:
        self.version = version
        self.started = started
        super().__init__(port, NginxHandler)


class NginxHandler(BaseHTTPRequestHandler):
    """Static answers for the default site."""

    protocol_version = "HTTP/1.1"
    server: NginxServer

    def version_string(self) -> str:
        return f"nginx/{self.server.version}"

    def _answer(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))
        path = self.path.split("?", 1)[0]
        version = self.server.version
        if path in ("/", "/index.html", "/50x.html") and self.command not in ("GET", "HEAD"):
            self._send(405, error_page(405, "Not Allowed", version).encode())
            return
        if path in ("/", "/index.html"):
            self._send(200, WELCOME_PAGE.encode(), static=True)
        elif path == "/50x.html":
            self._send(200, error_page(500, "Internal Server Error", version).encode(), static=True)
        else:
            self._send(404, error_page(404, "Not Found", version).encode())

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def _send(self, code: int, body: bytes, static: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        if static:
            started = self.server.started
            self.send_header("Last-Modified", formatdate(started, usegmt=True))
            self.send_header("ETag", f'"{int(started):x}-{len(body):x}"')
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._sent = 0 if self.command == "HEAD" else len(body)
        # Logged before the body goes out: a client's next request cannot then be logged first
        # (each connection has its own thread; nginx's single event loop keeps them in order).
        self._write_access_log()
        if self._sent:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = int(code) if str(code).isdigit() else 0

    def _write_access_log(self) -> None:
        headers = getattr(self, "headers", None)  # absent when the request line itself was bad

        def header(name: str) -> str:
            return str(headers.get(name, "")) if headers is not None else ""
        write_line(access_log_line(str(self.client_address[0]), time.time(), self.requestline, self._status,
                                   self._sent, header("Referer"), header("User-Agent"), header("X-Forwarded-For")))
        self._logged = True

    def handle_one_request(self) -> None:
        self._status = 0
        self._sent = 0
        self._logged = False
        super().handle_one_request()
        if self._status and not self._logged:  # answered by the stdlib itself (a malformed request)
            self._write_access_log()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        write_line(error_log_line("info", f"client {self.client_address[0]}: {format % args}"), sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m netk8s.kubelet.images.nginx",
                                     description="nginx stand-in: the default site on each port")
    add_port_option(parser, DEFAULT_PORT)
    parser.add_argument("--server-version", default=DEFAULT_VERSION, help="version in the Server header")
    parser.add_argument("nginx_args", nargs=argparse.REMAINDER, help="nginx's own arguments (ignored)")
    args = parser.parse_args(argv)
    args.port = ports_of(parser, args, DEFAULT_PORT)
    if args.nginx_args[:1] == ["--"]:
        args.nginx_args = args.nginx_args[1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signals = SignalWaiter((signal.SIGTERM, signal.SIGINT, signal.SIGQUIT))
    ports = args.port
    started = time.time()
    try:
        servers = bind_all(ports, lambda port: NginxServer(port, args.server_version, started))
    except BindError as exc:
        write_line(error_log_line("emerg", f'bind() to 0.0.0.0:{exc.port} failed ({exc.errno}: {exc.strerror})'),
                   sys.stderr)
        return 1
    if args.nginx_args and args.nginx_args not in (["nginx", "-g", "daemon off;"], ["-g", "daemon off;"]):
        write_line(error_log_line("notice", f"netk8s: nginx arguments ignored: {' '.join(args.nginx_args)}"),
                   sys.stderr)
    write_line(error_log_line("notice", f"nginx/{args.server_version} (netk8s built-in stand-in)"), sys.stderr)
    for server in servers:
        serve_in_thread(server, f"nginx-{server.server_address[1]}")
    write_line(error_log_line("notice", "listening on " + ", ".join(f"0.0.0.0:{p}" for p in ports)), sys.stderr)

    signum = signals.wait()
    name = signal.Signals(signum).name
    action = "gracefully shutting down" if signum == signal.SIGQUIT else "exiting"
    write_line(error_log_line("notice", f"signal {signum} ({name}) received, {action}"), sys.stderr)
    shutdown_all(servers)
    write_line(error_log_line("notice", "exit"), sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
