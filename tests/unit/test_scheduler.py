"""Scheduler choice: filters, scoring and failure messages."""

from __future__ import annotations

import random

from netk8s.scheduler.core import build_node_states, pod_requests, schedule, tolerates


def node(name: str, ready: bool = True, taints: list | None = None, unschedulable: bool = False,
         labels: dict | None = None, cpu: str = "4", pods: str = "110") -> dict:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": pods},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str = "p", node_name: str = "", cpu: str | None = None, **spec: object) -> dict:
    container: dict = {"name": "c", "image": "x"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [container], **({"nodeName": node_name} if node_name else {}), **spec},
            "status": {"phase": "Running"}}


CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def test_control_plane_taint_not_ready_and_unschedulable_nodes_are_filtered() -> None:
    nodes = [node("cp", taints=[CP_TAINT]), node("down", ready=False), node("cordoned", unschedulable=True),
             node("worker")]
    for seed in range(10):
        assert schedule(pod(), build_node_states(nodes, []), random.Random(seed)).node_name == "worker"


def test_toleration_allows_tainted_node() -> None:
    tol = [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]
    decision = schedule(pod(tolerations=tol), build_node_states([node("cp", taints=[CP_TAINT])], []))
    assert decision.node_name == "cp"
    assert tolerates([{"operator": "Exists"}], CP_TAINT)
    assert not tolerates([{"key": "other", "operator": "Exists"}], CP_TAINT)


def test_least_allocated_spreads_pods() -> None:
    nodes = [node("a"), node("b")]
    existing = [pod("x", "a"), pod("y", "a")]
    assert schedule(pod(), build_node_states(nodes, existing)).node_name == "b"


def test_unschedulable_message_counts_reasons_like_kube_scheduler() -> None:
    nodes = [node("cp", taints=[CP_TAINT]), node("w1", cpu="1"), node("w2", cpu="1")]
    decision = schedule(pod(cpu="2"), build_node_states(nodes, []))
    assert decision.node_name is None
    assert decision.message.startswith("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated "
                                       "taint {node-role.kubernetes.io/control-plane: }.")


def test_node_selector_and_pod_count() -> None:
    nodes = [node("a", labels={"disk": "ssd"}), node("b", pods="1")]
    assert schedule(pod(nodeSelector={"disk": "ssd"}), build_node_states(nodes, [])).node_name == "a"
    full = build_node_states([node("b", pods="1")], [pod("x", "b")])
    assert "Too many pods" in schedule(pod(), full).message


def test_requests_sum_containers_and_max_init() -> None:
    p = {"spec": {"containers": [{"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                                 {"resources": {"requests": {"cpu": "200m"}}}],
                  "initContainers": [{"resources": {"requests": {"cpu": "1"}}}]}}
    r = pod_requests(p)
    assert (r.milli_cpu, r.memory, r.pods) == (1000, 64 * 1024 * 1024, 1)
