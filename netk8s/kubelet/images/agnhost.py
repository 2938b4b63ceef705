"""The agnhost built-in image: the Kubernetes e2e test server's network subcommands.

Run as ``python -m netk8s.kubelet.images.agnhost [--netk8s-pod NAME]
[--netk8s-machine-hostname HOST] SUBCOMMAND [FLAGS]`` inside a pod's network
namespace (the catalogue builds this argv from
``registry.k8s.io/e2e-test-images/agnhost`` containers). The two options come
before the subcommand: the pod name, answered as the hostname while the process
still has the machine's hostname (see ``serving``). Subcommands, with agnhost's
flags and answers:

- ``netexec`` (netexec.py): HTTP server (``--http-port``, 8080) with agnhost's
  endpoints (``/hostname``, ``/echo``, ``/clientip``, ``/dial``, ``/shell``,
  ``/exit`` ...) and a UDP server (``--udp-port``, 8081).
- ``serve-hostname``: the hostname over HTTP (default), raw TCP or UDP on ``--port`` (9376).
- ``porter``: serves each ``SERVE_PORT_<n>``/``SERVE_TCP_PORT_<n>``/``SERVE_UDP_PORT_<n>``
  environment variable's value on port n.
- ``pause``: sleeps; SIGINT exits 1, SIGTERM exits 2 (as agnhost does).

Like agnhost (a Go program), netexec, serve-hostname and porter keep the default
SIGTERM action: the process dies of the signal. Logs go to stderr in Go's
``log`` format. Pod processes start often, so this imports only the stdlib.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from netk8s.kubelet.images import AGNHOST_SUBCOMMANDS
from netk8s.kubelet.images.gostyle import (
    UDP_BUFFER,
    GoStyleHandler,
    UsageError,
    flag_parser,
    go_bool,
    go_error,
    go_quote,
    join_host_port,
    listen_sctp,
    parse_flags,
    serve_sctp,
)
from netk8s.kubelet.images.netexec import parse_netexec_args, run_netexec
from netk8s.kubelet.images.serving import (
    QuietServer,
    SignalWaiter,
    bind_udp,
    go_log,
    pod_hostname,
    serve_in_thread,
    write_line,
)

# --- serve-hostname -------------------------------------------------------------------------------

class _HostnameHandler(GoStyleHandler):
    server: "_HostnameServer"

    def _any(self) -> None:
        self.read_body()
        go_log(f"HTTP request from {join_host_port(str(self.client_address[0]), int(self.client_address[1]))}")
        headers = [("Connection", "close")] if self.server.close_each else []
        self.reply(200, self.server.hostname, headers=headers)
        if self.server.close_each:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any


class _HostnameServer(QuietServer):
    def __init__(self, port: int, hostname: str, close_each: bool) -> None:
        self.hostname = hostname
        self.close_each = close_each
        super().__init__(port, _HostnameHandler)


def _serve_raw_tcp(listener: socket.socket, hostname: str) -> None:
    while True:
        conn, client = listener.accept()
        go_log(f"TCP request from {join_host_port(str(client[0]), int(client[1]))}")
        with conn:
            try:
                conn.sendall(hostname.encode())
            except OSError:
                pass


def _serve_constant_udp(sock: socket.socket, value: str, log_each: bool) -> None:
    """Answer every datagram with ``value`` (serve-hostname --udp, porter's SERVE_UDP_PORT_<n>)."""
    while True:
        try:
            _, client = sock.recvfrom(UDP_BUFFER)
        except OSError as exc:
            go_log(f"UDP: error from ReadFrom(): {exc}")
            return
        if log_each:
            go_log(f"UDP request from {join_host_port(str(client[0]), int(client[1]))}")
        try:
            sock.sendto(value.encode(), client)
        except OSError as exc:
            go_log(f"UDP: error from WriteTo(): {exc}")


def run_serve_hostname(argv: Sequence[str], hostname: str) -> int:
    parser = flag_parser("serve-hostname")
    for name, default in (("tcp", False), ("udp", False), ("http", True), ("close", False)):
        parser.add_argument(f"--{name}", type=go_bool, nargs="?", const=True, default=default)
    parser.add_argument("--port", type=int, default=9376)
    args = parse_flags(parser, argv)
    signals = SignalWaiter((signal.SIGTERM,))
    if args.http and (args.tcp or args.udp):
        go_log("Can't server TCP/UDP mode and HTTP mode at the same time")
        return 1
    try:
        if args.tcp:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", args.port))
            listener.listen(64)
            threading.Thread(target=_serve_raw_tcp, args=(listener, hostname), daemon=True).start()
        if args.udp:
            sock = bind_udp("0.0.0.0", args.port)
            threading.Thread(target=_serve_constant_udp, args=(sock, hostname, True), daemon=True).start()
        if args.http:
            serve_in_thread(_HostnameServer(args.port, hostname, args.close), "http")
    except OSError as exc:
        go_log(f"listen :{args.port}: {go_error(exc)}")
        return 1
    go_log(f"Serving on port {args.port}.")
    signum = signals.wait()
    go_log(f"Shutting down after receiving signal: {signal.strsignal(signum) or signum}.")
    go_log("Awaiting pod deletion.")
    # As agnhost: keep serving until the kubelet's grace period runs out (or 60 s pass).
    time.sleep(60)
    return 0


# --- porter and pause -----------------------------------------------------------------------------

class _PorterHandler(GoStyleHandler):
    server: "_PorterServer"

    def _any(self) -> None:
        self.read_body()
        if self.server.json_response:
            body = json.dumps({"Method": self.command, "Body": self.server.value}, separators=(",", ":"))
            self.reply(200, body, "application/json")
        else:
            self.reply(200, self.server.value)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any


class _PorterServer(QuietServer):
    def __init__(self, port: int, value: str, json_response: bool) -> None:
        self.value = value
        self.json_response = json_response
        super().__init__(port, _PorterHandler)


# porter's environment variable prefixes and what each serves.
_PORTER_PREFIXES = {"SERVE_PORT_": "tcp", "SERVE_TCP_PORT_": "tcp", "SERVE_UDP_PORT_": "udp",
                    "SERVE_TLS_PORT_": "tls", "SERVE_SCTP_PORT_": "sctp"}


def porter_listeners(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, port, value) for each SERVE_*_PORT_<n> variable; kind is tcp, udp, tls or sctp."""
    found = []
    for key, value in sorted(environ.items()):
        for prefix, kind in _PORTER_PREFIXES.items():
            if key.startswith(prefix):
                found.append((kind, key[len(prefix):], value))
                break
    return found


def run_porter(argv: Sequence[str], environ: dict[str, str]) -> int:
    parser = flag_parser("porter")
    parser.add_argument("--json-response", type=go_bool, nargs="?", const=True, default=False)
    args = parse_flags(parser, argv)
    for kind, port_text, value in porter_listeners(environ):
        try:
            port = int(port_text)
        except ValueError:
            go_log(f"server on port {go_quote(port_text)} failed: listen tcp: address {port_text}: invalid port")
            continue
        try:
            if kind == "tcp":
                serve_in_thread(_PorterServer(port, value, args.json_response), f"porter-{port}")
            elif kind == "udp":
                sock = bind_udp("0.0.0.0", port)
                go_log(f"Started UDP server on port {port}")
                threading.Thread(target=_serve_constant_udp, args=(sock, value, False), daemon=True).start()
            elif kind == "sctp":
                listener = listen_sctp(port)
                threading.Thread(target=serve_sctp, args=(listener, lambda data, client, v=value: v, None),
                                 daemon=True).start()
            else:
                go_log(f"tls server on port {go_quote(port_text)} failed: TLS is not supported by the netk8s "
                       f"built-in agnhost")
        except OSError as exc:
            if kind == "tcp":  # agnhost logs a failed HTTP server and carries on; UDP/SCTP failures are fatal
                go_log(f"server on port {go_quote(port_text)} failed: listen tcp 0.0.0.0:{port}: bind: "
                       f"{go_error(exc)}")
                continue
            go_log(f"{kind.upper()}: failed to listen on port {port}: {go_error(exc)}")
            return 1
    while True:  # as agnhost's `select {}`: until a signal's default action ends the process
        time.sleep(3600)


def run_pause() -> int:
    signals = SignalWaiter((signal.SIGINT, signal.SIGTERM))
    write_line("Paused")
    signum = signals.wait()
    return 1 if signum == signal.SIGINT else 2


# --- entry point ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Invocation:
    """The argv split: netk8s's own options, then agnhost's subcommand and its flags."""

    pod: str
    machine_hostname: str
    subcommand: str
    flags: list[str]


_OWN_OPTIONS = ("--netk8s-pod", "--netk8s-machine-hostname")


def split_argv(argv: Sequence[str]) -> Invocation:
    """``[--netk8s-pod NAME] [--netk8s-machine-hostname HOST] SUBCOMMAND FLAGS...``."""
    rest = list(argv)
    values = dict.fromkeys(_OWN_OPTIONS, "")
    while rest and rest[0].split("=", 1)[0] in _OWN_OPTIONS:
        option = rest.pop(0)
        if "=" in option:
            option, value = option.split("=", 1)
        elif rest:
            value = rest.pop(0)
        else:
            raise UsageError(f"{option} needs a value")
        values[option] = value
    return Invocation(values["--netk8s-pod"], values["--netk8s-machine-hostname"],
                      rest[0] if rest else "", rest[1:])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        invocation = split_argv(sys.argv[1:] if argv is None else argv)
        subcommand, flags = invocation.subcommand, invocation.flags
        if subcommand not in AGNHOST_SUBCOMMANDS:
            if not subcommand:
                write_line(f"agnhost (netk8s built-in): available subcommands: {', '.join(AGNHOST_SUBCOMMANDS)}")
                return 0
            raise UsageError(f'unknown command "{subcommand}" for "agnhost"; the netk8s built-in agnhost '
                             f"supports: {', '.join(AGNHOST_SUBCOMMANDS)}")
        if subcommand == "pause":
            parse_flags(flag_parser("pause"), flags)
            return run_pause()
        # Go's default action for SIGINT (like SIGTERM) ends the process; Python's would raise KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if subcommand == "porter":
            return run_porter(flags, dict(os.environ))
        hostname = pod_hostname(invocation.pod, invocation.machine_hostname)
        if subcommand == "serve-hostname":
            return run_serve_hostname(flags, hostname)
        return run_netexec(parse_netexec_args(flags), hostname)
    except UsageError as exc:
        write_line(f"Error: {exc}", sys.stderr)
        return 1



if __name__ == "__main__":
    sys.exit(main())
