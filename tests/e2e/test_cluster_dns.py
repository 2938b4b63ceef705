"""Cluster DNS from pods: names resolve through /etc/resolv.conf (search path, ndots:5) to the
kube-dns ClusterIP, over UDP and TCP through kube-proxy's rules, as in a kubeadm cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.cluster.api import Cluster

REPO = Path(__file__).resolve().parents[2]
HEADLESS = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
     "spec": {"clusterIP": "None", "selector": {"app": "echo"}, "ports": [{"name": "http", "port": 8080}]}},
]
# A TCP query to the kube-dns ClusterIP, run in a pod with this interpreter (netk8s's wire module).
TCP_SRV = """
import socket, struct, sys
from netk8s.dns.wire import RecordType, build_query, parse_answers
q = build_query(sys.argv[1], RecordType.SRV)
s = socket.create_connection(("10.96.0.10", 53), timeout=3)
s.sendall(struct.pack("!H", len(q)) + q)
size = struct.unpack("!H", s.recv(2))[0]
data = b""
while len(data) < size:
    data += s.recv(size - len(data))
rcode, answers = parse_answers(data)
print(rcode, len(answers), *sorted(struct.unpack("!HHH", rdata[:6])[2] for _, _, rdata in answers))
"""


@pytest.fixture(scope="module")
def cluster(netk8s_cluster: Cluster) -> Iterator[Cluster]:
    netk8s_cluster.apply(REPO / "topologies" / "apps" / "echo.yaml")
    netk8s_cluster.apply(HEADLESS)
    netk8s_cluster.wait_ready("deployment", "echo", timeout=60)
    netk8s_cluster.wait_ready("pod", "client", timeout=60)
    netk8s_cluster.wait_service("kube-dns", namespace="kube-system", timeout=30)
    yield netk8s_cluster


def getent(cluster: Cluster, *args: str) -> list[str]:
    out = cluster.exec("client", ["getent", *args], timeout=30)
    assert out.returncode == 0, (args, out.returncode, out.stderr)
    return out.stdout.splitlines()


def test_kube_dns_is_there_like_in_kubeadm(cluster: Cluster) -> None:
    svc = cluster.get("service", "kube-dns", "kube-system")
    assert svc["spec"]["clusterIP"] == str(cluster.topology.dns_service_ip())
    coredns = cluster.list("pods", "kube-system", "k8s-app=kube-dns")
    assert len(coredns) == 2 and all(p["status"]["phase"] == "Running" for p in coredns)
    resolv = cluster.exec("client", ["cat", "/etc/resolv.conf"], check=True).stdout
    assert f"nameserver {svc['spec']['clusterIP']}" in resolv and "search default.svc.cluster.local" in resolv


def test_service_names_resolve_short_and_qualified(cluster: Cluster) -> None:
    ip = cluster.get("service", "echo")["spec"]["clusterIP"]
    assert [line.split() for line in getent(cluster, "hosts", "echo")] == [[ip, "echo.default.svc.cluster.local"]]
    assert getent(cluster, "hosts", "echo.default.svc.cluster.local")[0].split()[0] == ip
    dns_ip = str(cluster.topology.dns_service_ip())
    assert getent(cluster, "hosts", "kube-dns.kube-system")[0].split()[0] == dns_ip
    # And a request by name reaches a backend.
    answer = cluster.exec("client", ["curl", "-s", "-m", "5", "http://echo/"], check=True).stdout
    assert '"pod": "echo-' in answer


def test_headless_and_pod_names(cluster: Cluster) -> None:
    backends = sorted(p["status"]["podIP"] for p in cluster.list("pods", "default", "app=echo"))
    cluster.wait_for(lambda: sorted({line.split()[0] for line in getent(cluster, "ahostsv4", "peers")}) == backends,
                     timeout=20, what="the headless service to list every ready backend")
    pod_ip = cluster.get("pod", "client")["status"]["podIP"]
    dashed = pod_ip.replace(".", "-")
    assert getent(cluster, "hosts", f"{dashed}.default.pod.cluster.local")[0].split()[0] == pod_ip


def test_srv_over_tcp_through_the_cluster_ip(cluster: Cluster) -> None:
    def srv() -> list[str] | None:
        out = cluster.exec("client", [sys.executable, "-c", TCP_SRV, "_http._tcp.peers.default.svc.cluster.local"],
                           timeout=30)
        assert out.returncode == 0, out.stderr
        words = out.stdout.split()
        return words if words[:2] == ["0", "3"] else None  # every ready backend is in the EndpointSlice
    rcode, count, *ports = cluster.wait_for(srv, timeout=20, what="SRV records for the 3 backends")
    assert set(ports) == {"8080"}


def test_unknown_and_outside_names_fail_at_once(cluster: Cluster) -> None:
    for name in ("nope", "example.com"):
        started = time.monotonic()
        out = cluster.exec("client", ["getent", "hosts", name], timeout=30)
        assert out.returncode == 2 and time.monotonic() - started < 3, (name, out.returncode)
