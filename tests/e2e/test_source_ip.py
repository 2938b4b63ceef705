"""The Kubernetes "Using Source IP" tutorial, row by row, on the wire, in both proxy modes.

One backend pod runs on `worker` (so `worker2` has no local endpoint). For each
way in (ClusterIP, NodePort and LoadBalancer with externalTrafficPolicy Cluster
and Local), from a pod and from the external host, the backend reports the
client address it saw and a capture in the backend's namespace shows the same
source on the SYN. Plus the packet tracer agreeing with what happened.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.cluster.api import Cluster
from netk8s.testing.helpers import capture, run_cli
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import default_topology, to_dict

BACKEND = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "source-ip-app"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "source-ip-app"}},
             "template": {"metadata": {"labels": {"app": "source-ip-app"}},
                          "spec": {"nodeName": "worker",
                                   "containers": [{"name": "echo", "image": "netk8s/echo",
                                                   "ports": [{"containerPort": 8080}],
                                                   "readinessProbe": {"tcpSocket": {"port": 8080},
                                                                      "periodSeconds": 1}}]}}},
}
CLIENT_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
              "spec": {"nodeName": "worker2", "containers": [{"name": "c", "image": "busybox",
                                                              "command": ["sleep", "infinity"]}]}}


def service(name: str, svc_type: str, local: bool = False, node_port: int | None = None) -> dict:
    port: dict = {"port": 80, "targetPort": 8080}
    if node_port:
        port["nodePort"] = node_port
    spec: dict = {"type": svc_type, "selector": {"app": "source-ip-app"}, "ports": [port]}
    if svc_type != "ClusterIP":
        spec["externalTrafficPolicy"] = "Local" if local else "Cluster"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    topo = to_dict(default_topology(unique_cluster_name("si")))
    topo["proxyMode"] = request.param
    c = Cluster.up(topology=topo)
    try:
        c.apply([BACKEND, CLIENT_POD, service("clusterip", "ClusterIP"),
                 service("np-cluster", "NodePort", node_port=30080),
                 service("np-local", "NodePort", local=True, node_port=30081),
                 service("lb-cluster", "LoadBalancer"), service("lb-local", "LoadBalancer", local=True)])
        c.wait_ready("deployment", "source-ip-app", timeout=60)
        c.wait_ready("pod", "client", timeout=60)
        for name in ("lb-cluster", "lb-local"):
            c.wait_for(lambda n=name: ((c.get("service", n)["status"].get("loadBalancer") or {}).get("ingress")),
                       timeout=30, what=f"an ingress IP for {name}")
        # A Ready backend is not yet a programmed one: each node's kube-proxy installs it on its own sync.
        ways_in = [("pod", f"http://{c.get('service', 'clusterip')['spec']['clusterIP']}/"),
                   ("host", f"http://{node_ip(c, 'worker')}:30081/"),
                   *(("host", f"http://{lb_ip(c, name)}/") for name in ("lb-cluster", "lb-local")),
                   *(("host", f"http://{node_ip(c, node)}:30080/") for node in ("control-plane", "worker", "worker2"))]
        for origin, url in ways_in:
            c.wait_for(lambda o=origin, u=url: curl(c, o, u, max_time=1).returncode == 0, timeout=30, interval=0.2,
                       what=f"{url} to answer the {origin}")
        yield c
    finally:
        c.down()


def backend_netns(cluster: Cluster) -> str:
    pod = cluster.list("pods", "default", "app=source-ip-app")[0]
    return cluster.pod_netns(meta.name_of(pod))


def curl(cluster: Cluster, origin: str, url: str, max_time: float = 3) -> subprocess.CompletedProcess:
    """``curl url`` from the client pod (origin "pod") or the external host ("host")."""
    argv = ["curl", "-s", "-m", f"{max_time:g}", url]
    return cluster.exec("client", argv) if origin == "pod" else cluster.host("client").exec(argv)


def seen_from(cluster: Cluster, origin: str, url: str) -> str:
    """The client address the backend reports, checked against the SYN captured in its namespace."""
    with capture(backend_netns(cluster), "tcp dst port 8080 and tcp[tcpflags] & tcp-syn != 0",
                 interface="eth0") as cap:
        result = curl(cluster, origin, url)
    assert result.returncode == 0, f"{origin} -> {url}: curl exited {result.returncode} {result.stderr}"
    ip, port = json.loads(result.stdout)["client"].rsplit(":", 1)
    # The same source address and port were on the wire (other SYNs are the kubelet's probes).
    assert any(f"IP {ip}.{port} > " in line for line in cap.lines), (ip, port, cap.lines)
    return ip


def node_ip(cluster: Cluster, node: str) -> str:
    return str(cluster.topology.primary_address(node))


def lb_ip(cluster: Cluster, name: str) -> str:
    return cluster.get("service", name)["status"]["loadBalancer"]["ingress"][0]["ip"]


def masquerade_sources(cluster: Cluster) -> set[str]:
    """Addresses a node masquerades to: its underlay IP or its cni0 gateway (pod CIDR .1)."""
    out = set()
    for node in cluster.list("nodes"):
        out.add(meta.node_internal_ip(node))
        out.add(str(ipaddress.IPv4Network(node["spec"]["podCIDR"])[1]))
    return out


def test_clusterip_from_a_pod_keeps_the_pod_address(cluster: Cluster) -> None:
    ip = cluster.get("service", "clusterip")["spec"]["clusterIP"]
    reported = seen_from(cluster, "pod", f"http://{ip}/")
    assert reported == cluster.get("pod", "client")["status"]["podIP"]


def test_clusterip_from_outside_the_pod_network_is_masqueraded(cluster: Cluster) -> None:
    ip = cluster.get("service", "clusterip")["spec"]["clusterIP"]
    host = cluster.host("client")
    # A route to the service network via worker2 (as a router would have): the host is outside the pod subnet.
    host.exec(["ip", "route", "replace", str(cluster.topology.service_subnet), "via", node_ip(cluster, "worker2")],
              check=True)
    try:
        reported = seen_from(cluster, "host", f"http://{ip}/")
    finally:
        host.exec(["ip", "route", "del", str(cluster.topology.service_subnet)])
    assert reported != str(cluster.topology.primary_address("client"))
    assert reported in masquerade_sources(cluster)


def test_nodeport_cluster_policy_snats_to_the_node(cluster: Cluster) -> None:
    reported = seen_from(cluster, "host", f"http://{node_ip(cluster, 'worker2')}:30080/")
    assert reported == node_ip(cluster, "worker2")


def test_nodeport_local_policy_keeps_the_client_address(cluster: Cluster) -> None:
    reported = seen_from(cluster, "host", f"http://{node_ip(cluster, 'worker')}:30081/")
    client = str(cluster.topology.primary_address("client"))
    assert reported == client
    # worker2 has no local endpoint: the connection is dropped there (a timeout, not a refusal).
    dropped = cluster.host("client").exec(["curl", "-s", "-m", "2", f"http://{node_ip(cluster, 'worker2')}:30081/"])
    assert dropped.returncode == 28  # curl: operation timed out


def test_nodeport_from_a_pod_is_masqueraded(cluster: Cluster) -> None:
    reported = seen_from(cluster, "pod", f"http://{node_ip(cluster, 'worker')}:30080/")
    assert reported != cluster.get("pod", "client")["status"]["podIP"]
    assert reported in masquerade_sources(cluster)


def test_load_balancer_cluster_policy_snats(cluster: Cluster) -> None:
    reported = seen_from(cluster, "host", f"http://{lb_ip(cluster, 'lb-cluster')}/")
    assert reported in masquerade_sources(cluster)


def test_load_balancer_local_policy_keeps_the_client_address(cluster: Cluster) -> None:
    reported = seen_from(cluster, "host", f"http://{lb_ip(cluster, 'lb-local')}/")
    client = str(cluster.topology.primary_address("client"))
    assert reported == client


def test_health_check_node_port_answers_by_local_endpoints(cluster: Cluster) -> None:
    port = cluster.get("service", "lb-local")["spec"]["healthCheckNodePort"]
    host = cluster.host("client")
    for node, code, local in (("worker", "200", 1), ("worker2", "503", 0)):
        def answer(node: str = node) -> tuple[str, str]:
            out = host.exec(["curl", "-s", "-m", "2", "-w", "\\n%{http_code}",
                             f"http://{node_ip(cluster, node)}:{port}/"]).stdout
            body, status = out.rsplit("\n", 1)
            return body, status
        # Like a cloud load balancer, probe until the node's kube-proxy has opened the port.
        body, status = cluster.wait_for(lambda: (got := answer()) and got[1] != "000" and got, timeout=20,
                                        interval=0.2, what=f"the health check on {node} to answer")
        assert status == code, (body, status)
        assert json.loads(body)["localEndpoints"] == local


def test_the_tracer_agrees_with_the_wire(cluster: Cluster) -> None:
    ip = cluster.get("service", "clusterip")["spec"]["clusterIP"]
    out = run_cli("--cluster", cluster.name, "trace", ip, "80", "--from", "client")
    assert out.code == 0, out.stderr
    backend = cluster.list("pods", "default", "app=source-ip-app")[0]
    assert f"{backend['status']['podIP']}:8080 (default/{meta.name_of(backend)})" in out.stdout
    assert "masquerade: no" in out.stdout
    local = run_cli("--cluster", cluster.name, "trace", node_ip(cluster, "worker2"), "30081",
                    "--from", "host/client")
    assert "verdict: DROP" in local.stdout and "endpoints: -" in local.stdout
    kept = run_cli("--cluster", cluster.name, "trace", node_ip(cluster, "worker"), "30081", "--from", "host/client")
    assert "verdict: ACCEPT" in kept.stdout and "masquerade: no" in kept.stdout
