"""Endpoints controller: pure subset computation and reconciliation against an in-process API server."""

from __future__ import annotations

import datetime as _dt
import time
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.api.resources import ENDPOINTS, PODS, SERVICES
from netk8s.client.rest import ApiClient
from netk8s.controllers.endpoints import (
    MAX_CAPACITY,
    TRIGGER_TIME_ANNOTATION,
    EndpointsController,
    TriggerTimeTracker,
    desired_labels,
    desired_subsets,
    subsets_equal,
    truncate_subsets,
)
from netk8s.testing.helpers import wait_for


def service(ports: list[dict] | None = None, cluster_ip: str = "10.96.0.20", **spec: object) -> dict:
    return {"metadata": {"name": "web", "namespace": "d", "labels": {"tier": "front"},
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"selector": {"app": "web"}, "clusterIP": cluster_ip, "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
                     if ports is None else ports, **spec}}


def pod(name: str, ip: str | None, ready: bool = True, http_port: int = 8080, namespace: str = "d",
        labels: dict | None = None, phase: str = "Running", deleting: bool = False, **spec: object) -> dict:
    md: dict = {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                "labels": {"app": "web"} if labels is None else labels}
    if deleting:
        md["deletionTimestamp"] = "2025-01-01T00:01:00Z"
    status: dict = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"metadata": md,
            "spec": {"nodeName": "worker", "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": http_port, "protocol": "TCP"},
                                        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]}], **spec},
            "status": status}


def address(name: str, ip: str) -> dict:
    return {"ip": ip, "nodeName": "worker",
            "targetRef": {"kind": "Pod", "namespace": "d", "name": name, "uid": f"uid-{name}"}}


HTTP = {"name": "http", "port": 8080, "protocol": "TCP"}


def test_ready_and_not_ready_addresses_sorted_by_ip_string() -> None:
    pods = [pod("a", "10.0.0.2"), pod("b", "10.0.0.10"), pod("c", "10.0.0.3", ready=False)]
    assert desired_subsets(service(), pods) == [{
        "addresses": [address("b", "10.0.0.10"), address("a", "10.0.0.2")],
        "notReadyAddresses": [address("c", "10.0.0.3")],
        "ports": [HTTP],
    }]


def test_named_target_port_resolves_per_pod_into_separate_subsets() -> None:
    subsets = desired_subsets(service(), [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", http_port=9090)])
    assert subsets == [
        {"addresses": [address("a", "10.0.0.1")], "ports": [HTTP]},
        {"addresses": [address("b", "10.0.0.2")], "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}]},
    ]


def test_ports_offered_by_the_same_addresses_share_a_subset() -> None:
    ports = [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
             {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"},
             {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]  # no pod declares it
    subsets = desired_subsets(service(ports), [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)])
    assert subsets == [{"addresses": [address("a", "10.0.0.1")], "notReadyAddresses": [address("b", "10.0.0.2")],
                        "ports": [HTTP, {"name": "metrics", "port": 9100, "protocol": "TCP"}]}]


def test_excluded_pods() -> None:
    pods = [pod("ok", "10.0.0.1"), pod("no-ip", None), pod("done", "10.0.0.2", phase="Succeeded"),
            pod("failed", "10.0.0.3", phase="Failed"), pod("other-ns", "10.0.0.4", namespace="x"),
            pod("other-app", "10.0.0.5", labels={"app": "db"}), pod("going", "10.0.0.6", deleting=True)]
    assert desired_subsets(service(), pods) == [{"addresses": [address("ok", "10.0.0.1")], "ports": [HTTP]}]


def test_publish_not_ready_addresses_lists_every_pod_as_ready_including_terminating() -> None:
    pods = [pod("a", "10.0.0.1", ready=False), pod("b", "10.0.0.2", deleting=True, ready=False)]
    subsets = desired_subsets(service(publishNotReadyAddresses=True), pods)
    assert subsets == [{"addresses": [address("a", "10.0.0.1"), address("b", "10.0.0.2")], "ports": [HTTP]}]


def test_headless_service_without_ports_and_hostnames() -> None:
    pods = [pod("a", "10.0.0.1", hostname="web-0", subdomain="web"), pod("b", "10.0.0.2", hostname="x")]
    headless = desired_subsets(service([], cluster_ip="None"), pods)
    assert headless == [{"addresses": [dict(address("a", "10.0.0.1"), hostname="web-0"), address("b", "10.0.0.2")]}]
    assert list(headless[0]["addresses"][0]) == ["ip", "hostname", "nodeName", "targetRef"]
    assert desired_subsets(service([]), pods) == []  # a ClusterIP service without ports gets no addresses


def test_ipv6_service_skips_ipv4_only_pods() -> None:
    assert desired_subsets(service(ipFamilies=["IPv6"]), [pod("a", "10.0.0.1")]) == []


def test_truncation_keeps_ready_addresses_first() -> None:
    def many(n: int, prefix: str, ready: bool) -> list[dict]:
        return [pod(f"{prefix}{i}", f"10.{1 if ready else 2}.{i // 250}.{i % 250}", ready=ready) for i in range(n)]
    subsets, truncated = truncate_subsets(desired_subsets(service(), many(900, "r", True) + many(200, "n", False)))
    assert truncated
    assert len(subsets[0]["addresses"]) == 900 and len(subsets[0]["notReadyAddresses"]) == 100
    subsets, truncated = truncate_subsets(desired_subsets(service(), many(1001, "r", True) + many(3, "n", False)))
    assert truncated and len(subsets[0]["addresses"]) == MAX_CAPACITY and "notReadyAddresses" not in subsets[0]
    small = desired_subsets(service(), many(3, "r", True))
    assert truncate_subsets(small) == (small, False)


def test_labels_and_equality() -> None:
    assert desired_labels(service()) == {"tier": "front", "endpoints.kubernetes.io/managed-by": "endpoint-controller"}
    assert desired_labels(service(cluster_ip="None"))["service.kubernetes.io/headless"] == ""
    subsets = desired_subsets(service(), [pod("a", "10.0.0.1")])
    stale = [dict(subsets[0], addresses=[dict(subsets[0]["addresses"][0],
                                             targetRef=dict(subsets[0]["addresses"][0]["targetRef"],
                                                            resourceVersion="7"))])]
    assert subsets_equal(stale, subsets)
    assert not subsets_equal(None, subsets) and subsets_equal(None, [])


def test_trigger_time_tracker() -> None:
    tracker = TriggerTimeTracker()
    svc = service()
    p = pod("a", "10.0.0.1")
    p["status"]["conditions"][0]["lastTransitionTime"] = "2025-01-01T00:05:00Z"
    created = _dt.datetime(2025, 1, 1, tzinfo=_dt.timezone.utc)
    assert tracker.compute(svc, [p]) == created  # first sight: the Service's creation
    assert tracker.compute(svc, [p]) is None  # nothing moved
    p["status"]["conditions"][0]["lastTransitionTime"] = "2025-01-01T00:07:00Z"
    q = pod("b", "10.0.0.2")
    q["status"]["conditions"][0]["lastTransitionTime"] = "2025-01-01T00:06:00Z"
    assert tracker.compute(svc, [p, q]) == _dt.datetime(2025, 1, 1, 0, 6, tzinfo=_dt.timezone.utc)


# -- against the API server -------------------------------------------------------------------------


@pytest.fixture
def controller(api: ApiClient) -> Iterator[ApiClient]:
    ctrl = EndpointsController(api)
    ctrl.start()
    try:
        yield api
    finally:
        ctrl.stop()
        ctrl.join()


def run_pod(api: ApiClient, name: str, ip: str, ready: bool) -> None:
    api.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
                      "spec": {"nodeName": "worker", "containers": [
                          {"name": "c", "image": "netk8s/echo", "ports": [{"name": "http", "containerPort": 8080}]}]}},
               "default")
    # As a kubelet does, the Ready condition carries its transition time (the endpoints trigger time).
    api.patch(PODS, name, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": meta.now()}]}},
              "default", subresource="status")


def endpoints_of(api: ApiClient, name: str = "web") -> dict | None:
    items = api.list(ENDPOINTS, "default", field_selector=f"metadata.name={name}")["items"]
    return items[0] if items else None


def ips(ep: dict | None, field: str) -> list[str]:
    return [a["ip"] for s in (ep or {}).get("subsets") or [] for a in s.get(field) or []]


def test_endpoints_follow_pods_and_the_service(controller: ApiClient) -> None:
    api = controller
    run_pod(api, "web-1", "10.244.1.2", ready=True)
    run_pod(api, "web-2", "10.244.2.2", ready=False)
    api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"l": "v"}},
                          "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80,
                                                                          "targetPort": "http"}]}}, "default")
    # The write that added the last pod carries that pod's Ready transition as its trigger time.
    ep = wait_for(lambda: (e := endpoints_of(api)) and ips(e, "notReadyAddresses") and ips(e, "addresses")
                  and TRIGGER_TIME_ANNOTATION in ((e.get("metadata") or {}).get("annotations") or {}) and e)
    assert isinstance(ep, dict)
    assert ep["subsets"] == [{
        "addresses": [{"ip": "10.244.1.2", "nodeName": "worker", "targetRef": {
            "kind": "Pod", "namespace": "default", "name": "web-1",
            "uid": api.get(PODS, "web-1", "default")["metadata"]["uid"]}}],
        "notReadyAddresses": [{"ip": "10.244.2.2", "nodeName": "worker", "targetRef": {
            "kind": "Pod", "namespace": "default", "name": "web-2",
            "uid": api.get(PODS, "web-2", "default")["metadata"]["uid"]}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
    assert ep["metadata"]["labels"] == {"l": "v", "endpoints.kubernetes.io/managed-by": "endpoint-controller"}
    assert ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]

    # The not-ready pod becomes ready; the ready one is deleted.
    api.patch(PODS, "web-2", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "default",
              subresource="status")
    api.delete(PODS, "web-1", "default", grace_period=0)
    wait_for(lambda: ips(endpoints_of(api), "addresses") == ["10.244.2.2"]
             and not ips(endpoints_of(api), "notReadyAddresses"))
    api.delete(PODS, "web-2", "default", grace_period=0)
    wait_for(lambda: (e := endpoints_of(api)) is not None and "subsets" not in e)
    assert len(api.list(ENDPOINTS, "default")["items"]) == 1  # never a duplicate

    api.delete(SERVICES, "web", "default")
    wait_for(lambda: endpoints_of(api) is None)


def test_a_sync_behind_its_cache_keeps_the_trigger_time_already_written(api: ApiClient) -> None:
    ctrl = EndpointsController(api)
    ctrl.start()
    try:
        run_pod(api, "web-1", "10.244.1.2", ready=True)
        api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                              "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
                   "default")
        wait_for(lambda: ctrl.endpoints.get("default/web") is not None)
        written = endpoints_of(api)
        assert written and TRIGGER_TIME_ANNOTATION in written["metadata"]["annotations"]
        # A sync queued before the write was seen: the cache has no Endpoints yet and no pod moved since.
        with ctrl.endpoints._lock:
            del ctrl.endpoints._cache["default/web"]
        ctrl.sync("default/web")  # its create meets a 409; the server's copy is already right
        after = endpoints_of(api)
        assert after and after["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
        assert after["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION] \
            == written["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION]
    finally:
        ctrl.stop()
        ctrl.join()


def test_user_endpoints_of_a_selectorless_service_are_left_alone(controller: ApiClient) -> None:
    api = controller
    api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                          "spec": {"ports": [{"port": 80}]}}, "default")
    manual = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"},
              "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80, "protocol": "TCP"}]}]}
    api.create(ENDPOINTS, manual, "default")
    run_pod(api, "web-1", "10.244.1.2", ready=True)  # traffic that makes the controller look around
    api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
               "default")
    wait_for(lambda: ips(endpoints_of(api), "addresses") == ["10.244.1.2"])
    api.delete(SERVICES, "ext", "default")
    time.sleep(0.3)
    kept = endpoints_of(api, "ext")
    assert kept is not None and ips(kept, "addresses") == ["192.0.2.10"]
