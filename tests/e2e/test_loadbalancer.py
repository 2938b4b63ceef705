"""LoadBalancer Services end to end: the emulated cloud load balancer, layer-2 announcements, and
kube-proxy's health endpoints, on one cluster (the default topology with a two-address pool).

- a LoadBalancer Service gets the first pool address, with ipMode VIP, and the external host
  ``client`` reaches it directly (``host exec client -- curl <LB IP>``);
- with externalTrafficPolicy Local the address is announced by the node with the endpoint, the
  client's own address reaches the pod, and the health check node port answers 200 on that node
  and 503 on the others;
- the exhausted pool leaves the third Service pending with a Warning AllocationFailed event, and
  it gets the address another Service releases;
- every node serves kube-proxy's /healthz (200) and /proxyMode;
- when the announcing node goes NotReady the address moves to another node and keeps working.

Needs the daemon to run ``LoadBalancerController``, ``LbAnnouncer``, and per node ``prepare_node``
and ``ProxyHealth`` (see netk8s/controllers/loadbalancer.py, netk8s/emulator/announce.py,
netk8s/proxy/health.py), and kube-proxy rules for load balancer IPs.
"""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from netk8s.api.resources import EVENTS
from netk8s.cluster.api import Cluster
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import default_topology, to_dict

POOL = ("172.18.255.200", "172.18.255.201")
FIRST, SECOND = POOL


def echo_pod(name: str, node: str, app: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "echo", "image": "netk8s/echo"}]}}


def lb_service(name: str, app: str, policy: str = "Cluster") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "selector": {"app": app},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    topology = to_dict(default_topology())
    topology["loadBalancerPool"] = f"{FIRST}-{SECOND}"
    c = Cluster.up(topology=topology, name=unique_cluster_name("lb"))
    request.addfinalizer(c.down)
    c.apply([echo_pod("web-1", "worker", "web"), echo_pod("web-2", "worker2", "web"),
             echo_pod("solo", "worker2", "solo")])
    for pod in ("web-1", "web-2", "solo"):
        c.wait_ready("pod", pod, timeout=60)
    # Created one by one so the pool hands out addresses in this order.
    c.apply([lb_service("web", "web")])
    c.wait_for(lambda: ingress(c, "web"), timeout=20, what="service web to get an address")
    c.apply([lb_service("local", "solo", policy="Local")])
    c.wait_for(lambda: ingress(c, "local"), timeout=20, what="service local to get an address")
    c.apply([lb_service("third", "web")])
    yield c


def ingress(cluster: Cluster, name: str) -> list[dict]:
    return ((cluster.get("service", name).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def node_ip(cluster: Cluster, node: str) -> str:
    return str(cluster.topology.primary_address(node))


def curl_from_client(cluster: Cluster, url: str) -> tuple[int, str] | None:
    """(HTTP status, body) of ``curl url`` run on the external host; None when nothing answered."""
    out = cluster.host("client").exec(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url], timeout=15)
    if out.returncode != 0:
        return None
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def echo_from_client(cluster: Cluster, ip: str) -> dict:
    def attempt() -> dict | None:
        answer = curl_from_client(cluster, f"http://{ip}/")
        return json.loads(answer[1]) if answer is not None and answer[0] == 200 else None
    return cluster.wait_for(attempt, timeout=20, interval=0.2, what=f"the client to reach {ip}")


def proxy_neighbours(cluster: Cluster, node: str) -> str:
    return cluster.node(node).exec(["ip", "neigh", "show", "proxy"]).stdout


def test_load_balancer_ip_from_the_pool_reaches_the_service(cluster: Cluster) -> None:
    assert ingress(cluster, "web") == [{"ip": FIRST, "ipMode": "VIP"}]
    answer = echo_from_client(cluster, FIRST)
    assert answer["pod"] in {"web-1", "web-2"}
    # Announced by exactly one node (control-plane is excluded from load balancers).
    announcers = [n for n in ("control-plane", "worker", "worker2") if FIRST in proxy_neighbours(cluster, n)]
    assert announcers == ["worker"]
    neighbour = cluster.host("client").exec(["ip", "neigh", "show", FIRST]).stdout
    worker_mac = json.loads(cluster.node("worker").exec(["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]
    assert worker_mac in neighbour
    assert FIRST not in cluster.node("worker").exec(["ip", "-4", "addr", "show"]).stdout


def test_local_policy_announces_from_the_endpoint_node_and_health_checks_tell_nodes_apart(cluster: Cluster) -> None:
    assert ingress(cluster, "local") == [{"ip": SECOND, "ipMode": "VIP"}]
    cluster.wait_for(lambda: SECOND in proxy_neighbours(cluster, "worker2"), timeout=20,
                     what="worker2 to announce the Local service")
    answer = echo_from_client(cluster, SECOND)
    assert answer["pod"] == "solo"
    assert answer["client"].split(":")[0] == node_ip(cluster, "client")  # Local: the client address is kept
    port = cluster.get("service", "local")["spec"]["healthCheckNodePort"]

    def health(node: str, status: int) -> dict | None:
        got = curl_from_client(cluster, f"http://{node_ip(cluster, node)}:{port}/")
        return json.loads(got[1]) if got is not None and got[0] == status else None

    here = cluster.wait_for(lambda: health("worker2", 200), timeout=20, what="worker2's health check to pass")
    assert here == {"service": {"namespace": "default", "name": "local"}, "localEndpoints": 1,
                    "serviceProxyHealthy": True}
    there = cluster.wait_for(lambda: health("worker", 503), timeout=20, what="worker's health check to fail")
    assert there["localEndpoints"] == 0


def test_kube_proxy_health_and_mode_on_every_node(cluster: Cluster) -> None:
    for node in ("control-plane", "worker", "worker2"):
        out = cluster.node(node).exec(["curl", "-s", "-m", "3", "-w", "\n%{http_code}",
                                       "http://127.0.0.1:10256/healthz"])
        body, _, code = out.stdout.rpartition("\n")
        assert code == "200", out.stdout
        assert json.loads(body)["nodeName"] == node
        mode = cluster.node(node).exec(["curl", "-s", "-m", "3", "http://127.0.0.1:10249/proxyMode"]).stdout
        assert mode == "iptables"
        assert cluster.node(node).exec(["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]).stdout.strip() == "1"


def test_exhausted_pool_leaves_the_service_pending_until_an_address_is_free(cluster: Cluster) -> None:
    def failed() -> dict | None:
        items = cluster.client.list(EVENTS, "default",
                                    field_selector="involvedObject.name=third,reason=AllocationFailed")["items"]
        return items[-1] if items else None
    event = cluster.wait_for(failed, timeout=20, what="an AllocationFailed event for service third")
    assert event["type"] == "Warning"
    assert ("no IP addresses available in the load balancer pool 172.18.255.200-172.18.255.201"
            in event["message"])
    assert ingress(cluster, "third") == []
    cluster.delete("service", "local")
    cluster.wait_for(lambda: ingress(cluster, "third") == [{"ip": SECOND, "ipMode": "VIP"}], timeout=20,
                     what="service third to get the released address")
    assert echo_from_client(cluster, SECOND)["pod"] in {"web-1", "web-2"}


def test_announcement_moves_when_its_node_goes_not_ready(cluster: Cluster) -> None:
    assert FIRST in proxy_neighbours(cluster, "worker")
    cluster.set_node_stopped("worker", True)
    try:
        cluster.wait_for(lambda: FIRST in proxy_neighbours(cluster, "worker2")
                         and FIRST not in proxy_neighbours(cluster, "worker"), timeout=40,
                         what="the announcement of web to move to worker2")
        worker2_mac = json.loads(cluster.node("worker2").exec(["ip", "-j", "link", "show", "eth0"]).stdout)[0][
            "address"]
        cluster.wait_for(lambda: worker2_mac in cluster.host("client").exec(["ip", "neigh", "show", FIRST]).stdout,
                         timeout=5, what="the client's ARP cache to follow (gratuitous ARP)")
        assert echo_from_client(cluster, FIRST)["pod"] in {"web-1", "web-2"}
    finally:
        cluster.set_node_stopped("worker", False)
