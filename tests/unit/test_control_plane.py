"""Controllers and scheduler against a real in-process API server (no kernel):
Deployment -> ReplicaSet -> Pods -> bindings -> EndpointSlices, node IPAM, GC."""

from __future__ import annotations

import ipaddress
import time
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.api.resources import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    NODES,
    PODS,
    REPLICASETS,
    SERVICES,
)
from netk8s.client.rest import ApiClient
from netk8s.controllers.deployment import template_hash
from netk8s.controllers.endpointslice import desired_slices
from netk8s.controllers.manager import ControllerManager
from netk8s.scheduler.scheduler import Scheduler
from netk8s.testing.helpers import wait_for

SVCS = SERVICES
DEPLOYS = DEPLOYMENTS
RS = REPLICASETS
SLICES = ENDPOINTSLICES


@pytest.fixture
def cluster(api: ApiClient) -> Iterator[ApiClient]:
    manager = ControllerManager(api, ipaddress.IPv4Network("10.244.0.0/16"))
    scheduler = Scheduler(api)
    manager.start()
    scheduler.start()
    for name, taints in (("cp", [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
                         ("w1", []), ("w2", [])):
        api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"taints": taints},
                           "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                                      "conditions": [{"type": "Ready", "status": "True",
                                                      "lastHeartbeatTime": meta.now()}]}})
    try:
        yield api
    finally:
        scheduler.stop()
        manager.stop()
        scheduler.join()


def deployment(replicas: int, image: str = "netk8s/echo") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image,
                                                           "ports": [{"name": "http", "containerPort": 8080}]}]}}}}


def mark_running(api: ApiClient) -> None:
    """Play kubelet: every bound pod runs and is ready with an IP; terminating pods finish."""
    for i, p in enumerate(api.list(PODS, "default")["items"]):
        if p["metadata"].get("deletionTimestamp"):
            api.delete(PODS, p["metadata"]["name"], "default", grace_period=0)
        elif p["spec"].get("nodeName") and p["status"].get("phase") != "Running":
            api.patch(PODS, p["metadata"]["name"], {"status": {
                "phase": "Running", "podIP": f"10.244.9.{i + 2}",
                "conditions": [{"type": "Ready", "status": "True"}]}}, "default", subresource="status")


def test_nodes_get_sequential_pod_cidrs(cluster: ApiClient) -> None:
    cidrs = wait_for(lambda: all(n["spec"].get("podCIDR") for n in cluster.list(NODES)["items"])
                     and {n["spec"]["podCIDR"] for n in cluster.list(NODES)["items"]})
    assert cidrs == {"10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"}


def test_deployment_to_ready_endpoints_spread_over_workers(cluster: ApiClient) -> None:
    cluster.create(DEPLOYS, deployment(3), "default")
    cluster.create(SVCS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}},
                   "default")
    pods = wait_for(lambda: [p for p in cluster.list(PODS, "default")["items"] if p["spec"].get("nodeName")]
                    if len([p for p in cluster.list(PODS, "default")["items"] if p["spec"].get("nodeName")]) == 3
                    else None)
    assert {p["spec"]["nodeName"] for p in pods} == {"w1", "w2"}  # tainted control plane avoided, spread
    rs = cluster.list(RS, "default")["items"]
    stored_template = cluster.get(DEPLOYS, "web", "default")["spec"]["template"]  # as defaulted by the server
    assert len(rs) == 1 and rs[0]["metadata"]["labels"]["pod-template-hash"] == template_hash(stored_template)
    mark_running(cluster)

    def ready_endpoints() -> list:
        slices = cluster.list(SLICES, "default", label_selector="kubernetes.io/service-name=web")["items"]
        eps = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"]["ready"]]
        return eps if len(eps) == 3 else []
    wait_for(ready_endpoints)
    slices = cluster.list(SLICES, "default")["items"]
    assert slices[0]["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    status = wait_for(lambda: (cluster.get(DEPLOYS, "web", "default").get("status") or {}).get(
        "availableReplicas") == 3 and cluster.get(DEPLOYS, "web", "default")["status"])
    assert status["readyReplicas"] == 3 and status["updatedReplicas"] == 3


def test_scale_down_and_delete_leave_nothing_behind(cluster: ApiClient) -> None:
    cluster.create(DEPLOYS, deployment(3), "default")
    wait_for(lambda: len([p for p in cluster.list(PODS, "default")["items"] if p["spec"].get("nodeName")]) == 3)
    mark_running(cluster)
    cluster.patch(DEPLOYS, "web", {"spec": {"replicas": 1}}, "default")

    def running() -> list:
        mark_running(cluster)  # finishes graceful deletions, as kubelets would
        return [p for p in cluster.list(PODS, "default")["items"] if not p["metadata"].get("deletionTimestamp")]
    wait_for(lambda: len(running()) == 1 and len(cluster.list(PODS, "default")["items"]) == 1)
    cluster.delete(DEPLOYS, "web", "default")
    wait_for(lambda: not running() and not cluster.list(PODS, "default")["items"]
             and not cluster.list(RS, "default")["items"])
    time.sleep(0.5)  # nothing gets re-created by a lagging controller
    assert cluster.list(PODS, "default")["items"] == []


def test_template_change_rolls_to_a_new_replicaset(cluster: ApiClient) -> None:
    cluster.create(DEPLOYS, deployment(2), "default")
    wait_for(lambda: len([p for p in cluster.list(PODS, "default")["items"] if p["spec"].get("nodeName")]) == 2)
    mark_running(cluster)
    cluster.patch(DEPLOYS, "web", {"spec": {"template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}},
                  "default")

    def rolled() -> bool:
        mark_running(cluster)
        rss = cluster.list(RS, "default")["items"]
        return len(rss) == 2 and sorted(r["spec"]["replicas"] for r in rss) == [0, 2]
    wait_for(rolled)


def test_unschedulable_pod_gets_condition(cluster: ApiClient) -> None:
    cluster.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
                          "spec": {"containers": [{"name": "c", "image": "i",
                                                   "resources": {"requests": {"cpu": "64"}}}]}}, "default")

    def condition() -> dict | None:
        for c in cluster.get(PODS, "big", "default")["status"].get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return c
        return None
    cond = wait_for(condition)
    assert cond["reason"] == "Unschedulable" and "2 Insufficient cpu" in cond["message"]


def test_desired_slices_resolve_named_ports_per_pod() -> None:
    service = {"metadata": {"name": "s", "namespace": "d"},
               "spec": {"selector": {"app": "a"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}

    def p(name: str, ip: str, port: int, ready: bool = True) -> dict:
        return {"metadata": {"name": name, "namespace": "d", "labels": {"app": "a"}, "uid": name},
                "spec": {"nodeName": "n", "containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"podIP": ip, "phase": "Running",
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    groups = desired_slices(service, [p("a", "10.0.0.2", 8080), p("b", "10.0.0.3", 9090, ready=False),
                                      p("c", "10.0.0.1", 8080)])
    assert len(groups) == 2
    by_port = {ports[0].port: eps for ports, eps in groups}
    assert [e["addresses"][0] for e in by_port[8080]] == ["10.0.0.1", "10.0.0.2"]
    assert by_port[9090][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}
