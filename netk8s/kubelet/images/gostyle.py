"""Go-flavoured plumbing shared by the agnhost subcommands.

agnhost is a Go program; its answers, error texts, durations and flags follow
Go's net/http, strconv, time and pflag. These helpers reproduce the parts
netk8s's agnhost shows to clients and logs. Stdlib only (pod processes start
often).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable, Sequence

from netk8s.kubelet.images.serving import go_log

# agnhost's read buffers for a UDP datagram and an SCTP message.
UDP_BUFFER = 2048
SCTP_BUFFER = 1024


class UsageError(Exception):
    """A bad agnhost subcommand or flag (printed as ``Error: <message>``, exit 1, as agnhost's cobra does)."""


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``1m30s``, ``500ms``, ``0``); ValueError when malformed."""
    value = text.strip()
    if value in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if value and value[0] in "+-":
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    if not value:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    total, pos = 0.0, 0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def go_json(value: object) -> str:
    """JSON as Go's ``json.Marshal`` writes a map: compact, sorted keys, HTML characters escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def go_quote(text: str) -> str:
    """Close to Go's ``%q`` for the short strings agnhost quotes in its messages."""
    return json.dumps(text, ensure_ascii=False)


def go_error(exc: OSError) -> str:
    """An OSError as Go prints a syscall error ("connection refused", lower case)."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def go_bool(value: str) -> bool:
    """A boolean flag value as Go's strconv.ParseBool reads it (the common spellings)."""
    lowered = value.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}")


class FlagParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def flag_parser(subcommand: str) -> argparse.ArgumentParser:
    """A parser for one subcommand's flags (``--flag=value`` or ``--flag value``, like pflag)."""
    return FlagParser(prog=f"agnhost {subcommand}", add_help=False, allow_abbrev=False)


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; raises UsageError."""
    return parser.parse_args(list(argv))


class GoStyleHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that answers like Go's net/http (no Server header) and logs nothing per request."""

    protocol_version = "HTTP/1.1"

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def reply(self, code: int, body: str | bytes, content_type: str | None = "text/plain; charset=utf-8",
              headers: Sequence[tuple[str, str]] = ()) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        if content_type and data:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def http_error(self, code: int, message: str) -> None:
        """Go's ``http.Error``."""
        self.reply(code, message + "\n", headers=[("X-Content-Type-Options", "nosniff")])

    def read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        go_log(f"http: {self.client_address[0]}:{self.client_address[1]}: {format % args}")


def listen_sctp(port: int) -> socket.socket:
    """A listening SCTP (one-to-one style) socket on ``0.0.0.0:port``; OSError when the kernel lacks SCTP."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def serve_sctp(listener: socket.socket, reply: Callable[[bytes, str], str | None],
               ready: threading.Event | None) -> None:
    """One association at a time: read a command, answer, close (as agnhost's SCTP server)."""
    go_log("Started SCTP server")
    if ready is not None:
        ready.set()
    while True:
        conn, client = listener.accept()
        client_addr = join_host_port(str(client[0]), int(client[1]))
        with conn:
            try:
                data = conn.recv(SCTP_BUFFER)
                answer = reply(data, client_addr)
                if answer is not None:
                    conn.sendall(answer.encode())
            except OSError as exc:
                go_log(f"SCTP client {client_addr}: {go_error(exc)}")
