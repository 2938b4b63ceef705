"""kubectl-style table printers: the columns `kubectl get` shows for each kind.

``table(kind, objects)`` turns Kubernetes-shaped dicts into headers and rows
with the same cells kubectl 1.32's server-side printers produce (Pod STATUS and
RESTARTS logic, Service EXTERNAL-IP/PORT(S), Node STATUS/ROLES, ...);
``format_table`` lays them out the way kubectl's tabwriter does. Objects may be
partial: a missing field prints as kubectl prints its zero value, never raises.
Pure functions, no I/O.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable, Mapping

from netk8s.api.meta import age, name_of, namespace_of, parse_time

# kubectl's tabwriter settings (minwidth 6, padding 3, pad with spaces).
_TAB_MIN_WIDTH = 6
_TAB_PADDING = 3

# Non-wide LoadBalancer ingress lists are cut to this width, as kubectl does.
_LOADBALANCER_WIDTH = 16

_NODE_ROLE_PREFIX = "node-role.kubernetes.io/"
_NODE_ROLE_LABEL = "kubernetes.io/role"

Row = list[str]
_RowFn = Callable[[dict, bool, _dt.datetime | None], Row]


# --- small readers that tolerate partial objects ------------------------------------------

def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _spec(obj: dict) -> dict:
    return _dict(obj.get("spec"))


def _status(obj: dict) -> dict:
    return _dict(obj.get("status"))


def _age(obj: dict, now: _dt.datetime | None) -> str:
    return age(_dict(obj.get("metadata")).get("creationTimestamp"), now)


def _or(value: Any, fallback: str) -> str:
    text = "" if value is None else str(value)
    return text if text else fallback


def format_labels(labels: Mapping[str, Any] | None) -> str:
    """``k=v`` pairs sorted by key and comma-joined, or ``<none>`` (labels.FormatLabels)."""
    if not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def format_label_selector(selector: Mapping[str, Any] | None) -> str:
    """A metav1.LabelSelector in selector syntax, requirements sorted by key, values sorted.

    Returns ``""`` for a nil or empty selector and ``<error>`` for an unknown operator;
    callers decide whether to show ``<none>`` instead.
    """
    if not isinstance(selector, Mapping):
        return ""
    reqs: list[tuple[str, str]] = []
    for key, value in _dict(selector.get("matchLabels")).items():
        reqs.append((str(key), f"{key}={value}"))
    for expr in _list(selector.get("matchExpressions")):
        expr = _dict(expr)
        key = str(expr.get("key", ""))
        op = expr.get("operator")
        values = ",".join(sorted(str(v) for v in _list(expr.get("values"))))
        if op == "In":
            reqs.append((key, f"{key} in ({values})"))
        elif op == "NotIn":
            reqs.append((key, f"{key} notin ({values})"))
        elif op == "Exists":
            reqs.append((key, key))
        elif op == "DoesNotExist":
            reqs.append((key, f"!{key}"))
        else:
            return "<error>"
    reqs.sort(key=lambda r: r[0])  # stable: same-key requirements keep their order
    return ",".join(text for _, text in reqs)


def _containers_cells(pod_spec: dict) -> tuple[str, str]:
    containers = [_dict(c) for c in _list(pod_spec.get("containers"))]
    return (",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers))


def _template_spec(obj: dict) -> dict:
    return _spec(_dict(_spec(obj).get("template")))


# --- Pod ---------------------------------------------------------------------------------

def _condition_true(status: dict, cond_type: str) -> bool:
    return any(_dict(c).get("type") == cond_type and _dict(c).get("status") == "True"
               for c in _list(status.get("conditions")))


def _later(current: _dt.datetime | None, state: dict) -> _dt.datetime | None:
    """The later of ``current`` and ``state.terminated.finishedAt`` (last restart time)."""
    finished = parse_time(_dict(state.get("terminated")).get("finishedAt"))
    if finished is not None and (current is None or finished > current):
        return finished
    return current


def _terminated_reason(term: dict, prefix: str = "") -> str:
    if term.get("reason"):
        return prefix + str(term["reason"])
    if _int(term.get("signal")):
        return f"{prefix}Signal:{_int(term.get('signal'))}"
    return f"{prefix}ExitCode:{_int(term.get('exitCode'))}"


def pod_status_text(pod: dict) -> tuple[str, int, int, int, _dt.datetime | None]:
    """kubectl's pod STATUS reason, ready count, total containers, restarts, last restart time."""
    spec, status = _spec(pod), _status(pod)
    phase = str(status.get("phase") or "")
    reason = str(status.get("reason") or phase)
    for cond in _list(status.get("conditions")):
        cond = _dict(cond)
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = {str(_dict(c).get("name", "")): _dict(c) for c in _list(spec.get("initContainers"))}

    def sidecar(name: str) -> bool:
        # A restartable init container (restartPolicy: Always) counts as a regular container.
        return init_specs.get(name, {}).get("restartPolicy") == "Always"

    total = len(_list(spec.get("containers"))) + sum(1 for n in init_specs if sidecar(n))
    ready = 0
    restarts = 0
    sidecar_restarts = 0
    last_restart: _dt.datetime | None = None
    last_sidecar_restart: _dt.datetime | None = None

    initializing = False
    for i, cs in enumerate(_list(status.get("initContainerStatuses"))):
        cs = _dict(cs)
        name = str(cs.get("name", ""))
        state, last_state = _dict(cs.get("state")), _dict(cs.get("lastState"))
        restarts += _int(cs.get("restartCount"))
        last_restart = _later(last_restart, last_state)
        if sidecar(name):
            sidecar_restarts += _int(cs.get("restartCount"))
            last_sidecar_restart = _later(last_sidecar_restart, last_state)
        term, waiting = state.get("terminated"), state.get("waiting")
        if isinstance(term, dict) and _int(term.get("exitCode")) == 0:
            continue
        if sidecar(name) and cs.get("started"):
            if cs.get("ready"):
                ready += 1
            continue
        if isinstance(term, dict):
            reason = _terminated_reason(term, "Init:")
        elif isinstance(waiting, dict) and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break

    if not initializing or _condition_true(status, "Initialized"):
        restarts = sidecar_restarts
        last_restart = last_sidecar_restart
        has_running = False
        # kubectl walks the statuses backwards, so the first container's reason wins.
        for cs in reversed(_list(status.get("containerStatuses"))):
            cs = _dict(cs)
            state = _dict(cs.get("state"))
            restarts += _int(cs.get("restartCount"))
            last_restart = _later(last_restart, _dict(cs.get("lastState")))
            waiting, term = state.get("waiting"), state.get("terminated")
            if isinstance(waiting, dict) and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif isinstance(term, dict):
                reason = _terminated_reason(term)
            elif cs.get("ready") and (isinstance(state.get("running"), dict) or not state):
                # A partial status with no state at all is read as running.
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _condition_true(status, "Ready") else "NotReady"

    deleting = bool(_dict(pod.get("metadata")).get("deletionTimestamp"))
    if deleting and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif deleting and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"
    return reason, ready, total, restarts, last_restart


def _pod_row(pod: dict, wide: bool, now: _dt.datetime | None) -> Row:
    reason, ready, total, restarts, last_restart = pod_status_text(pod)
    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        stamp = last_restart.strftime("%Y-%m-%dT%H:%M:%SZ")
        restarts_text = f"{restarts} ({age(stamp, now)} ago)"
    row = [name_of(pod), f"{ready}/{total}", reason, restarts_text, _age(pod, now)]
    if wide:
        spec, status = _spec(pod), _status(pod)
        pod_ips = _list(status.get("podIPs"))
        ip = _dict(pod_ips[0]).get("ip") if pod_ips else status.get("podIP")
        gates = _list(spec.get("readinessGates"))
        gates_text = "<none>"
        if gates:
            conds: dict[Any, Any] = {}
            for cond in _list(status.get("conditions")):
                cond = _dict(cond)
                conds.setdefault(cond.get("type"), cond.get("status"))
            true = sum(1 for g in gates if conds.get(_dict(g).get("conditionType")) == "True")
            gates_text = f"{true}/{len(gates)}"
        row += [_or(ip, "<none>"), _or(spec.get("nodeName"), "<none>"),
                _or(status.get("nominatedNodeName"), "<none>"), gates_text]
    return row


# --- Service -----------------------------------------------------------------------------

def _lb_ingress(status: dict, wide: bool) -> str:
    found: set[str] = set()
    for ing in _list(_dict(status.get("loadBalancer")).get("ingress")):
        ing = _dict(ing)
        if ing.get("ip"):
            found.add(str(ing["ip"]))
        elif ing.get("hostname"):
            found.add(str(ing["hostname"]))
    text = ",".join(sorted(found))
    if not wide and len(text) > _LOADBALANCER_WIDTH:
        text = text[:_LOADBALANCER_WIDTH - 3] + "..."
    return text


def _service_external_ip(svc: dict, wide: bool) -> str:
    spec = _spec(svc)
    svc_type = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in _list(spec.get("externalIPs"))]
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        lb = _lb_ingress(_status(svc), wide)
        parts = (lb.split(",") if lb else []) + external
        return ",".join(parts) if parts else "<pending>"
    if svc_type == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def _service_ports(spec: dict) -> str:
    pieces = []
    for port in _list(spec.get("ports")):
        port = _dict(port)
        proto = port.get("protocol") or "TCP"
        node_port = _int(port.get("nodePort"))
        if node_port > 0:
            pieces.append(f"{_int(port.get('port'))}:{node_port}/{proto}")
        else:
            pieces.append(f"{_int(port.get('port'))}/{proto}")
    return ",".join(pieces) or "<none>"


def _service_row(svc: dict, wide: bool, now: _dt.datetime | None) -> Row:
    spec = _spec(svc)
    cluster_ips = _list(spec.get("clusterIPs"))
    cluster_ip = cluster_ips[0] if cluster_ips else spec.get("clusterIP")
    row = [name_of(svc), str(spec.get("type") or "ClusterIP"), _or(cluster_ip, "<none>"),
           _service_external_ip(svc, wide), _service_ports(spec), _age(svc, now)]
    if wide:
        row.append(format_labels(_dict(spec.get("selector"))))
    return row


# --- Node --------------------------------------------------------------------------------

def _node_roles(labels: Mapping[str, Any]) -> str:
    roles: set[str] = set()
    for key, value in labels.items():
        if key.startswith(_NODE_ROLE_PREFIX) and key[len(_NODE_ROLE_PREFIX):]:
            roles.add(key[len(_NODE_ROLE_PREFIX):])
        elif key == _NODE_ROLE_LABEL and value:
            roles.add(str(value))
    return ",".join(sorted(roles)) or "<none>"


def _node_address(status: dict, addr_type: str) -> str:
    for addr in _list(status.get("addresses")):
        addr = _dict(addr)
        if addr.get("type") == addr_type:
            return _or(addr.get("address"), "<none>")
    return "<none>"


def _node_row(node: dict, wide: bool, now: _dt.datetime | None) -> Row:
    spec, status = _spec(node), _status(node)
    states: list[str] = []
    ready = None
    for cond in _list(status.get("conditions")):
        cond = _dict(cond)
        if cond.get("type") == "Ready":
            ready = cond  # the last Ready condition wins, as kubectl's map does
    if ready is not None:
        # kubectl prints NotReady for both False and Unknown; Unknown only without a condition.
        states.append("Ready" if ready.get("status") == "True" else "NotReady")
    else:
        states.append("Unknown")
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    labels = _dict(_dict(node.get("metadata")).get("labels"))
    info = _dict(status.get("nodeInfo"))
    row = [name_of(node), ",".join(states), _node_roles(labels), _age(node, now),
           str(info.get("kubeletVersion") or "")]
    if wide:
        row += [_node_address(status, "InternalIP"), _node_address(status, "ExternalIP"),
                _or(info.get("osImage"), "<unknown>"), _or(info.get("kernelVersion"), "<unknown>"),
                _or(info.get("containerRuntimeVersion"), "<unknown>")]
    return row


# --- workloads ---------------------------------------------------------------------------

def _replicas(spec: dict) -> int:
    # The API defaults spec.replicas to 1; partial objects get the same default.
    return _int(spec["replicas"]) if spec.get("replicas") is not None else 1


def _deployment_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    spec, status = _spec(obj), _status(obj)
    row = [name_of(obj), f"{_int(status.get('readyReplicas'))}/{_replicas(spec)}",
           str(_int(status.get("updatedReplicas"))), str(_int(status.get("availableReplicas"))),
           _age(obj, now)]
    if wide:
        names, images = _containers_cells(_template_spec(obj))
        # Deployments print an empty selector as an empty cell (not <none>), as kubectl does.
        row += [names, images, format_label_selector(spec.get("selector"))]
    return row


def _replicaset_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    spec, status = _spec(obj), _status(obj)
    row = [name_of(obj), str(_replicas(spec)), str(_int(status.get("replicas"))),
           str(_int(status.get("readyReplicas"))), _age(obj, now)]
    if wide:
        names, images = _containers_cells(_template_spec(obj))
        row += [names, images, format_label_selector(spec.get("selector")) or "<none>"]
    return row


# --- EndpointSlice -----------------------------------------------------------------------

def _first_three(items: list[str], count: int) -> str:
    text = ",".join(items[:3])
    if count > 3:
        return f"{text} + {count - 3} more..."
    return text or "<unset>"


def _endpointslice_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    ports = []
    for port in _list(obj.get("ports")):
        port = _dict(port)
        if port.get("port") is not None:
            ports.append(str(_int(port.get("port"))))
        elif port.get("name") is not None:
            ports.append(str(port["name"]))
        else:
            ports.append("*")
    addresses = [str(a) for ep in _list(obj.get("endpoints")) for a in _list(_dict(ep).get("addresses"))]
    return [name_of(obj), str(obj.get("addressType") or ""), _first_three(ports, len(ports)),
            _first_three(addresses, len(addresses)), _age(obj, now)]


# --- Namespace and the rest --------------------------------------------------------------

def _namespace_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    return [name_of(obj), str(_status(obj).get("phase") or ""), _age(obj, now)]


def _configmap_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    count = len(_dict(obj.get("data"))) + len(_dict(obj.get("binaryData")))
    return [name_of(obj), str(count), _age(obj, now)]


def _secret_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    count = len(_dict(obj.get("data"))) + len(_dict(obj.get("stringData")))
    return [name_of(obj), str(obj.get("type") or "Opaque"), str(count), _age(obj, now)]


def _serviceaccount_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    return [name_of(obj), str(len(_list(obj.get("secrets")))), _age(obj, now)]


def _endpoints_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    pairs = []
    for subset in _list(obj.get("subsets")):
        subset = _dict(subset)
        ports = [_int(_dict(p).get("port")) for p in _list(subset.get("ports"))]
        for address in _list(subset.get("addresses")):
            ip = str(_dict(address).get("ip") or "")
            pairs += [f"{ip}:{port}" for port in ports] if ports else [ip]
    text = _first_three(pairs, len(pairs)) if pairs else "<none>"
    return [name_of(obj), text, _age(obj, now)]


def _since(value: Any, now: _dt.datetime | None) -> str:
    return age(str(value), now) if value else "<unknown>"


def _event_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    involved = _dict(obj.get("involvedObject"))
    last = obj.get("lastTimestamp") or obj.get("eventTime") or _dict(obj.get("metadata")).get("creationTimestamp")
    row = [_since(last, now), str(obj.get("type") or ""), str(obj.get("reason") or ""),
           f"{str(involved.get('kind') or '').lower()}/{involved.get('name') or ''}", str(obj.get("message") or "")]
    if wide:
        source = _dict(obj.get("source"))
        origin = ", ".join(str(v) for v in (source.get("component"), source.get("host")) if v) or \
            str(obj.get("reportingComponent") or "")
        first = obj.get("firstTimestamp") or obj.get("eventTime")
        row += [str(involved.get("fieldPath") or ""), origin, _since(first, now), str(_int(obj.get("count")) or 1),
                name_of(obj)]
    return row


def _networkpolicy_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    selector = format_label_selector(_dict(_spec(obj).get("podSelector"))) or "<none>"
    return [name_of(obj), selector, _age(obj, now)]


def _lease_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    return [name_of(obj), str(_spec(obj).get("holderIdentity") or ""), _age(obj, now)]


def _default_row(obj: dict, wide: bool, now: _dt.datetime | None) -> Row:
    return [name_of(obj), _age(obj, now)]


# kind -> (headers, wide-only headers, row function)
_PRINTERS: dict[str, tuple[list[str], list[str], _RowFn]] = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"], _pod_row),
    "Service": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"], _service_row),
    "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
             ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"], _node_row),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                   ["CONTAINERS", "IMAGES", "SELECTOR"], _deployment_row),
    "ReplicaSet": (["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
                   ["CONTAINERS", "IMAGES", "SELECTOR"], _replicaset_row),
    "EndpointSlice": (["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], [], _endpointslice_row),
    "Namespace": (["NAME", "STATUS", "AGE"], [], _namespace_row),
    "ConfigMap": (["NAME", "DATA", "AGE"], [], _configmap_row),
    "Secret": (["NAME", "TYPE", "DATA", "AGE"], [], _secret_row),
    "ServiceAccount": (["NAME", "SECRETS", "AGE"], [], _serviceaccount_row),
    "Endpoints": (["NAME", "ENDPOINTS", "AGE"], [], _endpoints_row),
    "Event": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
              ["SUBOBJECT", "SOURCE", "FIRST SEEN", "COUNT", "NAME"], _event_row),
    "NetworkPolicy": (["NAME", "POD-SELECTOR", "AGE"], [], _networkpolicy_row),
    "Lease": (["NAME", "HOLDER", "AGE"], [], _lease_row),
}


def table(kind: str, objects: list[dict], wide: bool = False, with_namespace: bool = False,
          now: _dt.datetime | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for ``kubectl get <kind>`` (``wide``: ``-o wide``; ``with_namespace``: ``-A``)."""
    headers, wide_headers, row_fn = _PRINTERS.get(kind, (["NAME", "AGE"], [], _default_row))
    headers = list(headers) + (list(wide_headers) if wide else [])
    rows: list[list[str]] = []
    for obj in objects:
        obj = _dict(obj)
        row = row_fn(obj, wide, now)
        if with_namespace:
            row = [namespace_of(obj)] + row
        rows.append(row)
    if with_namespace:
        headers = ["NAMESPACE"] + headers
    return headers, rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Lay out a table as kubectl's tabwriter does: left-aligned columns, 3 spaces apart.

    A column is as wide as its widest cell plus 3 (at least 6); the last cell of
    each line is not padded and trailing spaces are stripped. Ends with a newline.
    """
    lines = [list(headers)] + [list(r) for r in rows]
    ncols = max(len(line) for line in lines)
    widths = [_TAB_MIN_WIDTH] * ncols
    for line in lines:
        # Every cell but the last one of a line is tab-terminated and sets the column width.
        for i, cell in enumerate(line[:-1]):
            widths[i] = max(widths[i], len(cell) + _TAB_PADDING)
    out = []
    for line in lines:
        text = "".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:-1]))
        text += line[-1] if line else ""
        out.append(text.rstrip(" "))
    return "\n".join(out) + "\n"
