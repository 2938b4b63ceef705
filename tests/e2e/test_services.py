"""Service behaviours on a running cluster: UDP flows survive a backend going away (conntrack
clean-up), ClientIP session affinity switched on and off, and loadBalancerSourceRanges."""

from __future__ import annotations

from typing import Iterator

import pytest

from netk8s.api.resources import SERVICES
from netk8s.cluster.api import Cluster
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import default_topology, to_dict

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.53"

UDP_SENDER = """
import socket, sys, time
ip, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))  # one source port: every datagram belongs to the same conntrack flow
s.settimeout(0.5)
while time.monotonic() < deadline:
    s.sendto(b"hostname", (ip, port))
    try:
        print(s.recv(256).decode(), flush=True)
        break
    except socket.timeout:
        pass
"""


def web(name: str, replicas: int, extra: dict | None = None) -> list[dict]:
    container = {"name": "agnhost", "image": AGNHOST, "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                 "ports": [{"containerPort": 8080}, {"containerPort": 8081, "protocol": "UDP"}],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                  "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                           "template": {"metadata": {"labels": {"app": name}},
                                        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}}}}
    spec = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                 {"name": "udp", "port": 90, "targetPort": 8081, "protocol": "UDP"}],
            **(extra or {})}
    return [deployment, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    topo = to_dict(default_topology(unique_cluster_name("sv")))
    topo["hosts"].append({"name": "intruder"})
    topo["links"].append({"endpoints": ["intruder", "s1"]})
    c = Cluster.up(topology=topo)
    try:
        c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
                 "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "infinity"]}]}})
        c.wait_ready("pod", "client", timeout=60)
        yield c
    finally:
        c.down()


def test_udp_flow_moves_to_another_backend_when_its_endpoint_goes(cluster: Cluster) -> None:
    cluster.apply(web("udp", 2))
    cluster.wait_ready("deployment", "udp", timeout=60)
    cluster.wait_service("udp", timeout=30)
    ip = cluster.get("service", "udp")["spec"]["clusterIP"]
    first = cluster.exec("client", ["python3", "-c", UDP_SENDER, ip, "90", "10"], check=True).stdout.strip()
    pods = {p["metadata"]["name"] for p in cluster.list("pods", "default", "app=udp")}
    assert first in pods
    cluster.delete("pod", first)
    # Same 5-tuple: without the conntrack clean-up the flow would stay DNATed to the gone pod.
    second = cluster.exec("client", ["python3", "-c", UDP_SENDER, ip, "90", "20"], check=True).stdout.strip()
    assert second and second != first and second in pods | {
        p["metadata"]["name"] for p in cluster.list("pods", "default", "app=udp")}


def test_wait_service_waits_for_each_nodes_own_endpoints(cluster: Cluster) -> None:
    cluster.apply(web("near", 2, {"internalTrafficPolicy": "Local"}))
    cluster.wait_ready("deployment", "near", timeout=60)
    ip = cluster.get("service", "near")["spec"]["clusterIP"]

    def installed() -> dict[str, set[str]]:
        """Per node: where a connection from the node to the cluster IP is DNATed, by its live rules."""
        return {node: set(cluster.trace(ip, 80, source=f"node/{node}")[1].endpoints)
                for node in ("control-plane", "worker", "worker2")}

    def local_backends() -> dict[str, set[str]]:
        pods = cluster.list("pods", "default", "app=near")
        return {node: {f"{p['status']['podIP']}:8080" for p in pods if p["spec"]["nodeName"] == node}
                for node in ("control-plane", "worker", "worker2")}

    cluster.wait_service("near", timeout=30)
    assert installed() == local_backends()  # internalTrafficPolicy Local: each node only its own
    assert not installed()["control-plane"]  # tainted: no backend there, so nothing to DNAT to
    cluster.client.patch(SERVICES, "near", {"spec": {"internalTrafficPolicy": "Cluster"}}, "default")
    cluster.wait_service("near", timeout=30)
    everywhere = set().union(*local_backends().values())
    assert len(everywhere) == 2 and installed() == {node: everywhere for node in installed()}


def hostnames(cluster: Cluster, ip: str, count: int) -> set[str]:
    script = f"for i in $(seq {count}); do curl -s -m 3 http://{ip}/hostname; echo; done"
    out = cluster.exec("client", ["sh", "-c", script], timeout=60).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def test_client_ip_affinity_on_and_off(cluster: Cluster) -> None:
    cluster.apply(web("sticky", 3, {"sessionAffinity": "ClientIP"}))
    cluster.wait_ready("deployment", "sticky", timeout=60)
    cluster.wait_service("sticky", timeout=30)
    ip = cluster.get("service", "sticky")["spec"]["clusterIP"]
    assert len(hostnames(cluster, ip, 12)) == 1
    cluster.client.patch(SERVICES, "sticky", {"spec": {"sessionAffinity": "None", "sessionAffinityConfig": None}},
                         "default")
    cluster.wait_for(lambda: len(hostnames(cluster, ip, 12)) > 1, timeout=20,
                     what="requests to spread once affinity is off")


def test_load_balancer_source_ranges(cluster: Cluster) -> None:
    allowed = str(cluster.topology.primary_address("client"))
    objs = web("guarded", 1, {"type": "LoadBalancer", "loadBalancerSourceRanges": [f"{allowed}/32"]})
    cluster.apply(objs)
    cluster.wait_ready("deployment", "guarded", timeout=60)
    lb = cluster.wait_for(lambda: (cluster.get("service", "guarded")["status"].get("loadBalancer") or {})
                          .get("ingress"), timeout=30, what="a load balancer IP")[0]["ip"]
    ok = cluster.wait_for(lambda: cluster.host("client").exec(["curl", "-s", "-m", "2", f"http://{lb}/hostname"])
                          .stdout.strip(), timeout=20, what="the allowed client to get through")
    assert ok.startswith("guarded-")
    denied = cluster.host("intruder").exec(["curl", "-s", "-m", "2", f"http://{lb}/hostname"])
    assert denied.returncode == 28, denied  # dropped: a timeout
