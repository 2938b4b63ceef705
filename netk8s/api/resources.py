"""The catalogue of API resources netk8s serves.

One ``ResourceType`` per Kubernetes resource: group, version, kind, plural,
scope, short names and subresources. The API server builds its routes and
discovery documents from this table; clients (CLI, controllers) map kinds and
kubectl-style names ("po", "svc", "deploy") to resources through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from netk8s.errors import UserError


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = (
        "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
    )
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def group_resource(self) -> str:
        """``deployments.apps`` style name used in Kubernetes error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def base_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if self.namespaced and namespace:
            return f"{self.base_path()}/namespaces/{namespace}/{self.plural}"
        return f"{self.base_path()}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"

    def storage_prefix(self, namespace: str | None = None) -> str:
        """Key prefix in the store, etcd style: /registry/<group>/<plural>/<ns>/."""
        group = self.group or "core"
        base = f"/registry/{group}/{self.plural}/"
        if self.namespaced and namespace:
            return f"{base}{namespace}/"
        return base

    def storage_key(self, name: str, namespace: str | None = None) -> str:
        return f"{self.storage_prefix(namespace if self.namespaced else None)}{name}"


_ALL = "all"

_NO_COLLECTION_DELETE = ("create", "delete", "get", "list", "patch", "update", "watch")

NAMESPACES = ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",), ("status", "finalize"),
                          verbs=_NO_COLLECTION_DELETE)
NODES = ResourceType("", "v1", "Node", "nodes", False, ("no",), ("status",))
PODS = ResourceType("", "v1", "Pod", "pods", True, ("po",), ("status", "binding", "log"), categories=(_ALL,))
SERVICES = ResourceType("", "v1", "Service", "services", True, ("svc",), ("status",),
                        verbs=_NO_COLLECTION_DELETE, categories=(_ALL,))
ENDPOINTS = ResourceType("", "v1", "Endpoints", "endpoints", True, ("ep",))
CONFIGMAPS = ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",))
SECRETS = ResourceType("", "v1", "Secret", "secrets", True)
SERVICEACCOUNTS = ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",))
EVENTS = ResourceType("", "v1", "Event", "events", True, ("ev",))
DEPLOYMENTS = ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), ("status", "scale"),
                           categories=(_ALL,))
REPLICASETS = ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",), ("status", "scale"),
                           categories=(_ALL,))
ENDPOINTSLICES = ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True)
NETWORKPOLICIES = ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, ("netpol",))
LEASES = ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True)

RESOURCES: tuple[ResourceType, ...] = (
    NAMESPACES, NODES, PODS, SERVICES, ENDPOINTS, CONFIGMAPS, SECRETS, SERVICEACCOUNTS, EVENTS,
    DEPLOYMENTS, REPLICASETS, ENDPOINTSLICES, NETWORKPOLICIES, LEASES,
)

_BY_PLURAL: dict[tuple[str, str], ResourceType] = {(r.group, r.plural): r for r in RESOURCES}
_BY_KIND: dict[tuple[str, str], ResourceType] = {(r.api_version, r.kind): r for r in RESOURCES}


def by_plural(group: str, plural: str) -> ResourceType | None:
    return _BY_PLURAL.get((group, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


def for_object(obj: dict, source: str = "") -> ResourceType:
    """The resource an object (manifest document) belongs to, by apiVersion and kind.

    Raises ``UserError`` with kubectl's wording when the pair is unknown.
    """
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "")
    where = f' from "{source}"' if source else ""
    if not isinstance(kind, str) or not kind:
        raise UserError(f"error validating data{where}: kind not set; every object needs kind and apiVersion")
    if not isinstance(api_version, str) or not api_version:
        raise UserError(f"error validating data{where}: apiVersion not set for kind {kind!r}")
    resource = by_kind(api_version, kind)
    if resource is None:
        raise UserError(
            f'resource mapping not found for name: "{name}"{where}: '
            f'no matches for kind "{kind}" in version "{api_version}"'
        )
    return resource


def resolve(name: str) -> ResourceType:
    """Map a kubectl-style resource name ("pods", "pod", "po", "deploy",
    "deployments.apps") to its resource type."""
    wanted = name.lower()
    group_hint = None
    if "." in wanted:
        wanted, group_hint = wanted.split(".", 1)
    for r in RESOURCES:
        if group_hint is not None and r.group != group_hint:
            continue
        if wanted in (r.plural, r.singular) or wanted in r.short_names:
            return r
    raise UserError(f'the server doesn\'t have a resource type "{name}"')


def resolve_list(text: str) -> list[ResourceType]:
    """kubectl's ``pods,svc`` and ``all`` (every resource in the ``all`` category, in discovery order)."""
    out: list[ResourceType] = []
    for word in text.split(","):
        if not word.strip():
            raise UserError(f'resource list "{text}": an empty name between commas')
        found = [r for r in RESOURCES if _ALL in r.categories] if word.strip().lower() == _ALL \
            else [resolve(word.strip())]
        out += [r for r in found if r not in out]
    return out


def all_groups() -> dict[str, list[str]]:
    """group -> versions served, in discovery order."""
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        versions = groups.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    return groups


def resources_in(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCES if r.group == group and r.version == version]
