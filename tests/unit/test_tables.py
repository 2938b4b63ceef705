"""Unit tests for netk8s.apiserver.tables: meta.k8s.io/v1 Tables for kubectl get."""

from __future__ import annotations

import datetime as dt

import pytest

from netk8s.api.printers import format_table, table
from netk8s.api.resources import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    RESOURCES,
    SERVICES,
    ResourceType,
)
from netk8s.apiserver.tables import (
    column_definitions,
    table_for_watch_event,
    table_version,
    to_table,
)
from netk8s.errors import ValidationError

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ts(seconds_ago: int) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name: str, seconds_ago: int = 300, namespace: str = "default", **extra: object) -> dict:
    return {"name": name, "namespace": namespace, "creationTimestamp": ts(seconds_ago), "uid": f"uid-{name}",
            "resourceVersion": "42", "labels": {"app": name}, **extra}


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-1"),
       "spec": {"nodeName": "worker", "containers": [{"name": "c"}],
                "readinessGates": [{"conditionType": "example.com/gate"}]},
       "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}],
                  "conditions": [{"type": "example.com/gate", "status": "True"}],
                  "containerStatuses": [{"name": "c", "ready": False, "restartCount": 2,
                                         "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                         "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(90)}}}]}}
PENDING = {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-2", 30), "spec": {"containers": [{"name": "c"}]},
           "status": {"phase": "Pending"}}
SERVICE = {"kind": "Service", "metadata": meta("web"),
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}
NODE = {"kind": "Node", "metadata": meta("worker", 7200, namespace="",
                                         labels={"node-role.kubernetes.io/control-plane": ""}),
        "spec": {"unschedulable": True},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "172.18.0.3"}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0-netk8s", "osImage": "netk8s", "kernelVersion": "6.1",
                                "containerRuntimeVersion": "netk8s://0.1.0"}}}
TEMPLATE = {"spec": {"containers": [{"name": "echo", "image": "netk8s/echo"}]}}
DEPLOYMENT = {"kind": "Deployment", "metadata": meta("echo"),
              "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "echo"}}, "template": TEMPLATE},
              "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
REPLICASET = {"kind": "ReplicaSet", "metadata": meta("echo-abc"),
              "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "echo"}}, "template": TEMPLATE},
              "status": {"replicas": 3, "readyReplicas": 1}}
SLICE = {"kind": "EndpointSlice", "metadata": meta("echo-x1"), "addressType": "IPv4",
         "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.2.2"]}]}
NAMESPACE = {"kind": "Namespace", "metadata": meta("shop", namespace=""), "status": {"phase": "Active"}}
CONFIGMAP = {"kind": "ConfigMap", "metadata": meta("cfg"), "data": {"a": "b"}}

CASES: list[tuple[ResourceType, list[dict]]] = [
    (PODS, [POD, PENDING]), (SERVICES, [SERVICE]), (NODES, [NODE]), (DEPLOYMENTS, [DEPLOYMENT]),
    (REPLICASETS, [REPLICASET]), (ENDPOINTSLICES, [SLICE]), (NAMESPACES, [NAMESPACE]), (CONFIGMAPS, [CONFIGMAP]),
]


# --- columns ----------------------------------------------------------------------------------

@pytest.mark.parametrize("resource,expected", [
    (PODS, [("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
            ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1), ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1)]),
    (SERVICES, [("Name", "string", 0), ("Type", "string", 0), ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0), ("Port(s)", "string", 0), ("Age", "string", 0),
                ("Selector", "string", 1)]),
    (NODES, [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
             ("Version", "string", 0), ("Internal-IP", "string", 1), ("External-IP", "string", 1),
             ("OS-Image", "string", 1), ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)]),
    (DEPLOYMENTS, [("Name", "string", 0), ("Ready", "string", 0), ("Up-to-date", "integer", 0),
                   ("Available", "integer", 0), ("Age", "string", 0), ("Containers", "string", 1),
                   ("Images", "string", 1), ("Selector", "string", 1)]),
    (REPLICASETS, [("Name", "string", 0), ("Desired", "integer", 0), ("Current", "integer", 0),
                   ("Ready", "integer", 0), ("Age", "string", 0), ("Containers", "string", 1),
                   ("Images", "string", 1), ("Selector", "string", 1)]),
    (ENDPOINTSLICES, [("Name", "string", 0), ("AddressType", "string", 0), ("Ports", "string", 0),
                      ("Endpoints", "string", 0), ("Age", "string", 0)]),
    (NAMESPACES, [("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)]),
])
def test_columns_types_and_priorities(resource: ResourceType, expected: list[tuple[str, str, int]]) -> None:
    columns = column_definitions(resource)
    assert [(c["name"], c["type"], c["priority"]) for c in columns] == expected
    assert columns[0]["format"] == "name"
    assert all(c["format"] == "" for c in columns[1:])
    assert all(c["description"] for c in columns)


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_column_names_upper_cased_are_the_printer_headers(resource: ResourceType) -> None:
    """kubectl prints column names upper-cased: they must give back kubectl's headers."""
    wide_headers, _ = table(resource.kind, [], wide=True)
    narrow_headers, _ = table(resource.kind, [])
    columns = column_definitions(resource)
    assert [c["name"].upper() for c in columns] == wide_headers
    assert [c["name"].upper() for c in columns if c["priority"] == 0] == narrow_headers


# --- rows -------------------------------------------------------------------------------------

@pytest.mark.parametrize("resource,objects", CASES, ids=lambda v: getattr(v, "kind", ""))
def test_cells_are_the_printer_cells(resource: ResourceType, objects: list[dict]) -> None:
    result = to_table(resource, objects, now=NOW)
    assert (result["kind"], result["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    _, expected = table(resource.kind, objects, wide=True, now=NOW)
    types = [c["type"] for c in result["columnDefinitions"]]
    assert len(result["rows"]) == len(objects)
    for row, want in zip(result["rows"], expected):
        assert [str(cell) for cell in row["cells"]] == want
        for cell, ctype in zip(row["cells"], types):
            assert isinstance(cell, int if ctype == "integer" else str)


def test_pod_row_values() -> None:
    result = to_table(PODS, [POD], now=NOW)
    assert result["rows"][0]["cells"] == ["web-1", "0/1", "CrashLoopBackOff", "2 (90s ago)", "5m",
                                          "10.244.1.5", "worker", "<none>", "1/1"]
    assert to_table(DEPLOYMENTS, [DEPLOYMENT], now=NOW)["rows"][0]["cells"][:5] == ["echo", "2/3", 3, 2, "5m"]


@pytest.mark.parametrize("resource,objects", CASES, ids=lambda v: getattr(v, "kind", ""))
def test_kubectl_rendering_matches_printers(resource: ResourceType, objects: list[dict]) -> None:
    """Render the Table the way kubectl does (upper-cased names, priority 0 unless -o wide)."""
    result = to_table(resource, objects, now=NOW)
    for wide in (False, True):
        keep = [i for i, c in enumerate(result["columnDefinitions"]) if wide or c["priority"] == 0]
        headers = [result["columnDefinitions"][i]["name"].upper() for i in keep]
        rows = [[str(row["cells"][i]) for i in keep] for row in result["rows"]]
        assert format_table(headers, rows) == format_table(*table(resource.kind, objects, wide=wide, now=NOW))


def test_include_object_variants() -> None:
    partial = to_table(PODS, [POD], now=NOW)["rows"][0]["object"]
    assert partial == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": POD["metadata"]}
    full = to_table(SERVICES, [SERVICE], "Object", now=NOW)["rows"][0]["object"]
    assert full["spec"] == SERVICE["spec"] and (full["apiVersion"], full["kind"]) == ("v1", "Service")
    assert "object" not in to_table(PODS, [POD], "None", now=NOW)["rows"][0]
    assert "object" in to_table(PODS, [POD], "", now=NOW)["rows"][0]
    with pytest.raises(ValidationError, match="includeObject"):
        to_table(PODS, [POD], "Everything", now=NOW)


def test_list_metadata_and_empty_lists() -> None:
    result = to_table(PODS, [], list_meta={"resourceVersion": "17", "continue": "", "selfLink": "x"})
    assert result["metadata"] == {"resourceVersion": "17"}
    assert result["rows"] == [] and len(result["columnDefinitions"]) == 9


# --- watch --------------------------------------------------------------------------------------

def test_watch_events() -> None:
    first = table_for_watch_event(PODS, "ADDED", POD, now=NOW)
    assert first["type"] == "ADDED"
    assert first["object"]["kind"] == "Table" and len(first["object"]["columnDefinitions"]) == 9
    assert first["object"]["rows"][0]["cells"][0] == "web-1"
    assert first["object"]["metadata"] == {"resourceVersion": "42"}
    later = table_for_watch_event(PODS, "DELETED", PENDING, now=NOW, with_columns=False)
    assert later["object"]["columnDefinitions"] is None
    assert later["object"]["rows"][0]["cells"][:3] == ["web-2", "0/1", "Pending"]
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired"}
    assert table_for_watch_event(PODS, "ERROR", status) == {"type": "ERROR", "object": status}
    bookmark = table_for_watch_event(PODS, "BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "99"}})
    assert bookmark["object"]["rows"] == [] and bookmark["object"]["metadata"] == {"resourceVersion": "99"}


# --- Accept header ----------------------------------------------------------------------------

@pytest.mark.parametrize("accept,expected", [
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
     "application/json", "v1"),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", "v1beta1"),
    ("application/json; as=Table; g=meta.k8s.io; v=v1", "v1"),
    ("application/json", None),
    ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", None),
    ("application/json;as=Table;v=v2;g=meta.k8s.io", None),
    ("application/yaml;as=Table;v=v1;g=meta.k8s.io", None),
    ("", None),
    (None, None),
])
def test_table_version_from_accept(accept: str | None, expected: str | None) -> None:
    assert table_version(accept) == expected
