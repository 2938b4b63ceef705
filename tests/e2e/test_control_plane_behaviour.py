"""Control-plane behaviour on a running cluster: a node that stops reporting turns
Unknown and its pods are evicted and recreated elsewhere; deleting a namespace
deletes what is in it, then the namespace."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.cluster.api import Cluster
from netk8s.testing.helpers import run_cli
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import default_topology, to_dict

APP = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "echo", "image": "netk8s/echo"}]}}},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    topo = to_dict(default_topology(unique_cluster_name("lc")))
    topo["controlPlane"] = {"nodeMonitorGracePeriod": "3s", "podEvictionTimeout": "4s"}
    c = Cluster.up(topology=topo)
    try:
        yield c
    finally:
        c.down()


def test_stopped_node_goes_unknown_and_its_pods_move(cluster: Cluster) -> None:
    cluster.apply(APP)
    cluster.wait_ready("deployment", "web", timeout=60)
    on_worker = {meta.name_of(p) for p in cluster.list("pods", "default", "app=web")
                 if p["spec"]["nodeName"] == "worker"}
    assert on_worker, "the scheduler spreads 4 replicas over both workers"
    stopped = run_cli("--cluster", cluster.name, "node", "stop", "worker")
    assert stopped.code == 0 and stopped.stdout.strip() == "node/worker stopped"

    unreachable = {("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")}

    def unknown() -> dict | None:
        # The node controller writes the Unknown condition, then (a separate update) the taints.
        node = cluster.get("node", "worker")
        cond = meta.get_condition(node, "Ready")
        taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []}
        return node if cond and cond["status"] == "Unknown" and unreachable <= taints else None
    node = cluster.wait_for(unknown, timeout=20, what="worker to turn Ready=Unknown and be tainted unreachable")
    assert meta.get_condition(node, "Ready")["reason"] == "NodeStatusUnknown"

    # After the eviction timeout the worker's pods are terminating (its kubelet cannot finish them)
    # and replacements run on worker2, so the Deployment is whole again.
    def replaced() -> bool:
        pods = cluster.list("pods", "default", "app=web")
        terminating = {meta.name_of(p) for p in pods if p["metadata"].get("deletionTimestamp")}
        running = [p for p in pods if not p["metadata"].get("deletionTimestamp") and meta.pod_is_ready(p)]
        return terminating == on_worker and len(running) == 4 and all(
            p["spec"]["nodeName"] == "worker2" for p in running if meta.name_of(p) not in on_worker)
    cluster.wait_for(replaced, timeout=40, what="pods of the stopped node to be replaced")
    events = cluster.list("events", "default")
    assert any(e["reason"] == "TaintManagerEviction" for e in events)

    started = run_cli("--cluster", cluster.name, "node", "start", "worker")
    assert started.code == 0
    cluster.wait_for(lambda: meta.node_is_ready(cluster.get("node", "worker"))
                     and not any(t["key"] == "node.kubernetes.io/unreachable"
                                 for t in cluster.get("node", "worker")["spec"].get("taints") or []),
                     timeout=20, what="worker to be Ready and untainted again")
    # Back in touch, its kubelet finishes the evicted pods.
    cluster.wait_for(lambda: not ({meta.name_of(p) for p in cluster.list("pods", "default", "app=web")}
                                  & on_worker), timeout=30, what="evicted pods to be gone")


def test_deleting_a_namespace_deletes_its_contents_first(cluster: Cluster) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    cluster.apply({**APP, "metadata": {"name": "web", "namespace": "team"},
                   "spec": {**APP["spec"], "replicas": 2}})
    cluster.wait_ready("deployment", "web", namespace="team", timeout=60)
    cluster.delete("namespace", "team", None)
    phase = cluster.get("namespace", "team", None)["status"]["phase"]
    assert phase == "Terminating"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            cluster.get("namespace", "team", None)
        except Exception:
            break
        time.sleep(0.2)
    else:
        pytest.fail("namespace team was not removed within 60s")
    assert cluster.list("pods", "team") == [] and cluster.list("deployments", "team") == []
