"""Unit tests for the built-in image catalogue and the netk8s/echo server.

The echo server runs as a subprocess bound to free ephemeral ports; the test
talks to it over 127.0.0.1 (root-namespace loopback, not a cluster address).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from netk8s.errors import NetK8sError
from netk8s.kubelet.images import (
    ImageNotFound,
    PodContext,
    builtin_images,
    command_for,
    image_repository,
)

CTX = PodContext(pod_name="web-1", namespace="shop", node_name="worker1", pod_ip="10.244.1.7")
ECHO_PREFIX = ["/py", "-m", "netk8s.kubelet.images.echo", "--pod", "web-1", "--namespace", "shop",
               "--node", "worker1", "--pod-ip", "10.244.1.7"]


# --- catalogue -----------------------------------------------------------------------------

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
        command_for({"name": "c", "image": "nginx:1.25", "args": ["x"]}, CTX)
    assert isinstance(info.value, NetK8sError)
    assert str(info.value) == ('image "nginx:1.25" is not a netk8s built-in image and the container has no '
                               'command; built-in images: netk8s/echo')
    assert info.value.image == "nginx:1.25"
    with pytest.raises(ImageNotFound):
        command_for({"image": "busybox", "command": []}, CTX)


# --- echo server ---------------------------------------------------------------------------

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
    deadline = time.monotonic() + 5
    for port in ports:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"echo server exited early: {proc.stderr.read() if proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"echo server did not listen on port {port} within 5s")
                time.sleep(0.02)
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
