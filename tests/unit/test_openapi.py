"""Unit tests for netk8s.apiserver.openapi: the /openapi/v3 and /openapi/v2 documents."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

import pytest

from netk8s.api.fields import KINDS, STRUCTURES
from netk8s.api.resources import RESOURCES, ResourceType, all_groups
from netk8s.apiserver import openapi
from netk8s.apiserver.openapi import (
    openapi_v2,
    openapi_v3_document,
    openapi_v3_document_bytes,
    openapi_v3_hash,
    openapi_v3_index,
    openapi_v3_url,
)


def gv_path(r: ResourceType) -> str:
    return f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}"


def gvk(r: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": r.group, "version": r.version, "kind": kind or r.kind}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def supports_field_validation(doc: dict, kind: dict[str, str]) -> bool:
    """kubectl's check (QueryParamVerifierV3): a PATCH operation of this GVK takes fieldValidation."""
    for item in doc["paths"].values():
        op = item.get("patch")
        if not op or op.get("x-kubernetes-group-version-kind") != kind:
            continue
        return any(p["name"] == "fieldValidation" and p["in"] == "query" for p in op["parameters"])
    return False


def resolve(doc: dict, schema: dict) -> dict:
    """Follow $ref and single-element allOf, as kubectl explain does."""
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        elif len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def field_schema(doc: dict, kind: str, path: str) -> dict:
    schemas = doc["components"]["schemas"]
    schema = next(s for s in schemas.values()
                  if any(g["kind"] == kind for g in s.get("x-kubernetes-group-version-kind", [])))
    for name in path.split("."):
        schema = resolve(doc, schema)
        while schema.get("type") == "array":
            schema = resolve(doc, schema["items"])
        schema = schema["properties"][name]
    return schema


# --- /openapi/v3 index --------------------------------------------------------------------------

def test_index_links_every_group_version_with_its_hash() -> None:
    index = openapi_v3_index()
    expected = {f"apis/{g}/{v}" if g else f"api/{v}" for g, vs in all_groups().items() for v in vs}
    assert set(index["paths"]) == expected
    for path, entry in index["paths"].items():
        body = openapi_v3_document_bytes(path)
        assert body is not None
        digest = hashlib.sha512(body).hexdigest().upper()
        assert entry["serverRelativeURL"] == f"/openapi/v3/{path}?hash={digest}"
        assert openapi_v3_hash(path) == digest
        assert openapi_v3_url(path) == entry["serverRelativeURL"]


def test_hashes_are_stable_across_rebuilds() -> None:
    before = openapi_v3_index()
    for cached in (openapi._v3_documents, openapi._v3_hashes, openapi._v3_index, openapi._v2):
        cached.cache_clear()
    assert openapi_v3_index() == before


def test_document_lookup_accepts_server_paths_and_rejects_unknown_ones() -> None:
    doc = openapi_v3_document("api/v1")
    assert doc is not None and doc["openapi"] == "3.0.0"
    assert openapi_v3_document("/openapi/v3/api/v1?hash=whatever") == doc
    assert openapi_v3_document("/api/v1") == doc
    assert openapi_v3_document("apis/batch/v1") is None
    assert openapi_v3_document("apis/apps") is None


def test_returned_documents_are_copies() -> None:
    doc = openapi_v3_document("apis/apps/v1")
    assert doc is not None
    doc["components"]["schemas"].clear()
    again = openapi_v3_document("apis/apps/v1")
    assert again is not None and again["components"]["schemas"]
    assert json.loads(openapi_v3_document_bytes("apis/apps/v1") or b"{}") == again


# --- group-version documents --------------------------------------------------------------------

@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_kind_has_its_schema_with_gvk(resource: ResourceType) -> None:
    doc = openapi_v3_document(gv_path(resource))
    assert doc is not None
    schemas = doc["components"]["schemas"]
    kind_schema = schemas[KINDS[resource.kind]]
    assert kind_schema["x-kubernetes-group-version-kind"] == [gvk(resource)]
    assert set(kind_schema["properties"]) == set(STRUCTURES[KINDS[resource.kind]].fields)
    list_schema = schemas[KINDS[resource.kind] + "List"]
    assert list_schema["x-kubernetes-group-version-kind"] == [gvk(resource, resource.list_kind)]
    assert list_schema["properties"]["items"]["items"] == {"$ref": f"#/components/schemas/{KINDS[resource.kind]}"}


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_paths_and_operations_of_every_resource(resource: ResourceType) -> None:
    doc = openapi_v3_document(gv_path(resource))
    assert doc is not None
    base = resource.base_path()
    collection = (f"{base}/namespaces/{{namespace}}/{resource.plural}" if resource.namespaced
                  else f"{base}/{resource.plural}")
    paths = doc["paths"]
    assert set(paths[collection]) >= {"get", "post", "parameters"}
    assert ("delete" in paths[collection]) == ("deletecollection" in resource.verbs)
    assert set(paths[f"{collection}/{{name}}"]) >= {"get", "put", "patch", "delete"}
    if resource.namespaced:
        assert set(paths[f"{base}/{resource.plural}"]) == {"get", "parameters"}
    if "status" in resource.subresources:
        assert set(paths[f"{collection}/{{name}}/status"]) == {"get", "put", "patch", "parameters"}
    for method, action in (("post", "post"), ("put", "put"), ("patch", "patch")):
        path = collection if method == "post" else f"{collection}/{{name}}"
        op = paths[path][method]
        assert op["x-kubernetes-action"] == action
        assert op["x-kubernetes-group-version-kind"] == gvk(resource)
        names = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        assert {"fieldValidation", "dryRun", "fieldManager"} <= names
    assert supports_field_validation(doc, gvk(resource))
    assert not supports_field_validation(doc, {"group": "batch", "version": "v1", "kind": "Job"})


def test_operation_ids_follow_kubernetes_naming() -> None:
    apps = openapi_v3_document("apis/apps/v1")
    core = openapi_v3_document("api/v1")
    assert apps is not None and core is not None
    op_ids = {op["operationId"] for doc in (apps, core) for item in doc["paths"].values()
              for key, op in item.items() if key != "parameters"}
    assert {"listAppsV1NamespacedDeployment", "patchAppsV1NamespacedDeployment", "readCoreV1Node",
            "listCoreV1PodForAllNamespaces", "replaceCoreV1NamespacedPodStatus",
            "deleteCollectionCoreV1NamespacedPod", "createCoreV1Namespace"} <= op_ids


@pytest.mark.parametrize("path", list(openapi_v3_index()["paths"]))
def test_every_reference_resolves(path: str) -> None:
    doc = openapi_v3_document(path)
    assert doc is not None
    schemas = doc["components"]["schemas"]
    found = set(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[-1] in schemas, ref


def test_kubernetes_schema_names_and_scalar_types() -> None:
    doc = openapi_v3_document("api/v1")
    assert doc is not None
    schemas = doc["components"]["schemas"]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in schemas
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    time = schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]
    assert (time["type"], time["format"]) == ("string", "date-time")
    name = field_schema(doc, "Pod", "spec.containers.name")
    assert name == {"type": "string", "description": "The container's name, unique in the pod."}
    port = resolve(doc, field_schema(doc, "Service", "spec.ports.targetPort"))
    assert port["format"] == "int-or-string"
    assert field_schema(doc, "Pod", "spec.activeDeadlineSeconds") == {"type": "integer", "format": "int64"}
    limits = field_schema(doc, "Pod", "spec.containers.resources.limits")
    assert limits["type"] == "object"
    assert limits["additionalProperties"] == {
        "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity"}
    assert schemas["io.k8s.api.core.v1.Container"]["required"] == ["name"]


def test_explain_style_walk_reaches_deployment_replicas() -> None:
    doc = openapi_v3_document("apis/apps/v1")
    assert doc is not None
    replicas = field_schema(doc, "Deployment", "spec.replicas")
    assert (replicas["type"], replicas["format"]) == ("integer", "int32")
    assert replicas["description"].startswith("How many pods")
    assert field_schema(doc, "Deployment", "spec.template.spec.containers.workingDir") == {"type": "string"}
    spec = field_schema(doc, "Deployment", "spec")
    assert spec["allOf"] == [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]
    assert spec["description"]


def test_merge_keys_on_lists() -> None:
    doc = openapi_v3_document("apis/apps/v1")
    assert doc is not None
    containers = field_schema(doc, "Deployment", "spec.template.spec.containers")
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    assert containers["x-kubernetes-list-type"] == "map"
    assert containers["x-kubernetes-list-map-keys"] == ["name"]
    volumes = field_schema(doc, "Deployment", "spec.template.spec.volumes")
    assert volumes["x-kubernetes-patch-strategy"] == "merge,retainKeys"
    tolerations = field_schema(doc, "Deployment", "spec.template.spec.tolerations")
    assert "x-kubernetes-patch-merge-key" not in tolerations
    assert tolerations["x-kubernetes-list-type"] == "atomic"
    strategy = field_schema(doc, "Deployment", "spec.strategy")
    assert strategy["x-kubernetes-patch-strategy"] == "retainKeys"
    core = openapi_v3_document("api/v1")
    assert core is not None
    ports = field_schema(core, "Service", "spec.ports")
    assert ports["x-kubernetes-patch-merge-key"] == "port"
    assert ports["x-kubernetes-list-map-keys"] == ["port", "protocol"]
    selector = core["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"]
    assert selector["x-kubernetes-map-type"] == "atomic"


# --- /openapi/v2 ------------------------------------------------------------------------------

def test_swagger_v2_document() -> None:
    doc = openapi_v2()
    assert doc["swagger"] == "2.0"
    definitions = doc["definitions"]
    for r in RESOURCES:
        assert definitions[KINDS[r.kind]]["x-kubernetes-group-version-kind"] == [gvk(r)]
    for ref in set(refs(doc)):
        assert ref.startswith("#/definitions/") and ref.rsplit("/", 1)[-1] in definitions, ref
    int_or_string = definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]
    assert (int_or_string["type"], int_or_string["format"]) == ("string", "int-or-string")
    patch = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    names = [p["name"] for p in patch["parameters"]]
    assert names[0] == "body" and "fieldValidation" in names and "dryRun" in names
    assert "application/strategic-merge-patch+json" in patch["consumes"]
    containers = definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["items"] == {"$ref": "#/definitions/io.k8s.api.core.v1.Container"}
