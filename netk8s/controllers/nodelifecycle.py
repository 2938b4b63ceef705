"""Node lifecycle controller: node health from heartbeats, unreachable taints, taint-based eviction.

What kube-controller-manager's node lifecycle and taint eviction controllers do:

- A node is healthy while its kubelet heartbeats: the later of the node Lease's
  ``renewTime`` (``kube-node-lease/<node>``) and its conditions'
  ``lastHeartbeatTime`` is no older than ``grace_period``. A node that never
  heartbeated gets ``grace_period`` from its creation, and every node gets it from
  the controller's start.
- When a node stops heartbeating, every condition goes to ``Unknown``
  (``NodeStatusUnknown``, "Kubelet stopped posting node status."), the node gets
  the ``node.kubernetes.io/unreachable`` taints (NoSchedule and NoExecute, with
  ``timeAdded``), a ``NodeNotReady`` event, and its pods' Ready and
  ContainersReady conditions turn False (``NodeNotReady``) so they leave Service
  endpoints. When heartbeats resume, the unreachable taints are removed; the
  kubelet restores its conditions itself.
- Taint-based eviction, for every NoExecute taint (ours or a user's): a pod is
  deleted (an ordinary DELETE; the API server makes it graceful) once the taint is
  older than the ``tolerationSeconds`` of the pod's first toleration matching it;
  at once when no toleration matches; never when the matching toleration has no
  ``tolerationSeconds``. Pods that lack a toleration for the not-ready/unreachable
  taints are treated as having the API server's defaults (``tolerationSeconds`` =
  ``eviction_timeout``), as the DefaultTolerationSeconds admission plugin adds them.

The decisions (health, new conditions, taints, eviction times) are pure
functions of objects and a clock; ``NodeLifecycleController`` applies them.
"""

from __future__ import annotations

import copy
import datetime as _dt
import enum
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from netk8s.api import meta
from netk8s.api.resources import LEASES, NODES, PODS
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, EventRecorder
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.errors import ApiError, NetK8sError
from netk8s.kubelet.lease import LEASE_NAMESPACE, parse_micro_time

log = logging.getLogger(__name__)

Clock = Callable[[], _dt.datetime]

TAINT_UNREACHABLE = meta.TAINT_UNREACHABLE
TAINT_NOT_READY = meta.TAINT_NOT_READY
with_default_tolerations = meta.with_default_tolerations  # the pods the API server admitted have these already

REASON_STATUS_UNKNOWN = "NodeStatusUnknown"
MESSAGE_STATUS_UNKNOWN = "Kubelet stopped posting node status."
REASON_NEVER_UPDATED = "NodeStatusNeverUpdated"
MESSAGE_NEVER_UPDATED = "Kubelet never posted node status."
REASON_POD_NODE_NOT_READY = "NodeNotReady"

# Pod conditions that MarkPodsNotReady turns False.
_POD_READINESS_CONDITIONS = ("Ready", "ContainersReady")


class TaintEffect(str, enum.Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class NodeHealth(enum.Enum):
    HEALTHY = "Healthy"
    STOPPED_POSTING = "StoppedPosting"  # heartbeated once, not within the grace period
    NEVER_POSTED = "NeverPosted"  # no heartbeat at all, and older than the grace period


@dataclass(frozen=True)
class HealthVerdict:
    health: NodeHealth
    last_heartbeat: _dt.datetime | None
    deadline: _dt.datetime  # when the node is (or was) no longer healthy without a new heartbeat

    @property
    def healthy(self) -> bool:
        return self.health is NodeHealth.HEALTHY


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# -- health -------------------------------------------------------------------------------


def last_heartbeat(node: dict, lease: dict | None) -> _dt.datetime | None:
    """The latest sign of life: the Lease's renewTime or a condition's lastHeartbeatTime."""
    stamps: list[_dt.datetime] = []
    if lease is not None:
        renewed = parse_micro_time((lease.get("spec") or {}).get("renewTime"))
        if renewed is not None:
            stamps.append(renewed)
    for cond in (node.get("status") or {}).get("conditions") or []:
        beat = meta.parse_time(cond.get("lastHeartbeatTime"))
        if beat is not None:
            stamps.append(beat)
    return max(stamps) if stamps else None


def assess_health(node: dict, lease: dict | None, now: _dt.datetime, grace_period: float,
                  watching_since: _dt.datetime | None = None) -> HealthVerdict:
    """Healthy while the last heartbeat (or, without one, the node's creation) is at most
    ``grace_period`` old. Like Kubernetes, which times heartbeats from when it first saw
    the node, a controller watching since ``watching_since`` gives every node the grace
    period from then (a restarted control plane does not condemn nodes whose kubelets
    could not reach it)."""
    beat = last_heartbeat(node, lease)
    start = beat or meta.parse_time((node.get("metadata") or {}).get("creationTimestamp")) or now
    if watching_since is not None:
        start = max(start, watching_since)
    deadline = start + _dt.timedelta(seconds=grace_period)
    if now <= deadline:
        health = NodeHealth.HEALTHY
    else:
        health = NodeHealth.STOPPED_POSTING if beat is not None else NodeHealth.NEVER_POSTED
    return HealthVerdict(health, beat, deadline)


def unknown_conditions(node: dict, now: _dt.datetime) -> list[dict] | None:
    """The node's conditions as the controller writes them for a node that stopped posting
    status: every condition Unknown (a missing Ready added as never updated). None when
    they already are."""
    stamp = meta.format_time(now)
    conditions = (node.get("status") or {}).get("conditions") or []
    out: list[dict] = []
    changed = False
    for cond in conditions:
        if cond.get("status") == "Unknown":
            out.append(cond)
            continue
        out.append(dict(cond, status="Unknown", reason=REASON_STATUS_UNKNOWN, message=MESSAGE_STATUS_UNKNOWN,
                        lastTransitionTime=stamp))
        changed = True
    if not any(cond.get("type") == "Ready" for cond in conditions):
        ready = {"type": "Ready", "status": "Unknown", "reason": REASON_NEVER_UPDATED,
                 "message": MESSAGE_NEVER_UPDATED, "lastTransitionTime": stamp}
        created = (node.get("metadata") or {}).get("creationTimestamp")
        if created:
            ready["lastHeartbeatTime"] = created
        out.append(ready)
        changed = True
    return out if changed else None


# -- taints -------------------------------------------------------------------------------


def unreachable_taints(now: _dt.datetime) -> list[dict]:
    stamp = meta.format_time(now)
    return [{"key": TAINT_UNREACHABLE, "effect": effect.value, "timeAdded": stamp}
            for effect in (TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE)]


def _taint_id(taint: dict) -> tuple[str, str]:
    return taint.get("key", ""), taint.get("effect", "")


def add_taints(taints: list[dict], wanted: list[dict]) -> list[dict] | None:
    """``taints`` plus each of ``wanted`` whose (key, effect) is missing; None when none is."""
    present = {_taint_id(t) for t in taints}
    missing = [t for t in wanted if _taint_id(t) not in present]
    return list(taints) + missing if missing else None


def remove_taints(taints: list[dict], key: str) -> list[dict] | None:
    """``taints`` without those with ``key``; None when there are none."""
    kept = [t for t in taints if t.get("key") != key]
    return kept if len(kept) != len(taints) else None


def node_taints(node: dict) -> list[dict]:
    return list((node.get("spec") or {}).get("taints") or [])


# -- tolerations and eviction ----------------------------------------------------------------


def eviction_time(pod: dict, taints: list[dict], eviction_timeout: float,
                  now: _dt.datetime) -> _dt.datetime | None:
    """When the NoExecute ``taints`` evict ``pod``: None for never; a time not after
    ``now`` for "now". A taint without ``timeAdded`` counts from ``now``."""
    tolerations = with_default_tolerations((pod.get("spec") or {}).get("tolerations") or [], eviction_timeout)
    when: _dt.datetime | None = None
    for taint in taints:
        if taint.get("effect") != TaintEffect.NO_EXECUTE.value:
            continue
        added = meta.parse_time(taint.get("timeAdded")) or now
        matching = next((tol for tol in tolerations if meta.toleration_tolerates(tol, taint)), None)
        if matching is None:
            candidate = min(added, now)
        elif matching.get("tolerationSeconds") is None:
            continue  # tolerated for ever
        else:
            seconds = max(float(matching["tolerationSeconds"]), 0.0)
            candidate = added + _dt.timedelta(seconds=seconds)
        when = candidate if when is None else min(when, candidate)
    return when


def not_ready_pod_conditions(pod: dict, now: _dt.datetime) -> list[dict] | None:
    """The pod's conditions with Ready and ContainersReady False (reason NodeNotReady);
    None when there is nothing to change (already False, or not reported yet)."""
    stamp = meta.format_time(now)
    out: list[dict] = []
    changed = False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") in _POD_READINESS_CONDITIONS and cond.get("status") != "False":
            cond = dict(cond, status="False", reason=REASON_POD_NODE_NOT_READY, lastTransitionTime=stamp)
            cond.pop("message", None)
            changed = True
        out.append(cond)
    return out if changed else None


# -- controller ---------------------------------------------------------------------------------


class NodeLifecycleController(Controller):
    name = "node-lifecycle-controller"

    def __init__(self, client: ApiClient, grace_period: float = 40.0, eviction_timeout: float = 300.0,
                 monitor_period: float = 1.0, clock: Clock = utc_now) -> None:
        super().__init__(client)
        if grace_period <= 0 or monitor_period <= 0 or eviction_timeout < 0:
            raise NetK8sError("node lifecycle: grace and monitor periods must be positive, eviction timeout "
                              "not negative")
        self.grace_period = grace_period
        self.eviction_timeout = eviction_timeout
        self.monitor_period = monitor_period
        self.clock = clock
        self._evicted: set[str] = set()  # uids of pods we deleted (one DELETE and one event each)
        self._watching_since: _dt.datetime | None = None
        self._monitor_thread: threading.Thread | None = None
        self._node_events: EventRecorder | None = None
        self._eviction_events: EventRecorder | None = None

    # -- wiring ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self.nodes = self.informer(NODES)
        self.leases = self.informer(LEASES, namespace=LEASE_NAMESPACE)
        self.pods = self.informer(PODS)
        self.nodes.add_handler(self._on_node)
        self.leases.add_handler(self._on_lease)
        self.pods.add_handler(self._on_pod)
        self._node_events = EventRecorder(self.client, "node-controller")
        self._eviction_events = EventRecorder(self.client, "taint-eviction-controller")

    def start(self) -> None:
        self._watching_since = self.clock()
        super().start()
        self._monitor_thread = threading.Thread(target=self._monitor, name=f"{self.name}-monitor", daemon=True)
        self._monitor_thread.start()

    def stop(self) -> None:
        super().stop()
        for recorder in (self._node_events, self._eviction_events):
            if recorder is not None:
                recorder.stop()

    def join(self, timeout: float = 5.0) -> None:
        super().join(timeout)
        if self._monitor_thread is not None:
            self._monitor_thread.join(timeout)

    def _monitor(self) -> None:
        # Heartbeats go stale and tolerations run out without any event: look at every node
        # each monitor period (that period is the precision of both).
        while not self._stop.wait(self.monitor_period):
            for node in self.nodes.list():
                self.queue.add(meta.name_of(node))

    def _on_node(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is not None:
            self.queue.add(meta.name_of(new))

    def _on_lease(self, event: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        if obj is not None:
            self.queue.add(meta.name_of(obj))

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is None:
            self._evicted.discard(meta.uid_of(old or {}))
            return
        node_name = (new.get("spec") or {}).get("nodeName")
        if not node_name or meta.is_terminating(new):
            return
        node = self.nodes.get(node_name)
        if node is None:
            return
        no_execute = any(t.get("effect") == TaintEffect.NO_EXECUTE.value for t in node_taints(node))
        unknown = (meta.get_condition(node, "Ready") or {}).get("status") == "Unknown"
        if no_execute or unknown:
            self.queue.add(node_name)

    # -- reconcile --------------------------------------------------------------------------------

    def _pods_on(self, node_name: str) -> list[dict]:
        return [p for p in self.pods.list() if (p.get("spec") or {}).get("nodeName") == node_name]

    def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        now = self.clock()
        verdict = assess_health(node, self.leases.get(f"{LEASE_NAMESPACE}/{key}"), now, self.grace_period,
                                self._watching_since)
        if verdict.healthy:
            node = self._clear_unreachable(node)
        else:
            node = self._mark_unknown(node, verdict, now)
            node = self._taint_unreachable(node, now)
            self._mark_pods_not_ready(key, now)
        self._evict_pods(node, now)

    def _mark_unknown(self, node: dict, verdict: HealthVerdict, now: _dt.datetime) -> dict:
        conditions = unknown_conditions(node, now)
        if conditions is None:
            return node
        was_ready = (meta.get_condition(node, "Ready") or {}).get("status")
        updated = copy.deepcopy(node)
        updated.setdefault("status", {})["conditions"] = conditions
        stored = self.client.update_status(NODES, updated)
        name = meta.name_of(node)
        log.warning("node %s: %s (last heartbeat %s); conditions set to Unknown", name,
                    MESSAGE_STATUS_UNKNOWN if verdict.health is NodeHealth.STOPPED_POSTING else MESSAGE_NEVER_UPDATED,
                    verdict.last_heartbeat.isoformat() if verdict.last_heartbeat else "never")
        if was_ready != "Unknown" and self._node_events is not None:
            self._node_events.event(stored, NORMAL, "NodeNotReady", f"Node {name} status is now: NodeNotReady")
        return stored

    def _taint_unreachable(self, node: dict, now: _dt.datetime) -> dict:
        return self._write_taints(node, add_taints(node_taints(node), unreachable_taints(now)),
                                  f"added {TAINT_UNREACHABLE} taints")

    def _clear_unreachable(self, node: dict) -> dict:
        return self._write_taints(node, remove_taints(node_taints(node), TAINT_UNREACHABLE),
                                  f"heartbeat resumed; removed {TAINT_UNREACHABLE} taints")

    def _write_taints(self, node: dict, taints: list[dict] | None, done: str) -> dict:
        """Store ``taints`` on the node (None: nothing changes); the stored node."""
        if taints is None:
            return node
        updated = copy.deepcopy(node)
        updated.setdefault("spec", {})["taints"] = taints
        stored = self.client.update(NODES, updated)
        log.info("node %s: %s", meta.name_of(node), done)
        return stored

    def _mark_pods_not_ready(self, node_name: str, now: _dt.datetime) -> None:
        failure: ApiError | None = None
        for pod in self._pods_on(node_name):
            conditions = not_ready_pod_conditions(pod, now)
            if conditions is None:
                continue
            patch = {"metadata": {"resourceVersion": pod["metadata"].get("resourceVersion", "")},
                     "status": {"conditions": conditions}}
            try:
                with ignore_not_found():
                    self.client.patch(PODS, meta.name_of(pod), patch, meta.namespace_of(pod), subresource="status")
            except ApiError as exc:
                failure = exc  # carry on with the other pods; the sync is retried
                continue
            log.info("pod %s: marked not ready (node %s not ready)", meta.key_of(pod), node_name)
        if failure is not None:
            raise failure

    def _evict_pods(self, node: dict, now: _dt.datetime) -> None:
        """Delete the pods on ``node`` whose NoExecute taints are due."""
        taints = [t for t in node_taints(node) if t.get("effect") == TaintEffect.NO_EXECUTE.value]
        if not taints:
            return
        for pod in self._pods_on(meta.name_of(node)):
            if meta.is_terminating(pod) or meta.uid_of(pod) in self._evicted:
                continue
            when = eviction_time(pod, taints, self.eviction_timeout, now)
            if when is not None and when <= now:
                self._evict(pod, meta.name_of(node))

    def _evict(self, pod: dict, node_name: str) -> None:
        key = f"{meta.namespace_of(pod)}/{meta.name_of(pod)}"
        log.info("node %s: evicting pod %s (NoExecute taint not tolerated any longer)", node_name, key)
        try:
            with ignore_not_found():
                # The uid precondition spares a newer pod that took the name meanwhile.
                self.client.delete(PODS, meta.name_of(pod), meta.namespace_of(pod),
                                   preconditions={"uid": meta.uid_of(pod)})
        except ApiError as exc:
            if exc.code != 409:
                raise
            return
        self._evicted.add(meta.uid_of(pod))
        if self._eviction_events is not None:
            self._eviction_events.event(pod, NORMAL, "TaintManagerEviction", f"Marking for deletion Pod {key}")
