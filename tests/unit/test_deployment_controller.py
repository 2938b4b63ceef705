"""Deployment controller: the pure rollout arithmetic, and rollouts against an in-process API server.

The API tests run the Deployment and ReplicaSet controllers and play the kubelet by
marking pods Running+Ready through the status subresource (and finishing graceful
deletions), then check what ``kubectl rollout status`` / ``rollout undo`` rely on.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any, Iterator

import pytest

from netk8s.api import meta
from netk8s.api.resources import DEPLOYMENTS, EVENTS, PODS, REPLICASETS
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.controllers.deployment import (
    DESIRED_REPLICAS_ANNOTATION,
    HASH_LABEL,
    MAX_REPLICAS_ANNOTATION,
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    ConditionType,
    DeploymentController,
    Reason,
    ReplicaSetView,
    RolloutLimits,
    ScaleAction,
    Strategy,
    calculate_status,
    compact_status,
    deployment_timed_out,
    find_new_replicaset,
    new_condition,
    pod_is_available,
    proportional_scale,
    recreate_step,
    replicaset_annotations,
    replicaset_view,
    resolve_fenceposts,
    rolling_step,
    rollout_limits,
    rollout_status,
    scaled_value,
    seconds_until_available,
    seconds_until_deadline_check,
    set_condition,
    status_patch,
    template_hash,
    templates_equal_ignoring_hash,
)
from netk8s.controllers.replicaset import ReplicaSetController
from netk8s.errors import ApiError, ValidationError
from netk8s.testing.helpers import wait_for

NS = "default"
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- pure: surge / unavailable ------------------------------------------------------------------


@pytest.mark.parametrize("value,total,up,expected", [
    (3, 10, True, 3), ("25%", 10, True, 3), ("25%", 10, False, 2), ("25%", 3, True, 1), ("25%", 3, False, 0),
    ("100%", 7, False, 7), ("0%", 5, True, 0), (None, 5, True, 0),
])
def test_scaled_value_rounds_percentages(value: Any, total: int, up: bool, expected: int) -> None:
    assert scaled_value(value, total, up) == expected


@pytest.mark.parametrize("bad", ["abc", "3", "-5%", -1, True])
def test_scaled_value_rejects_non_int_or_percent(bad: Any) -> None:
    with pytest.raises(ValidationError) as err:
        scaled_value(bad, 4, True, "spec.strategy.rollingUpdate.maxSurge")
    assert str(err.value).startswith("spec.strategy.rollingUpdate.maxSurge: ")


@pytest.mark.parametrize("surge,unavailable,desired,expected", [
    ("25%", "25%", 4, (1, 1)),
    ("25%", "25%", 3, (1, 0)),      # surge rounds up, unavailable down
    (0, "10%", 5, (0, 1)),          # both resolve to 0: maxUnavailable becomes 1
    (0, 0, 3, (0, 1)),
    (2, "50%", 5, (2, 2)),
])
def test_resolve_fenceposts(surge: Any, unavailable: Any, desired: int, expected: tuple[int, int]) -> None:
    assert resolve_fenceposts(surge, unavailable, desired) == expected


def test_rollout_limits_per_strategy() -> None:
    rolling = {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1,
                                                                                     "maxUnavailable": 5}}}
    assert rollout_limits(rolling) == RolloutLimits(1, 2)  # unavailable capped at replicas
    assert rollout_limits(dict(rolling, replicas=0)) == RolloutLimits(1, 0)
    assert rollout_limits({"replicas": 4, "strategy": {"type": "Recreate"}}) == RolloutLimits(0, 0)
    assert rollout_limits({"replicas": 8}) == RolloutLimits(2, 2)  # 25%/25% by default


# -- pure: scale plans ----------------------------------------------------------------------------


def rsv(name: str, replicas: int, available: int | None = None, pods: int | None = None, created: int = 0,
        desired: int | None = None, max_replicas: int | None = None) -> ReplicaSetView:
    return ReplicaSetView(name=name, replicas=replicas, available=replicas if available is None else available,
                          pods=replicas if pods is None else pods, created=stamp(NOW + dt.timedelta(seconds=created)),
                          desired_annotation=desired, max_annotation=max_replicas)


@pytest.mark.parametrize("desired,limits,new,olds,expected", [
    # a fresh rollout starts by surging the new ReplicaSet
    (4, RolloutLimits(1, 1), rsv("new", 0), [rsv("old", 4)], [ScaleAction("new", 0, 1)]),
    # at the surge limit with the new pod not ready: old ones may still drop to replicas - maxUnavailable
    (4, RolloutLimits(1, 1), rsv("new", 1, 0), [rsv("old", 4)], [ScaleAction("old", 4, 3)]),
    # ... and then nothing more until new pods become available
    (4, RolloutLimits(1, 1), rsv("new", 2, 0), [rsv("old", 3)], []),
    # new pods available: old ones go down by what availability allows
    (4, RolloutLimits(1, 1), rsv("new", 2, 2), [rsv("old", 3)], [ScaleAction("old", 3, 1)]),
    # unavailable old pods are removed first, without touching available ones
    (3, RolloutLimits(0, 1), rsv("new", 0), [rsv("old", 3, 1)], [ScaleAction("old", 3, 2)]),
    # several old ReplicaSets: the oldest is scaled down first
    (4, RolloutLimits(0, 2), rsv("new", 0), [rsv("b", 2, created=5), rsv("a", 2, created=1)],
     [ScaleAction("a", 2, 0)]),
    # pods of a scaled-down ReplicaSet not yet removed still count against the surge
    (4, RolloutLimits(1, 1), rsv("new", 1, 0), [rsv("old", 3, 3, pods=4)], []),
    # a stale availability count above spec.replicas is not trusted
    (4, RolloutLimits(1, 1), rsv("new", 1, 1), [rsv("a", 1, 3, pods=3), rsv("b", 2, created=1)],
     [ScaleAction("a", 1, 0)]),
    # the new ReplicaSet is larger than wanted (spec.replicas lowered)
    (2, RolloutLimits(1, 1), rsv("new", 3), [], [ScaleAction("new", 3, 2)]),
    # done
    (4, RolloutLimits(1, 1), rsv("new", 4), [rsv("old", 0)], []),
])
def test_rolling_step_plan(desired: int, limits: RolloutLimits, new: ReplicaSetView, olds: list[ReplicaSetView],
                           expected: list[ScaleAction]) -> None:
    assert rolling_step(desired, limits, new, olds) == expected


def test_rolling_steps_never_break_the_bounds() -> None:
    """Simulate a whole rollout (every pod turns available between steps) and check each state."""
    for desired, surge, unavailable in [(4, 1, 1), (5, 2, 0), (3, 0, 1), (10, 3, 2), (1, 1, 0)]:
        limits = RolloutLimits(surge, unavailable)
        new, old = rsv("new", 0), rsv("old", desired)
        for _ in range(50):
            actions = rolling_step(desired, limits, new, [old])
            if not actions:
                new.available, old.available = new.replicas, old.replicas
                if not rolling_step(desired, limits, new, [old]):
                    break
                continue
            for action in actions:
                target = new if action.name == "new" else old
                target.replicas = target.pods = action.to_replicas
                target.available = min(target.available, target.replicas)
            assert new.replicas + old.replicas <= desired + surge
            assert new.available + old.available >= desired - unavailable
        assert (new.replicas, old.replicas) == (desired, 0), (desired, surge, unavailable)


def test_recreate_step_order() -> None:
    olds = [rsv("old", 3)]
    assert recreate_step(3, None, olds, False).actions == (ScaleAction("old", 3, 0),)
    gone = [rsv("old", 0, pods=0)]
    assert recreate_step(3, None, gone, True).waiting_for_old_pods  # terminating pods still there
    assert recreate_step(3, None, [rsv("old", 0, pods=2)], False).waiting_for_old_pods
    assert recreate_step(3, None, gone, False).create_new
    assert recreate_step(3, rsv("new", 0), gone, False).actions == (ScaleAction("new", 0, 3),)
    assert recreate_step(3, rsv("new", 3), gone, False) == recreate_step(3, rsv("new", 3), [], False)


@pytest.mark.parametrize("desired,new,olds,expected", [
    # no rollout in progress: the only active ReplicaSet takes the change
    (5, rsv("new", 3, desired=3, max_replicas=4), [rsv("old", 0)], [ScaleAction("new", 3, 5)]),
    # nothing active: the newest ReplicaSet does
    (2, rsv("new", 0), [rsv("old", 0)], [ScaleAction("new", 0, 2)]),
    # mid-rollout 10 -> 15 (surge 3): shares in proportion to the size each had at 13 pods
    (15, rsv("new", 5, 0, created=9, desired=10, max_replicas=13), [rsv("old", 8, desired=10, max_replicas=13)],
     [ScaleAction("old", 8, 11), ScaleAction("new", 5, 7)]),
    # and 10 -> 5
    (5, rsv("new", 5, 0, created=9, desired=10, max_replicas=13), [rsv("old", 8, desired=10, max_replicas=13)],
     [ScaleAction("old", 8, 5), ScaleAction("new", 5, 3)]),
    # a saturated new ReplicaSet: old ones go away
    (5, rsv("new", 5, 5, desired=5, max_replicas=8), [rsv("old", 2, desired=5)], [ScaleAction("old", 2, 0)]),
    # scaling to zero
    (0, rsv("new", 2, desired=4, max_replicas=7), [rsv("old", 3, desired=4, max_replicas=7)],
     [ScaleAction("old", 3, 0), ScaleAction("new", 2, 0)]),
])
def test_proportional_scale(desired: int, new: ReplicaSetView, olds: list[ReplicaSetView],
                            expected: list[ScaleAction]) -> None:
    assert proportional_scale(desired, Strategy.ROLLING_UPDATE, RolloutLimits(3, 2), 13, new, olds) == expected


def test_proportional_scale_refreshes_stale_annotations_only_when_needed() -> None:
    fresh = rsv("new", 3, desired=3, max_replicas=6)
    assert proportional_scale(3, Strategy.ROLLING_UPDATE, RolloutLimits(3, 0), 3, fresh, []) == []
    stale = rsv("new", 3, desired=2, max_replicas=5)
    assert proportional_scale(3, Strategy.ROLLING_UPDATE, RolloutLimits(3, 0), 3, stale, []) == [
        ScaleAction("new", 3, 3)]


# -- pure: templates, revisions, availability, status ----------------------------------------------


def test_templates_compare_without_the_hash_label() -> None:
    base: dict[str, Any] = {"metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "c", "image": "v1"}]}}
    hashed = copy.deepcopy(base)
    hashed["metadata"]["labels"][HASH_LABEL] = "abc"
    assert templates_equal_ignoring_hash(base, hashed)
    assert templates_equal_ignoring_hash(dict(base, metadata={"labels": {"app": "web"}, "creationTimestamp": None}),
                                         hashed)
    other = copy.deepcopy(base)
    other["spec"]["containers"][0]["image"] = "v2"
    assert not templates_equal_ignoring_hash(hashed, other)
    assert template_hash(base) != template_hash(base, 1)
    deploy = {"spec": {"template": base}}
    rss = [{"metadata": {"name": n, "creationTimestamp": t}, "spec": {"template": tpl}}
           for n, t, tpl in [("b", "2024-01-02T00:00:00Z", hashed), ("a", "2024-01-03T00:00:00Z", hashed),
                             ("c", "2024-01-01T00:00:00Z", other)]]
    assert meta.name_of(find_new_replicaset(deploy, rss) or {}) == "b"  # the oldest match


def test_replicaset_annotations_revisions_and_history() -> None:
    created, changed = replicaset_annotations({"team": "a", REVISION_ANNOTATION: "9"}, {}, 4, False, 3, 4)
    assert changed and created == {"team": "a", REVISION_ANNOTATION: "4", DESIRED_REPLICAS_ANNOTATION: "3",
                                   MAX_REPLICAS_ANNOTATION: "4"}
    same, changed = replicaset_annotations({"team": "a"}, created, 4, True, 3, 4)
    assert not changed and same == created
    # rollout undo: an old ReplicaSet becomes the newest revision and remembers its old numbers
    undone, changed = replicaset_annotations({}, {REVISION_ANNOTATION: "1"}, 3, True, 3, 4)
    assert changed and undone[REVISION_ANNOTATION] == "3" and undone[REVISION_HISTORY_ANNOTATION] == "1"
    again, _ = replicaset_annotations({}, undone, 5, True, 3, 4)
    assert again[REVISION_ANNOTATION] == "5" and again[REVISION_HISTORY_ANNOTATION] == "1,3"


def ready_pod(since: dt.datetime | None, ready: bool = True) -> dict:
    cond: dict[str, Any] = {"type": "Ready", "status": "True" if ready else "False"}
    if since is not None:
        cond["lastTransitionTime"] = stamp(since)
    return {"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": [cond]}}


def test_availability_honours_min_ready_seconds() -> None:
    young, old = ready_pod(NOW - dt.timedelta(seconds=3)), ready_pod(NOW - dt.timedelta(seconds=30))
    assert pod_is_available(young, 0, NOW) and pod_is_available(young, 2, NOW)
    assert not pod_is_available(young, 10, NOW) and pod_is_available(old, 10, NOW)
    assert not pod_is_available(ready_pod(None), 10, NOW)  # no transition time: cannot tell
    assert not pod_is_available(ready_pod(NOW - dt.timedelta(seconds=30), ready=False), 0, NOW)
    assert seconds_until_available([young, old], 10, NOW) == 7.0
    assert seconds_until_available([old], 10, NOW) is None
    rs = {"metadata": {"name": "rs"}, "spec": {"replicas": 2},
          "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}
    assert replicaset_view(rs, [young, old], 10, NOW).available == 1
    assert replicaset_view(rs, [young, old], 0, NOW).available == 2


def test_set_condition_keeps_times_unless_status_changes() -> None:
    status: dict[str, Any] = {}
    set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.RS_UPDATED, "a", NOW))
    later = NOW + dt.timedelta(minutes=1)
    set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.RS_UPDATED, "b", later))
    assert status["conditions"][0]["message"] == "a"  # same status and reason: untouched
    set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.NEW_RS_AVAILABLE, "c", later))
    cond = status["conditions"][0]
    assert (cond["lastTransitionTime"], cond["lastUpdateTime"]) == (stamp(NOW), stamp(later))
    set_condition(status, new_condition(ConditionType.PROGRESSING, "False", Reason.TIMED_OUT, "d", later))
    assert status["conditions"][0]["lastTransitionTime"] == stamp(later)


def deploy_obj(replicas: int = 3, generation: int = 2, status: dict | None = None, deadline: int = 600) -> dict:
    return {"metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": deadline,
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}},
            "status": status or {}}


def test_calculate_status_omits_zero_counts() -> None:
    deploy = deploy_obj(status={"collisionCount": 1})
    new = ReplicaSetView("web-new", replicas=1, available=0, pods=1, ready=0)
    old = ReplicaSetView("web-old", replicas=3, available=3, pods=3, ready=3)
    status = calculate_status(deploy, new, [new, old], RolloutLimits(1, 0), NOW)
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3,
        "unavailableReplicas": 1, "collisionCount": 1}
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Available", "True", "MinimumReplicasAvailable")]
    empty = calculate_status(deploy_obj(replicas=0), None, [], RolloutLimits(1, 0), NOW)
    assert set(empty) == {"observedGeneration", "conditions"}
    assert status_patch({"readyReplicas": 2, "replicas": 2}, {"replicas": 1}) == {"replicas": 1, "readyReplicas": None}
    assert compact_status({"replicas": 0, "conditions": [], "x": None, "collisionCount": 0}) == {"collisionCount": 0}


def test_rollout_status_progress_and_deadline() -> None:
    started = new_condition(ConditionType.PROGRESSING, "True", Reason.NEW_RS_CREATED, "x", NOW)
    before = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3,
              "conditions": [started]}
    deploy = deploy_obj(status=before, deadline=10)
    # progress: one more updated pod -> ReplicaSetUpdated with a fresh lastUpdateTime
    later = NOW + dt.timedelta(seconds=5)
    moved = rollout_status(deploy, dict(before, updatedReplicas=2, replicas=4), "web-new", None, later)
    cond = moved["conditions"][-1]
    assert (cond["reason"], cond["lastUpdateTime"], cond["lastTransitionTime"]) == (
        "ReplicaSetUpdated", stamp(later), stamp(NOW))
    assert cond["message"] == 'ReplicaSet "web-new" is progressing.'
    # no progress, within the deadline: unchanged; past it: ProgressDeadlineExceeded
    assert rollout_status(deploy, before, "web-new", None, later) == compact_status(before)
    assert not deployment_timed_out(10, before, later)
    late = NOW + dt.timedelta(seconds=11)
    timed_out = rollout_status(deploy, before, "web-new", None, late)["conditions"][-1]
    assert (timed_out["status"], timed_out["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert seconds_until_deadline_check(deploy, before, later) == pytest.approx(5.05)
    # complete -> NewReplicaSetAvailable
    done = dict(before, replicas=3, updatedReplicas=3)
    complete = rollout_status(deploy, done, "web-new", None, late)["conditions"][-1]
    assert (complete["reason"], complete["message"]) == ("NewReplicaSetAvailable",
                                                         'ReplicaSet "web-new" has successfully progressed.')
    # no deadline: no Progressing condition at all
    assert rollout_status(dict(deploy, spec=dict(deploy["spec"], progressDeadlineSeconds=None)), before, "web-new",
                          None, late).get("conditions", []) == []


# -- against the API server ---------------------------------------------------------------------------


@pytest.fixture
def ctl(api: ApiClient) -> Iterator[ApiClient]:
    controllers = [DeploymentController(api), ReplicaSetController(api)]
    for controller in controllers:
        controller.start()
    try:
        yield api
    finally:
        for controller in controllers:
            controller.stop()
        for controller in controllers:
            controller.join()


def deployment(replicas: int, image: str = "v1", **spec: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}, **spec}}


def rolling(surge: Any, unavailable: Any) -> dict:
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}


def set_image(api: ApiClient, image: str) -> None:
    api.patch(DEPLOYMENTS, "web", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}},
              NS)


def pods(api: ApiClient) -> list[dict]:
    return api.list(PODS, NS)["items"]


def live(items: list[dict]) -> list[dict]:
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def play_kubelet(api: ApiClient, limit: int = 1000, bind: bool = False) -> None:
    """Start up to ``limit`` pods (Running, Ready now), and finish graceful deletions, as kubelets would."""
    started = 0
    for pod in pods(api):
        name = pod["metadata"]["name"]
        with ignore_not_found():
            if pod["metadata"].get("deletionTimestamp"):
                api.delete(PODS, name, NS, grace_period=0)
                continue
            if meta.pod_is_ready(pod) or started >= limit:
                continue
            if bind and not pod["spec"].get("nodeName"):
                api.bind(NS, name, "node-a")
            api.patch(PODS, name, {"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": meta.now()}]}}, NS, subresource="status")
            started += 1


def progressing(deploy: dict) -> dict:
    return next((c for c in deploy.get("status", {}).get("conditions") or [] if c["type"] == "Progressing"), {})


def rolled_out(api: ApiClient) -> dict | None:
    """What `kubectl rollout status` waits for, plus the NewReplicaSetAvailable condition."""
    d = api.get(DEPLOYMENTS, "web", NS)
    st, want = d.get("status") or {}, d["spec"]["replicas"]
    if st.get("observedGeneration", 0) < d["metadata"]["generation"]:
        return None
    if st.get("updatedReplicas", 0) < want or st.get("replicas", 0) > st.get("updatedReplicas", 0) \
            or st.get("availableReplicas", 0) < st.get("updatedReplicas", 0):
        return None
    return d if progressing(d).get("reason") == "NewReplicaSetAvailable" else None


def settle(api: ApiClient, bind: bool = False) -> dict | None:
    """One kubelet pass, then the Deployment if it has rolled out."""
    play_kubelet(api, bind=bind)
    return rolled_out(api)


def replicasets(api: ApiClient) -> dict[str, dict]:
    """ReplicaSets by container image."""
    return {rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs for rs in api.list(REPLICASETS, NS)["items"]}


def scaling_events(api: ApiClient) -> list[str]:
    return [e["message"] for e in api.list(EVENTS, NS)["items"] if e["reason"] == "ScalingReplicaSet"
            and e["involvedObject"]["kind"] == "Deployment" and e["source"]["component"] == "deployment-controller"]


def roll_out_checking_bounds(api: ApiClient, replicas: int, surge: int, unavailable: int) -> int:
    """Start one pod at a time until rolled out; every sample respects the surge/unavailable bounds."""
    samples = 0

    def step() -> dict | None:
        nonlocal samples
        current = live(pods(api))
        assert len(current) <= replicas + surge, [p["metadata"]["name"] for p in current]
        assert sum(1 for p in current if meta.pod_is_ready(p)) >= replicas - unavailable
        samples += 1
        play_kubelet(api, limit=1)
        return rolled_out(api)
    wait_for(step)
    return samples


def test_rolling_update_stays_in_bounds_and_undo_reuses_the_old_replicaset(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(4, strategy=rolling(1, 1)), NS)
    wait_for(lambda: settle(api))
    v1 = replicasets(api)["v1"]
    assert v1["metadata"]["annotations"][REVISION_ANNOTATION] == "1"
    assert v1["metadata"]["labels"][HASH_LABEL] == v1["spec"]["selector"]["matchLabels"][HASH_LABEL]
    assert v1["metadata"]["annotations"][MAX_REPLICAS_ANNOTATION] == "5"

    set_image(api, "v2")
    assert roll_out_checking_bounds(api, 4, 1, 1) > 3
    rss = replicasets(api)
    v2 = rss["v2"]
    assert (v2["spec"]["replicas"], rss["v1"]["spec"]["replicas"]) == (4, 0)
    assert v2["metadata"]["annotations"][REVISION_ANNOTATION] == "2"
    assert api.get(DEPLOYMENTS, "web", NS)["metadata"]["annotations"][REVISION_ANNOTATION] == "2"
    name1, name2 = meta.name_of(v1), meta.name_of(v2)
    wait_for(lambda: {f"Scaled up replica set {name2} from 0 to 1", f"Scaled down replica set {name1} from 4 to 3"}
             <= set(scaling_events(api)))

    # kubectl rollout undo: copy revision 1's template, minus the hash label, into the Deployment
    # (kubectl sends the Go zero value of metadata.creationTimestamp as null)
    template = copy.deepcopy(rss["v1"]["spec"]["template"])
    del template["metadata"]["labels"][HASH_LABEL]
    template["metadata"]["creationTimestamp"] = None
    api.patch(DEPLOYMENTS, "web", [{"op": "replace", "path": "/spec/template", "value": template}], NS,
              patch_type="json")
    roll_out_checking_bounds(api, 4, 1, 1)
    rss = replicasets(api)
    assert len(rss) == 2 and meta.name_of(rss["v1"]) == name1  # reused, not re-created
    annotations = rss["v1"]["metadata"]["annotations"]
    assert (annotations[REVISION_ANNOTATION], annotations[REVISION_HISTORY_ANNOTATION]) == ("3", "1")
    assert (rss["v1"]["spec"]["replicas"], rss["v2"]["spec"]["replicas"]) == (4, 0)
    final = api.get(DEPLOYMENTS, "web", NS)
    assert final["metadata"]["annotations"][REVISION_ANNOTATION] == "3"
    assert {c["type"]: c["reason"] for c in final["status"]["conditions"]} == {
        "Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    assert "unavailableReplicas" not in final["status"]


def test_recreate_waits_for_old_pods_to_be_gone(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(3, strategy={"type": "Recreate"}), NS)
    wait_for(lambda: settle(api, bind=True))
    set_image(api, "v2")
    # old pods are deleted gracefully (they run on a node): they linger Terminating
    wait_for(lambda: replicasets(api)["v1"]["spec"]["replicas"] == 0 and len(pods(api)) == 3
             and not live(pods(api)))
    time.sleep(0.2)
    assert list(replicasets(api)) == ["v1"] and not live(pods(api))
    wait_for(lambda: settle(api, bind=True))  # kubelets finish the old pods
    rss = replicasets(api)
    assert (rss["v1"]["spec"]["replicas"], rss["v2"]["spec"]["replicas"]) == (0, 3)
    name1, name2 = meta.name_of(rss["v1"]), meta.name_of(rss["v2"])
    wait_for(lambda: {f"Scaled down replica set {name1} from 3 to 0", f"Scaled up replica set {name2} from 0 to 3"}
             <= set(scaling_events(api)))


def test_paused_deployment_scales_but_does_not_roll_out(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(2), NS)
    wait_for(lambda: settle(api))
    api.patch(DEPLOYMENTS, "web", {"spec": {"paused": True}}, NS)
    cond = wait_for(lambda: progressing(api.get(DEPLOYMENTS, "web", NS)).get("reason") == "DeploymentPaused"
                    and progressing(api.get(DEPLOYMENTS, "web", NS)))
    assert cond["status"] == "Unknown"
    set_image(api, "v2")
    generation = api.get(DEPLOYMENTS, "web", NS)["metadata"]["generation"]
    wait_for(lambda: api.get(DEPLOYMENTS, "web", NS)["status"].get("observedGeneration") == generation)
    assert list(replicasets(api)) == ["v1"]
    api.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 3}}, NS, subresource="scale")
    v1 = wait_for(lambda: replicasets(api)["v1"]["spec"]["replicas"] == 3 and replicasets(api)["v1"])
    assert v1["metadata"]["annotations"][DESIRED_REPLICAS_ANNOTATION] == "3"
    assert list(replicasets(api)) == ["v1"]
    api.patch(DEPLOYMENTS, "web", {"spec": {"paused": False}}, NS)
    wait_for(lambda: settle(api))
    rss = replicasets(api)
    assert (rss["v1"]["spec"]["replicas"], rss["v2"]["spec"]["replicas"]) == (0, 3)


def test_scaling_goes_to_the_active_replicaset_or_proportionally_mid_rollout(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(2, strategy=rolling(1, 0)), NS)
    wait_for(lambda: settle(api))
    api.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 4}}, NS, subresource="scale")
    wait_for(lambda: settle(api))
    v1 = replicasets(api)["v1"]
    assert v1["spec"]["replicas"] == 4 and v1["metadata"]["annotations"][MAX_REPLICAS_ANNOTATION] == "5"
    wait_for(lambda: f"Scaled up replica set {meta.name_of(v1)} from 2 to 4" in scaling_events(api))
    # a rollout whose new pods never become ready is stuck at one surge pod ...
    set_image(api, "v2")
    wait_for(lambda: "v2" in replicasets(api) and replicasets(api)["v2"]["status"].get("replicas") == 1)
    # ... and scaling to 8 (max 9 pods) shares the extra pods by size: 4 of 5 -> 7 of 9, 1 of 5 -> 2 of 9
    api.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 8}}, NS, subresource="scale")
    wait_for(lambda: {k: rs["spec"]["replicas"] for k, rs in replicasets(api).items()} == {"v1": 7, "v2": 2})
    assert len(live(pods(api))) <= 9


def test_revision_history_limit_prunes_the_oldest_idle_replicasets(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(1, revisionHistoryLimit=1), NS)
    wait_for(lambda: settle(api))
    for image in ("v2", "v3"):
        set_image(api, image)
        wait_for(lambda: settle(api))
    rss = wait_for(lambda: len(replicasets(api)) == 2 and replicasets(api))
    assert set(rss) == {"v2", "v3"}
    assert rss["v3"]["metadata"]["annotations"][REVISION_ANNOTATION] == "3"


def test_progress_deadline_exceeded(ctl: ApiClient) -> None:
    api = ctl
    api.create(DEPLOYMENTS, deployment(1, progressDeadlineSeconds=1), NS)
    d = wait_for(lambda: progressing(api.get(DEPLOYMENTS, "web", NS)).get("reason") == "ProgressDeadlineExceeded"
                 and api.get(DEPLOYMENTS, "web", NS), timeout=5)
    rs_name = meta.name_of(api.list(REPLICASETS, NS)["items"][0])
    cond = progressing(d)
    assert (cond["status"], cond["message"]) == ("False", f'ReplicaSet "{rs_name}" has timed out progressing.')
    available = next(c for c in d["status"]["conditions"] if c["type"] == "Available")
    assert (available["status"], available["reason"]) == ("False", "MinimumReplicasUnavailable")
    assert d["status"]["unavailableReplicas"] == 1 and "availableReplicas" not in d["status"]


def test_hash_collision_bumps_collision_count(ctl: ApiClient) -> None:
    api = ctl
    stored = api.create(DEPLOYMENTS, deployment(1), NS, dry_run=True)["spec"]["template"]
    squatter_name = f"web-{template_hash(stored)}"
    api.create(REPLICASETS, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": squatter_name},
                             "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "other"}},
                                      "template": {"metadata": {"labels": {"app": "other"}},
                                                   "spec": {"containers": [{"name": "c", "image": "x"}]}}}}, NS)
    api.create(DEPLOYMENTS, deployment(1), NS)
    d = wait_for(lambda: settle(api))
    assert d["status"]["collisionCount"] == 1
    owned = [rs for rs in api.list(REPLICASETS, NS)["items"] if meta.is_controlled_by(rs, d)]
    assert [meta.name_of(rs) for rs in owned] == [f"web-{template_hash(stored, 1)}"]
    assert meta.controller_of(api.get(REPLICASETS, squatter_name, NS)) is None


# -- stale caches: sync driven by hand ------------------------------------------------------------------


@pytest.fixture
def manual(api: ApiClient) -> Iterator[DeploymentController]:
    """A DeploymentController with running informers but no worker: tests call sync() themselves."""
    controller = DeploymentController(api)
    controller.setup()
    for informer in controller.informers:
        informer.start()
    assert controller.wait_synced(5)
    try:
        yield controller
    finally:
        controller.stop()
        controller.join()


def caught_up(controller: DeploymentController, api: ApiClient) -> None:
    live_rv = api.get(DEPLOYMENTS, "web", NS)["metadata"]["resourceVersion"]
    wait_for(lambda: (controller.deployments.get(f"{NS}/web") or {}).get("metadata", {}).get(
        "resourceVersion") == live_rv)


def test_stale_replicaset_cache_neither_duplicates_nor_overwrites(manual: DeploymentController, api: ApiClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    api.create(DEPLOYMENTS, deployment(2), NS)
    caught_up(manual, api)
    manual.sync(f"{NS}/web")
    [rs] = api.list(REPLICASETS, NS)["items"]
    caught_up(manual, api)
    # the cache has not seen the ReplicaSet: the create is refused (409) and the existing one is used
    monkeypatch.setattr(manual.replicasets, "list", lambda: [])
    manual.sync(f"{NS}/web")
    assert [meta.name_of(r) for r in api.list(REPLICASETS, NS)["items"]] == [meta.name_of(rs)]
    assert "collisionCount" not in api.get(DEPLOYMENTS, "web", NS)["status"]
    # a ReplicaSet version older than the stored one: the scale is refused (409, retried by the worker) ...
    api.patch(REPLICASETS, meta.name_of(rs), {"metadata": {"labels": {"touched": "yes"}}}, NS)
    monkeypatch.setattr(manual.replicasets, "list", lambda: [rs])
    api.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 5}}, NS)
    caught_up(manual, api)
    with pytest.raises(ApiError) as err:
        manual.sync(f"{NS}/web")
    assert err.value.code == 409
    assert api.get(REPLICASETS, meta.name_of(rs), NS)["spec"]["replicas"] == 2
    # ... and applied once the cache is current
    monkeypatch.undo()
    wait_for(lambda: (manual.replicasets.get(f"{NS}/{meta.name_of(rs)}") or {}).get("metadata", {}).get(
        "labels", {}).get("touched"))
    caught_up(manual, api)
    manual.sync(f"{NS}/web")
    assert api.get(REPLICASETS, meta.name_of(rs), NS)["spec"]["replicas"] == 5


def test_orphan_replicaset_is_adopted(manual: DeploymentController, api: ApiClient) -> None:
    d = api.create(DEPLOYMENTS, deployment(1), NS, dry_run=True)
    pod_hash = template_hash(d["spec"]["template"])
    template = copy.deepcopy(d["spec"]["template"])
    template["metadata"]["labels"][HASH_LABEL] = pod_hash
    orphan = api.create(REPLICASETS, {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                      "metadata": {"name": f"web-{pod_hash}", "labels": template["metadata"]["labels"]},
                                      "spec": {"replicas": 1, "template": template,
                                               "selector": {"matchLabels": template["metadata"]["labels"]}}}, NS)
    created = api.create(DEPLOYMENTS, deployment(1), NS)
    wait_for(lambda: manual.replicasets.get(f"{NS}/{meta.name_of(orphan)}"))
    caught_up(manual, api)
    manual.sync(f"{NS}/web")
    rs = api.get(REPLICASETS, meta.name_of(orphan), NS)
    assert meta.is_controlled_by(rs, created) and len(api.list(REPLICASETS, NS)["items"]) == 1
    assert api.get(DEPLOYMENTS, "web", NS)["metadata"]["annotations"][REVISION_ANNOTATION] == "1"
