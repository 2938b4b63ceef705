"""Scheduler choice: filters, scoring and failure messages; the scheduler's events against an API server."""

from __future__ import annotations

import random
import time

import pytest

from netk8s.api.resources import EVENTS, NODES, PODS
from netk8s.client.rest import ApiClient
from netk8s.scheduler.core import (
    NodeState,
    build_node_states,
    fit_error_message,
    least_allocated_score,
    matches_required_affinity,
    node_affinity_score,
    normalize_scores,
    pod_requests,
    schedule,
    score_nodes,
    taint_toleration_score,
    tolerates,
)
from netk8s.scheduler.scheduler import Scheduler
from netk8s.testing.helpers import wait_for


def node(name: str, ready: bool = True, taints: list | None = None, unschedulable: bool = False,
         labels: dict | None = None, cpu: str = "4", pods: str = "110") -> dict:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": pods},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str = "p", node_name: str = "", cpu: str | None = None, phase: str = "Running",
        **spec: object) -> dict:
    container: dict = {"name": "c", "image": "x"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [container], **({"nodeName": node_name} if node_name else {}), **spec},
            "status": {"phase": phase}}


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
    # kube-scheduler sorts the "<count> <reason>" strings themselves (Go sort.Strings).
    nodes = [node("cp", taints=[CP_TAINT]), node("w1", cpu="1"), node("w2", cpu="1")]
    decision = schedule(pod(cpu="2"), build_node_states(nodes, []))
    assert decision.node_name is None
    assert decision.message == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
        "2 No preemption victims found for incoming pod.")


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


def test_requests_are_remembered_per_pod_version_only() -> None:
    def stored(version: str, cpu: str) -> dict:
        return {"metadata": {"uid": "u-cache", "resourceVersion": version},
                "spec": {"containers": [{"resources": {"requests": {"cpu": cpu}}}]}}

    assert pod_requests(stored("7", "100m")).milli_cpu == 100
    assert pod_requests(stored("7", "100m"), non_zero=True).memory > 0  # the non-zero default, counted apart
    assert pod_requests(stored("8", "300m")).milli_cpu == 300  # a new version is read again


# -- message format ------------------------------------------------------------------------------


def test_message_matches_kube_scheduler_for_selector_and_cpu() -> None:
    nodes = [node("a"), node("b", cpu="1", labels={"disk": "ssd"}), node("c", cpu="1", labels={"disk": "ssd"})]
    decision = schedule(pod(cpu="2", nodeSelector={"disk": "ssd"}), build_node_states(nodes, []))
    assert decision.node_name is None
    assert decision.message == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu. "
        "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
        "2 No preemption victims found for incoming pod.")
    assert decision.reasons == {"a": ("node(s) didn't match Pod's node affinity/selector",),
                                "b": ("Insufficient cpu",), "c": ("Insufficient cpu",)}


def test_reasons_sort_as_strings_not_by_count() -> None:
    nodes = [node(f"cordoned{i}", unschedulable=True) for i in range(10)] + [node("w1", cpu="1"), node("w2", cpu="1")]
    message = schedule(pod(cpu="2"), build_node_states(nodes, [])).message
    assert message.startswith("0/12 nodes are available: 10 node(s) were unschedulable, 2 Insufficient cpu. ")
    assert message.endswith("preemption: 0/12 nodes are available: 10 Preemption is not helpful for scheduling, "
                            "2 No preemption victims found for incoming pod.")


def test_every_resource_shortage_of_a_node_is_counted() -> None:
    big = pod(cpu="8")
    big["spec"]["containers"][0]["resources"]["requests"]["memory"] = "16Gi"
    states = build_node_states([node("full", pods="1"), node("small")], [pod("x", "full", phase="Running")])
    message = schedule(big, states).message
    assert message.startswith("0/2 nodes are available: 1 Too many pods, 2 Insufficient cpu, 2 Insufficient memory.")


def test_fit_error_message_parts() -> None:
    assert fit_error_message(2, {}, "pod affinity terms conflict", "preemption: x.") == \
        "0/2 nodes are available: pod affinity terms conflict. preemption: x."
    assert fit_error_message(0, {}) == "0/0 nodes are available:"


def test_no_nodes_at_all() -> None:
    assert schedule(pod(), {}).message == "no nodes available to schedule pods"


def test_not_ready_and_unreachable_nodes_read_as_their_taints() -> None:
    unknown = node("lost")
    unknown["status"]["conditions"][0]["status"] = "Unknown"
    no_condition = node("new")
    no_condition["status"]["conditions"] = []
    states = build_node_states([node("down", ready=False), unknown, no_condition], [])
    decision = schedule(pod(), states)
    assert decision.message.startswith(
        "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, "
        "2 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: "
        "3 Preemption is not helpful for scheduling.")
    tolerant = pod(tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}])
    assert schedule(tolerant, build_node_states([node("down", ready=False)], [])).node_name == "down"


def test_preemption_part_reflects_policy_and_lower_priority_pods() -> None:
    never = pod(cpu="2", preemptionPolicy="Never")
    assert schedule(never, build_node_states([node("w", cpu="1")], [])).message == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.")
    # Evicting the lower-priority pod would not be enough: the dry run reports the node's reasons.
    low = pod("low", "w", cpu="500m", priority=-5)
    urgent = pod(cpu="2", priority=1000)
    assert schedule(urgent, build_node_states([node("w", cpu="1")], [low])).message == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 Insufficient cpu.")
    # Evicting it would make room: kube-scheduler would preempt, so there is no preemption suffix.
    fits = pod(cpu="1", priority=1000)
    assert schedule(fits, build_node_states([node("w", cpu="1")], [low])).message == \
        "0/1 nodes are available: 1 Insufficient cpu."


def test_pod_naming_a_node_fits_only_that_node() -> None:
    decision = schedule(pod(node_name="b"), build_node_states([node("a"), node("b")], []))
    assert decision.node_name == "b"
    assert decision.reasons == {"a": ("node(s) didn't match the requested node name",)}


# -- node affinity -------------------------------------------------------------------------------


def required(*terms: dict) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def expr(key: str, operator: str, *values: str) -> dict:
    return {"key": key, "operator": operator, **({"values": list(values)} if values else {})}


LABELS = {"zone": "a", "gen": "5", "disk": "ssd"}


@pytest.mark.parametrize("requirement, matches", [
    (expr("zone", "In", "a", "b"), True),
    (expr("zone", "In", "b"), False),
    (expr("zone", "NotIn", "b"), True),
    (expr("zone", "NotIn", "a"), False),
    (expr("missing", "NotIn", "a"), True),
    (expr("disk", "Exists"), True),
    (expr("missing", "Exists"), False),
    (expr("missing", "DoesNotExist"), True),
    (expr("disk", "DoesNotExist"), False),
    (expr("gen", "Gt", "4"), True),
    (expr("gen", "Gt", "5"), False),
    (expr("gen", "Lt", "6"), True),
    (expr("gen", "Lt", "5"), False),
    (expr("disk", "Gt", "1"), False),      # label not an integer
    (expr("gen", "Gt", "x"), False),       # invalid requirement: the term matches nothing
    (expr("zone", "In"), False),           # In without values is invalid
    (expr("zone", "Bogus", "a"), False),
])
def test_match_expressions_operators(requirement: dict, matches: bool) -> None:
    n = node("n1", labels=LABELS)
    assert matches_required_affinity(pod(affinity=required({"matchExpressions": [requirement]})), n) is matches


def test_terms_are_ored_expressions_anded_and_fields_match_the_name() -> None:
    n = node("n1", labels=LABELS)
    both = {"matchExpressions": [expr("zone", "In", "a"), expr("disk", "In", "hdd")]}
    assert not matches_required_affinity(pod(affinity=required(both)), n)
    assert matches_required_affinity(pod(affinity=required(both, {"matchExpressions": [expr("gen", "Gt", "1")]})), n)
    by_name = {"matchFields": [expr("metadata.name", "In", "n1")]}
    assert matches_required_affinity(pod(affinity=required(by_name)), n)
    not_n1 = {"matchFields": [expr("metadata.name", "NotIn", "n1")]}
    assert not matches_required_affinity(pod(affinity=required(not_n1)), n)
    assert not matches_required_affinity(pod(affinity=required({})), n)  # an empty term selects nothing
    # nodeSelector and affinity must both hold.
    assert not matches_required_affinity(pod(nodeSelector={"zone": "b"}, affinity=required(by_name)), n)


def test_required_affinity_filters_and_pins_by_name() -> None:
    nodes = [node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"}), node("c", labels={"zone": "y"})]
    in_y = pod(affinity=required({"matchExpressions": [expr("zone", "In", "y")]}))
    for seed in range(5):
        assert schedule(in_y, build_node_states(nodes, []), random.Random(seed)).node_name in ("b", "c")
    pinned = pod(affinity=required({"matchFields": [expr("metadata.name", "In", "c")]}))
    decision = schedule(pinned, build_node_states(nodes, []))
    assert decision.node_name == "c"
    # Pinned to a node that is full: the others are pre-filtered out, kube-scheduler style.
    full = schedule(pod(cpu="8", affinity=pinned["spec"]["affinity"]), build_node_states(nodes, []))
    assert full.message == (
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. "
        "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, "
        "2 Preemption is not helpful for scheduling.")


def test_contradicting_name_terms_fail_in_pre_filter() -> None:
    term = {"matchFields": [expr("metadata.name", "In", "a"), expr("metadata.name", "In", "b")]}
    decision = schedule(pod(affinity=required(term)), build_node_states([node("a"), node("b")], []))
    assert decision.message == ("0/2 nodes are available: pod affinity terms conflict. preemption: 0/2 nodes are "
                                "available: 2 Preemption is not helpful for scheduling.")


def test_preferred_affinity_sums_weights_and_normalises() -> None:
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 20, "preference": {"matchExpressions": [expr("zone", "In", "a")]}},
        {"weight": 10, "preference": {"matchExpressions": [expr("disk", "Exists")]}},
        {"weight": 50, "preference": {}},  # empty preference is ignored
    ]}}
    p = pod(affinity=affinity)
    nodes = {"both": node("both", labels={"zone": "a", "disk": "ssd"}), "disk": node("disk", labels={"disk": "x"}),
             "none": node("none")}
    raw = {name: node_affinity_score(p, n) for name, n in nodes.items()}
    assert raw == {"both": 30, "disk": 10, "none": 0}
    assert normalize_scores(raw) == {"both": 100, "disk": 33, "none": 0}
    assert normalize_scores(raw, reverse=True) == {"both": 0, "disk": 67, "none": 100}
    assert normalize_scores({"a": 0, "b": 0}) == {"a": 0, "b": 0}
    assert normalize_scores({"a": 0, "b": 0}, reverse=True) == {"a": 100, "b": 100}
    for seed in range(10):
        chosen = schedule(p, build_node_states(list(nodes.values()), []), random.Random(seed)).node_name
        assert chosen == "both"


def test_preferred_affinity_outweighs_a_small_load_difference() -> None:
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [expr("zone", "In", "a")]}}]}}
    nodes = [node("busy", labels={"zone": "a"}), node("idle")]
    decision = schedule(pod(affinity=affinity), build_node_states(nodes, [pod("x", "busy")]))
    assert decision.node_name == "busy"
    # fit (1x): busy 200m/400Mi used -> (95 + 95) // 2, idle 100m/200Mi -> (97 + 97) // 2;
    # affinity (2x): 100 vs 0; taints (3x): 100 each.
    assert decision.scores == {"busy": 95 + 200 + 300, "idle": 97 + 0 + 300}


# -- taints ------------------------------------------------------------------------------------


def test_prefer_no_schedule_is_a_score_penalty_not_a_filter() -> None:
    soft = {"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}
    nodes = [node("spot", taints=[soft]), node("plain")]
    for seed in range(10):
        assert schedule(pod(), build_node_states(nodes, []), random.Random(seed)).node_name == "plain"
    assert schedule(pod(), build_node_states([node("spot", taints=[soft])], [])).node_name == "spot"
    assert taint_toleration_score(pod(), nodes[0]) == 1
    tolerated = pod(tolerations=[{"key": "spot", "operator": "Equal", "value": "yes", "effect": "PreferNoSchedule"}])
    any_effect = pod(tolerations=[{"key": "spot", "operator": "Exists"}])
    other_effect = pod(tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}])
    assert taint_toleration_score(tolerated, nodes[0]) == 0
    assert taint_toleration_score(any_effect, nodes[0]) == 0
    assert taint_toleration_score(other_effect, nodes[0]) == 1
    scores = score_nodes(pod(), [NodeState(n) for n in nodes])
    assert scores["plain"] - scores["spot"] == 3 * 100


def test_toleration_semantics() -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert tolerates([{"key": "dedicated", "value": "gpu"}], taint)  # operator defaults to Equal, any effect
    assert not tolerates([{"key": "dedicated", "value": "cpu"}], taint)
    assert tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Gt", "value": "gpu"}], taint)
    noexec = {"key": "evict", "effect": "NoExecute"}
    decision = schedule(pod(), build_node_states([node("n", taints=[noexec])], []))
    assert decision.reasons == {"n": ("node(s) had untolerated taint {evict: }",)}


def test_least_allocated_score_uses_integer_math_and_non_zero_defaults() -> None:
    n = node("n", cpu="1")  # 1000m, 8Gi
    # pod without requests counts as 100m + 200Mi: cpu (900*100)//1000 = 90, mem (7992Mi*100)//8192Mi = 97
    assert least_allocated_score(pod(), NodeState(n)) == (90 + 97) // 2


# -- the scheduler process: bindings and events ----------------------------------------------------


def events_for(api: ApiClient, name: str) -> list[dict]:
    return api.list(EVENTS, "default", field_selector=f"involvedObject.name={name}")["items"]


def test_scheduler_records_scheduled_and_failed_scheduling_events(api: ApiClient) -> None:
    api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker", "labels": {}},
                       "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                                  "conditions": [{"type": "Ready", "status": "True"}]}})
    scheduler = Scheduler(api)
    scheduler.start()
    try:
        for name, cpu in (("web-abc", "100m"), ("huge", "64")):
            api.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                              "spec": {"containers": [{"name": "c", "image": "i",
                                                       "resources": {"requests": {"cpu": cpu}}}]}}, "default")
        wait_for(lambda: events_for(api, "web-abc"))
        scheduled = events_for(api, "web-abc")
        assert [(e["type"], e["reason"], e["message"]) for e in scheduled] == [
            ("Normal", "Scheduled", "Successfully assigned default/web-abc to worker")]
        assert scheduled[0]["source"]["component"] == "default-scheduler"
        assert scheduled[0]["involvedObject"]["kind"] == "Pod"
        assert api.get(PODS, "web-abc", "default")["spec"]["nodeName"] == "worker"
        wait_for(lambda: events_for(api, "huge"))
        failed = events_for(api, "huge")
        expected = ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
                    "1 No preemption victims found for incoming pod.")
        assert [(e["type"], e["reason"], e["message"]) for e in failed] == [("Warning", "FailedScheduling", expected)]
        # A node change retries the pod; the same message is not recorded again.
        api.patch(NODES, "worker", {"metadata": {"labels": {"touched": "yes"}}})
        time.sleep(0.5)
        again = events_for(api, "huge")
        assert len(again) == 1 and again[0].get("count", 1) == 1
        # A different failure is a new event.
        api.patch(NODES, "worker", {"spec": {"unschedulable": True}})
        wait_for(lambda: len(events_for(api, "huge")) == 2)
        messages = {e["message"] for e in events_for(api, "huge")}
        assert ("0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are available: "
                "1 Preemption is not helpful for scheduling.") in messages
    finally:
        scheduler.stop()
        scheduler.join()
