"""agnhost's ``netexec`` subcommand: the HTTP/UDP/SCTP test server of Kubernetes' network e2e tests.

``python -m netk8s.kubelet.images.agnhost [--netk8s-... options] netexec [FLAGS]``
runs ``main`` here (see agnhost.py). An HTTP server (``--http-port``, 8080)
answers ``/``, ``/echo``, ``/clientip``, ``/hostname``, ``/hostName``,
``/healthz``, ``/exit``, ``/shutdown``, ``/shell``, ``/dial``, ``/redirect``
and ``/upload`` as agnhost does; a UDP server (``--udp-port``, 8081; -1
disables it) answers ``hostname``, ``echo <msg>`` and ``clientip``; SCTP on
``--sctp-port`` when the kernel has it. ``/dial`` makes the server itself
request another address ``tries`` times, which is how the e2e framework tests a
Service from inside a pod. The pure parts (query parsing, the UDP protocol,
the /dial answer) are separate from the sockets for unit tests.

The process keeps Go's default SIGTERM action (it dies of the signal); logs go
to stderr in Go's ``log`` format. Stdlib only.
"""

from __future__ import annotations

import email.parser
import email.policy
import enum
import http.client
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar
from urllib.parse import parse_qs, urlsplit

from netk8s.kubelet.images.gostyle import (
    SCTP_BUFFER,
    UDP_BUFFER,
    GoStyleHandler,
    UsageError,
    flag_parser,
    go_error,
    go_json,
    go_quote,
    join_host_port,
    listen_sctp,
    parse_flags,
    parse_go_duration,
    serve_sctp,
)
from netk8s.kubelet.images.serving import (
    QuietServer,
    bind_udp,
    go_log,
    hard_exit,
    serve_in_thread,
)

T = TypeVar("T")

# agnhost's client timeout for /dial (http.Client.Timeout and the UDP/SCTP read deadline).
DIAL_TIMEOUT = 5.0
# Where /upload writes: agnhost writes to /uploads in its own filesystem; pods here share the machine's.
UPLOAD_DIR = os.path.join(tempfile.gettempdir(), "netk8s-agnhost-uploads")


def udp_reply(payload: bytes, hostname: str, client: str) -> str | None:
    """agnhost's UDP/SCTP command protocol (case-insensitive, trimmed): the reply, or None for no reply."""
    text = payload.decode("utf-8", errors="replace").strip().lower()
    if text == "hostname":
        return hostname
    if text.startswith("echo "):
        return text.split(" ", 1)[1]
    if text == "clientip":
        return client
    return None


class DialProtocol(enum.Enum):
    HTTP = "http"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True)
class DialRequest:
    """The parameters of one ``/dial`` call."""

    host: str
    port: int
    request: str
    protocol: DialProtocol
    tries: int


class DialParamError(ValueError):
    """A ``/dial`` parameter is invalid: the message is agnhost's 400 body."""


def _first(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key) or [""]
    return values[0]


def parse_dial_query(query: dict[str, list[str]]) -> DialRequest:
    """Validate ``/dial`` parameters in agnhost's order, with its error texts (host is resolved later)."""
    tries_text = _first(query, "tries")
    tries = 1
    if tries_text:
        try:
            tries = int(tries_text)
        except ValueError:
            raise DialParamError(f'tries parameter is invalid. strconv.Atoi: parsing {go_quote(tries_text)}: '
                                 f"invalid syntax") from None
    request = _first(query, "request")
    if not request:
        raise DialParamError("request parameter not specified. <nil>")
    protocol_text = _first(query, "protocol").lower() or "http"
    try:
        protocol = DialProtocol(protocol_text)
    except ValueError:
        raise DialParamError(f"unsupported protocol. {_first(query, 'protocol')}") from None
    port_text = _first(query, "port")
    try:
        port = int(port_text) if port_text else 0  # Go resolves an empty port to 0
    except ValueError:
        try:
            port = socket.getservbyname(port_text, "udp" if protocol is DialProtocol.UDP else "tcp")
        except OSError:
            raise DialParamError(f"host and/or port param are invalid. lookup {protocol.value}/{port_text}: "
                                 f"unknown port") from None
    if not 0 <= port <= 65535:
        raise DialParamError(f"host and/or port param are invalid. address {port_text}: invalid port")
    return DialRequest(_first(query, "host"), port, request, protocol, tries)


def dial_output(responses: list[str], errors: list[str], last_response: str) -> dict[str, list[str]]:
    """The ``/dial`` body. As agnhost: "responses" only when the last try answered, "errors" when any failed."""
    output: dict[str, list[str]] = {}
    if last_response:
        output["responses"] = responses
    if errors:
        output["errors"] = errors
    return output


# --- dialing --------------------------------------------------------------------------------------

def resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[str, int]:
    """``host`` (IP or DNS name) to an address, IPv4 first; OSError when it does not resolve."""
    infos = socket.getaddrinfo(host or "0.0.0.0", port, type=kind)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


def dial_http(request: str, addr: tuple[str, int]) -> str:
    url = f"http://{join_host_port(*addr)}/{request}"
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=DIAL_TIMEOUT)
    try:
        conn.request("GET", f"/{request}", headers={"User-Agent": "netk8s-agnhost/1"})
        return conn.getresponse().read().decode("utf-8", errors="replace")
    except ConnectionRefusedError:
        raise OSError(f'Get "{url}": dial tcp {join_host_port(*addr)}: connect: connection refused') from None
    except TimeoutError:
        raise OSError(f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
                      f"headers)") from None
    except (OSError, http.client.HTTPException) as exc:
        detail = go_error(exc) if isinstance(exc, OSError) else str(exc)
        raise OSError(f'Get "{url}": {detail}') from None
    finally:
        conn.close()


def _dial_datagram(request: str, addr: tuple[str, int], sock: socket.socket, name: str, size: int) -> str:
    remote = join_host_port(*addr)
    with sock:
        try:
            sock.settimeout(DIAL_TIMEOUT)
            sock.connect(addr)
        except OSError as exc:
            raise OSError(f"{name} dial failed. err:dial {name} {remote}: {go_error(exc)}") from None
        local = join_host_port(*sock.getsockname()[:2])
        try:
            sock.send(request.encode())
        except OSError as exc:
            raise OSError(f"{name} connection write failed. err:write {name} {local}->{remote}: "
                          f"{go_error(exc)}") from None
        try:
            data = sock.recv(size)
        except TimeoutError:
            raise OSError(f"reading from {name} connection failed. err:'read {name} {local}->{remote}: "
                          f"i/o timeout'") from None
        except OSError as exc:
            # A connected UDP socket reports an ICMP port unreachable as ECONNREFUSED on the next read.
            raise OSError(f"reading from {name} connection failed. err:'read {name} {local}->{remote}: "
                          f"recvfrom: {go_error(exc)}'") from None
    if not data:
        raise OSError(f"reading from {name} connection failed. err:'<nil>'")
    return data.decode("utf-8", errors="replace")


def dial_udp(request: str, addr: tuple[str, int]) -> str:
    return _dial_datagram(request, addr, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "udp", UDP_BUFFER)


def dial_sctp(request: str, addr: tuple[str, int]) -> str:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    except OSError as exc:
        raise OSError(f"sctp dial failed. err:{go_error(exc)}") from None
    return _dial_datagram(request, addr, sock, "sctp", SCTP_BUFFER)


_DIALERS: dict[DialProtocol, Callable[[str, tuple[str, int]], str]] = {
    DialProtocol.HTTP: dial_http, DialProtocol.UDP: dial_udp, DialProtocol.SCTP: dial_sctp}



def run_dial(req: DialRequest) -> dict[str, list[str]]:
    """Resolve once, then make ``tries`` requests one after another (each a new connection/socket)."""
    kind = socket.SOCK_DGRAM if req.protocol is DialProtocol.UDP else socket.SOCK_STREAM
    try:
        addr = resolve(req.host, req.port, kind)
    except OSError as exc:
        raise DialParamError(f"host and/or port param are invalid. lookup {req.host}: "
                             f"{go_error(exc)}") from None
    responses: list[str] = []
    errors: list[str] = []
    last = ""
    for _ in range(req.tries):
        try:
            last = _DIALERS[req.protocol](req.request, addr)
            responses.append(last)
        except OSError as exc:
            last = ""
            errors.append(str(exc))
    return dial_output(responses, errors, last)


# --- the servers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetexecOptions:
    http_port: int = 8080
    udp_port: int = 8081
    sctp_port: int = -1
    http_override: str = ""
    udp_listen_addresses: tuple[str, ...] = ("0.0.0.0",)


@dataclass
class ExitRequest:
    code: int
    timeout: float


@dataclass
class NetexecState:
    """What the HTTP handlers share: the hostname, readiness, in-flight requests and a pending exit."""

    hostname: str
    http_override: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    exit_request: ExitRequest | None = None
    exit_event: threading.Event = field(default_factory=threading.Event)
    active: int = 0
    active_cond: threading.Condition = field(default_factory=threading.Condition)

    def request_exit(self, code: int, timeout: float) -> None:
        self.exit_request = ExitRequest(code, timeout)
        self.exit_event.set()


class NetexecServer(QuietServer):
    def __init__(self, port: int, state: NetexecState) -> None:
        self.state = state
        super().__init__(port, NetexecHandler)


class NetexecHandler(GoStyleHandler):
    """netexec's endpoints; any unknown path is served by ``/`` as Go's ServeMux does."""

    server: NetexecServer

    def _dispatch(self) -> None:
        # Counted from a parsed request to its answer: idle keep-alive connections do not hold up an /exit.
        state = self.server.state
        with state.active_cond:
            state.active += 1
        try:
            self._route()
        finally:
            with state.active_cond:
                state.active -= 1
                state.active_cond.notify_all()

    def _route(self) -> None:
        body = self.read_body()
        state = self.server.state
        # --http-override: every request is served as a GET of the override path and query.
        target = state.http_override or self.path
        parts = urlsplit(target)
        form = parse_qs(parts.query, keep_blank_values=True)
        content_type = self.headers.get("Content-Type") or ""
        if (not state.http_override and self.command in ("POST", "PUT", "PATCH")
                and content_type.split(";")[0].strip() == "application/x-www-form-urlencoded"):
            # Go's FormValue: body values come before the query's.
            for key, values in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items():
                form[key] = values + form.get(key, [])
        self.form = form
        self.body = body
        route = _ROUTES.get(parts.path or "/", NetexecHandler.root)
        route(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def value(self, key: str) -> str:
        return _first(self.form, key)

    def argument(self, name: str, text: str, parse: Callable[[str], T], default: T, expected: str) -> T | None:
        """``parse(text)``, ``default`` when empty; None after answering agnhost's 200 "argument ... must be
        <expected> or empty" when it does not parse."""
        if not text:
            return default
        try:
            return parse(text)
        except ValueError:
            self.reply(200, f"argument '{name}' must be {expected} or empty, got {go_quote(text)}\n")
            return None

    @property
    def remote_addr(self) -> str:
        return join_host_port(str(self.client_address[0]), int(self.client_address[1]))

    # -- endpoints -------------------------------------------------------------------------

    def root(self) -> None:
        go_log("GET /")
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        nanos = f"{int((now % 1) * 1e9):09d}".rstrip("0")
        self.reply(200, f"NOW: {stamp}{'.' + nanos if nanos else ''} {time.strftime('%z %Z')}")

    def echo(self) -> None:
        msg, code_text = self.value("msg"), self.value("code")
        go_log(f"GET /echo?msg={msg}&code={code_text}")
        code = self.argument("code", code_text, int, 200, "an integer")
        if code is not None:
            self.reply(code, msg)

    def clientip(self) -> None:
        go_log("GET /clientip")
        self.reply(200, self.remote_addr)

    def hostname(self) -> None:
        go_log(f"GET {urlsplit(self.path).path}")
        self.reply(200, self.server.state.hostname)

    def healthz(self) -> None:
        go_log("GET /healthz")
        # As agnhost: ready once the UDP (or SCTP) server runs; with --udp-port=-1 and no SCTP, never.
        self.reply(200 if self.server.state.ready.is_set() else 412, b"")

    def exit(self) -> None:
        wait_text, timeout_text, code_text = self.value("wait"), self.value("timeout"), self.value("code")
        go_log(f"GET /exit?code={code_text}&timeout={timeout_text}&wait={wait_text}")
        timeout = self.argument("timeout", timeout_text, parse_go_duration, 0.0, "a valid golang duration")
        if timeout is None:
            return
        wait = self.argument("wait", wait_text, parse_go_duration, 0.0, "a valid golang duration")
        if wait is None:
            return
        code = self.argument("code", code_text, int, 0, "an integer [0-127]")
        if code is None:
            return
        go_log(f"Will begin shutdown in {wait:g}s, allowing {timeout:g}s for connections to close, "
               f"then will exit with {code}")
        if wait > 0:
            time.sleep(wait)
        if timeout <= 0:
            hard_exit(code)  # no answer: the process is gone, as agnhost's os.Exit
        self.server.state.request_exit(code, timeout)
        self.reply(200, b"")

    def shutdown(self) -> None:
        go_log("GET /shutdown")
        hard_exit(0)

    def shell(self) -> None:
        command = self.value("shellCommand") or self.value("cmd")
        go_log(f"GET /shell?cmd={command}")
        result = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        output: dict[str, str] = {}
        if result.stdout:
            output["output"] = result.stdout.decode("utf-8", errors="replace")
        if result.returncode > 0:
            output["error"] = f"exit status {result.returncode}"
        elif result.returncode < 0:
            output["error"] = f"signal: {(signal.strsignal(-result.returncode) or str(-result.returncode)).lower()}"
        go_log(f"Output: {output}")
        self.reply(200, go_json(output))

    def dial(self) -> None:
        go_log(f"GET /dial?host={self.value('host')}&protocol={self.value('protocol')}&port={self.value('port')}"
               f"&request={self.value('request')}&tries={self.value('tries')}")
        try:
            output = run_dial(parse_dial_query(self.form))
        except DialParamError as exc:
            self.http_error(400, str(exc))
            return
        self.reply(200, go_json(output))

    def redirect(self) -> None:
        location, code_text = self.value("location"), self.value("code")
        go_log(f"{self.command} /redirect?msg={location}&code={code_text}")
        code = self.argument("code", code_text, int, 302, "an integer")
        if code is None:
            return
        body = f'<a href="{location}">{http.client.responses.get(code, "")}</a>.\n\n' if self.command == "GET" else ""
        self.reply(code, body, "text/html; charset=utf-8", headers=[("Location", location)])

    def upload(self) -> None:
        go_log("GET /upload")
        data = _multipart_file(self.headers.get("Content-Type") or "", self.body)
        if data is None:
            self.reply(200, go_json({"error": "Unable to upload file."}))
            return
        try:
            os.makedirs(UPLOAD_DIR, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="upload", dir=UPLOAD_DIR)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(path, 0o700)
        except OSError as exc:
            go_log(f"Unable to write file: {exc}")
            self.reply(200, go_json({"error": "Unable to write file."}))
            return
        go_log(f"Wrote upload to {path}")
        self.reply(201, go_json({"output": path}))


_ROUTES: dict[str, Callable[[NetexecHandler], None]] = {
    "/": NetexecHandler.root, "/clientip": NetexecHandler.clientip, "/dial": NetexecHandler.dial,
    "/echo": NetexecHandler.echo, "/exit": NetexecHandler.exit, "/healthz": NetexecHandler.healthz,
    "/hostname": NetexecHandler.hostname, "/hostName": NetexecHandler.hostname,
    "/redirect": NetexecHandler.redirect, "/shell": NetexecHandler.shell,
    "/shutdown": NetexecHandler.shutdown, "/upload": NetexecHandler.upload,
}



def _multipart_file(content_type: str, body: bytes) -> bytes | None:
    """The contents of the multipart/form-data field named "file", or None."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():  # type: ignore[attr-defined]
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None


def _serve_udp(sock: socket.socket, hostname: str, ready: threading.Event) -> None:
    """agnhost's UDP command server on one bound socket (runs until the process exits)."""
    addr = sock.getsockname()
    go_log(f"Started UDP server on port {addr[0] if addr[0] != '0.0.0.0' else ''} {addr[1]}")
    ready.set()
    while True:
        try:
            data, client = sock.recvfrom(UDP_BUFFER)
        except OSError as exc:
            go_log(f"Error occurred: failed accepting UDP connections:{exc}")
            hard_exit(1)
            return
        client_addr = join_host_port(str(client[0]), int(client[1]))
        answer = udp_reply(data, hostname, client_addr)
        if answer is None:
            if data.strip():
                go_log(f"Unknown UDP command received from {client_addr}: {data.decode(errors='replace').strip()}")
            continue
        try:
            sock.sendto(answer.encode(), client)
        except OSError as exc:
            go_log(f"Error occurred: failed to write to UDP client {client_addr}:{exc}")
            hard_exit(1)


def parse_netexec_args(argv: Sequence[str]) -> NetexecOptions:
    parser = flag_parser("netexec")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--udp-port", type=int, default=8081)
    parser.add_argument("--sctp-port", type=int, default=-1)
    parser.add_argument("--http-override", default="")
    parser.add_argument("--udp-listen-addresses", default="")
    parser.add_argument("--tls-cert-file", default="")
    parser.add_argument("--tls-private-key-file", default="")
    args = parse_flags(parser, argv)
    if args.tls_cert_file:
        raise UsageError("netexec --tls-cert-file: HTTPS is not supported by the netk8s built-in agnhost")
    addresses: tuple[str, ...] = ("0.0.0.0",)
    if args.udp_listen_addresses:
        listed = []
        for address in args.udp_listen_addresses.split(","):
            try:
                socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address.strip())
            except OSError:
                raise UsageError(f"parseAddress: invalid address {address}") from None
            listed.append(address.strip())
        addresses = tuple(sorted(set(listed)))
    return NetexecOptions(args.http_port, args.udp_port, args.sctp_port, args.http_override, addresses)


def run_netexec(opts: NetexecOptions, hostname: str) -> int:
    state = NetexecState(hostname, http_override=opts.http_override)
    try:
        server = NetexecServer(opts.http_port, state)
    except OSError as exc:
        go_log(f"listen tcp :{opts.http_port}: bind: {go_error(exc)}")
        return 1
    if opts.udp_port != -1:
        for address in opts.udp_listen_addresses:
            try:
                sock = bind_udp(address, opts.udp_port)
            except OSError as exc:
                go_log(f"Error occurred: failed to create listener for UDP address {address}:{opts.udp_port}:"
                       f"listen udp {address}:{opts.udp_port}: bind: {go_error(exc)}")
                return 1
            threading.Thread(target=_serve_udp, args=(sock, hostname, state.ready), name="udp", daemon=True).start()
    if opts.sctp_port != -1:
        try:
            listener = listen_sctp(opts.sctp_port)
        except OSError as exc:
            go_log(f"Error occurred: failed to create listener for SCTP address :{opts.sctp_port}:"
                   f"{go_error(exc)}")
            return 1
        threading.Thread(target=serve_sctp, name="sctp", daemon=True,
                         args=(listener, lambda data, client: udp_reply(data, hostname, client), state.ready)).start()
    go_log(f"Started HTTP server on port {opts.http_port}")
    serve_in_thread(server, "http")
    # Short waits keep the main thread responsive to SIGINT (the default SIGTERM action needs nothing).
    while not state.exit_event.wait(0.5):
        pass
    request = state.exit_request
    assert request is not None
    server.shutdown()  # stop accepting; in-flight requests get until the timeout to finish
    deadline = time.monotonic() + request.timeout
    with state.active_cond:
        while state.active > 0 and time.monotonic() < deadline:
            state.active_cond.wait(max(0.0, deadline - time.monotonic()))
    go_log("Graceful shutdown completed with: <nil>" if state.active == 0
           else "Graceful shutdown completed with: context deadline exceeded")
    hard_exit(request.code)
    return request.code
