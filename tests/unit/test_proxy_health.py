"""kube-proxy runtime logic without root: health answers from a fake clock, health check ports and
counts, node sysctls, and the UDP conntrack clean-up plan."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Mapping, Sequence

import pytest

from netk8s.api.network import Protocol
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError
from netk8s.kernel.conntrack import ConntrackCleaner
from netk8s.proxy.backend import ProxyState, changed_services
from netk8s.proxy.conntrack import ConntrackFilter, plan_cleanup
from netk8s.proxy.health import (
    HealthConfig,
    ProxyHealth,
    ServiceName,
    go_time,
    health_checks,
    healthz_response,
    livez_response,
    metrics_text,
    node_eligible,
    node_sysctls,
    proxier_healthy,
    proxy_mode_response,
    service_health_response,
)
from netk8s.proxy.model import Endpoint, ServicePort, ServiceType, build_endpoints, build_service_ports
from netk8s.topology import ProxyMode

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- time format and health rules ------------------------------------------------------------------

def test_go_time_is_rfc3339_utc_with_trimmed_nanoseconds() -> None:
    assert go_time(T0) == "2023-11-14T22:13:20Z"
    assert go_time(T0 + 0.5) == "2023-11-14T22:13:20.5Z"
    assert go_time(T0 + 0.123456) == "2023-11-14T22:13:20.123456Z"
    assert go_time(None) == "0001-01-01T00:00:00Z"


def test_proxier_health_follows_the_last_sync_age() -> None:
    assert proxier_healthy(T0, T0 + 59.9, started=T0 - 100, timeout=60)
    assert not proxier_healthy(T0, T0 + 60, started=T0 - 100, timeout=60)
    # Never synced: healthy while starting up, then not.
    assert proxier_healthy(None, T0 + 10, started=T0, timeout=60)
    assert not proxier_healthy(None, T0 + 61, started=T0, timeout=60)


def test_node_eligibility() -> None:
    assert node_eligible(None)
    assert node_eligible({"metadata": {"name": "w"}, "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]}})
    assert not node_eligible({"metadata": {"name": "w", "deletionTimestamp": "2025-01-01T00:00:00Z"}})
    assert not node_eligible({"metadata": {"name": "w"},
                              "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}})
    assert not node_eligible({"metadata": {"name": "w"}}, deleted=True)


def test_healthz_body_when_healthy_reports_now_as_last_updated() -> None:
    response = healthz_response("worker", T0, T0 + 5, healthy=True, eligible=True)
    assert response.status == 200
    assert ("X-Content-Type-Options", "nosniff") in response.headers
    assert response.content_type == "application/json"
    assert json.loads(response.body) == {
        "lastUpdated": go_time(T0 + 5), "currentTime": go_time(T0 + 5), "nodeName": "worker",
        "nodeEligible": True, "healthy": True,
        "status": {"IPv4": {"lastUpdated": go_time(T0), "healthy": True}},
    }
    # Go's encoder: compact, fields in struct order.
    assert response.body.startswith('{"lastUpdated":"2023-11-14T22:13:25Z","currentTime":')


def test_healthz_503_when_stale_or_node_not_eligible() -> None:
    stale = healthz_response("worker", T0, T0 + 120, healthy=False, eligible=True)
    assert stale.status == 503
    body = stale.json()
    assert body["lastUpdated"] == go_time(T0) and body["healthy"] is False
    assert body["status"]["IPv4"] == {"lastUpdated": go_time(T0), "healthy": False}
    leaving = healthz_response("worker", T0, T0 + 1, healthy=True, eligible=False)
    assert leaving.status == 503
    assert leaving.json()["nodeEligible"] is False and leaving.json()["healthy"] is True


def test_livez_ignores_node_eligibility_and_has_no_node_fields() -> None:
    ok = livez_response(T0, T0 + 1, healthy=True)
    assert ok.status == 200
    assert set(ok.json()) == {"lastUpdated", "currentTime", "healthy", "status"}
    assert livez_response(T0, T0 + 100, healthy=False).status == 503


def test_before_first_sync_status_is_omitted_and_last_updated_is_go_zero() -> None:
    body = healthz_response("worker", None, T0, healthy=False, eligible=True).json()
    assert "status" not in body and body["lastUpdated"] == "0001-01-01T00:00:00Z"


def test_proxy_health_controller_answers_from_a_fake_clock() -> None:
    clock = FakeClock(T0)
    last: list[float | None] = [None]
    health = ProxyHealth(ApiClient("http://127.0.0.1:9"), "worker", "nk-unused", "nftables", lambda: last[0],
                         HealthConfig(healthz_timeout=60), clock=clock)
    assert health.healthz().status == 200  # starting up
    clock.now = T0 + 61
    assert health.healthz().status == 503  # never synced within the timeout
    last[0] = T0 + 60
    assert health.healthz().status == 200
    assert health.healthz().json()["nodeName"] == "worker"
    clock.now = T0 + 121
    assert health.livez().status == 503
    metrics = health.metrics().body
    assert 'kubeproxy_healthz_total{code="200"} 3' in metrics
    assert 'kubeproxy_healthz_total{code="503"} 1' in metrics
    assert 'kubeproxy_livez_total{code="503"} 1' in metrics
    assert health.service_health(ServiceName("default", "web")) is None  # no health check known


# -- service health checks -------------------------------------------------------------------------

def test_service_health_body_is_kube_proxys_text() -> None:
    response = service_health_response(ServiceName("default", "web"), 2, True)
    assert response.status == 200
    assert response.body == ('{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "web"\n\t},\n'
                             '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')
    assert json.loads(response.body) == {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2,
                                         "serviceProxyHealthy": True}
    assert ("X-Content-Type-Options", "nosniff") in response.headers
    assert ("X-Load-Balancing-Endpoint-Weight", "2") in response.headers
    assert service_health_response(ServiceName("default", "web"), 0, True).status == 503
    unhealthy = service_health_response(ServiceName("default", "web"), 3, False)
    assert unhealthy.status == 503 and '"serviceProxyHealthy": false' in unhealthy.body


def lb_service(name: str, hcnp: int | None, policy: str = "Local", svc_type: str = "LoadBalancer",
               ports: list[dict] | None = None) -> dict:
    spec: dict = {"type": svc_type, "clusterIP": "10.96.0.50", "externalTrafficPolicy": policy,
                  "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}
    if hcnp:
        spec["healthCheckNodePort"] = hcnp
    return {"metadata": {"namespace": "default", "name": name}, "spec": spec}


def epslice(service: str, endpoints: list[tuple[str, str, bool]], ports: list[dict] | None = None) -> dict:
    return {"metadata": {"namespace": "default", "name": f"{service}-x",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
                          for ip, node, ready in endpoints],
            "ports": ports or [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def test_health_checks_count_ready_local_endpoint_ips_once() -> None:
    two_ports = [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                 {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443}]
    services = [lb_service("web", 32000, ports=two_ports), lb_service("cluster", 32001, policy="Cluster"),
                lb_service("np", 32002, svc_type="NodePort"), lb_service("nohc", None)]
    slice_ports = [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "https", "port": 8443, "protocol": "TCP"}]
    slices = [epslice("web", [("10.244.1.2", "worker", True), ("10.244.1.3", "worker", False),
                              ("10.244.2.2", "worker2", True)], slice_ports),
              epslice("cluster", [("10.244.1.9", "worker", True)])]
    checks = health_checks(build_service_ports(services), build_endpoints(slices, "worker"))
    assert list(checks) == [ServiceName("default", "web")]
    check = checks[ServiceName("default", "web")]
    assert check.port == 32000
    assert check.local_endpoints == 1  # one ready local IP, counted once across both ports
    other = health_checks(build_service_ports(services), build_endpoints(slices, "worker2"))
    assert other[ServiceName("default", "web")].local_endpoints == 1
    none = health_checks(build_service_ports(services), build_endpoints(slices, "control-plane"))
    assert none[ServiceName("default", "web")].local_endpoints == 0


def test_health_checks_follow_the_proxiers_syncs_one_changed_service_at_a_time() -> None:
    rng = random.Random(7)
    health = ProxyHealth(ApiClient("http://127.0.0.1:9"), "worker", "nk-unused", "iptables", lambda: None)

    def random_state() -> ProxyState:
        services, slices = [], []
        for i in range(8):
            if rng.random() < 0.3:
                continue  # this service is absent from this sync
            name = f"svc{i}"
            services.append(lb_service(name, 32000 + i + rng.choice((0, 100)), policy=rng.choice(("Local", "Cluster")),
                                       svc_type=rng.choice(("LoadBalancer", "LoadBalancer", "NodePort"))))
            slices.append(epslice(name, [(f"10.244.{n}.{i + 2}", f"worker{'' if n == 1 else n}", rng.random() < 0.7)
                                         for n in (1, 2) if rng.random() < 0.8]))
        return ProxyState.of(build_service_ports(services), build_endpoints(slices, "worker"))

    previous: ProxyState | None = None
    for _ in range(40):
        state = random_state()
        health.after_sync(previous, state, changed_services(previous, state))
        assert health.health_checks() == health_checks(state.service_ports, state.endpoints)
        previous = state
    assert len(health.queue) == 1  # each sync asked the worker to open and close servers; one pending run


def test_proxy_mode_metrics_and_sysctls() -> None:
    assert proxy_mode_response(ProxyMode.NFTABLES).body == "nftables"
    assert proxy_mode_response(ProxyMode.IPTABLES).content_type.startswith("text/plain")
    text = metrics_text(T0, {200: 3}, {})
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e+09" in text
    assert '# TYPE kubeproxy_healthz_total counter\nkubeproxy_healthz_total{code="200"} 3' in text
    assert node_sysctls(ProxyMode.IPTABLES) == {"net.ipv4.conf.all.route_localnet": "1"}
    assert node_sysctls(ProxyMode.NFTABLES) == {}


# -- conntrack plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    service_ports: Sequence[ServicePort] = ()
    endpoints: Mapping[str, Sequence[Endpoint]] = field(default_factory=dict)


DNS = ServicePort("kube-system", "dns", "dns", Protocol.UDP, IPv4Address("10.96.0.10"), 53)
DNS_TCP = ServicePort("kube-system", "dns", "dns-tcp", Protocol.TCP, IPv4Address("10.96.0.10"), 53)
GAME = ServicePort("default", "game", "", Protocol.UDP, IPv4Address("10.96.5.5"), 7777, node_port=31777,
                   service_type=ServiceType.LOAD_BALANCER, external_ips=(IPv4Address("192.0.2.7"),),
                   load_balancer_ips=(IPv4Address("172.18.255.200"),))
A, B = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2")


def eps(*ips: IPv4Address, port: int = 53, serving: bool = True) -> list[Endpoint]:
    return [Endpoint(ip, port, ready=serving, serving=serving) for ip in ips]


def keys(filters: list[ConntrackFilter]) -> set[tuple]:
    return {(str(f.orig_dst) if f.orig_dst else None, f.orig_port_dst, str(f.dst_nat) if f.dst_nat else None)
            for f in filters}


def test_removed_udp_endpoint_clears_flows_to_it_for_every_frontend() -> None:
    old = State((GAME,), {GAME.service_port_name: eps(A, B, port=7777)})
    new = State((GAME,), {GAME.service_port_name: eps(B, port=7777)})
    filters = plan_cleanup(old, new)
    assert keys(filters) == {("10.96.5.5", 7777, "10.244.1.2"), ("192.0.2.7", 7777, "10.244.1.2"),
                             ("172.18.255.200", 7777, "10.244.1.2"), (None, 31777, "10.244.1.2")}
    assert all(f.protocol is Protocol.UDP for f in filters)
    by_dst = {f.orig_dst: f for f in filters}
    assert by_dst[IPv4Address("10.96.5.5")].args() == [
        "-p", "udp", "--orig-dst", "10.96.5.5", "--orig-port-dst", "7777", "--dst-nat", "10.244.1.2"]
    node_port = next(f for f in filters if f.orig_dst is None)
    assert node_port.args() == ["-p", "udp", "--orig-port-dst", "31777", "--dst-nat", "10.244.1.2"]


def test_endpoint_that_stops_serving_counts_as_removed_and_tcp_is_ignored() -> None:
    old = State((DNS, DNS_TCP), {DNS.service_port_name: eps(A, B), DNS_TCP.service_port_name: eps(A, B)})
    new = State((DNS, DNS_TCP), {DNS.service_port_name: eps(B) + eps(A, serving=False),
                                 DNS_TCP.service_port_name: eps(B)})
    assert keys(plan_cleanup(old, new)) == {("10.96.0.10", 53, "10.244.1.2")}


def test_unchanged_state_clears_nothing() -> None:
    state = State((DNS, GAME), {DNS.service_port_name: eps(A), GAME.service_port_name: eps(B, port=7777)})
    assert plan_cleanup(state, state) == []


def test_newly_active_service_and_first_sync_clear_its_frontends() -> None:
    empty = State((DNS,), {})
    active = State((DNS,), {DNS.service_port_name: eps(A)})
    assert keys(plan_cleanup(empty, active)) == {("10.96.0.10", 53, None)}
    assert keys(plan_cleanup(None, active)) == {("10.96.0.10", 53, None)}
    assert plan_cleanup(None, empty) == []  # no endpoint: nothing became reachable


def test_removed_frontends_clear_all_their_flows() -> None:
    old = State((GAME,), {GAME.service_port_name: eps(A, port=7777)})
    moved = ServicePort("default", "game", "", Protocol.UDP, IPv4Address("10.96.5.5"), 7777, node_port=31778,
                        service_type=ServiceType.LOAD_BALANCER)
    new = State((moved,), {GAME.service_port_name: eps(A, port=7777)})
    assert keys(plan_cleanup(old, new)) == {("192.0.2.7", 7777, None), ("172.18.255.200", 7777, None),
                                            (None, 31777, None)}
    gone = plan_cleanup(old, State((), {}))
    assert keys(gone) == {("10.96.5.5", 7777, None), ("192.0.2.7", 7777, None), ("172.18.255.200", 7777, None),
                          (None, 31777, None)}


def test_plan_limited_to_the_changed_services_is_the_same_plan() -> None:
    old = State((DNS, GAME), {DNS.service_port_name: eps(A, B), GAME.service_port_name: eps(A, port=7777)})
    new = State((DNS, GAME), {DNS.service_port_name: eps(B), GAME.service_port_name: eps(A, port=7777)})
    assert keys(plan_cleanup(old, new, only={"kube-system/dns"})) == keys(plan_cleanup(old, new)) != set()
    assert plan_cleanup(old, new, only={"default/game"}) == []  # game is unchanged: nothing to look at
    assert keys(plan_cleanup(None, new, only={"kube-system/dns", "default/game"})) == keys(plan_cleanup(None, new))


def test_plan_accepts_the_proxiers_state_type() -> None:
    backend = pytest.importorskip("netk8s.proxy.backend")
    old = backend.ProxyState.of([DNS], {DNS.service_port_name: eps(A, B)})
    new = backend.ProxyState.of([DNS], {DNS.service_port_name: eps(B)})
    assert keys(plan_cleanup(old, new)) == {("10.96.0.10", 53, "10.244.1.2")}


def test_cleaner_runs_each_filter_and_survives_failures() -> None:
    calls: list[tuple[str, ConntrackFilter]] = []

    def delete(ns: str, flt: ConntrackFilter) -> int:
        calls.append((ns, flt))
        if flt.orig_dst == IPv4Address("192.0.2.7"):
            raise KernelError("conntrack -D failed")
        return 2

    cleaner = ConntrackCleaner("nk-x-worker", delete)
    old = State((GAME,), {GAME.service_port_name: eps(A, B, port=7777)})
    new = State((GAME,), {GAME.service_port_name: eps(B, port=7777)})
    ran = cleaner.after_sync(old, new)
    assert len(ran) == 4 and [c[1] for c in calls] == ran
    assert {ns for ns, _ in calls} == {"nk-x-worker"}
    assert cleaner.deleted_total == 6 and cleaner.failures == 1
