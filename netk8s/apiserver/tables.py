"""Server-side printing: ``meta.k8s.io/v1`` Table responses for ``kubectl get``.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and
prints the cells the server sends. ``to_table`` builds that Table from the
kubectl printers of ``netk8s.api.printers`` (``-o wide`` columns get priority
1, which kubectl hides without ``-o wide``); ``table_for_watch_event`` does the
same for one watch event (``kubectl get -w``). kubectl adds the NAMESPACE
column itself (``-A``) from each row's object metadata, so rows carry a
``PartialObjectMetadata`` by default (``includeObject=Metadata``).

Pure functions: no HTTP here.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from netk8s.api.printers import table
from netk8s.api.resources import ResourceType
from netk8s.errors import ValidationError

log = logging.getLogger(__name__)

TABLE_API_VERSION = "meta.k8s.io/v1"
_META_GROUP = "meta.k8s.io"
_TABLE_VERSIONS = ("v1", "v1beta1")


class IncludeObject(str, Enum):
    """What each row carries besides its cells (the ``includeObject`` query parameter)."""

    NONE = "None"
    METADATA = "Metadata"
    OBJECT = "Object"


class ColumnType(str, Enum):
    STRING = "string"
    INTEGER = "integer"


@dataclass(frozen=True)
class ColumnInfo:
    name: str           # Kubernetes' column name; kubectl prints it upper-cased
    type: ColumnType
    description: str


def _c(name: str, description: str, ctype: ColumnType = ColumnType.STRING) -> ColumnInfo:
    return ColumnInfo(name, ctype, description)


_INT = ColumnType.INTEGER

# Printer header -> column, for headers that mean the same in every kind.
_COLUMNS: dict[str, ColumnInfo] = {
    "NAME": _c("Name", "The object's name, unique in its namespace (or cluster-wide for cluster objects)."),
    "AGE": _c("Age", "Time since the object was created."),
    "READY": _c("Ready", "Ready count over the desired count."),
    "STATUS": _c("Status", "The object's aggregate state."),
    "RESTARTS": _c("Restarts", "Container restarts in the pod, and how long ago the last one was."),
    "IP": _c("IP", "The pod's IP address."),
    "NODE": _c("Node", "The node the pod is bound to."),
    "NOMINATED NODE": _c("Nominated Node", "The node preemption made room on for this pod."),
    "READINESS GATES": _c("Readiness Gates", "Readiness gates that are true, over all readiness gates."),
    "TYPE": _c("Type", "The Service type: ClusterIP, NodePort, LoadBalancer or ExternalName."),
    "CLUSTER-IP": _c("Cluster-IP", "The Service's virtual IP inside the cluster."),
    "EXTERNAL-IP": _c("External-IP", "Addresses the Service is reachable on from outside the cluster."),
    "PORT(S)": _c("Port(s)", "Service ports (and node ports) with their protocol."),
    "SELECTOR": _c("Selector", "The label selector that picks the pods."),
    "ROLES": _c("Roles", "The node's roles, from its node-role.kubernetes.io/ labels."),
    "VERSION": _c("Version", "The kubelet version the node reports."),
    "INTERNAL-IP": _c("Internal-IP", "The node's InternalIP address."),
    "OS-IMAGE": _c("OS-Image", "The operating system image the node reports."),
    "KERNEL-VERSION": _c("Kernel-Version", "The kernel version the node reports."),
    "CONTAINER-RUNTIME": _c("Container-Runtime", "The container runtime and version the node reports."),
    "UP-TO-DATE": _c("Up-to-date", "Pods that run the current pod template.", _INT),
    "AVAILABLE": _c("Available", "Pods that have been ready for at least minReadySeconds.", _INT),
    "CONTAINERS": _c("Containers", "Names of the containers of the pod template."),
    "IMAGES": _c("Images", "Images of the containers of the pod template."),
    "DESIRED": _c("Desired", "The number of pods wanted.", _INT),
    "CURRENT": _c("Current", "The number of pods that exist.", _INT),
    "ADDRESSTYPE": _c("AddressType", "The address family of the endpoints: IPv4, IPv6 or FQDN."),
    "PORTS": _c("Ports", "The ports of the endpoints."),
    "ENDPOINTS": _c("Endpoints", "The endpoints' addresses."),
    "DATA": _c("Data", "The number of keys.", _INT),
    "SECRETS": _c("Secrets", "The number of secrets.", _INT),
    "HOLDER": _c("Holder", "The identity holding the lease."),
    "POD-SELECTOR": _c("Pod-Selector", "The pods the policy applies to."),
    "LAST SEEN": _c("Last Seen", "Time since the event was last seen."),
    "FIRST SEEN": _c("First Seen", "Time since the event was first seen."),
    "REASON": _c("Reason", "Why the event happened, in one word."),
    "OBJECT": _c("Object", "The object the event is about."),
    "SUBOBJECT": _c("Subobject", "The part of the object the event is about."),
    "SOURCE": _c("Source", "The component that reported the event."),
    "MESSAGE": _c("Message", "What happened, in words."),
    "COUNT": _c("Count", "How many times the event occurred.", _INT),
}

# (kind, header) -> column, where a header means something else for one kind.
_KIND_COLUMNS: dict[tuple[str, str], ColumnInfo] = {
    ("ReplicaSet", "READY"): _c("Ready", "The number of ready pods.", _INT),
    ("Pod", "READY"): _c("Ready", "Ready containers over all containers of the pod."),
    ("Deployment", "READY"): _c("Ready", "Ready pods over desired pods."),
    ("Namespace", "STATUS"): _c("Status", "The namespace's phase: Active or Terminating."),
    ("Node", "STATUS"): _c("Status", "Whether the node is Ready, and SchedulingDisabled when cordoned."),
}


def column_info(kind: str, header: str) -> ColumnInfo:
    """Column name, type and description for a printer header of ``kind``."""
    found = _KIND_COLUMNS.get((kind, header)) or _COLUMNS.get(header)
    if found is not None:
        return found
    # A header this module has not met yet: keep kubectl's spelling, Title-case the words.
    name = " ".join(word.capitalize() for word in header.split(" "))
    return ColumnInfo(name, ColumnType.STRING, "")


@functools.lru_cache(maxsize=None)
def column_definitions(resource: ResourceType) -> list[dict[str, Any]]:
    """The Table columnDefinitions of a resource: wide-only columns have priority 1.

    Fixed per resource and asked for by every list and table watch event: computed once (do not modify).
    """
    narrow, _ = table(resource.kind, [], wide=False)
    wide, _ = table(resource.kind, [], wide=True)
    out = []
    for header in wide:
        info = column_info(resource.kind, header)
        out.append({"name": info.name, "type": info.type.value, "format": "name" if header == "NAME" else "",
                    "description": info.description, "priority": 0 if header in narrow else 1})
    return out


def _parse_include(include_object: str | IncludeObject) -> IncludeObject:
    if isinstance(include_object, IncludeObject):
        return include_object
    if not include_object:
        return IncludeObject.METADATA
    try:
        return IncludeObject(include_object)
    except ValueError:
        allowed = ", ".join(v.value for v in IncludeObject)
        raise ValidationError("includeObject", f'unsupported value "{include_object}": must be one of {allowed}') \
            from None


def _typed_cell(value: str, ctype: ColumnType) -> Any:
    if ctype is ColumnType.INTEGER:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _row_object(resource: ResourceType, obj: dict, include: IncludeObject) -> dict[str, Any] | None:
    if include is IncludeObject.NONE:
        return None
    if include is IncludeObject.OBJECT:
        full = dict(obj)
        full.setdefault("apiVersion", resource.api_version)
        full.setdefault("kind", resource.kind)
        return full
    return {"kind": "PartialObjectMetadata", "apiVersion": TABLE_API_VERSION,
            "metadata": dict(obj.get("metadata") or {})}


def to_table(resource: ResourceType, objects: list[dict], include_object: str | IncludeObject = "Metadata",
             now: _dt.datetime | None = None, *, list_meta: dict | None = None,
             with_columns: bool = True) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects`` (all columns; the wide ones at priority 1).

    ``include_object``: "Metadata" (default) puts a PartialObjectMetadata in each row,
    "Object" the whole object, "None" nothing; anything else raises ``ValidationError``.
    ``list_meta`` (resourceVersion, continue, remainingItemCount) becomes the Table's
    metadata. ``with_columns=False`` leaves the column definitions out (later watch events).
    """
    include = _parse_include(include_object)
    columns = column_definitions(resource)
    _, rows = table(resource.kind, objects, wide=True, now=now)
    types = [ColumnType(c["type"]) for c in columns]
    out_rows = []
    for obj, cells in zip(objects, rows):
        row: dict[str, Any] = {"cells": [_typed_cell(cell, types[i] if i < len(types) else ColumnType.STRING)
                                         for i, cell in enumerate(cells)]}
        row_object = _row_object(resource, obj if isinstance(obj, dict) else {}, include)
        if row_object is not None:
            row["object"] = row_object
        out_rows.append(row)
    metadata = {k: v for k, v in (list_meta or {}).items()
                if k in ("resourceVersion", "continue", "remainingItemCount") and v not in (None, "")}
    return {"kind": "Table", "apiVersion": TABLE_API_VERSION, "metadata": metadata,
            "columnDefinitions": columns if with_columns else None, "rows": out_rows}


def table_for_watch_event(resource: ResourceType, event_type: str, obj: dict,
                          include_object: str | IncludeObject = "Metadata", now: _dt.datetime | None = None,
                          *, with_columns: bool = True) -> dict[str, Any]:
    """One watch event as kube-apiserver sends it to a Table watcher: ``{"type", "object": Table}``.

    The Table has the event's object as its single row (DELETED too). ``ERROR``
    events carry a Status and pass through unchanged; ``BOOKMARK`` events become a
    Table with no rows carrying the bookmark's resourceVersion. kube-apiserver sends
    the column definitions with the first event only: pass ``with_columns=False``
    for the later ones.
    """
    if event_type == "ERROR":
        return {"type": event_type, "object": obj}
    if event_type == "BOOKMARK":
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        bookmark = to_table(resource, [], include_object, now, list_meta={"resourceVersion": rv},
                            with_columns=with_columns)
        return {"type": event_type, "object": bookmark}
    rv = (obj.get("metadata") or {}).get("resourceVersion", "")
    return {"type": event_type,
            "object": to_table(resource, [obj], include_object, now, list_meta={"resourceVersion": rv},
                               with_columns=with_columns)}


def table_version(accept: str | None) -> str | None:
    """The Table version an Accept header asks for ("v1" or "v1beta1"), or None.

    Media ranges are tried in order, as kubectl lists its preferences:
    ``application/json;as=Table;v=v1;g=meta.k8s.io, ...;v=v1beta1;..., application/json``.
    """
    for media_range in (accept or "").split(","):
        parts = [p.strip() for p in media_range.split(";")]
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if params.get("as") != "Table" or parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        if params.get("g", _META_GROUP) != _META_GROUP:
            continue
        version = params.get("v", "v1")
        if version in _TABLE_VERSIONS:
            return version
    return None
