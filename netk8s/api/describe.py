"""``describe`` output as kubectl writes it: pods, services, deployments, replica sets, nodes, and a
short generic form for every other kind.

Pure: each describer takes the object, the related objects kubectl would fetch
(``Related``: events, the Service's Endpoints, a Deployment's ReplicaSets, a
node's pods and Lease) and the time to compute ages from, and returns text.
Lines are laid out by ``tabwrite``, which follows Go's text/tabwriter with
kubectl's settings (padding 2): each tab-terminated cell is padded to the
widest cell of its column among the consecutive lines that have that column,
so a line without a tab starts a new block, as in kubectl's output.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from netk8s.api import meta, quantity
from netk8s.api.printers import format_label_selector, format_labels
from netk8s.errors import ValidationError

_PADDING = 2
_MAX_ANNOTATION = 140
_RFC1123Z = "%a, %d %b %Y %H:%M:%S %z"
_LAST_APPLIED = meta.LAST_APPLIED_ANNOTATION


@dataclass
class Related:
    """What kubectl fetches besides the object itself."""

    events: list[dict] = field(default_factory=list)
    endpoints: dict | None = None  # a Service's
    replicasets: list[dict] = field(default_factory=list)  # in a Deployment's namespace
    pods: list[dict] = field(default_factory=list)  # on a node, or of a ReplicaSet
    lease: dict | None = None  # a node's
    secrets: list[dict] = field(default_factory=list)  # in a ServiceAccount's namespace


# -- layout -------------------------------------------------------------------------------------------

def tabwrite(text: str, padding: int = _PADDING) -> str:
    """Align tab-separated cells as Go's tabwriter (minwidth 0, padding ``padding``, flags 0) does."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def emit(first: int, last: int) -> None:
        for cells in lines[first:last]:
            out.append("".join(cell.ljust(widths[i]) if i < len(widths) else cell
                               for i, cell in enumerate(cells[:-1])) + cells[-1])

    def format_block(first: int, last: int) -> None:
        column = len(widths)
        start = first
        row = first
        while row < last:
            if column >= len(lines[row]) - 1:
                row += 1
                continue
            emit(start, row)  # lines above the block of this column
            start = row
            width = 0
            while row < last and column < len(lines[row]) - 1:
                width = max(width, len(lines[row][column]) + padding)
                row += 1
            widths.append(width)
            format_block(start, row)
            widths.pop()
            start = row
        emit(start, last)

    format_block(0, len(lines))
    return "\n".join(out)


class _Writer:
    """kubectl's PrefixWriter: each level indents two spaces."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, level: int, text: str) -> None:
        self.parts.append("  " * level + text)

    def text(self) -> str:
        return tabwrite("".join(self.parts))


# -- shared pieces --------------------------------------------------------------------------------------

def _rfc1123z(value: Any) -> str:
    moment = meta.parse_time(str(value)) if value else None
    return moment.strftime(_RFC1123Z) if moment else "<unset>"


def _labels(w: _Writer, title: str, labels: Mapping[str, Any] | None) -> None:
    w.write(0, f"{title}:\t")
    if not labels:
        w.write(0, "<none>\n")
        return
    for i, key in enumerate(sorted(labels)):
        if i:
            w.write(0, "\t")
        w.write(0, f"{key}={labels[key]}\n")


def _annotations(w: _Writer, title: str, annotations: Mapping[str, Any] | None) -> None:
    shown = {k: str(v) for k, v in (annotations or {}).items() if k != _LAST_APPLIED}
    w.write(0, f"{title}:\t")
    if not shown:
        w.write(0, "<none>\n")
        return
    for i, key in enumerate(sorted(shown)):
        if i:
            w.write(0, "\t")
        value = shown[key].removesuffix("\n")
        if len(value) + len(key) + 2 > _MAX_ANNOTATION or "\n" in value:
            w.write(0, f"{key}:\n")
            for line in value.split("\n"):
                short = line if len(line) <= _MAX_ANNOTATION - 2 else line[:_MAX_ANNOTATION - 2] + "..."
                w.write(0, f"\t  {short}\n")
        else:
            w.write(0, f"{key}: {value}\n")


def _tolerations(w: _Writer, title: str, tolerations: list[dict] | None) -> None:
    w.write(0, f"{title}:\t")
    if not tolerations:
        w.write(0, "<none>\n")
        return
    for i, tol in enumerate(sorted(tolerations, key=lambda t: str(t.get("key") or ""))):
        if i:
            w.write(0, "\t")
        text = str(tol.get("key") or "")
        if tol.get("value"):
            text += f"={tol['value']}"
        if tol.get("effect"):
            text += f":{tol['effect']}"
        if tol.get("operator") == "Exists" and not tol.get("value"):
            text += " op=Exists" if tol.get("key") or tol.get("effect") else "op=Exists"
        if tol.get("tolerationSeconds") is not None:
            text += f" for {tol['tolerationSeconds']}s"
        w.write(0, text + "\n")


def _events(w: _Writer, events: list[dict], now: _dt.datetime) -> None:
    if not events:
        w.write(0, "Events:\t<none>\n")
        return
    w.write(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n")
    w.write(1, "----\t------\t----\t----\t-------\n")

    def when(event: dict) -> str:
        return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")
    for event in sorted(events, key=when):
        first = event.get("firstTimestamp") or event.get("eventTime")
        since_first = meta.age(str(first), now) if first else "<unknown>"
        count = int(event.get("count") or 1)
        if count > 1 and event.get("lastTimestamp"):
            interval = f"{meta.age(str(event['lastTimestamp']), now)} (x{count} over {since_first})"
        else:
            interval = since_first
        source = (event.get("source") or {}).get("component") or event.get("reportingComponent") or ""
        w.write(1, f"{event.get('type', '')}\t{event.get('reason', '')}\t{interval}\t{source}\t"
                   f"{str(event.get('message') or '').strip()}\n")


def _port_text(port: Any) -> str:
    return str(port) if port is not None else ""


def describe_probe(probe: dict) -> str:
    """kubectl's one-line probe: ``http-get http://:8080/healthz delay=0s timeout=1s period=10s ...``."""
    attrs = (f"delay={int(probe.get('initialDelaySeconds') or 0)}s timeout={int(probe.get('timeoutSeconds') or 0)}s "
             f"period={int(probe.get('periodSeconds') or 0)}s #success={int(probe.get('successThreshold') or 0)} "
             f"#failure={int(probe.get('failureThreshold') or 0)}")
    if isinstance(probe.get("exec"), dict):
        return f"exec [{' '.join(str(c) for c in probe['exec'].get('command') or [])}] {attrs}"
    if isinstance(probe.get("httpGet"), dict):
        get = probe["httpGet"]
        host, port = str(get.get("host") or ""), _port_text(get.get("port"))
        if port:
            host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = str(get.get("scheme") or "").lower()
        return f"http-get {scheme + ':' if scheme else ''}//{host}{get.get('path') or ''} {attrs}"
    if isinstance(probe.get("tcpSocket"), dict):
        sock = probe["tcpSocket"]
        return f"tcp-socket {sock.get('host') or ''}:{_port_text(sock.get('port'))} {attrs}"
    if isinstance(probe.get("grpc"), dict):
        return f"grpc <pod>:{probe['grpc'].get('port')} {probe['grpc'].get('service') or ''} {attrs}"
    return f"unknown {attrs}"


def _state(w: _Writer, title: str, state: dict) -> None:
    if state.get("running") is not None:
        w.write(2, f"{title}:\tRunning\n")
        w.write(3, f"Started:\t{_rfc1123z(state['running'].get('startedAt'))}\n")
    elif state.get("terminated") is not None:
        term = state["terminated"]
        w.write(2, f"{title}:\tTerminated\n")
        if term.get("reason"):
            w.write(3, f"Reason:\t{term['reason']}\n")
        if term.get("message"):
            w.write(3, f"Message:\t{term['message']}\n")
        w.write(3, f"Exit Code:\t{int(term.get('exitCode') or 0)}\n")
        if int(term.get("signal") or 0) > 0:
            w.write(3, f"Signal:\t{term['signal']}\n")
        w.write(3, f"Started:\t{_rfc1123z(term.get('startedAt'))}\n")
        w.write(3, f"Finished:\t{_rfc1123z(term.get('finishedAt'))}\n")
    else:
        w.write(2, f"{title}:\tWaiting\n")
        reason = (state.get("waiting") or {}).get("reason")
        if reason:
            w.write(3, f"Reason:\t{reason}\n")


def _field(pod: dict | None, path: str) -> str:
    """A downward-API fieldPath's value as kubectl shows it: kubectl's own scheme converts only
    ``metadata.name`` and ``metadata.namespace`` for pods; other paths (and templates) show empty."""
    md = (pod or {}).get("metadata") or {}
    return str({"metadata.name": md.get("name"), "metadata.namespace": md.get("namespace")}.get(path) or "")


def _env(w: _Writer, container: dict, pod: dict | None) -> None:
    env_from = container.get("envFrom") or []
    if env_from:
        w.write(2, "Environment Variables from:\n")
        for source in env_from:
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = source.get(key)
                if isinstance(ref, dict):
                    prefix = f" with prefix '{source['prefix']}'" if source.get("prefix") else ""
                    w.write(3, f"{ref.get('name', '')}\t{kind}{prefix}\tOptional: "
                               f"{str(bool(ref.get('optional'))).lower()}\n")
    env = container.get("env") or []
    w.write(2, "Environment:" + ("\t<none>\n" if not env else "\n"))
    for var in env:
        name, source = var.get("name", ""), var.get("valueFrom")
        if not isinstance(source, dict):
            for i, line in enumerate(str(var.get("value") or "").split("\n")):
                w.write(3, f"{name}:\t{line}\n" if i == 0 else f"\t{line}\n")
        elif isinstance(source.get("fieldRef"), dict):
            ref = source["fieldRef"]
            w.write(3, f"{name}:\t{_field(pod, str(ref.get('fieldPath', '')))} "
                       f"({ref.get('apiVersion', 'v1')}:{ref.get('fieldPath', '')})\n")
        elif isinstance(source.get("resourceFieldRef"), dict):
            ref = source["resourceFieldRef"]
            w.write(3, f"{name}:\t{ref.get('resource', '')} ({ref.get('containerName', '')})\n")
        else:
            for key, what in (("secretKeyRef", "in secret"), ("configMapKeyRef", "of config map")):
                ref = source.get(key)
                if isinstance(ref, dict):
                    w.write(3, f"{name}:\t<set to the key '{ref.get('key', '')}' {what} '{ref.get('name', '')}'>\t"
                               f"Optional: {str(bool(ref.get('optional'))).lower()}\n")


def _containers(w: _Writer, section: str, containers: list[dict], statuses: list[dict] | None,
                space: str = "", pod: dict | None = None) -> None:
    w.write(0, f"{space}{section}:\n")
    by_name = {s.get("name"): s for s in statuses or []}
    for container in containers:
        status = by_name.get(container.get("name"))
        w.write(1, f"{' ' if space else ''}{container.get('name', '')}:\n")
        if status is not None:
            w.write(2, f"Container ID:\t{status.get('containerID', '')}\n")
        w.write(2, f"Image:\t{container.get('image', '')}\n")
        if status is not None:
            w.write(2, f"Image ID:\t{status.get('imageID', '')}\n")
        ports = container.get("ports") or []
        listed = ", ".join(f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}" for p in ports)
        hosts = ", ".join(f"{p.get('hostPort') or 0}/{p.get('protocol', 'TCP')}" for p in ports)
        w.write(2, f"Ports:\t{listed}\n" if "," in listed else f"Port:\t{listed or '<none>'}\n")
        w.write(2, f"Host Ports:\t{hosts}\n" if "," in hosts else f"Host Port:\t{hosts or '<none>'}\n")
        for key, title in (("command", "Command"), ("args", "Args")):
            if container.get(key):
                w.write(2, f"{title}:\n")
                for word in container[key]:
                    for line in str(word).split("\n"):
                        w.write(3, f"{line}\n")
        if status is not None:
            _state(w, "State", status.get("state") or {})
            if (status.get("lastState") or {}).get("terminated"):
                _state(w, "Last State", status["lastState"])
            w.write(2, f"Ready:\t{'True' if status.get('ready') else 'False'}\n")
            w.write(2, f"Restart Count:\t{int(status.get('restartCount') or 0)}\n")
        resources = container.get("resources") or {}
        for key, title in (("limits", "Limits"), ("requests", "Requests")):
            if resources.get(key):
                w.write(2, f"{title}:\n")
                for name in sorted(resources[key]):
                    w.write(3, f"{name}:\t{resources[key][name]}\n")
        for key, title in (("livenessProbe", "Liveness"), ("readinessProbe", "Readiness"),
                           ("startupProbe", "Startup")):
            if isinstance(container.get(key), dict):
                w.write(2, f"{title}:\t{describe_probe(container[key])}\n")
        _env(w, container, pod)
        mounts = sorted(container.get("volumeMounts") or [], key=lambda m: str(m.get("name", "")))
        w.write(2, "Mounts:" + ("\t<none>\n" if not mounts else "\n"))
        for mount in mounts:
            flags = ["ro" if mount.get("readOnly") else "rw"]
            if mount.get("subPath"):
                flags.append(f'path="{mount["subPath"]}"')
            w.write(3, f"{mount.get('mountPath', '')} from {mount.get('name', '')} ({','.join(flags)})\n")


def _volumes(w: _Writer, volumes: list[dict], space: str = "") -> None:
    if not volumes:
        w.write(0, f"{space}Volumes:\t<none>\n")
        return
    w.write(0, f"{space}Volumes:\n")
    for volume in volumes:
        w.write(1, f"{' ' if space else ''}{volume.get('name', '')}:\n")
        for key, description, fields in _VOLUME_SOURCES:
            source = volume.get(key)
            if isinstance(source, dict):
                w.write(2, f"Type:\t{description}\n")
                for title, name, default in fields:
                    value = source.get(name)
                    shown = str(bool(value)).lower() if isinstance(default, bool) else str(value or default)
                    w.write(2, f"{title}:\t{shown}\n")
                break
        else:
            w.write(2, "<unknown>\n")


# Volume sources kubectl describes: (field, type line, (title, field, value when unset)...).
_VOLUME_SOURCES: tuple[tuple[str, str, tuple[tuple[str, str, Any], ...]], ...] = (
    ("emptyDir", "EmptyDir (a temporary directory that shares a pod's lifetime)",
     (("Medium", "medium", ""), ("SizeLimit", "sizeLimit", "<unset>"))),
    ("configMap", "ConfigMap (a volume populated by a ConfigMap)", (("Name", "name", ""), ("Optional", "optional", False))),
    ("secret", "Secret (a volume populated by a Secret)",
     (("SecretName", "secretName", ""), ("Optional", "optional", False))),
    ("hostPath", "HostPath (bare host directory volume)", (("Path", "path", ""), ("HostPathType", "type", ""))),
)


def qos_class(pod: dict) -> str:
    """The pod's QoS class: ``status.qosClass``, else computed as the API server does at create."""
    return str((pod.get("status") or {}).get("qosClass") or meta.qos_class(pod.get("spec") or {}))


# -- kinds -------------------------------------------------------------------------------------------------

def describe_pod(pod: dict, related: Related, now: _dt.datetime) -> str:
    md, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    w = _Writer()
    w.write(0, f"Name:\t{md.get('name', '')}\n")
    w.write(0, f"Namespace:\t{md.get('namespace', '')}\n")
    if spec.get("priority") is not None:
        w.write(0, f"Priority:\t{spec['priority']}\n")
    if spec.get("priorityClassName"):
        w.write(0, f"Priority Class Name:\t{spec['priorityClassName']}\n")
    if spec.get("serviceAccountName"):
        w.write(0, f"Service Account:\t{spec['serviceAccountName']}\n")
    node = spec.get("nodeName")
    w.write(0, f"Node:\t{node}/{status.get('hostIP', '')}\n" if node else "Node:\t<none>\n")
    if status.get("startTime"):
        w.write(0, f"Start Time:\t{_rfc1123z(status['startTime'])}\n")
    _labels(w, "Labels", md.get("labels"))
    _annotations(w, "Annotations", md.get("annotations"))
    if md.get("deletionTimestamp"):
        deleting = meta.parse_time(md["deletionTimestamp"])
        left = meta.age(meta.format_time(now), deleting) if deleting and deleting > now else "0s"
        w.write(0, f"Status:\tTerminating (lasts {left})\n")
        w.write(0, f"Termination Grace Period:\t{int(md.get('deletionGracePeriodSeconds') or 0)}s\n")
    else:
        w.write(0, f"Status:\t{status.get('phase', '')}\n")
    for key, title in (("reason", "Reason"), ("message", "Message")):
        if status.get(key):
            w.write(0, f"{title}:\t{status[key]}\n")
    w.write(0, f"IP:\t{status.get('podIP', '')}\n")
    ips = status.get("podIPs") or []
    if not ips:
        w.write(0, "IPs:\t<none>\n")
    else:
        w.write(0, "IPs:\n")
        for entry in ips:
            w.write(1, f"IP:\t{entry.get('ip', '')}\n")
    owner = meta.controller_of(pod)
    if owner is not None:
        w.write(0, f"Controlled By:\t{owner.get('kind', '')}/{owner.get('name', '')}\n")
    if status.get("nominatedNodeName"):
        w.write(0, f"NominatedNodeName:\t{status['nominatedNodeName']}\n")
    if spec.get("initContainers"):
        _containers(w, "Init Containers", spec["initContainers"], status.get("initContainerStatuses"), pod=pod)
    _containers(w, "Containers", spec.get("containers") or [], status.get("containerStatuses"), pod=pod)
    if spec.get("readinessGates"):
        w.write(0, "Readiness Gates:\n  Type\tStatus\n")
        for gate in spec["readinessGates"]:
            condition = meta.get_condition(pod, str(gate.get("conditionType", "")))
            w.write(1, f"{gate.get('conditionType', '')} \t{(condition or {}).get('status', '<none>')} \n")
    if status.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\n")
        for condition in status["conditions"]:
            w.write(1, f"{condition.get('type', '')} \t{condition.get('status', '')} \n")
    _volumes(w, spec.get("volumes") or [])
    w.write(0, f"QoS Class:\t{qos_class(pod)}\n")
    _labels(w, "Node-Selectors", spec.get("nodeSelector"))
    _tolerations(w, "Tolerations", spec.get("tolerations"))
    _events(w, related.events, now)
    return w.text()


def _pod_template(w: _Writer, template: dict) -> None:
    md, spec = template.get("metadata") or {}, template.get("spec") or {}
    w.write(0, "Pod Template:\n")
    _labels(w, "  Labels", md.get("labels"))
    if md.get("annotations"):
        _annotations(w, "  Annotations", md["annotations"])
    if spec.get("serviceAccountName"):
        w.write(1, f"Service Account:\t{spec['serviceAccountName']}\n")
    if spec.get("initContainers"):
        _containers(w, "Init Containers", spec["initContainers"], None, "  ")
    _containers(w, "Containers", spec.get("containers") or [], None, "  ")
    _volumes(w, spec.get("volumes") or [], "  ")
    if spec.get("priorityClassName"):
        w.write(1, f"Priority Class Name:\t{spec['priorityClassName']}\n")
    _labels(w, "  Node-Selectors", spec.get("nodeSelector"))
    _tolerations(w, "  Tolerations", spec.get("tolerations"))


def _replicaset_summary(replicasets: list[dict]) -> str:
    text = ", ".join(f"{meta.name_of(rs)} ({int((rs.get('status') or {}).get('replicas') or 0)}/"
                     f"{int((rs.get('spec') or {}).get('replicas', 1))} replicas created)" for rs in replicasets)
    return text or "<none>"


def describe_deployment(deployment: dict, related: Related, now: _dt.datetime) -> str:
    md, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    w = _Writer()
    w.write(0, f"Name:\t{md.get('name', '')}\n")
    w.write(0, f"Namespace:\t{md.get('namespace', '')}\n")
    w.write(0, f"CreationTimestamp:\t{_rfc1123z(md.get('creationTimestamp'))}\n")
    _labels(w, "Labels", md.get("labels"))
    _annotations(w, "Annotations", md.get("annotations"))
    w.write(0, f"Selector:\t{format_label_selector(spec.get('selector'))}\n")
    w.write(0, f"Replicas:\t{int(spec.get('replicas', 1))} desired | {int(status.get('updatedReplicas') or 0)} updated"
               f" | {int(status.get('replicas') or 0)} total | {int(status.get('availableReplicas') or 0)} available"
               f" | {int(status.get('unavailableReplicas') or 0)} unavailable\n")
    strategy = spec.get("strategy") or {}
    w.write(0, f"StrategyType:\t{strategy.get('type', '')}\n")
    w.write(0, f"MinReadySeconds:\t{int(spec.get('minReadySeconds') or 0)}\n")
    rolling = strategy.get("rollingUpdate")
    if isinstance(rolling, dict):
        w.write(0, f"RollingUpdateStrategy:\t{rolling.get('maxUnavailable')} max unavailable, "
                   f"{rolling.get('maxSurge')} max surge\n")
    _pod_template(w, spec.get("template") or {})
    if status.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\tReason\n")
        w.write(1, "----\t------\t------\n")
        for condition in status["conditions"]:
            w.write(1, f"{condition.get('type', '')} \t{condition.get('status', '')}\t{condition.get('reason', '')}\n")
    revision = (md.get("annotations") or {}).get("deployment.kubernetes.io/revision")
    owned = [rs for rs in related.replicasets if (meta.controller_of(rs) or {}).get("uid") == md.get("uid")]
    new = [rs for rs in owned if revision is not None and
           ((rs.get("metadata") or {}).get("annotations") or {}).get("deployment.kubernetes.io/revision") == revision]
    old = [rs for rs in owned if rs not in new and int((rs.get("spec") or {}).get("replicas", 1)) != 0]
    w.write(0, f"OldReplicaSets:\t{_replicaset_summary(old)}\n")
    w.write(0, f"NewReplicaSet:\t{_replicaset_summary(new)}\n")
    _events(w, related.events, now)
    return w.text()


def describe_replicaset(rs: dict, related: Related, now: _dt.datetime) -> str:
    md, spec, status = rs.get("metadata") or {}, rs.get("spec") or {}, rs.get("status") or {}
    w = _Writer()
    w.write(0, f"Name:\t{md.get('name', '')}\n")
    w.write(0, f"Namespace:\t{md.get('namespace', '')}\n")
    w.write(0, f"Selector:\t{format_label_selector(spec.get('selector'))}\n")
    _labels(w, "Labels", md.get("labels"))
    _annotations(w, "Annotations", md.get("annotations"))
    owner = meta.controller_of(rs)
    if owner is not None:
        w.write(0, f"Controlled By:\t{owner.get('kind', '')}/{owner.get('name', '')}\n")
    w.write(0, f"Replicas:\t{int(status.get('replicas') or 0)} current / {int(spec.get('replicas', 1))} desired\n")
    phases = [(p.get("status") or {}).get("phase") for p in related.pods
              if (meta.controller_of(p) or {}).get("uid") == md.get("uid")]
    w.write(0, f"Pods Status:\t{phases.count('Running')} Running / {phases.count('Pending')} Waiting / "
               f"{phases.count('Succeeded')} Succeeded / {phases.count('Failed')} Failed\n")
    _pod_template(w, spec.get("template") or {})
    if status.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\tReason\n")
        w.write(1, "----\t------\t------\n")
        for condition in status["conditions"]:
            w.write(1, f"{condition.get('type', '')} \t{condition.get('status', '')}\t{condition.get('reason', '')}\n")
    _events(w, related.events, now)
    return w.text()


def _endpoints_text(endpoints: dict | None, port_name: str | None) -> str:
    """kubectl's formatEndpoints: up to three ``ip:port``, then ``+ N more...``."""
    shown: list[str] = []
    count = 0
    for subset in (endpoints or {}).get("subsets") or []:
        addresses = [a.get("ip", "") for a in subset.get("addresses") or []]
        ports = subset.get("ports") or []
        if not ports:
            count += len(addresses)
            shown += addresses
            continue
        for port in ports:
            if port_name is None or str(port.get("name") or "") == port_name:
                count += len(addresses)
                shown += [f"{ip}:{port.get('port')}" for ip in addresses]
    if not shown:
        return "<none>"
    text = ",".join(shown[:3])
    return f"{text} + {count - 3} more..." if count > 3 else text


def describe_service(service: dict, related: Related, now: _dt.datetime) -> str:
    spec, status = service.get("spec") or {}, service.get("status") or {}
    w = _Writer()
    _identity(w, service)
    w.write(0, f"Selector:\t{format_labels(spec.get('selector'))}\n")
    w.write(0, f"Type:\t{spec.get('type', '')}\n")
    if spec.get("ipFamilyPolicy"):
        w.write(0, f"IP Family Policy:\t{spec['ipFamilyPolicy']}\n")
    w.write(0, f"IP Families:\t{','.join(spec.get('ipFamilies') or []) or '<none>'}\n")
    w.write(0, f"IP:\t{spec.get('clusterIP', '')}\n")
    w.write(0, f"IPs:\t{','.join(spec.get('clusterIPs') or []) or '<none>'}\n")
    if spec.get("externalIPs"):
        w.write(0, f"External IPs:\t{','.join(spec['externalIPs'])}\n")
    if spec.get("loadBalancerIP"):
        w.write(0, f"Desired LoadBalancer IP:\t{spec['loadBalancerIP']}\n")
    if spec.get("type") == "ExternalName":
        w.write(0, f"External Name:\t{spec.get('externalName', '')}\n")
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    if ingress:
        listed = ", ".join(str(i.get("ip") or i.get("hostname") or "") + (f" ({i['ipMode']})" if i.get("ipMode") else "")
                           for i in ingress)
        w.write(0, f"LoadBalancer Ingress:\t{listed}\n")
    for port in spec.get("ports") or []:
        name = str(port.get("name") or "") or "<unset>"
        protocol = port.get("protocol", "TCP")
        w.write(0, f"Port:\t{name}\t{port.get('port')}/{protocol}\n")
        w.write(0, f"TargetPort:\t{port.get('targetPort', port.get('port'))}/{protocol}\n")
        if port.get("nodePort"):
            w.write(0, f"NodePort:\t{name}\t{port['nodePort']}/{protocol}\n")
        w.write(0, f"Endpoints:\t{_endpoints_text(related.endpoints, str(port.get('name') or ''))}\n")
    if not spec.get("ports"):
        w.write(0, f"Endpoints:\t{_endpoints_text(related.endpoints, None)}\n")
    w.write(0, f"Session Affinity:\t{spec.get('sessionAffinity', '')}\n")
    if spec.get("externalTrafficPolicy"):
        w.write(0, f"External Traffic Policy:\t{spec['externalTrafficPolicy']}\n")
    if spec.get("internalTrafficPolicy"):
        w.write(0, f"Internal Traffic Policy:\t{spec['internalTrafficPolicy']}\n")
    if spec.get("healthCheckNodePort"):
        w.write(0, f"HealthCheck NodePort:\t{spec['healthCheckNodePort']}\n")
    if spec.get("loadBalancerSourceRanges"):
        w.write(0, f"LoadBalancer Source Ranges:\t{','.join(spec['loadBalancerSourceRanges'])}\n")
    _events(w, related.events, now)
    return w.text()


def _percent(part: float, whole: float) -> int:
    return int(part / whole * 100) if whole else 0


def describe_node(node: dict, related: Related, now: _dt.datetime) -> str:
    md, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    labels = md.get("labels") or {}
    roles = sorted({k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k}
                   | ({str(labels["kubernetes.io/role"])} if labels.get("kubernetes.io/role") else set()))
    w = _Writer()
    w.write(0, f"Name:\t{md.get('name', '')}\n")
    w.write(0, f"Roles:\t{','.join(roles) or '<none>'}\n")
    _labels(w, "Labels", labels)
    _annotations(w, "Annotations", md.get("annotations"))
    w.write(0, f"CreationTimestamp:\t{_rfc1123z(md.get('creationTimestamp'))}\n")
    taints = spec.get("taints") or []
    w.write(0, "Taints:\t")
    if not taints:
        w.write(0, "<none>\n")
    for i, taint in enumerate(taints):
        value = f"={taint['value']}" if taint.get("value") else ""
        w.write(0, ("\t" if i else "") + f"{taint.get('key', '')}{value}:{taint.get('effect', '')}\n")
    w.write(0, f"Unschedulable:\t{str(bool(spec.get('unschedulable'))).lower()}\n")
    if related.lease is not None:
        lease = related.lease.get("spec") or {}
        w.write(0, "Lease:\n")
        w.write(1, f"HolderIdentity:\t{lease.get('holderIdentity') or '<unset>'}\n")
        w.write(1, f"AcquireTime:\t{_rfc1123z(lease.get('acquireTime'))}\n")
        w.write(1, f"RenewTime:\t{_rfc1123z(lease.get('renewTime'))}\n")
    if status.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n")
        w.write(1, "----\t------\t-----------------\t------------------\t------\t-------\n")
        for c in status["conditions"]:
            w.write(1, f"{c.get('type', '')} \t{c.get('status', '')} \t{_rfc1123z(c.get('lastHeartbeatTime'))} \t"
                       f"{_rfc1123z(c.get('lastTransitionTime'))} \t{c.get('reason', '')} \t{c.get('message', '')}\n")
    w.write(0, "Addresses:\n")
    for address in status.get("addresses") or []:
        w.write(1, f"{address.get('type', '')}:\t{address.get('address', '')}\n")
    for key, title in (("capacity", "Capacity"), ("allocatable", "Allocatable")):
        if status.get(key):
            w.write(0, f"{title}:\n")
            for name in sorted(status[key]):
                w.write(1, f"{name}:\t{status[key][name]}\n")
    info = status.get("nodeInfo") or {}
    w.write(0, "System Info:\n")
    for key, title in (("machineID", "Machine ID"), ("systemUUID", "System UUID"), ("bootID", "Boot ID"),
                       ("kernelVersion", "Kernel Version"), ("osImage", "OS Image"),
                       ("operatingSystem", "Operating System"), ("architecture", "Architecture"),
                       ("containerRuntimeVersion", "Container Runtime Version"),
                       ("kubeletVersion", "Kubelet Version"), ("kubeProxyVersion", "Kube-Proxy Version")):
        w.write(1, f"{title}:\t{info.get(key, '')}\n")
    if spec.get("podCIDR"):
        w.write(0, f"PodCIDR:\t{spec['podCIDR']}\n")
    if spec.get("podCIDRs"):
        w.write(0, f"PodCIDRs:\t{','.join(spec['podCIDRs'])}\n")
    if spec.get("providerID"):
        w.write(0, f"ProviderID:\t{spec['providerID']}\n")
    running = [p for p in related.pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    allocatable = status.get("allocatable") or {}
    cpu_total = _quantity(allocatable.get("cpu", "0"))
    memory_total = _quantity(allocatable.get("memory", "0"))
    storage_total = _quantity(allocatable.get("ephemeral-storage", "0"))
    w.write(0, f"Non-terminated Pods:\t({len(running)} in total)\n")
    # The empty column after Name is kubectl's ("\t\t").
    w.write(1, "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge\n")
    w.write(1, "---------\t----\t\t------------\t----------\t---------------\t-------------\t---\n")
    totals: dict[tuple[str, str], float] = {}
    for pod in sorted(running, key=lambda p: (meta.namespace_of(p), meta.name_of(p))):
        sums = _pod_resources(pod)
        for key, value in sums.items():
            totals[key] = totals.get(key, 0) + value

        def cell(resource: str, kind: str, total: float, sums: dict = sums) -> str:
            value = sums.get((resource, kind), 0)
            return f"{_quantity_text(value, resource)} ({_percent(value, total)}%)"
        w.write(1, f"{meta.namespace_of(pod)}\t{meta.name_of(pod)}\t\t{cell('cpu', 'requests', cpu_total)}\t"
                   f"{cell('cpu', 'limits', cpu_total)}\t{cell('memory', 'requests', memory_total)}\t"
                   f"{cell('memory', 'limits', memory_total)}\t"
                   f"{meta.age((pod.get('metadata') or {}).get('creationTimestamp'), now)}\n")
    w.write(0, "Allocated resources:\n  (Total limits may be over 100 percent, i.e., overcommitted.)\n")
    w.write(1, "Resource\tRequests\tLimits\n")
    w.write(1, "--------\t--------\t------\n")
    for resource, total in (("cpu", cpu_total), ("memory", memory_total), ("ephemeral-storage", storage_total)):
        requests, limits = totals.get((resource, "requests"), 0), totals.get((resource, "limits"), 0)
        w.write(1, f"{resource}\t{_quantity_text(requests, resource)} ({_percent(requests, total)}%)\t"
                   f"{_quantity_text(limits, resource)} ({_percent(limits, total)}%)\n")
    _events(w, related.events, now)
    return w.text()


def _quantity(value: Any) -> float:
    try:
        return float(quantity.parse(value))
    except (ValidationError, ValueError, TypeError):
        return 0.0


def _pod_resources(pod: dict) -> dict[tuple[str, str], float]:
    sums: dict[tuple[str, str], float] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for kind in ("requests", "limits"):
            for resource, value in ((container.get("resources") or {}).get(kind) or {}).items():
                sums[(resource, kind)] = sums.get((resource, kind), 0) + _quantity(value)
    return sums


def _quantity_text(value: float, resource: str) -> str:
    if not value:
        return "0"
    if resource == "cpu":
        millis = round(value * 1000)
        return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"
    for suffix, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{suffix}"
    return str(int(value))


def _identity(w: _Writer, obj: dict) -> None:
    md = obj.get("metadata") or {}
    w.write(0, f"Name:\t{md.get('name', '')}\n")
    if md.get("namespace"):
        w.write(0, f"Namespace:\t{md['namespace']}\n")
    _labels(w, "Labels", md.get("labels"))
    _annotations(w, "Annotations", md.get("annotations"))


def _decoded_length(value: Any) -> int:
    try:
        return len(base64.b64decode(str(value), validate=True))
    except (binascii.Error, ValueError):
        return len(str(value))


def describe_namespace(namespace: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, namespace)
    status = namespace.get("status") or {}
    w.write(0, f"Status:\t{status.get('phase', '')}\n")
    if status.get("conditions"):
        w.write(0, "Conditions:\n")
        w.write(1, "Type\tStatus\tLastTransitionTime\tReason\tMessage\n")
        w.write(1, "----\t------\t------------------\t------\t-------\n")
        for c in status["conditions"]:
            w.write(1, f"{c.get('type', '')}\t{c.get('status', '')}\t{_rfc1123z(c.get('lastTransitionTime'))}\t"
                       f"{c.get('reason', '')}\t{c.get('message', '')}\n")
    return w.text()


def describe_configmap(configmap: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, configmap)
    w.write(0, "\nData\n====\n")
    data = configmap.get("data") or {}
    for key in sorted(data):
        w.write(0, f"{key}:\n----\n{data[key]}\n\n")
    w.write(0, "\nBinaryData\n====\n")
    binary = configmap.get("binaryData") or {}
    for key in sorted(binary):
        w.write(0, f"{key}: {_decoded_length(binary[key])} bytes\n")
    w.write(0, "\n")
    _events(w, related.events, now)
    return w.text()


def describe_secret(secret: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, secret)
    w.write(0, f"\nType:\t{secret.get('type', '')}\n")
    w.write(0, "\nData\n====\n")
    data = secret.get("data") or {}
    for key in sorted(data):
        if key == "token" and secret.get("type") == "kubernetes.io/service-account-token":
            w.write(0, f"{key}:\t{base64.b64decode(str(data[key])).decode(errors='replace')}\n")
        else:
            w.write(0, f"{key}:\t{_decoded_length(data[key])} bytes\n")
    return w.text()


def _ports_table(w: _Writer, level: int, ports: list[dict]) -> None:
    w.write(level, "Name\tPort\tProtocol\n")
    w.write(level, "----\t----\t--------\n")
    for port in ports:
        number = port.get("port")
        w.write(level, f"{port.get('name') or '<unset>'}\t{'<unset>' if number is None else number}\t"
                       f"{port.get('protocol', '')}\n")


def describe_endpoints(endpoints: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, endpoints)
    w.write(0, "Subsets:\n")
    for subset in endpoints.get("subsets") or []:
        for key, title in (("addresses", "Addresses"), ("notReadyAddresses", "NotReadyAddresses")):
            listed = ",".join(str(a.get("ip", "")) for a in subset.get(key) or [])
            w.write(1, f"{title}:\t{listed or '<none>'}\n")
        if subset.get("ports"):
            w.write(1, "Ports:\n")
            _ports_table(w, 2, subset["ports"])
        w.write(0, "\n")
    _events(w, related.events, now)
    return w.text()


def describe_endpointslice(eps: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, eps)
    w.write(0, f"AddressType:\t{eps.get('addressType', '')}\n")
    ports = eps.get("ports") or []
    if not ports:
        w.write(0, "Ports: <unset>\n")
    else:
        w.write(0, "Ports:\n")
        _ports_table(w, 1, ports)
    endpoints = eps.get("endpoints") or []
    if not endpoints:
        w.write(0, "Endpoints: <none>\n")
    else:
        w.write(0, "Endpoints:\n")
        for endpoint in endpoints:
            w.write(1, f"- Addresses:\t{', '.join(endpoint.get('addresses') or []) or '<none>'}\n")
            w.write(2, "Conditions:\n")
            ready = (endpoint.get("conditions") or {}).get("ready")
            w.write(3, f"Ready:\t{'<unset>' if ready is None else str(bool(ready)).lower()}\n")
            w.write(2, f"Hostname:\t{endpoint.get('hostname') or '<unset>'}\n")
            ref = endpoint.get("targetRef")
            if isinstance(ref, dict):
                w.write(2, f"TargetRef:\t{ref.get('kind', '')}/{ref.get('name', '')}\n")
            w.write(2, f"NodeName:\t{endpoint.get('nodeName') or '<unset>'}\n")
            w.write(2, f"Zone:\t{endpoint.get('zone') or '<unset>'}\n")
    _events(w, related.events, now)
    return w.text()


def describe_serviceaccount(account: dict, related: Related, now: _dt.datetime) -> str:
    w = _Writer()
    _identity(w, account)
    tokens = [meta.name_of(secret) for secret in related.secrets
              if secret.get("type") == "kubernetes.io/service-account-token"
              and ((secret.get("metadata") or {}).get("annotations") or {}).get("kubernetes.io/service-account.name")
              == meta.name_of(account)]
    # kubectl's headers, the second padded to the first one's width.
    for header, names in (("Image pull secrets:", [s.get("name", "") for s in account.get("imagePullSecrets") or []]),
                          ("Mountable secrets: ", [s.get("name", "") for s in account.get("secrets") or []]),
                          ("Tokens:            ", sorted(tokens))):
        if not names:
            w.write(0, f"{header.rstrip() if header.startswith('Tokens') else header}\t<none>\n")
        for i, name in enumerate(names):
            w.write(0, f"{header if i == 0 else ' ' * len(header)}\t{name}\n")
    _events(w, related.events, now)
    return w.text()


def describe_generic(obj: dict, related: Related, now: _dt.datetime) -> str:
    """Kinds without a describer of their own: identity, labels and annotations, and events."""
    w = _Writer()
    _identity(w, obj)
    w.write(0, f"API Version:\t{obj.get('apiVersion', '')}\n")
    w.write(0, f"Kind:\t{obj.get('kind', '')}\n")
    _events(w, related.events, now)
    return w.text()


DESCRIBERS: dict[str, Callable[[dict, Related, _dt.datetime], str]] = {
    "Pod": describe_pod, "Service": describe_service, "Deployment": describe_deployment,
    "ReplicaSet": describe_replicaset, "Node": describe_node, "Namespace": describe_namespace,
    "ConfigMap": describe_configmap, "Secret": describe_secret, "Endpoints": describe_endpoints,
    "EndpointSlice": describe_endpointslice, "ServiceAccount": describe_serviceaccount,
}


def describe(obj: dict, related: Related, now: _dt.datetime) -> str:
    return DESCRIBERS.get(str(obj.get("kind", "")), describe_generic)(obj, related, now)
