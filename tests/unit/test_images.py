"""Unit tests for the built-in image catalogue and its servers (netk8s/echo, agnhost,
nginx, pause).

Servers run as subprocesses bound to free ephemeral ports; the tests talk to them
over 127.0.0.1 (root-namespace loopback, not a cluster address).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest

from netk8s.errors import NetK8sError
from netk8s.kubelet.images import (
    AGNHOST_SUBCOMMANDS,
    ImageCommandNotSupported,
    ImageNotFound,
    PodContext,
    builtin_images,
    command_for,
    describe_builtin_images,
    image_repository,
    image_tag,
    nginx_version,
    resolve_image,
)
from netk8s.kubelet.images.agnhost import Invocation, porter_listeners, split_argv
from netk8s.kubelet.images.gostyle import UsageError, go_json, parse_go_duration
from netk8s.kubelet.images.netexec import (
    DialParamError,
    DialProtocol,
    DialRequest,
    dial_output,
    parse_dial_query,
    udp_reply,
)
from netk8s.kubelet.images.nginx import access_log_line
from netk8s.kubelet.images.serving import choose_hostname, pod_hostname

REPO = Path(__file__).resolve().parents[2]

CTX = PodContext(pod_name="web-1", namespace="shop", node_name="worker1", pod_ip="10.244.1.7")
ECHO_PREFIX = ["/py", "-m", "netk8s.kubelet.images.echo", "--pod", "web-1", "--namespace", "shop",
               "--node", "worker1", "--pod-ip", "10.244.1.7"]


# --- catalogue ------------------------------------------------------------------------------------

def test_builtin_images_lists_echo() -> None:
    assert "netk8s/echo" in builtin_images()
    assert builtin_images() == sorted(builtin_images())


@pytest.mark.parametrize("image,repo", [
    ("netk8s/echo", "netk8s/echo"),
    ("netk8s/echo:1.2", "netk8s/echo"),
    ("docker.io/netk8s/echo:latest", "netk8s/echo"),
    ("registry.k8s.io/netk8s/echo@sha256:" + "a" * 64, "netk8s/echo"),
    ("docker.io/netk8s/echo:v1@sha256:" + "b" * 64, "netk8s/echo"),
    ("localhost:5000/netk8s/echo", "localhost:5000/netk8s/echo"),
    ("quay.io/netk8s/echo:1", "quay.io/netk8s/echo"),
    ("busybox", "busybox"),
    ("docker.io/library/nginx:1.25", "nginx"),
    ("library/busybox:1.36", "busybox"),
    ("index.docker.io/library/alpine", "alpine"),
    ("k8s.gcr.io/pause:3.9", "pause"),
    ("registry.k8s.io/e2e-test-images/agnhost:2.47", "e2e-test-images/agnhost"),
])
def test_image_repository(image: str, repo: str) -> None:
    assert image_repository(image) == repo


def test_echo_command_default_port() -> None:
    assert command_for({"name": "c", "image": "netk8s/echo"}, CTX, python="/py") == ECHO_PREFIX + ["--port", "8080"]


def test_echo_command_tcp_ports_and_args() -> None:
    container = {"name": "c", "image": "docker.io/netk8s/echo:1.0",
                 "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"},
                           {"containerPort": 9000, "protocol": "TCP", "name": "metrics"}],
                 "args": ["--extra", "1"]}
    assert command_for(container, CTX, python="/py") == ECHO_PREFIX + ["--port", "80", "--port", "9000",
                                                                       "--extra", "1"]


def test_echo_with_only_udp_ports_listens_on_default() -> None:
    container = {"image": "netk8s/echo", "ports": [{"containerPort": 53, "protocol": "UDP"}]}
    assert command_for(container, CTX, python="/py")[-2:] == ["--port", "8080"]


def test_default_python_is_this_interpreter() -> None:
    assert command_for({"image": "netk8s/echo"}, CTX)[0] == sys.executable


@pytest.mark.parametrize("image", ["netk8s/echo", "busybox:1.36", ""])
def test_command_runs_host_program_with_args(image: str) -> None:
    container = {"image": image, "command": ["sleep"], "args": ["3600"]}
    assert command_for(container, CTX, python="/py") == ["sleep", "3600"]


def test_unknown_image_without_command() -> None:
    with pytest.raises(ImageNotFound) as info:
        command_for({"name": "c", "image": "quay.io/acme/web:1.25", "args": ["x"]}, CTX)
    assert isinstance(info.value, NetK8sError)
    assert str(info.value) == (
        'image "quay.io/acme/web:1.25" is not a netk8s built-in image and the container has no command; '
        "built-in images: alpine, busybox, debian, netk8s/echo, nginx, registry.k8s.io/coredns/coredns, "
        "registry.k8s.io/e2e-test-images/agnhost, registry.k8s.io/pause, ubuntu")
    assert info.value.image == "quay.io/acme/web:1.25"
    with pytest.raises(ImageNotFound):
        command_for({"image": "acme/tool", "command": []}, CTX)
    with pytest.raises(ImageNotFound):
        command_for({"image": ""}, CTX)


# --- echo server ----------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> tuple[subprocess.Popen, list[int]]:
    ports = free_ports(2)
    ctx = PodContext(pod_name="echo-pod", namespace="nk-test", node_name="nodeA", pod_ip="10.244.9.9")
    argv = command_for({"image": "netk8s/echo", "ports": [{"containerPort": p} for p in ports]}, ctx)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    request.addfinalizer(stop)
    for port in ports:
        wait_listening(proc, port)
    return proc, ports


def get(port: int, path: str) -> tuple[int, str, str, tuple[str, int]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.connect()
        assert conn.sock is not None
        local = conn.sock.getsockname()
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode(), local
    finally:
        conn.close()


def test_echo_server_answers_on_each_port_and_stops_on_sigterm(
        echo_server: tuple[subprocess.Popen, list[int]]) -> None:
    proc, ports = echo_server
    for port, path in zip(ports, ["/", "/some/path?q=1"]):
        status, ctype, body, local = get(port, path)
        assert status == 200
        assert ctype == "application/json"
        assert json.loads(body) == {"pod": "echo-pod", "namespace": "nk-test", "node": "nodeA",
                                    "podIP": "10.244.9.9", "client": f"{local[0]}:{local[1]}",
                                    "port": port, "path": path, "method": "GET"}

    status, _, body, _ = get(ports[1], "/healthz")
    assert (status, body) == (200, "ok")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=2) == 0
    out = proc.stdout.read() if proc.stdout else ""
    lines = [line for line in out.splitlines() if '"GET ' in line]
    assert len(lines) == 3, out
    assert '"GET /some/path?q=1 HTTP/1.1" 200' in lines[1]


def test_echo_server_refuses_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "netk8s.kubelet.images.echo", "--port", str(port)],
                              capture_output=True, text=True, timeout=5)
    assert proc.returncode == 1
    assert f"cannot listen on 0.0.0.0:{port}" in proc.stderr


# --- the catalogue: image references, ENTRYPOINT/CMD and command/args -----------------------------

PY = "/py"
AGN = "registry.k8s.io/e2e-test-images/agnhost:2.47"
AGN_MOD = [PY, "-m", "netk8s.kubelet.images.agnhost", "--netk8s-pod", "web-1",
           "--netk8s-machine-hostname", socket.gethostname()]
NGINX_MOD = [PY, "-m", "netk8s.kubelet.images.nginx"]
PAUSE_MOD = [PY, "-m", "netk8s.kubelet.images.pause"]


@pytest.mark.parametrize("container,argv", [
    # agnhost: ENTRYPOINT /agnhost, CMD pause; args are the subcommand and its flags.
    ({"image": AGN, "args": ["netexec", "--http-port=8080", "--udp-port=8081"]},
     AGN_MOD + ["netexec", "--http-port=8080", "--udp-port=8081"]),
    ({"image": "k8s.gcr.io/e2e-test-images/agnhost:2.39", "args": ["netexec", "--http-port", "80"]},
     AGN_MOD + ["netexec", "--http-port", "80"]),
    ({"image": "gcr.io/kubernetes-e2e-test-images/agnhost:2.2", "args": ["serve-hostname"]},
     AGN_MOD + ["serve-hostname"]),
    ({"image": AGN}, AGN_MOD + ["pause"]),
    ({"image": AGN, "command": ["/agnhost", "porter"]}, AGN_MOD + ["porter"]),
    ({"image": AGN, "command": ["/agnhost"], "args": ["netexec"]}, AGN_MOD + ["netexec"]),
    ({"image": AGN, "command": ["/agnhost"]}, AGN_MOD),  # agnhost alone prints its subcommands
    ({"image": AGN, "command": ["sh", "-c", "sleep 1"]}, ["sh", "-c", "sleep 1"]),  # a host program
    # Shell images: no ENTRYPOINT, so args alone are the command; the default CMD is a shell.
    ({"image": "busybox"}, ["sh"]),
    ({"image": "busybox:1.36", "args": ["sleep", "3600"]}, ["sleep", "3600"]),
    ({"image": "busybox", "command": ["sh", "-c"], "args": ["echo hi"]}, ["sh", "-c", "echo hi"]),
    ({"image": "docker.io/library/alpine:3.20"}, ["/bin/sh"]),
    ({"image": "debian:12"}, ["bash"]),
    ({"image": "ubuntu"}, ["bash"]),
    ({"image": "busybox", "stdin": True}, PAUSE_MOD),  # the shell would wait on an open stdin
    ({"image": "busybox", "stdin": True, "args": ["sh", "-c", "exit 3"]}, ["sh", "-c", "exit 3"]),
    # pause
    ({"image": "registry.k8s.io/pause:3.10"}, PAUSE_MOD),
    ({"image": "k8s.gcr.io/pause"}, PAUSE_MOD),
    # nginx: ENTRYPOINT /docker-entrypoint.sh, CMD nginx -g "daemon off;"
    ({"image": "nginx"}, NGINX_MOD + ["--port", "80", "--server-version", "1.27.4", "--", "-g", "daemon off;"]),
    ({"image": "nginx:1.25.3-alpine", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
     NGINX_MOD + ["--port", "8080", "--server-version", "1.25.3", "--", "-g", "daemon off;"]),
    ({"image": "docker.io/library/nginx:stable", "command": ["nginx"], "args": ["-g", "daemon off;"]},
     NGINX_MOD + ["--port", "80", "--server-version", "1.27.4", "--", "-g", "daemon off;"]),
    ({"image": "nginx", "args": ["sleep", "60"]}, ["sleep", "60"]),  # docker-entrypoint.sh execs "$@"
    ({"image": "nginx", "command": ["/docker-entrypoint.sh"]}, ["true"]),
    # netk8s/echo: command still means a host program; args go to the echo server
    ({"image": "netk8s/echo", "args": ["--port", "9"]}, ECHO_PREFIX + ["--port", "8080", "--port", "9"]),
    # any other image runs its command
    ({"image": "quay.io/acme/tool:1", "command": ["curl"], "args": ["-s", "x"]}, ["curl", "-s", "x"]),
])
def test_catalogue_resolution(container: dict, argv: list[str]) -> None:
    assert command_for(container, CTX, python=PY) == argv


def test_every_builtin_image_resolves_and_is_described() -> None:
    names = builtin_images()
    assert names == sorted(names)
    assert set(describe_builtin_images()) == set(names)
    assert all(describe_builtin_images()[name] for name in names)
    for name in names:
        entry = resolve_image(f"{name}:sometag")
        assert entry is not None and entry.name == name
    assert resolve_image("quay.io/acme/nginx") is None


def test_unknown_agnhost_subcommand_names_the_supported_ones() -> None:
    with pytest.raises(ImageCommandNotSupported) as info:
        command_for({"image": AGN, "args": ["mounttest", "--fs_type=/"]}, CTX)
    assert isinstance(info.value, ImageNotFound)  # the kubelet reports it as it reports a missing image
    assert str(info.value) == (f'image "{AGN}": agnhost subcommand "mounttest" is not built into netk8s; '
                               "supported: netexec, pause, porter, serve-hostname")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("image,tag,version", [
    ("nginx", "latest", "1.27.4"),
    ("nginx:1.25", "1.25", "1.25"),
    ("nginx:1.25.3-alpine@sha256:" + "c" * 64, "1.25.3-alpine", "1.25.3"),
    ("localhost:5000/nginx", "latest", "1.27.4"),
    ("nginx:stable-alpine", "stable-alpine", "1.27.4"),
])
def test_image_tag_and_nginx_version(image: str, tag: str, version: str) -> None:
    assert image_tag(image) == tag
    assert nginx_version(image) == version


def test_docs_list_every_builtin_image() -> None:
    docs = (REPO / "docs" / "images.md").read_text()
    for name in builtin_images():
        assert f"`{name}" in docs, name
    for subcommand in AGNHOST_SUBCOMMANDS:
        assert f"`{subcommand}`" in docs, subcommand


@pytest.mark.parametrize("module", ["echo", "agnhost", "nginx", "pause"])
def test_image_modules_import_only_the_stdlib(module: str) -> None:
    probe = (f"import sys, netk8s.kubelet.images.{module}; "
             "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('yaml', 'aiohttp', 'pyroute2', 'mininet', 'scapy', 'netk8s'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=20,
                            check=True).stdout.split()
    allowed = {"netk8s", "netk8s.errors", "netk8s.kubelet", "netk8s.kubelet.images",
               "netk8s.kubelet.images.serving", "netk8s.kubelet.images.gostyle", "netk8s.kubelet.images.netexec",
               f"netk8s.kubelet.images.{module}"}
    assert set(loaded) <= allowed, set(loaded) - allowed


# --- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0), ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("2us", 2e-6),
    ("-3s", -3.0), ("1h2m3s4ms", 3723.004),
])
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s2", "--1s"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


@pytest.mark.parametrize("payload,reply", [
    (b"hostname", "pod-a"), (b"  HostName\n", "pod-a"), (b"echo Hello World\n", "hello world"),
    (b"echo ", None), (b"echo  x", " x"), (b"clientip", "10.0.0.1:4000"), (b"nonsense", None), (b"", None),
])
def test_udp_reply(payload: bytes, reply: str | None) -> None:
    assert udp_reply(payload, "pod-a", "10.0.0.1:4000") == reply


def test_parse_dial_query() -> None:
    assert parse_dial_query({"request": ["hostname"], "host": ["10.96.0.5"], "port": ["80"]}) == DialRequest(
        "10.96.0.5", 80, "hostname", DialProtocol.HTTP, 1)
    assert parse_dial_query({"request": ["echo x"], "host": ["h"], "port": ["90"], "protocol": ["UDP"],
                             "tries": ["10"]}) == DialRequest("h", 90, "echo x", DialProtocol.UDP, 10)
    for query, message in [
        ({"request": ["x"], "tries": ["many"]}, 'tries parameter is invalid. strconv.Atoi: parsing "many"'),
        ({"host": ["h"], "port": ["80"]}, "request parameter not specified. <nil>"),
        ({"request": ["x"], "protocol": ["icmp"]}, "unsupported protocol. icmp"),
        ({"request": ["x"], "port": ["99999"]}, "host and/or port param are invalid."),
        ({"request": ["x"], "port": ["no-such-service-name"]}, "host and/or port param are invalid."),
    ]:
        with pytest.raises(DialParamError) as info:
            parse_dial_query(query)
        assert str(info.value).startswith(message), (query, str(info.value))


def test_dial_output_follows_agnhost() -> None:
    assert dial_output(["a", "b"], [], "b") == {"responses": ["a", "b"]}
    assert dial_output(["a"], ["boom"], "a") == {"responses": ["a"], "errors": ["boom"]}
    # agnhost only reports responses when the last try answered
    assert dial_output(["a"], ["boom"], "") == {"errors": ["boom"]}
    assert dial_output([], [], "") == {}


def test_go_json() -> None:
    assert go_json({"output": "<a&b>", "error": "x"}) == '{"error":"x","output":"\\u003ca\\u0026b\\u003e"}'


def test_choose_hostname() -> None:
    assert choose_hostname("machine", "web-1", "machine") == "web-1"  # sharing the machine's UTS namespace
    assert choose_hostname("web-1.sub", "web-1", "machine") == "web-1.sub"  # a UTS namespace of its own
    assert choose_hostname("anything", "web-1", "") == "web-1"  # machine unknown: trust the pod name
    assert choose_hostname("machine", "", "machine") == "machine"


def test_porter_listeners() -> None:
    env = {"SERVE_PORT_9001": "a", "SERVE_TCP_PORT_9002": "b", "SERVE_UDP_PORT_9003": "c",
           "SERVE_TLS_PORT_9004": "d", "SERVE_SCTP_PORT_9005": "e", "PATH": "/bin", "SERVE_X": "f"}
    assert porter_listeners(env) == [("tcp", "9001", "a"), ("sctp", "9005", "e"), ("tcp", "9002", "b"),
                                     ("tls", "9004", "d"), ("udp", "9003", "c")]


def test_split_argv() -> None:
    assert split_argv(["--netk8s-pod", "p", "--netk8s-machine-hostname", "vm", "netexec", "--http-port=1"]) == \
        Invocation("p", "vm", "netexec", ["--http-port=1"])
    assert split_argv(["--netk8s-pod=p", "pause"]) == Invocation("p", "", "pause", [])
    assert split_argv(["serve-hostname", "--udp"]) == Invocation("", "", "serve-hostname", ["--udp"])
    assert split_argv([]) == Invocation("", "", "", [])
    with pytest.raises(UsageError, match="--netk8s-pod needs a value"):
        split_argv(["--netk8s-pod"])


def test_nginx_access_log_line() -> None:
    stamp = 86400.0 * 365
    local = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(stamp))  # $time_local
    assert access_log_line("10.244.1.5", stamp, "GET / HTTP/1.1", 200, 615, "", "curl/8.0", "") == (
        f'10.244.1.5 - - [{local}] "GET / HTTP/1.1" 200 615 "-" "curl/8.0" "-"')
    assert access_log_line("10.0.0.1", stamp, "GET /x HTTP/1.1", 404, 153, "http://r/", "", "1.2.3.4").endswith(
        '"GET /x HTTP/1.1" 404 153 "http://r/" "-" "1.2.3.4"')


# --- the servers, as subprocesses on loopback -----------------------------------------------------

Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Spawn:
    """Start a server subprocess; every one is killed (by its PID) at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    def stop() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    request.addfinalizer(stop)
    return start


def wait_listening(proc: subprocess.Popen, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"server did not listen on port {port} within {timeout:g}s")
            time.sleep(0.02)


def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 15) -> tuple[int, dict[str, str], str, str]:
    """(status, headers, body, the client's own ip:port)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        local = conn.sock.getsockname()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode(), f"{local[0]}:{local[1]}"
    finally:
        conn.close()


def udp_ask(port: int, payload: bytes, timeout: float = 3) -> tuple[str, str]:
    """(answer, the client's own ip:port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(payload)
        local = sock.getsockname()
        return sock.recv(2048).decode(), f"{local[0]}:{local[1]}"


def udp_ask_once_up(proc: subprocess.Popen, port: int, payload: bytes, timeout: float = 5) -> str:
    """The answer to ``payload``, asked again until the UDP server is up (its socket is bound after others)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return udp_ask(port, payload, timeout=0.5)[0]
        except (TimeoutError, ConnectionRefusedError):
            assert time.monotonic() < deadline and proc.poll() is None, f"nothing answered on UDP port {port}"


def host_of(pod: str) -> str:
    """What the servers answer as hostname here: the pod name (the tests run with the machine's hostname)."""
    assert pod_hostname(pod, socket.gethostname()) == pod
    return pod


def agnhost_argv(pod: str, *args: str) -> list[str]:
    ctx = PodContext(pod_name=pod, namespace="default", node_name="worker", pod_ip="10.244.1.2")
    return command_for({"image": AGN, "args": list(args)}, ctx)


def start_netexec(spawn: Spawn, pod: str, udp: bool = True) -> tuple[subprocess.Popen, int, int]:
    http_port, udp_port = free_ports(2)
    proc = spawn(agnhost_argv(pod, "netexec", f"--http-port={http_port}",
                              "--udp-port", str(udp_port) if udp else "-1"))
    wait_listening(proc, http_port)
    if udp:  # /healthz turns 200 once the UDP server runs
        deadline = time.monotonic() + 5
        while request(http_port, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, "netexec /healthz never turned 200"
            time.sleep(0.02)
    return proc, http_port, udp_port


@pytest.fixture
def two_netexecs(spawn: Spawn) -> tuple[tuple[subprocess.Popen, int, int], tuple[subprocess.Popen, int, int]]:
    return start_netexec(spawn, "pod-a"), start_netexec(spawn, "pod-b")


def test_netexec_http_endpoints(two_netexecs) -> None:
    (_, port, _), _ = two_netexecs
    status, _, body, _ = request(port, "/")
    assert status == 200 and re.fullmatch(r"NOW: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \S+", body), body
    assert request(port, "/echo?msg=" + quote("hello there"))[::2] == (200, "hello there")
    assert request(port, "/echo?msg=gone&code=404")[::2] == (404, "gone")
    assert request(port, "/echo", method="POST", body=b"msg=posted",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})[2] == "posted"
    assert request(port, "/hostname")[::2] == (200, host_of("pod-a"))
    assert request(port, "/hostName")[2] == host_of("pod-a")
    status, _, body, me = request(port, "/clientip")
    assert (status, body) == (200, me)
    assert request(port, "/healthz")[0] == 200
    status, headers, _, _ = request(port, "/redirect?location=" + quote("/echo?msg=x") + "&code=307")
    assert (status, headers["Location"]) == (307, "/echo?msg=x")
    assert request(port, "/unknown/path")[2].startswith("NOW: ")  # Go's mux sends unknown paths to /


def test_netexec_rejects_bad_arguments_as_agnhost_does(two_netexecs) -> None:
    (_, port, _), _ = two_netexecs
    assert request(port, "/echo?msg=x&code=abc")[::2] == (200, "argument 'code' must be an integer or empty, "
                                                              'got "abc"\n')
    assert request(port, "/redirect?location=/x&code=no")[::2] == (200, "argument 'code' must be an integer or "
                                                                        'empty, got "no"\n')
    assert request(port, "/exit?timeout=soon")[::2] == (200, "argument 'timeout' must be a valid golang duration "
                                                             'or empty, got "soon"\n')
    assert request(port, "/exit?wait=1s&code=x")[::2] == (200, "argument 'code' must be an integer [0-127] or "
                                                               'empty, got "x"\n')


def test_netexec_shell(two_netexecs) -> None:
    (_, port, _), _ = two_netexecs
    status, _, body, _ = request(port, "/shell?shellCommand=" + quote("echo out; echo err >&2"))
    assert status == 200 and json.loads(body) == {"output": "out\nerr\n"}
    assert json.loads(request(port, "/shell?cmd=" + quote("printf x; exit 3"))[2]) == {
        "output": "x", "error": "exit status 3"}
    assert json.loads(request(port, "/shell?cmd=" + quote("kill -TERM $$"))[2]) == {"error": "signal: terminated"}
    assert json.loads(request(port, "/shell?cmd=true")[2]) == {}


def test_netexec_upload_and_http_override(spawn: Spawn, two_netexecs) -> None:
    (_, port, _), _ = two_netexecs
    boundary = "netk8sboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nuploaded bytes\r\n--{boundary}--\r\n").encode()
    status, _, answer, _ = request(port, "/upload", method="POST", body=body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201
    path = Path(json.loads(answer)["output"])
    try:
        assert path.read_bytes() == b"uploaded bytes"
    finally:
        path.unlink()
    assert json.loads(request(port, "/upload", method="POST", body=b"x")[2]) == {"error": "Unable to upload file."}

    http_port = free_ports(1)[0]
    proc = spawn(agnhost_argv("pod-o", "netexec", f"--http-port={http_port}", "--udp-port=-1",
                              "--http-override=/echo?msg=overridden"))
    wait_listening(proc, http_port)
    assert request(http_port, "/hostname")[::2] == (200, "overridden")


def test_netexec_udp_server(two_netexecs) -> None:
    (_, _, udp_port), _ = two_netexecs
    assert udp_ask(udp_port, b"hostname")[0] == host_of("pod-a")
    assert udp_ask(udp_port, b"echo hello\n")[0] == "hello"
    answer, me = udp_ask(udp_port, b"clientip")
    assert answer == me


def test_netexec_dial_fans_out_to_other_servers(two_netexecs) -> None:
    (_, a_http, a_udp), (_, b_http, b_udp) = two_netexecs
    dial = "/dial?request={}&protocol={}&host=127.0.0.1&port={}&tries={}"
    status, _, body, _ = request(a_http, dial.format("hostname", "http", b_http, 3))
    assert (status, json.loads(body)) == (200, {"responses": [host_of("pod-b")] * 3})
    assert json.loads(request(b_http, dial.format("hostname", "http", a_http, 2))[2]) == {
        "responses": [host_of("pod-a")] * 2}
    assert json.loads(request(a_http, dial.format("hostname", "udp", b_udp, 2))[2]) == {
        "responses": [host_of("pod-b")] * 2}
    assert json.loads(request(b_http, dial.format(quote("echo hi"), "udp", a_udp, 1))[2]) == {"responses": ["hi"]}
    assert json.loads(request(a_http, dial.format("clientip", "http", b_http, 1))[2])["responses"][0].startswith(
        "127.0.0.1:")
    # Nothing listens on a fresh port: only errors, agnhost's wording.
    closed = free_ports(1)[0]
    out = json.loads(request(a_http, dial.format("hostname", "http", closed, 2))[2])
    assert out == {"errors": [f'Get "http://127.0.0.1:{closed}/hostname": dial tcp 127.0.0.1:{closed}: '
                              f"connect: connection refused"] * 2}
    out = json.loads(request(a_http, dial.format("hostname", "udp", closed, 1))[2])
    assert list(out) == ["errors"] and out["errors"][0].startswith("reading from udp connection failed.")
    status, _, body, _ = request(a_http, "/dial?host=127.0.0.1&port=1")
    assert (status, body) == (400, "request parameter not specified. <nil>\n")


def test_netexec_exit_ends_the_process_with_the_code(spawn: Spawn) -> None:
    proc, port, _ = start_netexec(spawn, "pod-x")
    with pytest.raises((http.client.HTTPException, OSError)):
        request(port, "/exit?code=7", timeout=5)  # exits before answering, as agnhost's os.Exit
    assert proc.wait(timeout=5) == 7
    assert "then will exit with 7" in (proc.stderr.read() if proc.stderr else "")

    proc, port, _ = start_netexec(spawn, "pod-y")
    status, _, body, _ = request(port, "/exit?code=3&timeout=2s")  # graceful: answers, then exits
    assert (status, body) == (200, "")
    assert proc.wait(timeout=5) == 3

    proc, port, _ = start_netexec(spawn, "pod-z")
    with pytest.raises((http.client.HTTPException, OSError)):
        request(port, "/shutdown", timeout=5)
    assert proc.wait(timeout=5) == 0


def test_netexec_without_udp_is_never_healthy_like_agnhost(spawn: Spawn) -> None:
    _, port, _ = start_netexec(spawn, "pod-a", udp=False)
    assert request(port, "/healthz")[0] == 412
    assert request(port, "/hostname")[2] == host_of("pod-a")


def test_netexec_busy_port_and_sctp(spawn: Spawn) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(agnhost_argv("p", "netexec", f"--http-port={port}", "--udp-port=-1"),
                              capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and f"listen tcp :{port}: bind: address already in use" in proc.stderr
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        sctp_port = free_ports(1)[0]
        proc = subprocess.run(agnhost_argv("p", "netexec", f"--http-port={free_ports(1)[0]}", "--udp-port=-1",
                                           f"--sctp-port={sctp_port}"), capture_output=True, text=True, timeout=10)
        assert proc.returncode == 1
        assert f"failed to create listener for SCTP address :{sctp_port}" in proc.stderr
        return
    http_port, sctp_port = free_ports(2)
    running = spawn(agnhost_argv("p", "netexec", f"--http-port={http_port}", "--udp-port=-1",
                                 f"--sctp-port={sctp_port}"))
    wait_listening(running, http_port)
    out = json.loads(request(http_port, f"/dial?request=hostname&protocol=sctp&host=127.0.0.1&port={sctp_port}")[2])
    assert out == {"responses": [host_of("p")]}


def test_agnhost_unknown_subcommand_and_flags() -> None:
    proc = subprocess.run([sys.executable, "-m", "netk8s.kubelet.images.agnhost", "mounttest"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ('Error: unknown command "mounttest" for "agnhost"; the netk8s built-in agnhost '
                                   "supports: netexec, pause, porter, serve-hostname")
    proc = subprocess.run([sys.executable, "-m", "netk8s.kubelet.images.agnhost", "netexec", "--htp-port=1"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and "agnhost netexec: unrecognized arguments: --htp-port=1" in proc.stderr


def test_agnhost_serve_hostname_http_and_udp(spawn: Spawn) -> None:
    http_port, udp_port = free_ports(2)
    web = spawn(agnhost_argv("host-a", "serve-hostname", "--port", str(http_port)))
    dgram = spawn(agnhost_argv("host-b", "serve-hostname", "--udp", "--http=false", f"--port={udp_port}"))
    wait_listening(web, http_port)
    assert request(http_port, "/anything")[::2] == (200, host_of("host-a"))
    assert udp_ask_once_up(dgram, udp_port, b"x") == host_of("host-b")
    proc = subprocess.run(agnhost_argv("h", "serve-hostname", "--udp"), capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and "Can't server TCP/UDP mode and HTTP mode at the same time" in proc.stderr


def test_agnhost_porter(spawn: Spawn) -> None:
    tcp_port, udp_port = free_ports(2)
    proc = spawn(agnhost_argv("p", "porter"), env={f"SERVE_PORT_{tcp_port}": "foo",
                                                   f"SERVE_UDP_PORT_{udp_port}": "bar"})
    wait_listening(proc, tcp_port)
    assert request(tcp_port, "/x")[::2] == (200, "foo")
    assert udp_ask_once_up(proc, udp_port, b"?") == "bar"
    json_port = free_ports(1)[0]
    proc = spawn(agnhost_argv("p", "porter", "--json-response"), env={f"SERVE_TCP_PORT_{json_port}": "v"})
    wait_listening(proc, json_port)
    status, headers, body, _ = request(json_port, "/", method="POST", body=b"")
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json",
                                                                  {"Method": "POST", "Body": "v"})


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_agnhost_pause_exit_codes(spawn: Spawn, sig: signal.Signals, code: int) -> None:
    proc = spawn(agnhost_argv("p"))  # the image's CMD: pause
    assert proc.stdout is not None and proc.stdout.readline() == "Paused\n"
    proc.send_signal(sig)
    assert proc.wait(timeout=3) == code


def wait_catching(proc: subprocess.Popen, sig: signal.Signals, timeout: float = 5.0) -> None:
    """Wait until the process has a handler for ``sig`` (its SigCgt mask in /proc/<pid>/status)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        with open(f"/proc/{proc.pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if caught & (1 << (sig - 1)):
            return
        assert time.monotonic() < deadline, f"no {sig.name} handler within {timeout:g}s"
        time.sleep(0.02)


def test_pause_image_exits_0_on_sigterm(spawn: Spawn) -> None:
    proc = spawn(command_for({"image": "registry.k8s.io/pause:3.10"}, CTX))
    wait_catching(proc, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=3) == 0
    assert "Shutting down, got signal: Terminated" in (proc.stderr.read() if proc.stderr else "")


def test_busybox_default_shell_completes_at_once() -> None:
    argv = command_for({"image": "busybox"}, CTX)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    assert proc.returncode == 0


def test_nginx_serves_the_welcome_page_and_logs_like_nginx(spawn: Spawn) -> None:
    port = free_ports(1)[0]
    proc = spawn(command_for({"image": "nginx:1.25", "ports": [{"containerPort": port}]}, CTX))
    wait_listening(proc, port)
    status, headers, body, me = request(port, "/", headers={"User-Agent": "curl/8.0"})
    assert status == 200 and headers["Server"] == "nginx/1.25" and headers["Content-Type"] == "text/html"
    assert "<title>Welcome to nginx!</title>" in body and "netk8s" in body
    assert request(port, "/index.html")[2] == body
    status, _, body404, _ = request(port, "/missing")
    assert status == 404 and "<center><h1>404 Not Found</h1></center>" in body404
    assert request(port, "/", method="POST", body=b"x")[0] == 405
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=3) == 0
    lines = proc.stdout.read().splitlines() if proc.stdout else []
    assert len(lines) == 4, lines
    assert re.fullmatch(rf'127\.0\.0\.1 - - \[[^\]]+\] "GET / HTTP/1\.1" 200 {len(body.encode())} "-" '
                        r'"curl/8\.0" "-"', lines[0]), lines[0]
    assert '"GET /missing HTTP/1.1" 404 ' in lines[2]
    assert "signal 15 (SIGTERM) received, exiting" in (proc.stderr.read() if proc.stderr else "")
