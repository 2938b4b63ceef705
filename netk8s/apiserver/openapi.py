"""OpenAPI documents of the API: ``/openapi/v3`` (index and one document per
group-version) and ``/openapi/v2`` (Swagger 2.0, as JSON).

Built once from the field table (``netk8s.api.fields``) and the resource
catalogue (``netk8s.api.resources``) and cached. Schemas carry Kubernetes'
names (``io.k8s.api.core.v1.Pod``), ``x-kubernetes-group-version-kind`` on the
kinds and the list annotations strategic merge patch reads
(``x-kubernetes-patch-merge-key``/``-patch-strategy``/``-list-type``). Every
collection and object path has its operations, and PATCH, PUT and POST take
``fieldValidation`` and ``dryRun``: kubectl looks for ``fieldValidation`` on the
PATCH operation of a kind to decide that the server validates fields itself,
and reads the schemas for ``kubectl explain`` and for the patches ``kubectl
apply`` computes.

Serving notes for the HTTP layer: the index links each document as
``/openapi/v3/<path>?hash=<sha512>``; serve the document bytes from
``openapi_v3_document_bytes`` (a stale hash may be redirected to
``openapi_v3_url``). Pure: no HTTP here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from typing import Any

from netk8s.api import fields as F
from netk8s.api.fields import FieldSpec, FieldType, Structure, TypeKind
from netk8s.api.resources import RESOURCES, ResourceType, all_groups, resources_in

log = logging.getLogger(__name__)

GIT_VERSION = "v1.32.0-netk8s"
_TITLE = "Kubernetes"

TIME = f"{F.META}.Time"
MICRO_TIME = f"{F.META}.MicroTime"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
PATCH = f"{F.META}.Patch"
STATUS = f"{F.META}.Status"
DELETE_OPTIONS = f"{F.META}.DeleteOptions"
LIST_META = f"{F.META}.ListMeta"

# Media types the server reads for PATCH (no server-side apply) and answers with.
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json")
_JSON = "application/json"
_WATCH_STREAM = "application/json;stream=watch"

# Scalar schemas Kubernetes names (v3 form, v2 form).
_NAMED_SCALARS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    TIME: ({"type": "string", "format": "date-time",
            "description": "A timestamp in RFC 3339 form, to the second (2024-05-01T12:00:00Z)."},
           {"type": "string", "format": "date-time",
            "description": "A timestamp in RFC 3339 form, to the second (2024-05-01T12:00:00Z)."}),
    MICRO_TIME: ({"type": "string", "format": "date-time",
                  "description": "A timestamp in RFC 3339 form with microseconds."},
                 {"type": "string", "format": "date-time",
                  "description": "A timestamp in RFC 3339 form with microseconds."}),
    QUANTITY: ({"oneOf": [{"type": "string"}, {"type": "number"}],
                "description": "An amount with an optional suffix: 100m, 0.5, 64Mi, 1G, 2e3."},
               {"type": "string",
                "description": "An amount with an optional suffix: 100m, 0.5, 64Mi, 1G, 2e3."}),
    INT_OR_STRING: ({"format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}],
                     "description": "A number or a string, such as a port number or a port name."},
                    {"type": "string", "format": "int-or-string",
                     "description": "A number or a string, such as a port number or a port name."}),
    PATCH: ({"type": "object", "description": "A patch body; its media type says how it applies."},
            {"type": "object", "description": "A patch body; its media type says how it applies."}),
}

_SCALAR_REFS = {TypeKind.TIME: TIME, TypeKind.MICRO_TIME: MICRO_TIME, TypeKind.QUANTITY: QUANTITY,
                TypeKind.INT_OR_STRING: INT_OR_STRING}


# --- schemas --------------------------------------------------------------------------------

class _Dialect:
    """What differs between OpenAPI v3 and Swagger 2.0 schema text."""

    def __init__(self, v3: bool) -> None:
        self.v3 = v3
        self.prefix = "#/components/schemas/" if v3 else "#/definitions/"

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": self.prefix + name}

    def ref_with(self, name: str, description: str) -> dict[str, Any]:
        """A reference with a description beside it (v3 needs allOf for siblings of $ref)."""
        if not description:
            return self.ref(name)
        if self.v3:
            return {"allOf": [self.ref(name)], "description": description}
        return {**self.ref(name), "description": description}


def _type_schema(ftype: FieldType, d: _Dialect, description: str = "") -> dict[str, Any]:
    kind = ftype.kind
    schema: dict[str, Any]
    if kind is TypeKind.OBJECT:
        return d.ref_with(ftype.ref, description)
    if kind in _SCALAR_REFS:
        return d.ref_with(_SCALAR_REFS[kind], description)
    if kind is TypeKind.ARRAY and ftype.item is not None:
        schema = {"type": "array", "items": _type_schema(ftype.item, d)}
    elif kind is TypeKind.MAP and ftype.item is not None:
        schema = {"type": "object", "additionalProperties": _type_schema(ftype.item, d)}
    elif kind is TypeKind.ANY:
        schema = {"type": "object"}
        if d.v3:
            schema["x-kubernetes-preserve-unknown-fields"] = True
    elif kind is TypeKind.BYTES:
        schema = {"type": "string", "format": "byte"}
    else:
        schema = {"type": kind.value}
        if ftype.format:
            schema["format"] = ftype.format
    if description:
        schema["description"] = description
    return schema


def _property(spec: FieldSpec, d: _Dialect) -> dict[str, Any]:
    schema = _type_schema(spec.type, d, spec.description)
    if spec.patch_merge_key:
        schema["x-kubernetes-patch-merge-key"] = spec.patch_merge_key
    if spec.patch_strategy:
        schema["x-kubernetes-patch-strategy"] = spec.patch_strategy
    if spec.list_type:
        schema["x-kubernetes-list-type"] = spec.list_type
    if spec.list_map_keys:
        schema["x-kubernetes-list-map-keys"] = list(spec.list_map_keys)
    if spec.map_type:
        schema["x-kubernetes-map-type"] = spec.map_type
    return schema


def _gvk(resource: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": resource.group, "kind": kind or resource.kind, "version": resource.version}


def _structure_schema(struct: Structure, d: _Dialect, gvks: list[dict[str, str]]) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": struct.description, "type": "object",
                              "properties": {name: _property(spec, d) for name, spec in struct.fields.items()}}
    if struct.required:
        schema["required"] = struct.required
    if struct.map_type:
        schema["x-kubernetes-map-type"] = struct.map_type
    if gvks:
        schema["x-kubernetes-group-version-kind"] = gvks
    return schema


def _list_name(resource: ResourceType) -> str:
    return F.KINDS[resource.kind] + "List"


def _list_schema(resource: ResourceType, d: _Dialect) -> dict[str, Any]:
    return {
        "description": f"A list of {resource.kind} objects.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "The version of this list's schema."},
            "items": {"type": "array", "items": d.ref(F.KINDS[resource.kind]),
                      "description": f"The {resource.kind} objects."},
            "kind": {"type": "string", "description": "The kind of this list."},
            "metadata": d.ref_with(LIST_META, F.STRUCTURES[LIST_META].description),
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": [_gvk(resource, resource.list_kind)],
    }


def _schemas(resources: list[ResourceType], d: _Dialect) -> dict[str, Any]:
    kind_gvks: dict[str, list[dict[str, str]]] = {}
    for r in resources:
        kind_gvks.setdefault(F.KINDS[r.kind], []).append(_gvk(r))
    roots = list(kind_gvks) + [STATUS, DELETE_OPTIONS, LIST_META]
    schemas: dict[str, Any] = {}
    for name in F.referenced(roots):
        gvks = kind_gvks.get(name, [])
        if name == STATUS:
            gvks = [{"group": "", "kind": "Status", "version": "v1"}]
        schemas[name] = _structure_schema(F.STRUCTURES[name], d, gvks)
    for r in resources:
        schemas[_list_name(r)] = _list_schema(r, d)
    for name, (v3_form, v2_form) in _NAMED_SCALARS.items():
        schemas[name] = dict(v3_form if d.v3 else v2_form)
    return dict(sorted(schemas.items()))


# --- paths ----------------------------------------------------------------------------------

# name -> (type, description)
_QUERY_PARAMS: dict[str, tuple[str, str]] = {
    "pretty": ("string", "If 'true', the output is indented."),
    "allowWatchBookmarks": ("boolean", "Ask for BOOKMARK events on a watch."),
    "continue": ("string", "The token from a previous paged list, to get the next page."),
    "fieldSelector": ("string", "Only objects whose fields match, e.g. spec.nodeName=worker."),
    "labelSelector": ("string", "Only objects whose labels match, e.g. app=echo,tier!=db."),
    "limit": ("integer", "At most this many objects; the rest come with the continue token."),
    "resourceVersion": ("string", "The resource version to list or watch from."),
    "resourceVersionMatch": ("string", "How resourceVersion applies to a list: Exact or NotOlderThan."),
    "sendInitialEvents": ("boolean", "Start a watch with ADDED events for every existing object."),
    "timeoutSeconds": ("integer", "End the list or watch call after this many seconds."),
    "watch": ("boolean", "Stream changes (ADDED, MODIFIED, DELETED) instead of returning a list."),
    "dryRun": ("string", "'All' runs every stage of the request but does not persist the result."),
    "fieldManager": ("string", "The name of the actor making the change, for field ownership."),
    "fieldValidation": ("string", "What to do with unknown or duplicate fields in the body: "
                                  "Ignore (drop them), Warn (drop them and send a warning per field) "
                                  "or Strict (reject the request)."),
    "force": ("boolean", "Take ownership of conflicting fields (apply requests only)."),
    "gracePeriodSeconds": ("integer", "Seconds before the object is deleted; 0 deletes at once."),
    "ignoreStoreReadErrorWithClusterBreakingPotential": (
        "boolean", "Delete an object the store cannot read. Dangerous."),
    "orphanDependents": ("boolean", "Deprecated: use propagationPolicy."),
    "propagationPolicy": ("string", "What happens to dependents: Orphan, Background or Foreground."),
}

_LIST = ("allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit", "resourceVersion",
         "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch")
_WRITE = ("dryRun", "fieldManager", "fieldValidation")
_DELETE = ("dryRun", "gracePeriodSeconds", "ignoreStoreReadErrorWithClusterBreakingPotential",
           "orphanDependents", "propagationPolicy")
_DELETE_COLLECTION = ("continue", "dryRun", "fieldSelector", "gracePeriodSeconds",
                      "ignoreStoreReadErrorWithClusterBreakingPotential", "labelSelector", "limit",
                      "orphanDependents", "propagationPolicy", "resourceVersion", "resourceVersionMatch",
                      "sendInitialEvents", "timeoutSeconds")


def _query_param(name: str, d: _Dialect) -> dict[str, Any]:
    ptype, description = _QUERY_PARAMS[name]
    if d.v3:
        return {"name": name, "in": "query", "description": description,
                "schema": {"type": ptype, "uniqueItems": True}}
    return {"name": name, "in": "query", "description": description, "type": ptype, "uniqueItems": True}


def _path_param(name: str, description: str, d: _Dialect) -> dict[str, Any]:
    if d.v3:
        return {"name": name, "in": "path", "required": True, "description": description,
                "schema": {"type": "string", "uniqueItems": True}}
    return {"name": name, "in": "path", "required": True, "description": description, "type": "string",
            "uniqueItems": True}


def _camel(text: str) -> str:
    return text[:1].upper() + text[1:]


def _group_word(resource: ResourceType) -> str:
    """``Core``, ``Apps``, ``Discovery`` ... as in Kubernetes' operation ids."""
    if not resource.group:
        return "Core"
    first = resource.group.split(".")[0]
    return "".join(_camel(part) for part in first.split("-"))


def _tag(resource: ResourceType) -> str:
    return f"{_group_word(resource).lower()}_{resource.version}"


class _Operations:
    """Builds the operations of one resource's paths in one dialect."""

    def __init__(self, resource: ResourceType, d: _Dialect) -> None:
        self.r = resource
        self.d = d
        self.kind_schema = F.KINDS[resource.kind]

    def _op_id(self, verb: str, namespaced: bool, suffix: str = "") -> str:
        r = self.r
        scope = "Namespaced" if namespaced else ""
        return f"{verb}{_group_word(r)}{_camel(r.version)}{scope}{r.kind}{suffix}"

    def _responses(self, codes: dict[str, str], schema: str, stream: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for code, text in codes.items():
            if self.d.v3:
                content = {_JSON: {"schema": self.d.ref(schema)}}
                if stream:
                    content[_WATCH_STREAM] = {"schema": self.d.ref(schema)}
                out[code] = {"description": text, "content": content}
            else:
                out[code] = {"description": text, "schema": self.d.ref(schema)}
        out["401"] = {"description": "Unauthorized"}
        return out

    def operation(self, verb: str, action: str, namespaced: bool, params: tuple[str, ...], *,
                  body: str = "", body_types: tuple[str, ...] = (_JSON,), response: str = "",
                  codes: dict[str, str] | None = None, stream: bool = False, suffix: str = "",
                  description: str = "", body_required: bool = True) -> dict[str, Any]:
        d = self.d
        op: dict[str, Any] = {
            "description": description,
            "operationId": self._op_id(verb, namespaced, suffix),
            "parameters": [_query_param(p, d) for p in params],
            "responses": self._responses(codes or {"200": "OK"}, response or self.kind_schema, stream),
            "tags": [_tag(self.r)],
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(self.r),
        }
        if body:
            if d.v3:
                op["requestBody"] = {"content": {t: {"schema": d.ref(body)} for t in body_types},
                                     "required": body_required}
            else:
                op["parameters"].insert(0, {"name": "body", "in": "body", "required": body_required,
                                            "schema": d.ref(body)})
                op["consumes"] = list(body_types)
        if not d.v3:
            op["produces"] = [_JSON] + ([_WATCH_STREAM] if stream else [])
            op["schemes"] = ["https"]
        return op


def _resource_paths(r: ResourceType, d: _Dialect) -> dict[str, Any]:
    ops = _Operations(r, d)
    kind = r.kind
    paths: dict[str, Any] = {}
    pretty = _query_param("pretty", d)
    ns_param = _path_param("namespace", "The namespace of the objects.", d)
    name_param = _path_param("name", f"The name of the {kind}.", d)
    base = r.base_path()
    namespaced = r.namespaced
    collection = (f"{base}/namespaces/{{namespace}}/{r.plural}" if namespaced else f"{base}/{r.plural}")
    scope_params = [ns_param] if namespaced else []

    coll: dict[str, Any] = {"parameters": scope_params + [pretty]}
    if "list" in r.verbs:
        coll["get"] = ops.operation("list", "list", namespaced, _LIST, response=_list_name(r), stream=True,
                                    description=f"list or watch {kind} objects")
    if "create" in r.verbs:
        coll["post"] = ops.operation("create", "post", namespaced, _WRITE, body=F.KINDS[kind],
                                     codes={"200": "OK", "201": "Created", "202": "Accepted"},
                                     description=f"create a {kind}")
    if "deletecollection" in r.verbs:
        coll["delete"] = ops.operation("deleteCollection", "deletecollection", namespaced, _DELETE_COLLECTION,
                                       body=DELETE_OPTIONS, response=STATUS, body_required=False,
                                       description=f"delete a collection of {kind} objects")
    paths[collection] = coll

    obj: dict[str, Any] = {"parameters": [name_param] + scope_params + [pretty]}
    if "get" in r.verbs:
        obj["get"] = ops.operation("read", "get", namespaced, (), description=f"read the specified {kind}")
    if "update" in r.verbs:
        obj["put"] = ops.operation("replace", "put", namespaced, _WRITE, body=F.KINDS[kind],
                                   codes={"200": "OK", "201": "Created"},
                                   description=f"replace the specified {kind}")
    if "patch" in r.verbs:
        obj["patch"] = ops.operation("patch", "patch", namespaced, _WRITE + ("force",), body=PATCH,
                                     body_types=_PATCH_TYPES, codes={"200": "OK", "201": "Created"},
                                     description=f"partially update the specified {kind}")
    if "delete" in r.verbs:
        obj["delete"] = ops.operation("delete", "delete", namespaced, _DELETE, body=DELETE_OPTIONS,
                                      response=STATUS, codes={"200": "OK", "202": "Accepted"},
                                      body_required=False, description=f"delete a {kind}")
    paths[f"{collection}/{{name}}"] = obj

    if "status" in r.subresources:
        paths[f"{collection}/{{name}}/status"] = {
            "parameters": [name_param] + scope_params + [pretty],
            "get": ops.operation("read", "get", namespaced, (), suffix="Status",
                                 description=f"read status of the specified {kind}"),
            "put": ops.operation("replace", "put", namespaced, _WRITE, body=F.KINDS[kind], suffix="Status",
                                 codes={"200": "OK", "201": "Created"},
                                 description=f"replace status of the specified {kind}"),
            "patch": ops.operation("patch", "patch", namespaced, _WRITE + ("force",), body=PATCH,
                                   body_types=_PATCH_TYPES, suffix="Status", codes={"200": "OK", "201": "Created"},
                                   description=f"partially update status of the specified {kind}"),
        }

    if namespaced and "list" in r.verbs:
        paths[f"{base}/{r.plural}"] = {
            "parameters": [pretty],
            "get": ops.operation("list", "list", False, _LIST, response=_list_name(r), stream=True,
                                 suffix="ForAllNamespaces",
                                 description=f"list or watch {kind} objects in every namespace"),
        }
    return paths


def _paths(resources: list[ResourceType], d: _Dialect) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in resources:
        paths.update(_resource_paths(r, d))
    return dict(sorted(paths.items()))


# --- documents ------------------------------------------------------------------------------

def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _normalize(path: str) -> str:
    path = path.split("?", 1)[0].strip("/")
    if path.startswith("openapi/v3/"):
        path = path[len("openapi/v3/"):]
    return path


@lru_cache(maxsize=None)
def _v3_documents() -> dict[str, bytes]:
    d = _Dialect(v3=True)
    docs: dict[str, bytes] = {}
    for group, versions in all_groups().items():
        for version in versions:
            resources = resources_in(group, version)
            doc = {
                "openapi": "3.0.0",
                "info": {"title": _TITLE, "version": GIT_VERSION},
                "paths": _paths(resources, d),
                "components": {"schemas": _schemas(resources, d)},
            }
            docs[_gv_path(group, version)] = _dumps(doc)
    log.debug("built %d OpenAPI v3 documents", len(docs))
    return docs


@lru_cache(maxsize=None)
def _v3_hashes() -> dict[str, str]:
    return {path: hashlib.sha512(body).hexdigest().upper() for path, body in _v3_documents().items()}


@lru_cache(maxsize=None)
def _v3_index() -> bytes:
    return _dumps({"paths": {path: {"serverRelativeURL": openapi_v3_url(path)} for path in _v3_documents()}})


@lru_cache(maxsize=None)
def _v2() -> bytes:
    d = _Dialect(v3=False)
    resources = list(RESOURCES)
    doc = {
        "swagger": "2.0",
        "info": {"title": _TITLE, "version": GIT_VERSION},
        "paths": _paths(resources, d),
        "definitions": _schemas(resources, d),
    }
    return _dumps(doc)


def openapi_v3_hash(path: str) -> str | None:
    """The current hash of a group-version document ("api/v1", "apis/apps/v1"), or None."""
    return _v3_hashes().get(_normalize(path))


def openapi_v3_url(path: str) -> str:
    """The server-relative URL the index gives for a group-version document."""
    path = _normalize(path)
    return f"/openapi/v3/{path}?hash={_v3_hashes()[path]}"


def openapi_v3_index_bytes() -> bytes:
    return _v3_index()


def openapi_v3_document_bytes(path: str) -> bytes | None:
    """The JSON of a group-version document, exactly as hashed in the index; None when unknown."""
    return _v3_documents().get(_normalize(path))


def openapi_v2_bytes() -> bytes:
    return _v2()


def openapi_v3_index() -> dict:
    """``/openapi/v3``: ``{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=..."}}}``."""
    return json.loads(_v3_index())


def openapi_v3_document(path: str) -> dict | None:
    """``/openapi/v3/<path>`` for a group-version path like "api/v1" or "apis/apps/v1"."""
    body = openapi_v3_document_bytes(path)
    return json.loads(body) if body is not None else None


def openapi_v2() -> dict:
    """``/openapi/v2``: one Swagger 2.0 document for every group-version."""
    return json.loads(_v2())
