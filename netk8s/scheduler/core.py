"""Pure scheduling: pre-filter, filter and score nodes for a pod, explain failures.

The plugins mirror kube-scheduler 1.32's default profile for the fields netk8s
uses, in its filter order (a node's first failing plugin is the one reported):

- ``NodeUnschedulable``: ``spec.unschedulable`` unless the pod tolerates
  ``node.kubernetes.io/unschedulable:NoSchedule``.
- ``NodeName``: a pod that names a node fits only that node.
- ``TaintToleration``: untolerated ``NoSchedule``/``NoExecute`` taints filter;
  untolerated ``PreferNoSchedule`` taints lower the score. A node whose Ready
  condition is not True carries ``node.kubernetes.io/not-ready`` (False or
  missing) or ``node.kubernetes.io/unreachable`` (Unknown) ``NoSchedule``, as
  the node lifecycle controller would taint it; there is no separate readiness
  filter in kube-scheduler.
- ``NodeAffinity``: ``nodeSelector`` and ``requiredDuringScheduling...``
  terms (ORed; ``matchExpressions`` In/NotIn/Exists/DoesNotExist/Gt/Lt and
  ``matchFields`` on ``metadata.name``, ANDed within a term); its pre-filter
  narrows the candidates to the names a pod pins with ``matchFields``.
  ``preferredDuringScheduling...`` weights are summed and normalised to 0-100.
- ``NodeResourcesFit``: pod count, CPU and memory requests against
  allocatable (every shortage is a reason); scored LeastAllocated with
  kube-scheduler's non-zero defaults (100m CPU, 200Mi memory).

Scores are combined with the default plugin weights (TaintToleration 3,
NodeAffinity 2, NodeResourcesFit 1); ties are broken at random. When nothing
fits, ``Decision.message`` is kube-scheduler's FitError text, including the
``preemption:`` part that DefaultPreemption's dry run produces. netk8s never
evicts: a node where removing lower-priority pods would make room is reported
without a preemption suffix, as kube-scheduler does just before it preempts.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping

from netk8s.api import meta
from netk8s.api.quantity import count, milli_cpu
from netk8s.errors import NetK8sError, ValidationError

log = logging.getLogger(__name__)

DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024
MAX_NODE_SCORE = 100

TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_NOT_READY = meta.TAINT_NOT_READY
TAINT_UNREACHABLE = meta.TAINT_UNREACHABLE

NO_NODES_AVAILABLE = "no nodes available to schedule pods"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_NODE_NAME = "node(s) didn't match the requested node name"
REASON_NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_AFFINITY_CONFLICT = "pod affinity terms conflict"
REASON_PREFILTER_NODE_AFFINITY = "node(s) didn't satisfy plugin(s) [NodeAffinity]"
REASON_TOO_MANY_PODS = "Too many pods"
REASON_PREEMPTION_NOT_HELPFUL = "Preemption is not helpful for scheduling"
REASON_NO_VICTIMS = "No preemption victims found for incoming pod"
PREEMPTION_POLICY_NEVER = "not eligible due to preemptionPolicy=Never."


class Plugin(str, Enum):
    NODE_UNSCHEDULABLE = "NodeUnschedulable"
    NODE_NAME = "NodeName"
    TAINT_TOLERATION = "TaintToleration"
    NODE_AFFINITY = "NodeAffinity"
    NODE_RESOURCES_FIT = "NodeResourcesFit"
    DEFAULT_PREEMPTION = "DefaultPreemption"


# kube-scheduler's default score weights for the scoring plugins netk8s implements.
SCORE_WEIGHTS: dict[Plugin, int] = {
    Plugin.TAINT_TOLERATION: 3,
    Plugin.NODE_AFFINITY: 2,
    Plugin.NODE_RESOURCES_FIT: 1,
}


class Code(Enum):
    """Why a node was rejected: whether evicting pods (preemption) could change it."""

    UNSCHEDULABLE = "Unschedulable"
    UNRESOLVABLE = "UnschedulableAndUnresolvable"


@dataclass(frozen=True)
class Status:
    code: Code
    reasons: tuple[str, ...]
    plugin: Plugin


def untolerated_taint_reason(taint: dict) -> str:
    return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"


def insufficient_reason(resource: str) -> str:
    return f"Insufficient {resource}"


@dataclass(frozen=True)
class Resources:
    milli_cpu: int = 0
    memory: int = 0
    pods: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.milli_cpu + other.milli_cpu, self.memory + other.memory, self.pods + other.pods)


def _safe(fn: Callable[[str], int], value: str, default: int) -> int:
    try:
        return fn(value)
    except ValidationError:
        return default


# Requests per stored pod version: a sync recounts every pod of the cluster, and parsing their
# quantities again each time dominated scheduling (38 ms a sync at 2,000 pods). A pod's spec cannot
# change without a new resourceVersion, so (uid, resourceVersion) identifies its requests.
_REQUESTS_CACHE_SIZE = 1 << 16
_requests_cache: dict[tuple[str, str, bool], "Resources"] = {}
_requests_lock = threading.Lock()


def pod_requests(pod: dict, non_zero: bool = False) -> Resources:
    """Sum of container requests (max with init containers), as the scheduler counts them."""
    metadata = pod.get("metadata") or {}
    uid, version = metadata.get("uid"), metadata.get("resourceVersion")
    if not uid or not version:
        return _pod_requests(pod, non_zero)
    key = (uid, version, non_zero)
    with _requests_lock:
        found = _requests_cache.get(key)
    if found is None:
        found = _pod_requests(pod, non_zero)
        with _requests_lock:
            if len(_requests_cache) >= _REQUESTS_CACHE_SIZE:
                _requests_cache.clear()  # old versions pile up; starting over is cheap
            _requests_cache[key] = found
    return found


def _pod_requests(pod: dict, non_zero: bool) -> Resources:
    spec = pod.get("spec") or {}

    def of(container: dict) -> Resources:
        requests = ((container.get("resources") or {}).get("requests") or {})
        cpu = _safe(milli_cpu, requests["cpu"], 0) if "cpu" in requests else (
            DEFAULT_MILLI_CPU_REQUEST if non_zero else 0)
        mem = _safe(count, requests["memory"], 0) if "memory" in requests else (
            DEFAULT_MEMORY_REQUEST if non_zero else 0)
        return Resources(cpu, mem)

    total = Resources()
    for c in spec.get("containers") or []:
        total = total + of(c)
    for c in spec.get("initContainers") or []:
        r = of(c)
        total = Resources(max(total.milli_cpu, r.milli_cpu), max(total.memory, r.memory))
    return Resources(total.milli_cpu, total.memory, 1)


def node_allocatable(node: dict) -> Resources:
    alloc = (node.get("status") or {}).get("allocatable") or (node.get("status") or {}).get("capacity") or {}
    return Resources(_safe(milli_cpu, alloc.get("cpu", "0"), 0), _safe(count, alloc.get("memory", "0"), 0),
                     _safe(count, alloc.get("pods", "110"), 110))


def pod_priority(pod: dict) -> int:
    value = (pod.get("spec") or {}).get("priority")
    return value if isinstance(value, int) else 0


# -- taints and tolerations ------------------------------------------------------------


def tolerates(tolerations: Iterable[dict], taint: dict) -> bool:
    return any(meta.toleration_tolerates(t, taint) for t in tolerations)


def node_taints(node: dict) -> list[dict]:
    """The node's taints plus the NoSchedule taint its Ready condition implies."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    ready = meta.get_condition(node, "Ready")
    status = ready.get("status") if ready else None
    if status != "True":
        key = TAINT_UNREACHABLE if status == "Unknown" else TAINT_NOT_READY
        if not any(t.get("key") == key and t.get("effect") == "NoSchedule" for t in taints):
            taints.append({"key": key, "effect": "NoSchedule"})
    return taints


# -- node affinity -------------------------------------------------------------------------

_INTEGER = re.compile(r"[+-]?[0-9]+")


class _Invalid(NetK8sError):
    """A node selector requirement kube-scheduler could not parse: its term matches nothing (never escapes)."""


def _label_requirement_matches(req: dict, labels: Mapping[str, str]) -> bool:
    key = str(req.get("key", ""))
    op = req.get("operator")
    values = [str(v) for v in req.get("values") or []]
    present = key in labels
    if op in ("In", "NotIn"):
        if not values:
            raise _Invalid(f"{op} needs values")
        if op == "In":
            return present and labels[key] in values
        return not present or labels[key] not in values
    if op in ("Exists", "DoesNotExist"):
        if values:
            raise _Invalid(f"{op} takes no values")
        return present if op == "Exists" else not present
    if op in ("Gt", "Lt"):
        if len(values) != 1 or not _INTEGER.fullmatch(values[0]):
            raise _Invalid(f"{op} needs one integer value")
        if not present or not _INTEGER.fullmatch(labels[key]):
            return False
        have, want = int(labels[key]), int(values[0])
        return have > want if op == "Gt" else have < want
    raise _Invalid(f"unknown operator {op!r}")


def _field_requirement_matches(req: dict, node_name: str) -> bool:
    op = req.get("operator")
    values = [str(v) for v in req.get("values") or []]
    if req.get("key") != "metadata.name" or op not in ("In", "NotIn") or len(values) != 1:
        raise _Invalid("matchFields supports metadata.name with In/NotIn and one value")
    return (node_name == values[0]) == (op == "In")


def _term_is_empty(term: dict) -> bool:
    return not term.get("matchExpressions") and not term.get("matchFields")


def node_selector_term_matches(term: dict, node: dict) -> bool:
    """One NodeSelectorTerm: all expressions and fields must hold; empty or invalid terms match nothing."""
    if _term_is_empty(term):
        return False
    labels = meta.labels_of(node)
    try:
        return all(_label_requirement_matches(r, labels) for r in term.get("matchExpressions") or []) and \
            all(_field_requirement_matches(r, meta.name_of(node)) for r in term.get("matchFields") or [])
    except _Invalid:
        return False


def _node_affinity(pod: dict) -> dict:
    return (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity")) or {}


def matches_required_affinity(pod: dict, node: dict) -> bool:
    """``nodeSelector`` and required node affinity (terms ORed) both hold for the node."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    labels = meta.labels_of(node)
    if any(labels.get(k) != str(v) for k, v in selector.items()):
        return False
    required = _node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(node_selector_term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])


def affinity_node_names(pod: dict) -> set[str] | None:
    """NodeAffinity's pre-filter: the node names ``matchFields`` pins the pod to, None for any node.

    An empty set means the terms contradict each other (no node can match).
    """
    required = _node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    terms = (required or {}).get("nodeSelectorTerms") or []
    if not terms:
        return None
    names: set[str] | None = None
    for term in terms:
        term_names: set[str] | None = None
        for req in term.get("matchFields") or []:
            if req.get("key") == "metadata.name" and req.get("operator") == "In":
                values = {str(v) for v in req.get("values") or []}
                term_names = values if term_names is None else term_names & values
        if term_names is None:
            return None  # terms are ORed: this one does not restrict names
        names = term_names if names is None else names | term_names
    return names


def node_affinity_score(pod: dict, node: dict) -> int:
    """Sum of the weights of the preferred terms the node matches (before normalisation)."""
    total = 0
    for pref in _node_affinity(pod).get("preferredDuringSchedulingIgnoredDuringExecution") or []:
        weight = pref.get("weight") or 0
        term = pref.get("preference") or {}
        if weight and not _term_is_empty(term) and node_selector_term_matches(term, node):
            total += int(weight)
    return total


def taint_toleration_score(pod: dict, node: dict) -> int:
    """Number of PreferNoSchedule taints the pod does not tolerate (before normalisation)."""
    tolerations = [t for t in (pod.get("spec") or {}).get("tolerations") or []
                   if (t.get("effect") or "PreferNoSchedule") == "PreferNoSchedule"]
    return sum(1 for taint in (node.get("spec") or {}).get("taints") or []
               if taint.get("effect") == "PreferNoSchedule" and not tolerates(tolerations, taint))


def normalize_scores(scores: Mapping[str, int], reverse: bool = False) -> dict[str, int]:
    """kube-scheduler's DefaultNormalizeScore: scale to 0-100 by the maximum, optionally reversed."""
    highest = max(scores.values(), default=0)
    if highest == 0:
        return {name: MAX_NODE_SCORE if reverse else 0 for name in scores}
    out = {}
    for name, score in scores.items():
        scaled = MAX_NODE_SCORE * score // highest
        out[name] = MAX_NODE_SCORE - scaled if reverse else scaled
    return out


# -- node state and filters -------------------------------------------------------------------


@dataclass
class NodeState:
    node: dict
    requested: Resources = Resources()
    requested_non_zero: Resources = Resources()
    pods: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return meta.name_of(self.node)

    def add(self, pod: dict) -> None:
        self.pods.append(pod)
        self.requested = self.requested + pod_requests(pod)
        self.requested_non_zero = self.requested_non_zero + pod_requests(pod, non_zero=True)

    def without(self, removed: list[dict]) -> "NodeState":
        gone = {id(p) for p in removed}
        state = NodeState(self.node)
        for pod in self.pods:
            if id(pod) not in gone:
                state.add(pod)
        return state


def build_node_states(nodes: list[dict], pods: list[dict]) -> dict[str, NodeState]:
    """Node name -> state, counting every non-terminal pod bound to the node."""
    states = {meta.name_of(n): NodeState(n) for n in nodes}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node_name in states and phase not in ("Succeeded", "Failed"):
            states[node_name].add(pod)
    return states


def _fit_reasons(pod: dict, state: NodeState) -> tuple[str, ...]:
    alloc = node_allocatable(state.node)
    want = pod_requests(pod)
    reasons = []
    if state.requested.pods + 1 > alloc.pods:
        reasons.append(REASON_TOO_MANY_PODS)
    if want.milli_cpu and want.milli_cpu > alloc.milli_cpu - state.requested.milli_cpu:
        reasons.append(insufficient_reason("cpu"))
    if want.memory and want.memory > alloc.memory - state.requested.memory:
        reasons.append(insufficient_reason("memory"))
    return tuple(reasons)


def filter_node(pod: dict, state: NodeState) -> Status | None:
    """None when the pod fits the node, else the first failing plugin's status."""
    node = state.node
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if (node.get("spec") or {}).get("unschedulable") and \
            not tolerates(tolerations, {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}):
        return Status(Code.UNRESOLVABLE, (REASON_UNSCHEDULABLE,), Plugin.NODE_UNSCHEDULABLE)
    if spec.get("nodeName") and spec["nodeName"] != state.name:
        return Status(Code.UNRESOLVABLE, (REASON_NODE_NAME,), Plugin.NODE_NAME)
    for taint in node_taints(node):
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return Status(Code.UNRESOLVABLE, (untolerated_taint_reason(taint),), Plugin.TAINT_TOLERATION)
    if not matches_required_affinity(pod, node):
        return Status(Code.UNRESOLVABLE, (REASON_NODE_AFFINITY,), Plugin.NODE_AFFINITY)
    reasons = _fit_reasons(pod, state)
    if reasons:
        return Status(Code.UNSCHEDULABLE, reasons, Plugin.NODE_RESOURCES_FIT)
    return None


def least_allocated_score(pod: dict, state: NodeState) -> int:
    """NodeResourcesFit LeastAllocated: mean free share of CPU and memory after placing the pod (0-100)."""
    alloc = node_allocatable(state.node)
    want = pod_requests(pod, non_zero=True)
    total = weights = 0
    for used, cap in ((state.requested_non_zero.milli_cpu + want.milli_cpu, alloc.milli_cpu),
                      (state.requested_non_zero.memory + want.memory, alloc.memory)):
        if cap <= 0:
            continue
        total += 0 if used > cap else (cap - used) * MAX_NODE_SCORE // cap
        weights += 1
    return total // weights if weights else 0


def score_nodes(pod: dict, feasible: list[NodeState]) -> dict[str, int]:
    """Weighted sum of the normalised plugin scores for each feasible node."""
    fit = {s.name: least_allocated_score(pod, s) for s in feasible}
    affinity = normalize_scores({s.name: node_affinity_score(pod, s.node) for s in feasible})
    taints = normalize_scores({s.name: taint_toleration_score(pod, s.node) for s in feasible}, reverse=True)
    return {name: fit[name] * SCORE_WEIGHTS[Plugin.NODE_RESOURCES_FIT]
            + affinity[name] * SCORE_WEIGHTS[Plugin.NODE_AFFINITY]
            + taints[name] * SCORE_WEIGHTS[Plugin.TAINT_TOLERATION] for name in fit}


# -- failure messages -------------------------------------------------------------------------


def fit_error_message(total: int, statuses: Mapping[str, Status], prefilter_message: str = "",
                      postfilter_message: str = "") -> str:
    """kube-scheduler's FitError text: a histogram of reasons sorted as strings ("<n> <reason>")."""
    message = f"0/{total} nodes are available:"
    if prefilter_message:
        message += f" {prefilter_message}."
    else:
        histogram = Counter(reason for status in statuses.values() for reason in status.reasons)
        parts = sorted(f"{n} {reason}" for reason, n in histogram.items())
        if parts:
            message += f" {', '.join(parts)}."
    if postfilter_message:
        message += f" {postfilter_message}"
    return message


def preemption_message(pod: dict, states: Mapping[str, NodeState], statuses: Mapping[str, Status]) -> str:
    """DefaultPreemption's PostFilter message after a dry run; "" when evicting pods would make room."""
    if (pod.get("spec") or {}).get("preemptionPolicy") == "Never":
        return f"preemption: {PREEMPTION_POLICY_NEVER}"
    priority = pod_priority(pod)
    outcome: dict[str, Status] = {}
    helpful = False
    for name in states:
        status = statuses.get(name)
        if status is None or status.code is not Code.UNSCHEDULABLE:
            outcome[name] = Status(Code.UNRESOLVABLE, (REASON_PREEMPTION_NOT_HELPFUL,), Plugin.DEFAULT_PREEMPTION)
            continue
        state = states[name]
        victims = [p for p in state.pods if pod_priority(p) < priority]
        if not victims:
            outcome[name] = Status(Code.UNRESOLVABLE, (REASON_NO_VICTIMS,), Plugin.DEFAULT_PREEMPTION)
            continue
        after = filter_node(pod, state.without(victims))
        if after is None:
            helpful = True
        else:
            outcome[name] = after
    if helpful:
        log.info("evicting lower-priority pods would make room for %s; netk8s does not preempt",
                 meta.key_of(pod))
        return ""
    return f"preemption: {fit_error_message(len(states), outcome)}"


# -- the scheduling cycle -------------------------------------------------------------------------


@dataclass
class Decision:
    node_name: str | None
    message: str = ""
    statuses: dict[str, Status] = field(default_factory=dict)
    scores: dict[str, int] = field(default_factory=dict)

    @property
    def reasons(self) -> dict[str, tuple[str, ...]]:
        return {name: status.reasons for name, status in self.statuses.items()}


def schedule(pod: dict, states: dict[str, NodeState], rng: random.Random | None = None) -> Decision:
    """One scheduling cycle for ``pod`` over ``states``: the chosen node, or why none fits."""
    rng = rng or random.Random()
    if not states:
        return Decision(None, NO_NODES_AVAILABLE)
    total = len(states)
    names = affinity_node_names(pod)
    if names is not None and not names:
        statuses = {n: Status(Code.UNRESOLVABLE, (REASON_AFFINITY_CONFLICT,), Plugin.NODE_AFFINITY) for n in states}
        message = fit_error_message(total, statuses, REASON_AFFINITY_CONFLICT,
                                    preemption_message(pod, states, statuses))
        return Decision(None, message, statuses)
    statuses = {}
    feasible: list[NodeState] = []
    for name, state in sorted(states.items()):
        if names is not None and name not in names:
            statuses[name] = Status(Code.UNRESOLVABLE, (REASON_PREFILTER_NODE_AFFINITY,), Plugin.NODE_AFFINITY)
            continue
        status = filter_node(pod, state)
        if status is None:
            feasible.append(state)
        else:
            statuses[name] = status
    if not feasible:
        message = fit_error_message(total, statuses, postfilter_message=preemption_message(pod, states, statuses))
        return Decision(None, message, statuses)
    scores = score_nodes(pod, feasible)
    best = max(scores.values())
    return Decision(rng.choice(sorted(n for n, s in scores.items() if s == best)), "", statuses, scores)
