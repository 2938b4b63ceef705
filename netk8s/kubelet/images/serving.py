"""Shared plumbing of the built-in image servers: log lines, the pod's hostname,
listening sockets and signal waits.

Every built-in image runs as ``python -m netk8s.kubelet.images.<image>`` in a
pod's network namespace with stdout and stderr appended to the container's log
file, so each log line is written whole and flushed at once. Pod processes
start often: this imports only the stdlib.

The hostname: a built-in server answers with ``socket.gethostname()`` when the
process has a UTS namespace of its own (the kubelet gives each pod one, named
after the pod). While it shares the machine's, that hostname would be the same
for every pod, so the pod name is used instead. Both come from the catalogue on
the command line: the pod name and the machine's hostname as the kubelet sees it
(a comparison that needs no access to other processes' /proc entries, which a
sandboxed root may lack).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, TextIO

_LOG_LOCK = threading.Lock()


def write_line(line: str, stream: TextIO | None = None) -> None:
    """One whole line to ``stream`` (stdout by default), flushed so `netk8s logs` sees it at once."""
    out = stream if stream is not None else sys.stdout
    with _LOG_LOCK:
        out.write(line + "\n")
        out.flush()


def go_log(message: str) -> None:
    """A line as Go's ``log.Printf`` writes it (``2006/01/02 15:04:05 message`` on stderr), as agnhost logs."""
    write_line(f"{time.strftime('%Y/%m/%d %H:%M:%S')} {message}", sys.stderr)


def choose_hostname(kernel_hostname: str, pod_name: str, machine_hostname: str) -> str:
    """The hostname a pod's server reports: the kernel's, unless that is the machine's (or the
    machine's is unknown) and a pod name is known."""
    if pod_name and (not machine_hostname or kernel_hostname == machine_hostname):
        return pod_name
    return kernel_hostname


def pod_hostname(pod_name: str, machine_hostname: str) -> str:
    """This pod's hostname (see the module docstring)."""
    return choose_hostname(socket.gethostname(), pod_name, machine_hostname)


class QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server on ``host:port`` whose request threads never block exit."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], host: str = "0.0.0.0") -> None:
        super().__init__((host, port), handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class BindError(OSError):
    """A port could not be bound; ``port`` names it."""

    def __init__(self, port: int, cause: OSError) -> None:
        self.port = port
        super().__init__(cause.errno, cause.strerror or str(cause))


def bind_all(ports: list[int], factory: Callable[[int], ThreadingHTTPServer]) -> list[ThreadingHTTPServer]:
    """One server per port, all or none: raises BindError naming the first port that failed."""
    servers: list[ThreadingHTTPServer] = []
    for port in ports:
        try:
            servers.append(factory(port))
        except OSError as exc:
            for server in servers:
                server.server_close()
            raise BindError(port, exc) from None
    return servers


def add_port_option(parser: argparse.ArgumentParser, default: int) -> None:
    """``--port N`` (repeatable) as the built-in HTTP servers take it."""
    parser.add_argument("--port", type=int, action="append", default=[],
                        help=f"TCP port to listen on (repeatable; {default} when none)")


def ports_of(parser: argparse.ArgumentParser, args: argparse.Namespace, default: int) -> list[int]:
    """The ``--port`` values in order without repeats (``default`` when none); out of range is a usage error."""
    for port in args.port:
        if not 1 <= port <= 65535:
            parser.error(f"--port: {port} is out of range; use 1-65535")
    return list(dict.fromkeys(args.port)) or [default]


def shutdown_all(servers: list[ThreadingHTTPServer]) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True)
    thread.start()
    return thread


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host:port`` (raises OSError)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class SignalWaiter:
    """Catches ``signals`` from construction on (create it before announcing readiness), so
    ``wait()`` in the main thread returns the first one even if it arrived early."""

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self._received: list[int] = []
        self._event = threading.Event()
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self._received.append(signum)
        self._event.set()

    def wait(self) -> int:
        """Block until a signal came; returns the first one's number."""
        # Short waits so the Python-level handler (which runs between bytecodes of the main thread) runs promptly.
        while not self._event.wait(0.5):
            pass
        return self._received[0]


def hard_exit(code: int) -> None:
    """Exit the whole process now (from any thread), as Go's ``os.Exit`` does, after flushing the logs."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code & 0xFF)
