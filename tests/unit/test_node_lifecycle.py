"""Node heartbeats (Leases) and the node lifecycle controller: pure decisions with fixed
clocks, then LeaseHeartbeat and NodeLifecycleController against an in-process API server."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Callable, Iterator

import pytest

from netk8s.api import meta
from netk8s.api.meta import format_time
from netk8s.api.resources import EVENTS, LEASES, NODES, PODS
from netk8s.client.rest import ApiClient
from netk8s.controllers.nodelifecycle import (
    MESSAGE_STATUS_UNKNOWN,
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    NodeHealth,
    NodeLifecycleController,
    add_taints,
    assess_health,
    eviction_time,
    not_ready_pod_conditions,
    remove_taints,
    unknown_conditions,
    unreachable_taints,
    with_default_tolerations,
)
from netk8s.errors import NetK8sError
from netk8s.kubelet.lease import (
    LEASE_NAMESPACE,
    LeaseHeartbeat,
    format_micro_time,
    parse_micro_time,
    renewed_lease,
)
from netk8s.testing.helpers import wait_for

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def wait_for_object(fetch: Callable[[], dict], predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
    """Poll ``fetch()`` until ``predicate`` holds for what it returns; return that object."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = fetch()
        if predicate(obj):
            return obj
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def condition(obj: dict, cond_type: str) -> dict:
    cond = meta.get_condition(obj, cond_type)
    assert cond is not None, f"no {cond_type} condition"
    return cond


def node(name: str = "worker", heartbeat: dt.datetime | None = None, created: dt.datetime = T0,
         taints: list[dict] | None = None) -> dict:
    conditions = [{"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                  {"type": "Ready", "status": "True", "reason": "KubeletReady",
                   "message": "kubelet is posting ready status"}]
    if heartbeat is not None:
        for cond in conditions:
            cond["lastHeartbeatTime"] = format_time(heartbeat)
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "creationTimestamp": format_time(created)},
            "spec": {"taints": taints or []}, "status": {"conditions": conditions}}


def lease(renewed: dt.datetime) -> dict:
    return renewed_lease(None, "worker", 40, renewed)


def pod(name: str, tolerations: list[dict] | None = None, ready: bool = True) -> dict:
    status = "True" if ready else "False"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "worker", "tolerations": tolerations or [],
                     "containers": [{"name": "c", "image": "netk8s/echo"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": status},
                {"type": "Ready", "status": status}]}}


# -- leases -----------------------------------------------------------------------------------


def test_micro_time_round_trips_and_accepts_second_precision() -> None:
    stamp = T0 + dt.timedelta(microseconds=123456)
    assert format_micro_time(stamp) == "2024-05-01T12:00:00.123456Z"
    assert parse_micro_time(format_micro_time(stamp)) == stamp
    assert parse_micro_time("2024-05-01T12:00:07Z") == at(7)
    assert parse_micro_time("yesterday") is None and parse_micro_time(None) is None


def test_renewed_lease_is_the_kubelets_lease() -> None:
    fresh = renewed_lease(None, "worker", 40, at(1.5), node_uid="uid-1")
    assert fresh["apiVersion"] == "coordination.k8s.io/v1" and fresh["kind"] == "Lease"
    assert fresh["metadata"]["name"] == "worker" and fresh["metadata"]["namespace"] == LEASE_NAMESPACE
    assert fresh["spec"] == {"holderIdentity": "worker", "leaseDurationSeconds": 40,
                             "renewTime": "2024-05-01T12:00:01.500000Z"}
    assert fresh["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "worker", "uid": "uid-1"}]
    stored = dict(fresh, metadata=dict(fresh["metadata"], resourceVersion="7"))
    again = renewed_lease(stored, "worker", 40, at(11), node_uid="uid-1")
    assert again["metadata"]["resourceVersion"] == "7"  # optimistic concurrency on the renewal
    assert len(again["metadata"]["ownerReferences"]) == 1
    assert again["spec"]["renewTime"] == "2024-05-01T12:00:11.000000Z"
    assert stored["spec"]["renewTime"] == "2024-05-01T12:00:01.500000Z"  # input untouched
    # A re-created Node (new uid) replaces the stale owner reference.
    moved = renewed_lease(stored, "worker", 40, at(12), node_uid="uid-2")
    assert [r["uid"] for r in moved["metadata"]["ownerReferences"]] == ["uid-2"]
    assert "ownerReferences" not in renewed_lease(None, "worker", 40, at(0))["metadata"]


# -- health -----------------------------------------------------------------------------------


def test_health_follows_the_freshest_heartbeat() -> None:
    grace = 40.0
    fresh_lease = assess_health(node(heartbeat=at(0)), lease(at(100)), at(130), grace)
    assert fresh_lease.healthy and fresh_lease.deadline == at(140)
    # No lease: the conditions' heartbeat counts.
    assert assess_health(node(heartbeat=at(100)), None, at(139), grace).healthy
    stale = assess_health(node(heartbeat=at(100)), lease(at(90)), at(141), grace)
    assert stale.health is NodeHealth.STOPPED_POSTING and stale.last_heartbeat == at(100)
    # A node that never heartbeated gets the grace period from its creation.
    assert assess_health(node(created=at(0)), None, at(40), grace).healthy
    assert assess_health(node(created=at(0)), None, at(41), grace).health is NodeHealth.NEVER_POSTED
    # A controller that only started watching at 100 s gives every node the grace period from then.
    late = assess_health(node(heartbeat=at(0)), lease(at(5)), at(130), grace, watching_since=at(100))
    assert late.healthy and late.deadline == at(140) and late.last_heartbeat == at(5)
    assert not assess_health(node(heartbeat=at(0)), None, at(141), grace, watching_since=at(100)).healthy


def test_unknown_conditions_like_the_node_controller() -> None:
    conditions = unknown_conditions(node(heartbeat=at(0)), at(50))
    assert conditions is not None
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in conditions] == [
        ("MemoryPressure", "Unknown", "NodeStatusUnknown", MESSAGE_STATUS_UNKNOWN),
        ("Ready", "Unknown", "NodeStatusUnknown", MESSAGE_STATUS_UNKNOWN)]
    assert all(c["lastTransitionTime"] == "2024-05-01T12:00:50Z" for c in conditions)
    assert all(c["lastHeartbeatTime"] == "2024-05-01T12:00:00Z" for c in conditions)  # kept
    already = dict(node(), status={"conditions": conditions})
    assert unknown_conditions(already, at(60)) is None
    never = unknown_conditions(dict(node(), status={}), at(50))
    assert never == [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                      "message": "Kubelet never posted node status.", "lastTransitionTime": "2024-05-01T12:00:50Z",
                      "lastHeartbeatTime": "2024-05-01T12:00:00Z"}]


def test_unreachable_taints_added_once_and_removed() -> None:
    user = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
    tainted = add_taints([user], unreachable_taints(at(3)))
    assert tainted == [user,
                       {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": "2024-05-01T12:00:03Z"},
                       {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "2024-05-01T12:00:03Z"}]
    assert add_taints(tainted, unreachable_taints(at(9))) is None  # timeAdded is not refreshed
    assert remove_taints(tainted, TAINT_UNREACHABLE) == [user]
    assert remove_taints([user], TAINT_UNREACHABLE) is None


# -- tolerations and eviction --------------------------------------------------------------------


@pytest.mark.parametrize("toleration, taint, expected", [
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoExecute"}, False),
    ({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, {"key": "k", "effect": "NoExecute"}, False),
    ({"operator": "Exists"}, {"key": "any", "effect": "NoExecute"}, True),
    ({"key": "other", "operator": "Exists"}, {"key": "k", "effect": "NoExecute"}, False),
    ({"key": "k", "operator": "Gt", "value": "1"}, {"key": "k", "effect": "NoExecute"}, False),
])
def test_toleration_matching(toleration: dict, taint: dict, expected: bool) -> None:
    assert meta.toleration_tolerates(toleration, taint) is expected


def test_default_tolerations_only_where_the_pod_has_none() -> None:
    keys = [t["key"] for t in with_default_tolerations([], 300)]
    assert keys == [TAINT_NOT_READY, TAINT_UNREACHABLE]
    own = {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
    merged = with_default_tolerations([own], 300)
    assert merged[0] is own and [t["key"] for t in merged[1:]] == [TAINT_NOT_READY]
    assert with_default_tolerations([{"operator": "Exists"}], 300) == [{"operator": "Exists"}]


def test_eviction_times_follow_toleration_seconds() -> None:
    unreachable = {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": format_time(at(10))}
    maintenance = {"key": "maintenance", "effect": "NoExecute", "timeAdded": format_time(at(20))}
    no_schedule = {"key": "dedicated", "effect": "NoSchedule"}
    now = at(30)
    assert eviction_time(pod("p"), [no_schedule], 300, now) is None  # no NoExecute taint
    assert eviction_time(pod("p"), [unreachable], 300, now) == at(310)  # default toleration
    tolerate_60 = {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    assert eviction_time(pod("p", [tolerate_60]), [unreachable], 300, now) == at(70)
    forever = {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}
    assert eviction_time(pod("p", [forever]), [unreachable], 300, now) is None
    assert eviction_time(pod("p", [forever, tolerate_60]), [unreachable], 300, now) is None  # first match wins
    negative = dict(tolerate_60, tolerationSeconds=-5)
    assert eviction_time(pod("p", [negative]), [unreachable], 300, now) == at(10)
    # An untolerated taint evicts at once; with several taints the earliest deadline wins.
    assert eviction_time(pod("p", [forever]), [unreachable, maintenance], 300, now) == at(20)
    tolerate_maint = {"key": "maintenance", "operator": "Exists", "tolerationSeconds": 5}
    assert eviction_time(pod("p", [tolerate_60, tolerate_maint]), [unreachable, maintenance], 300,
                         now) == at(25)
    no_stamp = {"key": "maintenance", "effect": "NoExecute"}
    assert eviction_time(pod("p", [tolerate_maint]), [no_stamp], 300, now) == at(35)


def test_pods_marked_not_ready_once() -> None:
    conditions = not_ready_pod_conditions(pod("p"), at(5))
    assert conditions is not None
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Ready"] == {"type": "Ready", "status": "False", "reason": "NodeNotReady",
                                "lastTransitionTime": "2024-05-01T12:00:05Z"}
    assert by_type["ContainersReady"]["status"] == "False" and by_type["Initialized"]["status"] == "True"
    assert not_ready_pod_conditions(pod("p", ready=False), at(5)) is None
    pending = dict(pod("p"), status={"phase": "Pending"})
    assert not_ready_pod_conditions(pending, at(5)) is None


# -- against an API server ---------------------------------------------------------------------


def create_node(api: ApiClient, name: str, taints: list[dict] | None = None) -> dict:
    return api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                              "spec": {"taints": taints or []},
                              "status": {"conditions": [{"type": "Ready", "status": "True",
                                                         "reason": "KubeletReady"}]}})


def create_pod(api: ApiClient, name: str, node_name: str, tolerations: list[dict]) -> dict:
    created = api.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}],
                                         "tolerations": tolerations}}, "default")
    api.bind("default", name, node_name)
    api.patch(PODS, name, {"status": {"phase": "Running", "podIP": "10.244.1.9", "conditions": [
        {"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "True"}]}},
        "default", subresource="status")
    return created


def pod_exists(api: ApiClient, name: str) -> bool:
    return any(meta.name_of(p) == name and not p["metadata"].get("deletionTimestamp")
               for p in api.list(PODS, "default")["items"])


def event_reasons(api: ApiClient, namespace: str = "default") -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in api.list(EVENTS, namespace)["items"]]


@pytest.fixture
def heartbeat(api: ApiClient) -> Iterator[LeaseHeartbeat]:
    create_node(api, "worker")
    beat = LeaseHeartbeat(api, "worker", duration_seconds=40, renew_interval=0.05)
    try:
        yield beat
    finally:
        beat.stop()


def test_lease_heartbeat_renews_pauses_and_resumes(api: ApiClient, heartbeat: LeaseHeartbeat) -> None:
    assert heartbeat.renew_interval == 0.05
    assert LeaseHeartbeat(api, "x", duration_seconds=40).renew_interval == 10.0  # duration / 4
    heartbeat.start()

    def renew_time() -> str:
        try:
            return str(api.get(LEASES, "worker", LEASE_NAMESPACE)["spec"]["renewTime"])
        except NetK8sError:
            return ""
    wait_for(renew_time)
    first = renew_time()
    stored = api.get(LEASES, "worker", LEASE_NAMESPACE)
    assert stored["spec"]["holderIdentity"] == "worker" and stored["spec"]["leaseDurationSeconds"] == 40
    assert stored["metadata"]["ownerReferences"][0]["uid"] == meta.uid_of(api.get(NODES, "worker"))
    wait_for(lambda: renew_time() != first)
    heartbeat.pause()
    assert heartbeat.paused
    time.sleep(0.1)  # a renewal in flight when we paused may still land
    frozen = renew_time()
    time.sleep(0.25)
    assert renew_time() == frozen
    heartbeat.resume()
    wait_for(lambda: renew_time() != frozen, timeout=1.0)


def test_renew_once_recovers_from_conflicts_and_deletion(api: ApiClient, heartbeat: LeaseHeartbeat) -> None:
    first = heartbeat.renew_once()
    # Someone else wrote the Lease: our cached resourceVersion is stale (409), re-read and renew.
    api.patch(LEASES, "worker", {"spec": {"holderIdentity": "intruder"}}, LEASE_NAMESPACE)
    second = heartbeat.renew_once()
    assert second["spec"]["holderIdentity"] == "worker"
    renewed, before = parse_micro_time(second["spec"]["renewTime"]), parse_micro_time(first["spec"]["renewTime"])
    assert renewed is not None and before is not None and renewed >= before
    # The Lease was deleted (404 on update): it is created again.
    api.delete(LEASES, "worker", LEASE_NAMESPACE)
    third = heartbeat.renew_once()
    assert meta.uid_of(third) != meta.uid_of(second)
    assert api.get(LEASES, "worker", LEASE_NAMESPACE)["spec"]["holderIdentity"] == "worker"


def test_dead_kubelet_node_goes_unknown_tainted_and_pods_not_ready(
        api: ApiClient, heartbeat: LeaseHeartbeat) -> None:
    unreachable_now = {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                       "tolerationSeconds": 0}
    unreachable_forever = {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}
    create_pod(api, "goes", "worker", [unreachable_now])
    create_pod(api, "stays", "worker", [unreachable_forever])
    heartbeat.start()
    wait_for(lambda: api.list(LEASES, LEASE_NAMESPACE)["items"])
    controller = NodeLifecycleController(api, grace_period=0.4, eviction_timeout=300, monitor_period=0.05)
    controller.start()
    try:
        assert controller.wait_synced(5)
        time.sleep(0.6)  # longer than the grace period: only the heartbeat keeps the node healthy
        current = api.get(NODES, "worker")
        assert not current["spec"].get("taints") and meta.node_is_ready(current)
        assert pod_exists(api, "goes")

        heartbeat.pause()
        tainted = wait_for_object(lambda: api.get(NODES, "worker"), lambda n: bool(n["spec"].get("taints")),
                                  timeout=2.0)
        assert {(t["key"], t["effect"]) for t in tainted["spec"]["taints"]} == {
            (TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")}
        assert all(t.get("timeAdded") for t in tainted["spec"]["taints"])
        ready = condition(tainted, "Ready")
        assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown"
        assert ready["message"] == "Kubelet stopped posting node status."
        wait_for(lambda: not pod_exists(api, "goes"))
        stays = wait_for_object(lambda: api.get(PODS, "stays", "default"), lambda p: not meta.pod_is_ready(p))
        assert condition(stays, "Ready")["reason"] == "NodeNotReady"
        assert condition(stays, "ContainersReady")["status"] == "False"
        wait_for(lambda: {("NodeNotReady", "Node worker status is now: NodeNotReady"),
                          ("TaintManagerEviction", "Marking for deletion Pod default/goes")}
                 <= set(event_reasons(api)))

        heartbeat.resume()
        wait_for(lambda: not api.get(NODES, "worker")["spec"].get("taints"), timeout=2.0)
        assert pod_exists(api, "stays")
    finally:
        controller.stop()
        controller.join()


def test_no_execute_taint_evicts_after_toleration_seconds(api: ApiClient) -> None:
    offset = [0.0]
    lock = threading.Lock()

    def clock() -> dt.datetime:
        with lock:
            return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset[0])
    maintenance = {"key": "example.com/maintenance", "effect": "NoExecute", "timeAdded": meta.now()}
    create_node(api, "worker", [maintenance])
    create_pod(api, "untolerated", "worker", [])
    create_pod(api, "minute", "worker", [{"key": "example.com/maintenance", "operator": "Exists",
                                          "effect": "NoExecute", "tolerationSeconds": 60}])
    create_pod(api, "forever", "worker", [{"key": "example.com/maintenance", "operator": "Exists"}])
    # A huge grace period: the node stays healthy, so only the user's taint acts.
    controller = NodeLifecycleController(api, grace_period=1e6, monitor_period=0.05, clock=clock)
    controller.start()
    try:
        wait_for(lambda: not pod_exists(api, "untolerated"))
        time.sleep(0.2)
        assert pod_exists(api, "minute") and pod_exists(api, "forever")
        with lock:
            offset[0] = 62.0
        wait_for(lambda: not pod_exists(api, "minute"))
        time.sleep(0.1)
        assert pod_exists(api, "forever")
        assert api.get(NODES, "worker")["spec"]["taints"] == [maintenance]  # a healthy node keeps user taints
        assert meta.pod_is_ready(api.get(PODS, "forever", "default"))  # healthy node: readiness untouched
    finally:
        controller.stop()
        controller.join()
