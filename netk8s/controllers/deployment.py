"""Deployment controller: ReplicaSets per pod template, rolling and Recreate rollouts, rollout status.

Behaviour follows kube-controller-manager's deployment controller:

- Each pod template gets one ReplicaSet ``<deployment>-<pod-template-hash>`` whose labels,
  selector and pod template carry the ``pod-template-hash`` label, owned by the Deployment
  and annotated with its revision and the desired/max replica counts it was sized for. A
  hash clash with a foreign ReplicaSet bumps ``status.collisionCount`` and rehashes.
- The "new" ReplicaSet is the one whose template equals the Deployment's (ignoring the
  hash label), so ``kubectl rollout undo`` (which copies an old template back) reuses the
  old ReplicaSet, giving it the next revision and remembering the old number in
  ``deployment.kubernetes.io/revision-history``.
- RollingUpdate scales the new ReplicaSet up within ``replicas + maxSurge`` pods and old
  ones down without dropping below ``replicas - maxUnavailable`` available pods, one step
  per sync; Recreate scales old ReplicaSets to zero, waits for their pods to be gone, then
  scales the new one up. Replica changes are spread proportionally over active
  ReplicaSets; a paused Deployment only scales. Old idle ReplicaSets beyond
  ``revisionHistoryLimit`` are deleted.
- Status carries what ``kubectl rollout status`` reads: counts (zeros omitted, as Go's
  ``omitempty``), ``observedGeneration``, ``collisionCount`` and the Available /
  Progressing (/ ReplicaFailure) conditions, including ``ProgressDeadlineExceeded``.

The arithmetic (surge/unavailable resolution, per-step scale plans, proportional scaling,
status and condition calculation, revision annotations) is pure and lives in module
functions; ``DeploymentController`` only reads informer caches and writes through the API.
Every write carries the resourceVersion it was computed from, so a decision made on a
stale cache fails with 409 and is retried on fresh data instead of being applied.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

from netk8s.api import meta
from netk8s.api.resources import DEPLOYMENTS, PODS, REPLICASETS
from netk8s.api.selectors import LabelSelector
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, WARNING, EventRecorder
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.errors import ApiError, ValidationError

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
REVISION_HISTORY_ANNOTATION = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS_ANNOTATION = "deployment.kubernetes.io/max-replicas"
ROLLBACK_TO_ANNOTATION = "deprecated.deployment.rollback.to"
LAST_APPLIED_ANNOTATION = meta.LAST_APPLIED_ANNOTATION
# Deployment annotations that are not copied onto its ReplicaSets.
_SKIP_COPY = frozenset({LAST_APPLIED_ANNOTATION, REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION,
                        DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, ROLLBACK_TO_ANNOTATION})
# The revision-history annotation is kept under this many characters (oldest entries dropped).
MAX_REVISION_HISTORY_CHARS = 2000
# progressDeadlineSeconds of MaxInt32 means "no deadline", as in Kubernetes.
_NO_DEADLINE = 2**31 - 1
_TERMINAL_PHASES = ("Succeeded", "Failed")


class Strategy(str, Enum):
    ROLLING_UPDATE = "RollingUpdate"
    RECREATE = "Recreate"


class ConditionType(str, Enum):
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    REPLICA_FAILURE = "ReplicaFailure"


class Reason(str, Enum):
    """Condition reasons, spelled as kube-controller-manager spells them (kubectl matches on them)."""

    MIN_AVAILABLE = "MinimumReplicasAvailable"
    MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
    NEW_RS_CREATED = "NewReplicaSetCreated"
    FOUND_NEW_RS = "FoundNewReplicaSet"
    RS_UPDATED = "ReplicaSetUpdated"
    NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
    TIMED_OUT = "ProgressDeadlineExceeded"
    PAUSED = "DeploymentPaused"
    RESUMED = "DeploymentResumed"
    FAILED_RS_CREATE = "ReplicaSetCreateError"


# -- pod-template-hash ---------------------------------------------------------------------


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: dict, collision_count: int = 0) -> str:
    """Kubernetes-style pod-template-hash: FNV-32a of the template, digits mapped to a safe alphabet."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return "".join(meta.SUFFIX_ALPHABET[int(d)] for d in str(fnv32a(data)))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _without_hash(template: dict) -> dict:
    # Nulls are dropped: kubectl sends Go's zero values as null (``metadata.creationTimestamp: null``
    # in ``rollout undo``'s template), which Kubernetes' typed comparison treats as absent.
    out = _drop_nulls(template or {})
    md = out.get("metadata")
    if isinstance(md, dict):
        labels = dict(md.get("labels") or {})
        labels.pop(HASH_LABEL, None)
        if labels:
            md["labels"] = labels
        else:
            md.pop("labels", None)
        if not md:
            out.pop("metadata")
    return out


def templates_equal_ignoring_hash(a: dict, b: dict) -> bool:
    """Whether two pod templates are the same once the ``pod-template-hash`` label is dropped."""
    return _without_hash(a) == _without_hash(b)


# -- surge / unavailable -------------------------------------------------------------------


def scaled_value(value: int | str | None, total: int, round_up: bool, path: str = "") -> int:
    """Resolve an int-or-percent (``3`` or ``"25%"``) against ``total``, rounding a percentage up or down."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValidationError(path, f"invalid value {value!r}: must be an integer or a percentage")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(path, f"invalid value {value}: must be greater than or equal to 0")
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        scaled = int(value[:-1]) * total
        return -(-scaled // 100) if round_up else scaled // 100
    raise ValidationError(path, f"invalid value {value!r}: must be an integer or a percentage (e.g. '25%')")


def resolve_fenceposts(max_surge: int | str | None, max_unavailable: int | str | None,
                       desired: int) -> tuple[int, int]:
    """(surge, unavailable) for ``desired`` replicas; surge rounds up, unavailable down; never both 0."""
    base = "spec.strategy.rollingUpdate"
    surge = scaled_value(max_surge, desired, True, f"{base}.maxSurge")
    unavailable = scaled_value(max_unavailable, desired, False, f"{base}.maxUnavailable")
    if surge == 0 and unavailable == 0:
        # Rounding can make both zero; Kubernetes then allows one unavailable pod (surge may hit quota).
        unavailable = 1
    return surge, unavailable


@dataclass(frozen=True)
class RolloutLimits:
    """How far a rollout may go above (surge) and below (unavailable) ``spec.replicas``."""

    max_surge: int
    max_unavailable: int


def strategy_of(spec: dict) -> Strategy:
    kind = (spec.get("strategy") or {}).get("type") or Strategy.ROLLING_UPDATE.value
    return Strategy.RECREATE if kind == Strategy.RECREATE.value else Strategy.ROLLING_UPDATE


def replicas_of(spec: dict) -> int:
    return int(spec.get("replicas", 1) or 0)


def rollout_limits(spec: dict) -> RolloutLimits:
    """MaxSurge/MaxUnavailable of a Deployment spec (zero for Recreate; unavailable capped at replicas)."""
    if strategy_of(spec) is not Strategy.ROLLING_UPDATE:
        return RolloutLimits(0, 0)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    desired = replicas_of(spec)
    surge, unavailable = resolve_fenceposts(rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%"),
                                            desired)
    return RolloutLimits(surge, 0 if desired == 0 else min(unavailable, desired))


# -- ReplicaSet views and scale plans -------------------------------------------------------


@dataclass
class ReplicaSetView:
    """What the scaling arithmetic needs to know about one ReplicaSet."""

    name: str
    replicas: int                    # spec.replicas
    available: int = 0               # available pods (minReadySeconds honoured)
    pods: int = 0                    # status.replicas: pods the ReplicaSet controller counts
    ready: int = 0                   # status.readyReplicas
    created: str = ""                # creationTimestamp (RFC 3339 sorts as text)
    revision: int = 0
    desired_annotation: int | None = None
    max_annotation: int | None = None

    @property
    def usable(self) -> int:
        """Available pods that will survive: pods above spec.replicas are about to be deleted."""
        return min(self.available, self.replicas)


@dataclass(frozen=True)
class ScaleAction:
    """Set ReplicaSet ``name`` from ``from_replicas`` to ``to_replicas`` (equal: refresh annotations only)."""

    name: str
    from_replicas: int
    to_replicas: int


def _by_creation(rs: ReplicaSetView) -> tuple[str, str]:
    return rs.created, rs.name


def rolling_new_replicas(desired: int, limits: RolloutLimits, new: ReplicaSetView,
                         olds: Iterable[ReplicaSetView]) -> int:
    """Size the new ReplicaSet may grow to now: total pods stay within ``desired + maxSurge``.

    Pods are counted as ``max(spec.replicas, status.replicas)`` per ReplicaSet, so pods of a
    scaled-down ReplicaSet that its controller has not removed yet still count.
    """
    current = sum(max(rs.replicas, rs.pods) for rs in [new, *olds])
    max_total = desired + limits.max_surge
    if current >= max_total:
        return new.replicas
    return new.replicas + max(min(max_total - current, desired - new.replicas), 0)


def rolling_step(desired: int, limits: RolloutLimits, new: ReplicaSetView,
                 olds: list[ReplicaSetView]) -> list[ScaleAction]:
    """The next RollingUpdate step: scale the new ReplicaSet up if allowed, else old ones down if allowed."""
    if new.replicas > desired:
        return [ScaleAction(new.name, new.replicas, desired)]
    if new.replicas < desired:
        target = rolling_new_replicas(desired, limits, new, olds)
        if target != new.replicas:
            return [ScaleAction(new.name, new.replicas, target)]
    active = sorted((rs for rs in olds if rs.replicas > 0), key=_by_creation)
    if not active:
        return []
    all_pods = new.replicas + sum(rs.replicas for rs in active)
    min_available = desired - limits.max_unavailable
    new_unavailable = new.replicas - new.usable
    max_scaled_down = all_pods - min_available - new_unavailable
    if max_scaled_down <= 0:
        return []
    sizes = {rs.name: rs.replicas for rs in active}
    # First drop old pods that are not available: that cannot lower availability.
    cleaned = 0
    for rs in active:
        if cleaned >= max_scaled_down:
            break
        unhealthy = rs.replicas - rs.usable
        if unhealthy <= 0:
            continue
        count = min(max_scaled_down - cleaned, unhealthy)
        sizes[rs.name] -= count
        cleaned += count
    # Then available old pods, oldest ReplicaSet first, keeping desired - maxUnavailable available.
    available = new.usable + sum(min(rs.usable, sizes[rs.name]) for rs in active)
    to_scale = max(available - min_available, 0)
    scaled = 0
    for rs in active:
        if scaled >= to_scale:
            break
        if sizes[rs.name] == 0:
            continue
        count = min(sizes[rs.name], to_scale - scaled)
        sizes[rs.name] -= count
        scaled += count
    return [ScaleAction(rs.name, rs.replicas, sizes[rs.name]) for rs in active if sizes[rs.name] != rs.replicas]


@dataclass(frozen=True)
class RecreateStep:
    """The next Recreate step: old ReplicaSets to scale down, or whether to create / size the new one."""

    actions: tuple[ScaleAction, ...] = ()
    create_new: bool = False
    waiting_for_old_pods: bool = False


def recreate_step(desired: int, new: ReplicaSetView | None, olds: list[ReplicaSetView],
                  old_pods_running: bool) -> RecreateStep:
    active = sorted((rs for rs in olds if rs.replicas > 0), key=_by_creation)
    if active:
        return RecreateStep(tuple(ScaleAction(rs.name, rs.replicas, 0) for rs in active))
    if old_pods_running or any(rs.pods > 0 for rs in olds):
        return RecreateStep(waiting_for_old_pods=True)
    if new is None:
        return RecreateStep(create_new=True)
    if new.replicas != desired:
        return RecreateStep((ScaleAction(new.name, new.replicas, desired),))
    return RecreateStep()


def _round(value: float) -> int:
    return int(value + 0.5) if value >= 0 else -int(-value + 0.5)


def _proportion(rs: ReplicaSetView, desired: int, max_surge: int, status_replicas: int,
                to_add: int, added: int) -> int:
    if rs.replicas == 0 or to_add == 0 or to_add == added:
        return 0
    if desired == 0:
        fraction = -rs.replicas
    else:
        before = rs.max_annotation or status_replicas
        if not before:
            return 0
        fraction = _round(rs.replicas * (desired + max_surge) / before) - rs.replicas
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _annotations_stale(rs: ReplicaSetView, desired: int, max_surge: int) -> bool:
    return rs.desired_annotation != desired or rs.max_annotation != desired + max_surge


def is_saturated(desired: int, rs: ReplicaSetView | None) -> bool:
    """The ReplicaSet runs the whole Deployment: sized, annotated and available at ``desired``."""
    return (rs is not None and rs.replicas == desired and rs.desired_annotation == desired
            and rs.available == desired)


def proportional_scale(desired: int, strategy: Strategy, limits: RolloutLimits, status_replicas: int,
                       new: ReplicaSetView | None, olds: list[ReplicaSetView]) -> list[ScaleAction]:
    """Spread a change of ``spec.replicas`` over the ReplicaSets (Kubernetes' ``scale``).

    One active ReplicaSet (or none: the newest) takes the whole count. Otherwise, when the
    new one is saturated, old ones go to zero; during a RollingUpdate the difference to
    ``desired + maxSurge`` is shared in proportion to each ReplicaSet's size at the last
    scale (its max-replicas annotation), remainders to the largest.
    """
    if new is None and not olds:
        return []
    newest_first = sorted(olds, key=_by_creation, reverse=True)
    actives = [rs for rs in [*newest_first, new] if rs is not None and rs.replicas > 0]
    target: ReplicaSetView | None = None
    if not actives:
        target = new if new is not None else newest_first[0]
    elif len(actives) == 1:
        target = actives[0]
    if target is not None:
        if target.replicas == desired and not _annotations_stale(target, desired, limits.max_surge):
            return []
        return [ScaleAction(target.name, target.replicas, desired)]
    if is_saturated(desired, new):
        return [ScaleAction(rs.name, rs.replicas, 0) for rs in olds if rs.replicas > 0]
    if strategy is not Strategy.ROLLING_UPDATE:
        return []
    total = sum(rs.replicas for rs in actives)
    allowed = desired + limits.max_surge if desired > 0 else 0
    to_add = allowed - total
    if to_add > 0:  # bigger first; among equals the newer grows first
        actives.sort(key=lambda rs: (rs.created, rs.name), reverse=True)
        actives.sort(key=lambda rs: rs.replicas, reverse=True)
    elif to_add < 0:  # bigger first; among equals the older shrinks first
        actives.sort(key=_by_creation)
        actives.sort(key=lambda rs: rs.replicas, reverse=True)
    sizes: dict[str, int] = {}
    added = 0
    for rs in actives:
        share = _proportion(rs, desired, limits.max_surge, status_replicas, to_add, added)
        sizes[rs.name] = rs.replicas + share
        added += share
    if to_add and actives:
        first = actives[0].name
        sizes[first] = max(sizes[first] + to_add - added, 0)
    return [ScaleAction(rs.name, rs.replicas, sizes[rs.name]) for rs in actives]


# -- revisions and annotations ---------------------------------------------------------------


def revision_of(obj: dict) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def max_revision(replicasets: Iterable[dict]) -> int:
    return max((revision_of(rs) for rs in replicasets), default=0)


def _int_annotation(obj: dict, key: str) -> int | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def replicaset_annotations(deploy_annotations: dict[str, str], rs_annotations: dict[str, str], new_revision: int,
                           exists: bool, desired: int, max_replicas: int) -> tuple[dict[str, str], bool]:
    """Annotations for the new ReplicaSet and whether they changed (Kubernetes' SetNewReplicaSetAnnotations).

    Copies the Deployment's own annotations, raises the revision to ``new_revision`` when
    it is lower (remembering the old number in the revision history, as after an undo),
    and stamps desired/max replicas on a ReplicaSet about to be created.
    """
    out = dict(rs_annotations)
    changed = False
    for key, value in deploy_annotations.items():
        if key in _SKIP_COPY or out.get(key) == value:
            continue
        out[key] = value
        changed = True
    old = out.get(REVISION_ANNOTATION)
    try:
        old_revision = int(old) if old else 0
    except ValueError:
        log.info("replica set revision %r is not a number; leaving it", old)
        return out, changed
    if old_revision < new_revision:
        out[REVISION_ANNOTATION] = str(new_revision)
        changed = True
        if old is not None:
            out[REVISION_HISTORY_ANNOTATION] = _append_history(out.get(REVISION_HISTORY_ANNOTATION, ""), old)
    if not exists:
        out[DESIRED_REPLICAS_ANNOTATION] = str(desired)
        out[MAX_REPLICAS_ANNOTATION] = str(max_replicas)
        changed = True
    return out, changed


def _append_history(history: str, revision: str) -> str:
    if not history:
        return revision
    parts = history.split(",")
    total = len(history) + len(revision) + 1
    start = 0
    while total > MAX_REVISION_HISTORY_CHARS and start < len(parts):
        total -= len(parts[start]) + 1
        start += 1
    if total > MAX_REVISION_HISTORY_CHARS:
        return history
    return ",".join(parts[start:] + [revision])


def new_replicaset(deploy: dict, pod_hash: str, replicas: int, annotations: dict[str, str]) -> dict:
    """The ReplicaSet object for the Deployment's current template (not yet created)."""
    spec = deploy.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = dict(tmeta.get("labels") or {}, **{HASH_LABEL: pod_hash})
    selector = copy.deepcopy(spec.get("selector") or {})
    selector["matchLabels"] = dict(selector.get("matchLabels") or {}, **{HASH_LABEL: pod_hash})
    rs_spec: dict[str, Any] = {"replicas": replicas, "selector": selector, "template": template}
    if spec.get("minReadySeconds"):
        rs_spec["minReadySeconds"] = spec["minReadySeconds"]
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta.name_of(deploy)}-{pod_hash}", "namespace": meta.namespace_of(deploy),
            "labels": dict(tmeta["labels"]), "annotations": annotations,
            "ownerReferences": [meta.owner_reference(deploy)],
        },
        "spec": rs_spec,
    }


# -- availability ----------------------------------------------------------------------------


def _ready_since(pod: dict) -> _dt.datetime | None:
    cond = meta.get_condition(pod, "Ready")
    if cond is None or cond.get("status") != "True":
        return None
    return meta.parse_time(cond.get("lastTransitionTime"))


def pod_is_available(pod: dict, min_ready_seconds: int, now: _dt.datetime) -> bool:
    """Ready, and (with minReadySeconds) Ready for longer than that, by the Ready condition's transition time."""
    if not meta.pod_is_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = _ready_since(pod)
    return since is not None and since + _dt.timedelta(seconds=min_ready_seconds) < now


def seconds_until_available(pods: Iterable[dict], min_ready_seconds: int, now: _dt.datetime) -> float | None:
    """How long until the next Ready pod passes minReadySeconds (None: none is waiting)."""
    if min_ready_seconds <= 0:
        return None
    waits = []
    for pod in pods:
        since = _ready_since(pod)
        if since is None:
            continue
        left = (since + _dt.timedelta(seconds=min_ready_seconds) - now).total_seconds()
        if left >= 0:
            waits.append(left)
    return min(waits) if waits else None


def replicaset_view(rs: dict, pods: list[dict], min_ready_seconds: int, now: _dt.datetime) -> ReplicaSetView:
    """A ReplicaSet as the planner sees it; with minReadySeconds, availability is checked on its pods too."""
    status = rs.get("status") or {}
    available = int(status.get("availableReplicas", 0) or 0)
    if min_ready_seconds > 0:
        available = min(available, sum(1 for p in pods if pod_is_available(p, min_ready_seconds, now)))
    return ReplicaSetView(
        name=meta.name_of(rs), replicas=int((rs.get("spec") or {}).get("replicas", 1) or 0), available=available,
        pods=int(status.get("replicas", 0) or 0), ready=int(status.get("readyReplicas", 0) or 0),
        created=(rs.get("metadata") or {}).get("creationTimestamp") or "", revision=revision_of(rs),
        desired_annotation=_int_annotation(rs, DESIRED_REPLICAS_ANNOTATION),
        max_annotation=_int_annotation(rs, MAX_REPLICAS_ANNOTATION))


# -- status and conditions -------------------------------------------------------------------


def find_condition(status: dict, cond_type: ConditionType) -> dict | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == cond_type.value:
            return cond
    return None


def new_condition(cond_type: ConditionType, status: str, reason: Reason | str, message: str,
                  now: _dt.datetime) -> dict:
    stamp = meta.format_time(now)
    return {"type": cond_type.value, "status": status, "lastUpdateTime": stamp, "lastTransitionTime": stamp,
            "reason": reason.value if isinstance(reason, Reason) else reason, "message": message}


def set_condition(status: dict, condition: dict) -> None:
    """Kubernetes' SetDeploymentCondition: same status and reason is a no-op; same status keeps the transition time."""
    current = next((c for c in status.get("conditions") or [] if c.get("type") == condition["type"]), None)
    if current is not None and current.get("status") == condition["status"] \
            and current.get("reason") == condition.get("reason"):
        return
    condition = dict(condition)
    if current is not None and current.get("status") == condition["status"] and current.get("lastTransitionTime"):
        condition["lastTransitionTime"] = current["lastTransitionTime"]
    status["conditions"] = [c for c in status.get("conditions") or []
                            if c.get("type") != condition["type"]] + [condition]


def remove_condition(status: dict, cond_type: ConditionType) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != cond_type.value]


def compact_status(status: dict) -> dict:
    """Drop what Go's ``omitempty`` drops: zero counts, empty lists, nulls."""
    return {k: v for k, v in status.items() if v is not None and v != [] and not (isinstance(v, int) and v == 0
                                                                                 and k != "collisionCount")}


def status_patch(old: dict, new: dict) -> dict:
    """A merge patch turning status ``old`` into ``new`` (removed fields become None)."""
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def progress_deadline(spec: dict) -> int | None:
    value = spec.get("progressDeadlineSeconds")
    if value is None or int(value) == _NO_DEADLINE:
        return None
    return int(value)


def calculate_status(deploy: dict, new: ReplicaSetView | None, all_rs: list[ReplicaSetView],
                     limits: RolloutLimits, now: _dt.datetime) -> dict:
    """Counts, observedGeneration and the Available condition (conditions otherwise carried over)."""
    spec, old_status = deploy.get("spec") or {}, deploy.get("status") or {}
    desired = replicas_of(spec)
    available = sum(rs.available for rs in all_rs)
    status: dict[str, Any] = {
        "observedGeneration": int((deploy.get("metadata") or {}).get("generation") or 0),
        "replicas": sum(rs.pods for rs in all_rs),
        "updatedReplicas": new.pods if new is not None else 0,
        "readyReplicas": sum(rs.ready for rs in all_rs),
        "availableReplicas": available,
        "unavailableReplicas": max(sum(rs.replicas for rs in all_rs) - available, 0),
        "conditions": copy.deepcopy(old_status.get("conditions") or []),
    }
    if old_status.get("collisionCount") is not None:
        status["collisionCount"] = old_status["collisionCount"]
    if available >= desired - limits.max_unavailable:
        set_condition(status, new_condition(ConditionType.AVAILABLE, "True", Reason.MIN_AVAILABLE,
                                            "Deployment has minimum availability.", now))
    else:
        set_condition(status, new_condition(ConditionType.AVAILABLE, "False", Reason.MIN_UNAVAILABLE,
                                            "Deployment does not have minimum availability.", now))
    return compact_status(status)


def _count(status: dict, key: str) -> int:
    return int(status.get(key, 0) or 0)


def deployment_complete(deploy: dict, status: dict) -> bool:
    """All replicas updated and available, no old ones left, and the latest spec observed."""
    desired = replicas_of(deploy.get("spec") or {})
    return (_count(status, "updatedReplicas") == desired and _count(status, "replicas") == desired
            and _count(status, "availableReplicas") == desired
            and _count(status, "observedGeneration") >= int((deploy.get("metadata") or {}).get("generation") or 0))


def deployment_progressing(old: dict, new: dict) -> bool:
    """More updated, ready or available pods, or fewer old ones, than last time."""
    old_olds = _count(old, "replicas") - _count(old, "updatedReplicas")
    new_olds = _count(new, "replicas") - _count(new, "updatedReplicas")
    return (_count(new, "updatedReplicas") > _count(old, "updatedReplicas") or new_olds < old_olds
            or _count(new, "readyReplicas") > _count(old, "readyReplicas")
            or _count(new, "availableReplicas") > _count(old, "availableReplicas"))


def deployment_timed_out(deadline: int | None, status: dict, now: _dt.datetime) -> bool:
    """No progress recorded for longer than the deadline (by the Progressing condition's lastUpdateTime)."""
    if deadline is None:
        return False
    cond = find_condition(status, ConditionType.PROGRESSING)
    if cond is None or cond.get("reason") == Reason.NEW_RS_AVAILABLE.value:
        return False
    if cond.get("reason") == Reason.TIMED_OUT.value:
        return True
    since = meta.parse_time(cond.get("lastUpdateTime"))
    return since is not None and since + _dt.timedelta(seconds=deadline) < now


def rollout_status(deploy: dict, computed: dict, new_rs_name: str | None, replica_failure: dict | None,
                   now: _dt.datetime) -> dict:
    """Add the Progressing (and ReplicaFailure) conditions to ``computed`` (Kubernetes' syncRolloutStatus)."""
    status = copy.deepcopy(computed)
    old = deploy.get("status") or {}
    deadline = progress_deadline(deploy.get("spec") or {})
    if deadline is None:
        remove_condition(status, ConditionType.PROGRESSING)
    current = find_condition(old, ConditionType.PROGRESSING)
    complete_before = (_count(status, "replicas") == _count(status, "updatedReplicas") and current is not None
                       and current.get("reason") == Reason.NEW_RS_AVAILABLE.value)
    subject = f'ReplicaSet "{new_rs_name}"' if new_rs_name else f'Deployment "{meta.name_of(deploy)}"'
    if deadline is not None and not complete_before:
        if deployment_complete(deploy, status):
            set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.NEW_RS_AVAILABLE,
                                                f"{subject} has successfully progressed.", now))
        elif deployment_progressing(old, status):
            cond = new_condition(ConditionType.PROGRESSING, "True", Reason.RS_UPDATED, f"{subject} is progressing.",
                                 now)
            if current is not None:
                if current.get("status") == "True" and current.get("lastTransitionTime"):
                    cond["lastTransitionTime"] = current["lastTransitionTime"]
                remove_condition(status, ConditionType.PROGRESSING)
            set_condition(status, cond)
        elif deployment_timed_out(deadline, status, now):
            set_condition(status, new_condition(ConditionType.PROGRESSING, "False", Reason.TIMED_OUT,
                                                f"{subject} has timed out progressing.", now))
    if replica_failure is not None:
        set_condition(status, replica_failure)
    else:
        remove_condition(status, ConditionType.REPLICA_FAILURE)
    return compact_status(status)


def seconds_until_deadline_check(deploy: dict, new_status: dict, now: _dt.datetime) -> float | None:
    """When to look again for a timed-out rollout (None: no need)."""
    deadline = progress_deadline(deploy.get("spec") or {})
    current = find_condition(deploy.get("status") or {}, ConditionType.PROGRESSING)
    if deadline is None or current is None:
        return None
    if deployment_complete(deploy, new_status) or current.get("reason") == Reason.TIMED_OUT.value:
        return None
    since = meta.parse_time(current.get("lastUpdateTime"))
    if since is None:
        return None
    # Timestamps have second precision: looking just after the deadline is enough.
    return max((since + _dt.timedelta(seconds=deadline) - now).total_seconds(), 0.0) + 0.05


def replica_failure_condition(new_rs: dict | None, all_rs: list[dict]) -> dict | None:
    """A ReplicaSet's ReplicaFailure condition, as a Deployment condition (the new ReplicaSet's first)."""
    for rs in ([new_rs] if new_rs is not None else []) + all_rs:
        for cond in (rs.get("status") or {}).get("conditions") or []:
            if cond.get("type") == ConditionType.REPLICA_FAILURE.value:
                return {"type": cond["type"], "status": cond.get("status", "True"),
                        "lastUpdateTime": cond.get("lastTransitionTime", ""),
                        "lastTransitionTime": cond.get("lastTransitionTime", ""),
                        "reason": cond.get("reason", ""), "message": cond.get("message", "")}
    return None


def find_new_replicaset(deploy: dict, replicasets: list[dict]) -> dict | None:
    """The oldest ReplicaSet whose template is the Deployment's (ignoring the hash label)."""
    template = (deploy.get("spec") or {}).get("template") or {}
    ordered = sorted(replicasets, key=lambda rs: ((rs.get("metadata") or {}).get("creationTimestamp") or "",
                                                  meta.name_of(rs)))
    for rs in ordered:
        if templates_equal_ignoring_hash((rs.get("spec") or {}).get("template") or {}, template):
            return rs
    return None


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class _Requeue(Exception):
    """Stop this sync quietly; the Deployment is already queued again."""


# -- controller ------------------------------------------------------------------------------


class DeploymentController(Controller):
    name = "deployment-controller"

    def __init__(self, client: ApiClient) -> None:
        super().__init__(client)
        self.recorder: EventRecorder | None = None

    def setup(self) -> None:
        self.recorder = EventRecorder(self.client, "deployment-controller")
        self.deployments = self.informer(DEPLOYMENTS)
        self.replicasets = self.informer(REPLICASETS)
        self.pods = self.informer(PODS)
        self.deployments.add_handler(lambda e, o, n: self.queue.add(meta.key_of(n or o)))  # type: ignore[arg-type]
        self.replicasets.add_handler(self._on_replicaset)
        self.pods.add_handler(self._on_pod)

    def stop(self) -> None:
        super().stop()
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder = None

    # -- event handlers ----------------------------------------------------------------------

    def _enqueue_owner(self, rs: dict) -> bool:
        ref = meta.controller_of(rs)
        if ref is None:
            return False
        if ref.get("kind") == "Deployment":
            self.queue.add(f"{meta.namespace_of(rs)}/{ref.get('name')}")
        return True

    def _on_replicaset(self, event: str, old: dict | None, new: dict | None) -> None:
        if old is not None and new is not None:
            old_ref, new_ref = meta.controller_of(old), meta.controller_of(new)
            if old_ref is not None and (new_ref is None or new_ref.get("uid") != old_ref.get("uid")):
                self._enqueue_owner(old)
        rs = new or old
        assert rs is not None
        if self._enqueue_owner(rs) or new is None:
            return
        # An orphan: the Deployments whose selector matches it may adopt it.
        for deploy in self.deployments.list():
            if meta.namespace_of(deploy) == meta.namespace_of(rs) and self._selects(deploy, rs):
                self.queue.add(meta.key_of(deploy))

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        # Recreate waits for old pods to be gone or finished: deletions and terminal phases matter.
        if new is not None and ((new.get("status") or {}).get("phase") not in _TERMINAL_PHASES or (
                old is not None and (old.get("status") or {}).get("phase") in _TERMINAL_PHASES)):
            return
        pod = new or old
        assert pod is not None
        ref = meta.controller_of(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get(f"{meta.namespace_of(pod)}/{ref.get('name')}")
        if rs is not None:
            self._enqueue_owner(rs)

    @staticmethod
    def _has_selector(deploy: dict) -> bool:
        selector = (deploy.get("spec") or {}).get("selector") or {}
        return bool(selector.get("matchLabels") or selector.get("matchExpressions"))

    @classmethod
    def _selects(cls, deploy: dict, obj: dict) -> bool:
        if not cls._has_selector(deploy):
            return False
        try:
            return LabelSelector.from_dict((deploy.get("spec") or {}).get("selector")).matches(meta.labels_of(obj))
        except ValidationError:
            return False

    # -- sync --------------------------------------------------------------------------------

    def sync(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        deploy = copy.deepcopy(cached)
        try:
            self._sync(key, deploy)
        except _Requeue:
            return
        except ValidationError as exc:
            # An int-or-percent the API server let through: nothing to retry until the spec changes.
            log.warning("deployment %s: %s", key, exc)

    def _sync(self, key: str, deploy: dict) -> None:
        spec = deploy.get("spec") or {}
        now = _utcnow()
        if not self._has_selector(deploy):
            self._event(deploy, WARNING, "SelectingAll",
                        "This deployment is selecting all pods. A non-empty selector is required.")
            generation = int((deploy.get("metadata") or {}).get("generation") or 0)
            if _count(deploy.get("status") or {}, "observedGeneration") < generation:
                self._write_status(deploy, dict(deploy.get("status") or {}, observedGeneration=generation))
            return
        rs_list = self._claim_replicasets(deploy)
        if (deploy.get("metadata") or {}).get("deletionTimestamp"):
            new_rs, old_rss = self._split(deploy, rs_list)
            if new_rs is not None:
                deploy, new_rs = self._sync_new_replicaset(deploy, new_rs, old_rss, now)
            self._sync_status(key, deploy, new_rs, old_rss, now, rollout=False)
            return
        deploy = self._check_paused_conditions(deploy, now)
        new_rs, old_rss = self._split(deploy, rs_list)
        if new_rs is not None:
            deploy, new_rs = self._sync_new_replicaset(deploy, new_rs, old_rss, now)
        limits = rollout_limits(spec)
        scaling = self._is_scaling_event(deploy, new_rs, old_rss)
        if spec.get("paused") or scaling:
            # A paused Deployment makes no rollout progress; only a change of spec.replicas is applied.
            if scaling:
                new_rs, old_rss = self._scale(deploy, new_rs, old_rss, limits, now)
            if spec.get("paused"):
                self._cleanup(deploy, old_rss)
            self._sync_status(key, deploy, new_rs, old_rss, now, rollout=False)
            return
        if strategy_of(spec) is Strategy.RECREATE:
            self._rollout_recreate(key, deploy, new_rs, old_rss, now)
        else:
            self._rollout_rolling(key, deploy, new_rs, old_rss, limits, now)

    def _rollout_rolling(self, key: str, deploy: dict, new_rs: dict | None, old_rss: list[dict],
                         limits: RolloutLimits, now: _dt.datetime) -> None:
        desired = replicas_of(deploy.get("spec") or {})
        if new_rs is None:
            old_views = self._views(deploy, old_rss, now)
            empty = ReplicaSetView(name="", replicas=0)
            deploy, new_rs = self._create_new_replicaset(
                deploy, old_rss, rolling_new_replicas(desired, limits, empty, old_views), limits, now)
        views = self._views(deploy, [new_rs, *old_rss], now)
        actions = rolling_step(desired, limits, views[0], views[1:])
        if actions:
            new_rs, old_rss = self._apply(deploy, actions, new_rs, old_rss, limits)
        elif deployment_complete(deploy, deploy.get("status") or {}):
            self._cleanup(deploy, old_rss)
        self._sync_status(key, deploy, new_rs, old_rss, now, rollout=True)

    def _rollout_recreate(self, key: str, deploy: dict, new_rs: dict | None, old_rss: list[dict],
                          now: _dt.datetime) -> None:
        desired = replicas_of(deploy.get("spec") or {})
        limits = RolloutLimits(0, 0)
        old_views = self._views(deploy, old_rss, now)
        new_view = self._views(deploy, [new_rs], now)[0] if new_rs is not None else None
        step = recreate_step(desired, new_view, old_views, self._old_pods_running(new_rs, old_rss))
        if step.create_new:
            deploy, new_rs = self._create_new_replicaset(deploy, old_rss, desired, limits, now)
        elif step.actions:
            new_rs, old_rss = self._apply(deploy, list(step.actions), new_rs, old_rss, limits)
        if not step.actions and not step.waiting_for_old_pods \
                and deployment_complete(deploy, deploy.get("status") or {}):
            self._cleanup(deploy, old_rss)
        self._sync_status(key, deploy, new_rs, old_rss, now, rollout=True)

    # -- ReplicaSets ---------------------------------------------------------------------------

    def _claim_replicasets(self, deploy: dict) -> list[dict]:
        """ReplicaSets this Deployment controls, adopting matching orphans and releasing ones it no longer selects."""
        ns, deleting = meta.namespace_of(deploy), bool((deploy.get("metadata") or {}).get("deletionTimestamp"))
        owned: list[dict] = []
        live_checked = False
        for rs in self.replicasets.list():
            if meta.namespace_of(rs) != ns:
                continue
            ref = meta.controller_of(rs)
            matches = self._selects(deploy, rs)
            if ref is not None:
                if ref.get("uid") != meta.uid_of(deploy):
                    continue
                if matches or deleting:
                    owned.append(rs)
                else:
                    self._set_owner_refs(rs, [r for r in (rs.get("metadata") or {}).get("ownerReferences") or []
                                              if r.get("uid") != meta.uid_of(deploy)])
                continue
            if not matches or deleting or (rs.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if not live_checked:
                # Adopt only for a Deployment that still exists as we know it (our cache may lag a delete).
                live = self.client.get(DEPLOYMENTS, meta.name_of(deploy), ns)
                if meta.uid_of(live) != meta.uid_of(deploy) or (live.get("metadata") or {}).get("deletionTimestamp"):
                    raise _Requeue()
                live_checked = True
            refs = list((rs.get("metadata") or {}).get("ownerReferences") or []) + [meta.owner_reference(deploy)]
            log.info("deployment %s: adopting replicaset %s", meta.key_of(deploy), meta.name_of(rs))
            owned.append(self._set_owner_refs(rs, refs))
        return owned

    def _set_owner_refs(self, rs: dict, refs: list[dict]) -> dict:
        return self.client.patch(REPLICASETS, meta.name_of(rs), {"metadata": {
            "ownerReferences": refs, "resourceVersion": rs["metadata"]["resourceVersion"]}}, meta.namespace_of(rs))

    @staticmethod
    def _split(deploy: dict, rs_list: list[dict]) -> tuple[dict | None, list[dict]]:
        new_rs = find_new_replicaset(deploy, rs_list)
        return new_rs, [rs for rs in rs_list if rs is not new_rs]

    def _sync_new_replicaset(self, deploy: dict, new_rs: dict, old_rss: list[dict],
                             now: _dt.datetime) -> tuple[dict, dict]:
        """Bring the existing new ReplicaSet's annotations and revision up to date, then the Deployment's."""
        spec = deploy.get("spec") or {}
        annotations, changed = replicaset_annotations(
            (deploy.get("metadata") or {}).get("annotations") or {},
            (new_rs.get("metadata") or {}).get("annotations") or {}, max_revision(old_rss) + 1, True,
            replicas_of(spec), 0)
        min_ready = spec.get("minReadySeconds") or 0
        if changed or ((new_rs.get("spec") or {}).get("minReadySeconds") or 0) != min_ready:
            if revision_of({"metadata": {"annotations": annotations}}) != revision_of(new_rs):
                log.info("deployment %s: replicaset %s is now revision %s", meta.key_of(deploy),
                         meta.name_of(new_rs), annotations.get(REVISION_ANNOTATION))
            new_rs = self.client.patch(REPLICASETS, meta.name_of(new_rs), {
                "metadata": {"annotations": annotations, "resourceVersion": new_rs["metadata"]["resourceVersion"]},
                "spec": {"minReadySeconds": min_ready or None}}, meta.namespace_of(new_rs))
        deploy = self._set_deployment_revision(deploy, revision_of(new_rs))
        if progress_deadline(spec) is not None and \
                find_condition(deploy.get("status") or {}, ConditionType.PROGRESSING) is None:
            status = copy.deepcopy(deploy.get("status") or {})
            set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.FOUND_NEW_RS,
                                                f'Found new replica set "{meta.name_of(new_rs)}"', now))
            deploy = self._write_status(deploy, status)
        return deploy, new_rs

    def _create_new_replicaset(self, deploy: dict, old_rss: list[dict], replicas: int, limits: RolloutLimits,
                               now: _dt.datetime) -> tuple[dict, dict]:
        spec = deploy.get("spec") or {}
        ns = meta.namespace_of(deploy)
        collisions = int((deploy.get("status") or {}).get("collisionCount") or 0)
        pod_hash = template_hash(spec.get("template") or {}, collisions)
        revision = max_revision(old_rss) + 1
        desired = replicas_of(spec)
        annotations, _ = replicaset_annotations((deploy.get("metadata") or {}).get("annotations") or {}, {},
                                                revision, False, desired, desired + limits.max_surge)
        rs = new_replicaset(deploy, pod_hash, replicas, annotations)
        name = meta.name_of(rs)
        try:
            created = self.client.create(REPLICASETS, rs, ns)
            existed = False
        except ApiError as exc:
            if exc.code != 409:
                self._report_create_failure(deploy, name, exc, now)
                raise
            # Already there: ours from a sync our cache has not caught up with, or a hash collision.
            created = self.client.get(REPLICASETS, name, ns)
            existed = True
            if not (meta.is_controlled_by(created, deploy) and templates_equal_ignoring_hash(
                    (created.get("spec") or {}).get("template") or {}, spec.get("template") or {})):
                status = copy.deepcopy(deploy.get("status") or {})
                status["collisionCount"] = collisions + 1
                self._write_status(deploy, status)
                log.info("deployment %s: hash collision on replicaset %s; collisionCount now %d",
                         meta.key_of(deploy), name, collisions + 1)
                self.queue.add(meta.key_of(deploy))
                raise _Requeue() from None
        if not existed:
            log.info("deployment %s: created replicaset %s (revision %d, %d replicas)", meta.key_of(deploy), name,
                     revision, replicas)
            if replicas > 0:
                self._event(deploy, NORMAL, "ScalingReplicaSet", f"Scaled up replica set {name} from 0 to {replicas}")
        deploy = self._set_deployment_revision(deploy, revision_of(created))
        if not existed and progress_deadline(spec) is not None:
            status = copy.deepcopy(deploy.get("status") or {})
            set_condition(status, new_condition(ConditionType.PROGRESSING, "True", Reason.NEW_RS_CREATED,
                                                f'Created new replica set "{name}"', now))
            deploy = self._write_status(deploy, status)
        return deploy, created

    def _report_create_failure(self, deploy: dict, name: str, exc: ApiError, now: _dt.datetime) -> None:
        message = f'Failed to create new replica set "{name}": {exc}'
        if progress_deadline(deploy.get("spec") or {}) is not None:
            status = copy.deepcopy(deploy.get("status") or {})
            set_condition(status, new_condition(ConditionType.PROGRESSING, "False", Reason.FAILED_RS_CREATE,
                                                message, now))
            try:
                self._write_status(deploy, status)
            except ApiError as write_exc:
                log.debug("deployment %s: recording the create failure failed: %s", meta.key_of(deploy), write_exc)
        self._event(deploy, WARNING, Reason.FAILED_RS_CREATE.value, message)

    def _is_scaling_event(self, deploy: dict, new_rs: dict | None, old_rss: list[dict]) -> bool:
        desired = replicas_of(deploy.get("spec") or {})
        for rs in ([new_rs] if new_rs is not None else []) + old_rss:
            if int((rs.get("spec") or {}).get("replicas", 1) or 0) <= 0:
                continue
            annotated = _int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
            if annotated is not None and annotated != desired:
                return True
        return False

    def _scale(self, deploy: dict, new_rs: dict | None, old_rss: list[dict], limits: RolloutLimits,
               now: _dt.datetime) -> tuple[dict | None, list[dict]]:
        spec = deploy.get("spec") or {}
        new_view = self._views(deploy, [new_rs], now)[0] if new_rs is not None else None
        actions = proportional_scale(replicas_of(spec), strategy_of(spec), limits,
                                     _count(deploy.get("status") or {}, "replicas"), new_view,
                                     self._views(deploy, old_rss, now))
        return self._apply(deploy, actions, new_rs, old_rss, limits)

    def _apply(self, deploy: dict, actions: list[ScaleAction], new_rs: dict | None, old_rss: list[dict],
               limits: RolloutLimits) -> tuple[dict | None, list[dict]]:
        """Carry out scale actions; returns the ReplicaSets as updated."""
        by_name = {meta.name_of(rs): rs for rs in ([new_rs] if new_rs is not None else []) + old_rss}
        for action in actions:
            rs = by_name.get(action.name)
            if rs is not None:
                by_name[action.name] = self._scale_replicaset(deploy, rs, action, limits)
        new_out = by_name[meta.name_of(new_rs)] if new_rs is not None else None
        return new_out, [by_name[meta.name_of(rs)] for rs in old_rss]

    def _scale_replicaset(self, deploy: dict, rs: dict, action: ScaleAction, limits: RolloutLimits) -> dict:
        desired = replicas_of(deploy.get("spec") or {})
        current = int((rs.get("spec") or {}).get("replicas", 1) or 0)
        annotations = (rs.get("metadata") or {}).get("annotations") or {}
        wanted = {DESIRED_REPLICAS_ANNOTATION: str(desired), MAX_REPLICAS_ANNOTATION: str(desired + limits.max_surge)}
        stale = any(annotations.get(k) != v for k, v in wanted.items())
        if current == action.to_replicas and not stale:
            return rs
        updated = self.client.patch(REPLICASETS, meta.name_of(rs), {
            "metadata": {"annotations": wanted, "resourceVersion": rs["metadata"]["resourceVersion"]},
            "spec": {"replicas": action.to_replicas}}, meta.namespace_of(rs))
        if current != action.to_replicas:
            verb = "up" if action.to_replicas > current else "down"
            log.info("deployment %s: scaled %s replicaset %s from %d to %d", meta.key_of(deploy), verb,
                     meta.name_of(rs), current, action.to_replicas)
            self._event(deploy, NORMAL, "ScalingReplicaSet",
                        f"Scaled {verb} replica set {meta.name_of(rs)} from {current} to {action.to_replicas}")
        return updated

    def _old_pods_running(self, new_rs: dict | None, old_rss: list[dict]) -> bool:
        if any(int((rs.get("status") or {}).get("replicas", 0) or 0) > 0 for rs in old_rss):
            return True
        old_uids = {meta.uid_of(rs) for rs in old_rss} - ({meta.uid_of(new_rs)} if new_rs is not None else set())
        for pod in self.pods.list():
            ref = meta.controller_of(pod)
            if ref is not None and ref.get("uid") in old_uids \
                    and (pod.get("status") or {}).get("phase") not in _TERMINAL_PHASES:
                return True
        return False

    def _cleanup(self, deploy: dict, old_rss: list[dict]) -> None:
        """Delete the oldest idle ReplicaSets beyond revisionHistoryLimit."""
        limit = (deploy.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old_rss if not (rs.get("metadata") or {}).get("deletionTimestamp")]
        excess = len(alive) - int(limit)
        if excess <= 0:
            return
        alive.sort(key=lambda rs: (revision_of(rs), (rs.get("metadata") or {}).get("creationTimestamp") or "",
                                   meta.name_of(rs)))
        for rs in alive[:excess]:
            status, md = rs.get("status") or {}, rs.get("metadata") or {}
            if int(status.get("replicas", 0) or 0) != 0 or int((rs.get("spec") or {}).get("replicas", 1) or 0) != 0 \
                    or int(md.get("generation") or 0) > int(status.get("observedGeneration") or 0):
                continue
            log.info("deployment %s: deleting old replicaset %s (revision %d)", meta.key_of(deploy),
                     meta.name_of(rs), revision_of(rs))
            with ignore_not_found():
                self.client.delete(REPLICASETS, meta.name_of(rs), meta.namespace_of(rs))

    # -- Deployment writes -----------------------------------------------------------------------

    def _check_paused_conditions(self, deploy: dict, now: _dt.datetime) -> dict:
        spec, status = deploy.get("spec") or {}, deploy.get("status") or {}
        if progress_deadline(spec) is None:
            return deploy
        cond = find_condition(status, ConditionType.PROGRESSING)
        if cond is not None and cond.get("reason") == Reason.TIMED_OUT.value:
            return deploy  # a reported lack of progress is not overwritten by pausing
        paused_recorded = cond is not None and cond.get("reason") == Reason.PAUSED.value
        if bool(spec.get("paused")) == paused_recorded:
            return deploy
        new_status = copy.deepcopy(status)
        if spec.get("paused"):
            set_condition(new_status, new_condition(ConditionType.PROGRESSING, "Unknown", Reason.PAUSED,
                                                    "Deployment is paused", now))
        else:
            set_condition(new_status, new_condition(ConditionType.PROGRESSING, "Unknown", Reason.RESUMED,
                                                    "Deployment is resumed", now))
        return self._write_status(deploy, new_status)

    def _set_deployment_revision(self, deploy: dict, revision: int) -> dict:
        if not revision or revision_of(deploy) == revision:
            return deploy
        return self.client.patch(DEPLOYMENTS, meta.name_of(deploy), {"metadata": {
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "resourceVersion": deploy["metadata"]["resourceVersion"]}}, meta.namespace_of(deploy))

    def _write_status(self, deploy: dict, status: dict) -> dict:
        body = {"metadata": {"resourceVersion": deploy["metadata"]["resourceVersion"]},
                "status": status_patch(deploy.get("status") or {}, compact_status(status))}
        return self.client.patch(DEPLOYMENTS, meta.name_of(deploy), body, meta.namespace_of(deploy),
                                 subresource="status")

    def _views(self, deploy: dict, rss: list[dict], now: _dt.datetime) -> list[ReplicaSetView]:
        min_ready = int((deploy.get("spec") or {}).get("minReadySeconds") or 0)
        pods = self._pods_by_owner(meta.namespace_of(deploy)) if min_ready > 0 else {}
        return [replicaset_view(rs, pods.get(meta.uid_of(rs), []), min_ready, now) for rs in rss]

    def _pods_by_owner(self, namespace: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for pod in self.pods.list():
            ref = meta.controller_of(pod)
            if ref is not None and meta.namespace_of(pod) == namespace \
                    and not (pod.get("metadata") or {}).get("deletionTimestamp") \
                    and (pod.get("status") or {}).get("phase") not in _TERMINAL_PHASES:
                out.setdefault(ref.get("uid", ""), []).append(pod)
        return out

    def _sync_status(self, key: str, deploy: dict, new_rs: dict | None, old_rss: list[dict], now: _dt.datetime,
                     rollout: bool) -> None:
        spec = deploy.get("spec") or {}
        all_rss = ([new_rs] if new_rs is not None else []) + old_rss
        views = self._views(deploy, all_rss, now)
        new_view = views[0] if new_rs is not None else None
        status = calculate_status(deploy, new_view, views, rollout_limits(spec), now)
        if rollout:
            status = rollout_status(deploy, status, meta.name_of(new_rs) if new_rs is not None else None,
                                    replica_failure_condition(new_rs, old_rss), now)
        min_ready = int(spec.get("minReadySeconds") or 0)
        if min_ready > 0:
            by_owner = self._pods_by_owner(meta.namespace_of(deploy))
            wait = seconds_until_available([p for rs in all_rss for p in by_owner.get(meta.uid_of(rs), [])],
                                           min_ready, now)
            if wait is not None:
                self.queue.add_after(key, wait + 0.05)
        if compact_status(deploy.get("status") or {}) == status:
            if rollout:
                wait = seconds_until_deadline_check(deploy, status, now)
                if wait is not None:
                    self.queue.add_after(key, wait)
            return
        self._write_status(deploy, status)

    def _event(self, deploy: dict, event_type: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(deploy, event_type, reason, message)
