"""Built-in images on a running cluster: agnhost netexec behind a Service answers the
e2e framework's /dial fan-out and UDP commands with backend pod names, nginx serves its
welcome page and logs the client, busybox's default shell completes, agnhost /exit makes
a container crash and restart, an unknown agnhost subcommand is reported on the pod; and
(without a cluster) a server in a UTS namespace of its own answers that hostname."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Iterator
from urllib.parse import quote

import pytest

from netk8s.api import meta
from netk8s.cluster.api import Cluster
from netk8s.kubelet.images import PodContext, command_for
from netk8s.testing.helpers import run_cli, wait_for
from netk8s.testing.plugin import unique_cluster_name

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.53"


def _deployment(name: str, replicas: int, container: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}


def _pod(name: str, container: dict, restart_policy: str = "Always") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": restart_policy, "containers": [container]}}


NETEXEC = {"name": "agnhost", "image": AGNHOST, "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
           "ports": [{"name": "http", "containerPort": 8080}, {"name": "udp", "containerPort": 8081,
                                                                "protocol": "UDP"}],
           "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}

MANIFESTS = [
    _deployment("netexec", 3, NETEXEC),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "netexec"},
     "spec": {"selector": {"app": "netexec"},
              "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "udp", "port": 90, "targetPort": 8081, "protocol": "UDP"}]}},
    # What `kubectl create deployment web --image=nginx` makes: no ports declared, nginx listens on 80.
    _deployment("web", 2, {"name": "nginx", "image": "nginx"}),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]}},
    _pod("tester", {**NETEXEC, "name": "tester"}),
    _pod("crasher", {**NETEXEC, "name": "crasher"}),
    _pod("shell", {"name": "shell", "image": "busybox:1.36"}, restart_policy="Never"),
    _pod("pauser", {"name": "pause", "image": "registry.k8s.io/pause:3.10"}),
    _pod("bad-subcommand", {"name": "agnhost", "image": AGNHOST, "args": ["mounttest"]}),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.up(name=unique_cluster_name("img"))
    try:
        c.apply(MANIFESTS)
        c.wait_ready("deployment", "netexec", timeout=60)
        c.wait_ready("deployment", "web", timeout=60)
        c.wait_ready("pod", "tester", timeout=60)
        for service, count in (("netexec", 3), ("web", 2)):
            c.wait_for(lambda: _ready_endpoints(c, service) == count, timeout=30,
                       what=f"{count} ready endpoints of service {service}")
            c.wait_service(service, timeout=30)
        yield c
    finally:
        c.down()


def _ready_endpoints(cluster: Cluster, service: str) -> int:
    slices = cluster.list("endpointslices", "default", f"kubernetes.io/service-name={service}")
    return sum(1 for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))


def _cluster_ip(cluster: Cluster, service: str) -> str:
    return str(cluster.get("service", service)["spec"]["clusterIP"])


def _pod_names(cluster: Cluster, app: str) -> set[str]:
    return {meta.name_of(p) for p in cluster.list("pods", "default", f"app={app}")}


def _curl(cluster: Cluster, pod: str, url: str) -> str:
    out = cluster.exec(pod, ["curl", "-s", "-g", "-m", "60", url], timeout=90)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dial_through_the_cluster_ip_returns_backend_pod_names(cluster: Cluster) -> None:
    backends = _pod_names(cluster, "netexec")
    ip = _cluster_ip(cluster, "netexec")
    # As the e2e framework does: ask the test pod's netexec to dial the Service for it.
    dial = "http://127.0.0.1:8080/dial?request=hostname&protocol={}&host={}&port={}&tries=10"

    def spread() -> dict | None:
        answer = json.loads(_curl(cluster, "tester", dial.format("http", ip, 80)))
        assert set(answer) == {"responses"}, answer
        assert len(answer["responses"]) == 10 and set(answer["responses"]) <= backends, answer
        # kube-proxy spreads new connections once every node's rules list all endpoints
        return answer if len(set(answer["responses"])) >= 2 else None
    cluster.wait_for(spread, timeout=30, interval=0.5, what="/dial answers from at least two backends")
    answer = json.loads(_curl(cluster, "tester", dial.format("udp", ip, 90)))
    assert set(answer) == {"responses"} and set(answer["responses"]) <= backends, answer

    # clientip over the Service: the backend saw the tester pod's own address (DNAT only).
    tester_ip = cluster.get("pod", "tester")["status"]["podIP"]
    answer = json.loads(_curl(cluster, "tester", dial.format("http", ip, 80).replace("hostname", "clientip")))
    assert {r.split(":")[0] for r in answer["responses"]} == {tester_ip}, answer


def test_udp_commands_through_the_cluster_ip(cluster: Cluster) -> None:
    backends = _pod_names(cluster, "netexec")
    ip = _cluster_ip(cluster, "netexec")
    script = ("import socket, sys\n"
              "for message in sys.argv[3:]:\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.settimeout(5)\n"
              "    s.sendto(message.encode(), (sys.argv[1], int(sys.argv[2])))\n"
              "    print(s.recv(2048).decode())\n")
    out = cluster.exec("tester", [sys.executable, "-c", script, ip, "90", "hostname", "echo hello", "hostname"],
                       timeout=60)
    assert out.returncode == 0, out.stderr
    first, echoed, second = out.stdout.splitlines()
    assert first in backends and second in backends
    assert echoed == "hello"


def test_nginx_deployment_serves_the_welcome_page(cluster: Cluster) -> None:
    ip = _cluster_ip(cluster, "web")
    page = _curl(cluster, "tester", f"http://{ip}/")
    assert "<title>Welcome to nginx!</title>" in page
    tester_ip = cluster.get("pod", "tester")["status"]["podIP"]
    logs = ""
    for pod in _pod_names(cluster, "web"):
        result = run_cli("--cluster", cluster.name, "logs", pod)
        assert result.code == 0, result.stderr
        logs += result.stdout
    assert f'{tester_ip} - - [' in logs and '"GET / HTTP/1.1" 200 ' in logs, logs


def test_busybox_default_shell_completes_and_pause_runs(cluster: Cluster) -> None:
    def finished() -> dict | None:
        pod = cluster.get("pod", "shell")
        return pod if pod.get("status", {}).get("phase") == "Succeeded" else None
    pod = cluster.wait_for(finished, timeout=30, what="the busybox pod to succeed")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    cluster.wait_ready("pod", "pauser", timeout=30)


def test_agnhost_exit_makes_the_container_crash_and_restart(cluster: Cluster) -> None:
    cluster.wait_ready("pod", "crasher", timeout=30)
    crasher_ip = cluster.get("pod", "crasher")["status"]["podIP"]
    # The crasher exits without answering, as agnhost does; curl reports an empty reply.
    cluster.exec("tester", ["curl", "-s", "-m", "5", f"http://{crasher_ip}:8080/exit?code=3"], timeout=30)

    def restarted() -> dict | None:
        status = cluster.get("pod", "crasher")["status"]["containerStatuses"][0]
        return status if status["restartCount"] >= 1 and "lastState" in status else None
    status = cluster.wait_for(restarted, timeout=30, what="the crasher container to restart")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    cluster.wait_ready("pod", "crasher", timeout=30)
    assert _curl(cluster, "tester", f"http://{crasher_ip}:8080/hostname") == "crasher"


def test_unknown_agnhost_subcommand_is_reported_on_the_pod(cluster: Cluster) -> None:
    def waiting() -> dict | None:
        statuses = cluster.get("pod", "bad-subcommand").get("status", {}).get("containerStatuses") or []
        state = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return state if state.get("reason") == "ErrImagePull" else None
    state = cluster.wait_for(waiting, timeout=30, what="bad-subcommand to report its image error")
    assert state["message"] == (f'image "{AGNHOST}": agnhost subcommand "mounttest" is not built into netk8s; '
                                "supported: netexec, pause, porter, serve-hostname")


def test_shell_endpoint_runs_in_the_pod_network_namespace(cluster: Cluster) -> None:
    tester_ip = cluster.get("pod", "tester")["status"]["podIP"]
    answer = json.loads(_curl(cluster, "tester", "http://127.0.0.1:8080/shell?shellCommand="
                              + quote("ip -4 -o addr show dev eth0")))
    assert f"inet {tester_ip}/" in answer["output"], answer
    assert "error" not in answer
    assert subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.count(tester_ip) == 0


def test_hostname_comes_from_the_uts_namespace_when_the_process_has_its_own() -> None:
    """No cluster: agnhost in a UTS namespace of its own answers that namespace's hostname, not
    the pod name it was given (what pods see once the kubelet gives them UTS namespaces)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = PodContext(pod_name="pod-name", namespace="default", node_name="worker", pod_ip="10.244.1.2")
    argv = command_for({"image": AGNHOST, "args": ["serve-hostname", "--udp", "--http=false", f"--port={port}"]},
                       ctx)
    # `hostname` runs inside the new UTS namespace: the machine's hostname is untouched.
    proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname nk-uts-host && exec "$@"', "sh", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def answer() -> str | None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.3)
                try:
                    sock.sendto(b"x", ("127.0.0.1", port))
                    return sock.recv(100).decode()
                except OSError:
                    return None
        assert wait_for(answer, timeout=10, what="serve-hostname in its own UTS namespace") == "nk-uts-host"
        assert socket.gethostname() != "nk-uts-host"
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
