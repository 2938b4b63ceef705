"""Pure scheduling: filter nodes, score the feasible ones, pick one.

Filters mirror kube-scheduler's default plugins for the fields netk8s uses:
NodeUnschedulable, node readiness, TaintToleration (NoSchedule/NoExecute),
NodeName, NodeAffinity's nodeSelector, NodeResourcesFit (cpu, memory, pods).
Scoring is NodeResourcesFit's LeastAllocated with kube-scheduler's non-zero
defaults (100m CPU, 200Mi memory for a container without requests), so pods
spread across equal nodes. The failure message reads like kube-scheduler's.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from netk8s.api import meta
from netk8s.api.quantity import count, milli_cpu
from netk8s.errors import ValidationError

DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024


@dataclass(frozen=True)
class Resources:
    milli_cpu: int = 0
    memory: int = 0
    pods: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.milli_cpu + other.milli_cpu, self.memory + other.memory, self.pods + other.pods)


def _safe(fn, value, default: int) -> int:  # type: ignore[no-untyped-def]
    try:
        return fn(value)
    except ValidationError:
        return default


def pod_requests(pod: dict, non_zero: bool = False) -> Resources:
    """Sum of container requests (max with init containers), as the scheduler counts them."""
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


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for tol in tolerations:
        effect = tol.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        operator = tol.get("operator", "Equal")
        key = tol.get("key")
        if not key:
            if operator == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if operator == "Exists" or tol.get("value", "") == taint.get("value", ""):
            return True
    return False


@dataclass
class NodeState:
    node: dict
    requested: Resources = Resources()
    requested_non_zero: Resources = Resources()

    @property
    def name(self) -> str:
        return meta.name_of(self.node)


@dataclass
class Decision:
    node_name: str | None
    message: str = ""
    reasons: dict[str, str] = field(default_factory=dict)


def build_node_states(nodes: list[dict], pods: list[dict]) -> dict[str, NodeState]:
    states = {meta.name_of(n): NodeState(n) for n in nodes}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node_name or node_name not in states or phase in ("Succeeded", "Failed"):
            continue
        s = states[node_name]
        s.requested = s.requested + pod_requests(pod)
        s.requested_non_zero = s.requested_non_zero + pod_requests(pod, non_zero=True)
    return states


def filter_node(pod: dict, state: NodeState) -> str | None:
    """None when the pod fits, else kube-scheduler's reason text for this node."""
    node = state.node
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if not meta.node_is_ready(node):
        return "node(s) were not ready"
    if (node.get("spec") or {}).get("unschedulable"):
        unsched_taint = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
        if not tolerates(tolerations, unsched_taint):
            return "node(s) were unschedulable"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    selector = spec.get("nodeSelector") or {}
    labels = meta.labels_of(node)
    if any(labels.get(k) != v for k, v in selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    alloc = node_allocatable(node)
    want = pod_requests(pod)
    if state.requested.pods + 1 > alloc.pods:
        return "Too many pods"
    if want.milli_cpu and state.requested.milli_cpu + want.milli_cpu > alloc.milli_cpu:
        return "Insufficient cpu"
    if want.memory and state.requested.memory + want.memory > alloc.memory:
        return "Insufficient memory"
    return None


def least_allocated_score(pod: dict, state: NodeState) -> float:
    alloc = node_allocatable(state.node)
    want = pod_requests(pod, non_zero=True)
    scores = []
    for used, cap in ((state.requested_non_zero.milli_cpu + want.milli_cpu, alloc.milli_cpu),
                      (state.requested_non_zero.memory + want.memory, alloc.memory)):
        scores.append(0.0 if cap <= 0 or used > cap else (cap - used) * 100.0 / cap)
    return sum(scores) / len(scores)


def schedule(pod: dict, states: dict[str, NodeState], rng: random.Random | None = None) -> Decision:
    rng = rng or random.Random()
    wanted = (pod.get("spec") or {}).get("nodeName")
    feasible: list[NodeState] = []
    reasons: dict[str, str] = {}
    for name, state in sorted(states.items()):
        reason = filter_node(pod, state)
        if reason is None:
            feasible.append(state)
        else:
            reasons[name] = reason
    if wanted:
        feasible = [s for s in feasible if s.name == wanted]
    if not feasible:
        total = len(states)
        counts = Counter(reasons.values())
        detail = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: kv[0]))
        message = f"0/{total} nodes are available: {detail}." if detail else f"0/{total} nodes are available."
        if total:
            message += (f" preemption: 0/{total} nodes are available: {total} Preemption is not helpful for "
                        "scheduling.")
        return Decision(None, message, reasons)
    scored = [(least_allocated_score(pod, s), s.name) for s in feasible]
    best = max(score for score, _ in scored)
    top = [name for score, name in scored if score >= best - 1e-9]
    return Decision(rng.choice(top), "", reasons)
