"""Object metadata helpers shared by the API server, controllers and agents.

Objects are plain Kubernetes-shaped dicts; these functions read and build the
common parts (names, labels, owner references, timestamps, conditions) so that
no component hand-rolls them.
"""

from __future__ import annotations

import datetime as _dt
import secrets
import uuid
from typing import Any

# Kubernetes' alphabet for generated name suffixes: no vowels, no confusables.
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def format_time(moment: _dt.datetime) -> str:
    """RFC 3339 timestamp with second precision in UTC, as metav1.Time marshals (``parse_time`` reads it)."""
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    """The current time as ``format_time`` writes it."""
    return format_time(_dt.datetime.now(_dt.timezone.utc))


def later(seconds: float) -> str:
    """``seconds`` from now, as ``format_time`` writes it (deletionTimestamp of a graceful deletion)."""
    return format_time(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=seconds))


def is_terminating(obj: dict) -> bool:
    """True once the object has a deletionTimestamp (graceful deletion or finalizers pending)."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def parse_time(value: str | None) -> _dt.datetime | None:
    """A metav1.Time (``2006-01-02T15:04:05Z``) or MicroTime (``...05.000000Z``) in UTC; None when not one."""
    if not value:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return _dt.datetime.strptime(value, layout).replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            continue
    return None


def new_uid() -> str:
    return str(uuid.uuid4())


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(length))


def name_of(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def namespace_of(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def uid_of(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("uid", "")


def labels_of(obj: dict) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def key_of(obj: dict) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects), as informers key them."""
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def owner_reference(owner: dict, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: dict) -> dict | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def is_controlled_by(obj: dict, owner: dict) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == uid_of(owner)


def get_condition(obj: dict, cond_type: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == cond_type:
            return cond
    return None


def condition_true(obj: dict, cond_type: str) -> bool:
    cond = get_condition(obj, cond_type)
    return cond is not None and cond.get("status") == "True"


def set_condition(conditions: list[dict], cond_type: str, status: str, reason: str = "",
                  message: str = "", heartbeat: bool = False) -> list[dict]:
    """Return ``conditions`` with ``cond_type`` set; the transition time moves only on change.

    ``reason`` and ``message`` replace the old ones (an empty one removes it), so a condition that
    turns True does not keep the reason it was False for.
    """
    stamp = now()
    out = []
    found = False
    for cond in conditions:
        if cond.get("type") != cond_type:
            out.append(cond)
            continue
        found = True
        new = {k: v for k, v in cond.items() if k not in ("reason", "message")}
        new["status"] = status
        if reason:
            new["reason"] = reason
        if message:
            new["message"] = message
        if cond.get("status") != status:
            new["lastTransitionTime"] = stamp
        if heartbeat:
            new["lastHeartbeatTime"] = stamp
        out.append(new)
    if not found:
        new = {"type": cond_type, "status": status, "lastTransitionTime": stamp}
        if heartbeat:
            new["lastHeartbeatTime"] = stamp
        if reason:
            new["reason"] = reason
        if message:
            new["message"] = message
        out.append(new)
    return out


TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
# Well-known labels and annotations that several components read or write.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service
HEADLESS_LABEL = "service.kubernetes.io/headless"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def with_default_tolerations(tolerations: list[dict], seconds: float) -> list[dict]:
    """``tolerations`` plus DefaultTolerationSeconds' NoExecute tolerations of the not-ready and
    unreachable taints, for each key the pod does not tolerate already (that key or any key,
    with no effect or NoExecute), as the admission plugin adds them."""
    out = list(tolerations)
    for key in (TAINT_NOT_READY, TAINT_UNREACHABLE):
        if not any((t.get("key") or "") in ("", key) and (t.get("effect") or "") in ("", "NoExecute")
                   for t in tolerations):
            out.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds})
    return out


def toleration_tolerates(toleration: dict, taint: dict) -> bool:
    """core/v1 Toleration.ToleratesTaint: effect and key (when set) match, then the operator."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def pod_is_ready(pod: dict) -> bool:
    return condition_true(pod, "Ready")


def qos_class(spec: dict) -> str:
    """A pod spec's QoS class, which the API server writes into ``status.qosClass`` at create."""
    containers = spec.get("containers") or []
    requests_any = False
    guaranteed = bool(containers)
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if limits or requests:
            requests_any = True
        for r in ("cpu", "memory"):
            if r not in limits or requests.get(r, limits.get(r)) != limits.get(r):
                guaranteed = False
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if requests_any else "BestEffort"


def node_is_ready(node: dict) -> bool:
    return condition_true(node, "Ready")


def node_internal_ip(node: dict) -> str:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP":
            return addr.get("address", "")
    return ""


def age(timestamp: str | None, at: _dt.datetime | None = None) -> str:
    """kubectl's compact age: 45s, 3m12s, 5h, 2d3h."""
    start = parse_time(timestamp)
    if start is None:
        return "<unknown>"
    seconds = int(((at or _dt.datetime.now(_dt.timezone.utc)) - start).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"
