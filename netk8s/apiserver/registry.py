"""Resource registry: the API server's semantics, independent of HTTP.

For every resource it does what kube-apiserver's generic registry and the
per-kind strategies do: name generation, defaulting, validation, uid and
timestamps, generation bumps, status/spec split between the main resource and
the ``status`` subresource, optimistic concurrency on resourceVersion,
Service ClusterIP/NodePort allocation, pod binding, and cascading deletion
through ownerReferences. Failures are ``StatusError``s.

The registry is synchronous and not thread-safe: the HTTP server calls it from
its event loop thread only.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from netk8s.api import meta
from netk8s.api.defaults import apply_defaults
from netk8s.api.resources import (
    NAMESPACES,
    PODS,
    RESOURCES,
    SERVICES,
    ResourceType,
    by_kind,
)
from netk8s.api.selectors import FieldSelector, LabelSelector
from netk8s.api.validation import ErrorType, FieldError, validate
from netk8s.apiserver import status as st
from netk8s.apiserver.patch import PatchError, apply_patch
from netk8s.controllers.allocators import AllocationError, IPAllocator, PortAllocator
from netk8s.store import (
    ConflictError,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    Store,
    TooOldError,
    WatchEvent,
)

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

# Field selectors each resource supports besides metadata.name/namespace.
_FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName"),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "services": ("spec.clusterIP", "spec.type"),
    "endpointslices": ("addressType",),
    "secrets": ("type",),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
               "reason", "reportingComponent", "source", "type"),
}

# Resources whose main-resource updates ignore .status (they have a status subresource).
_STATUS_SPLIT = {r.plural for r in RESOURCES if "status" in r.subresources}


@dataclass(frozen=True)
class RegistryConfig:
    service_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/16")
    node_port_range: tuple[int, int] = (30000, 32767)


@dataclass(frozen=True)
class ListOptions:
    label_selector: LabelSelector = LabelSelector()
    field_selector: FieldSelector = FieldSelector()
    limit: int = 0
    continue_token: str = ""


class Registry:
    def __init__(self, store: Store, config: RegistryConfig | None = None) -> None:
        self.store = store
        self.config = config or RegistryConfig()
        # The first service address is the `kubernetes` Service's, as in kube-apiserver.
        first = self.config.service_subnet.network_address + 1
        self.cluster_ips = IPAllocator(self.config.service_subnet, reserved=[first])
        self.node_ports = PortAllocator(*self.config.node_port_range)
        self._rebuild_allocations()
        self._ensure_system_namespaces()

    # -- start-up -------------------------------------------------------------

    def _rebuild_allocations(self) -> None:
        services, _ = self.store.list(SERVICES.storage_prefix())
        for svc in services:
            for ip in self._cluster_ips_of(svc):
                self.cluster_ips.occupy(ip)
            for port in svc.get("spec", {}).get("ports") or []:
                if port.get("nodePort"):
                    self.node_ports.occupy(int(port["nodePort"]))

    def _ensure_system_namespaces(self) -> None:
        for name in SYSTEM_NAMESPACES:
            if self.store.get(NAMESPACES.storage_key(name)) is None:
                self.create(NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- reads -----------------------------------------------------------------

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self.store.get(resource.storage_key(name, namespace))
        if obj is None:
            raise st.not_found(resource, name)
        return obj

    def check_field_selector(self, resource: ResourceType, selector: FieldSelector) -> None:
        allowed = ("metadata.name", "metadata.namespace") + _FIELD_LABELS.get(resource.plural, ())
        for req in selector.requirements:
            if req.path not in allowed:
                raise st.bad_request(f'field label not supported: {req.path}')

    def list_objects(self, resource: ResourceType, namespace: str | None, options: ListOptions) -> dict:
        self.check_field_selector(resource, options.field_selector)
        items, revision = self.store.list(resource.storage_prefix(namespace if resource.namespaced else None))
        selected = [
            obj for obj in items
            if options.label_selector.matches(meta.labels_of(obj)) and options.field_selector.matches(obj)
        ]
        selected.sort(key=lambda o: (meta.namespace_of(o), meta.name_of(o)))
        list_meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if options.continue_token:
            try:
                start_after = json.loads(base64.urlsafe_b64decode(options.continue_token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise st.bad_request("continue key is not valid: malformed token") from None
            selected = [o for o in selected if [meta.namespace_of(o), meta.name_of(o)] > start_after]
        if options.limit and len(selected) > options.limit:
            remaining = len(selected) - options.limit
            selected = selected[:options.limit]
            last = selected[-1]
            token = {"rv": revision, "start": [meta.namespace_of(last), meta.name_of(last)]}
            list_meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            list_meta["remainingItemCount"] = remaining
        return {
            "apiVersion": resource.api_version,
            "kind": resource.list_kind,
            "metadata": list_meta,
            "items": selected,
        }

    def watch(self, resource: ResourceType, namespace: str | None, since: int | None, options: ListOptions,
              send: Callable[[str, dict], None]) -> Callable[[], None]:
        """Stream events to ``send(type, object)``; returns a cancel function.

        ``since`` None or 0 starts with a synthetic ADDED for every current
        object, as the API does for a watch without a resourceVersion.
        """
        self.check_field_selector(resource, options.field_selector)
        prefix = resource.storage_prefix(namespace if resource.namespaced else None)
        labels, fields = options.label_selector, options.field_selector

        def matches(obj: dict | None) -> bool:
            return obj is not None and labels.matches(meta.labels_of(obj)) and fields.matches(obj)

        def on_event(event: WatchEvent) -> None:
            now_match = matches(event.object) if event.type is not EventType.DELETED else False
            was_match = matches(event.previous)
            if event.type is EventType.ADDED:
                if now_match:
                    send("ADDED", event.object)
            elif event.type is EventType.MODIFIED:
                if now_match and was_match:
                    send("MODIFIED", event.object)
                elif now_match:
                    send("ADDED", event.object)
                elif was_match:
                    send("DELETED", event.object)
            elif was_match:
                send("DELETED", event.object)

        if not since:
            items, revision = self.store.list(prefix)
            for obj in sorted(items, key=lambda o: (meta.namespace_of(o), meta.name_of(o))):
                if matches(obj):
                    send("ADDED", obj)
            since = revision
        try:
            subscription = self.store.watch(prefix, since, on_event)
        except TooOldError as exc:
            raise st.gone(f"too old resource version: {exc.requested} ({exc.oldest})") from None
        return subscription.cancel

    # -- writes ----------------------------------------------------------------

    def _check_type(self, resource: ResourceType, obj: Any) -> dict:
        if not isinstance(obj, dict):
            raise st.bad_request("the body of the request must be a JSON object")
        api_version = obj.get("apiVersion") or resource.api_version
        kind = obj.get("kind") or resource.kind
        if (api_version, kind) != (resource.api_version, resource.kind):
            found = by_kind(api_version, kind)
            raise st.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.api_version})" if found is None or found.kind == resource.kind else
                f'{kind} in version "{api_version}" cannot be handled as a {resource.kind}')
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        return obj

    def _check_namespace(self, resource: ResourceType, namespace: str | None, obj: dict) -> None:
        md = obj.setdefault("metadata", {})
        if not isinstance(md, dict):
            raise st.bad_request("metadata must be an object")
        if not resource.namespaced:
            md.pop("namespace", None)
            return
        body_ns = md.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise st.bad_request("the namespace of the provided object does not match the namespace sent on "
                                 "the request")
        md["namespace"] = namespace or body_ns or "default"

    def _require_namespace(self, resource: ResourceType, namespace: str) -> None:
        if not resource.namespaced:
            return
        ns = self.store.get(NAMESPACES.storage_key(namespace))
        if ns is None:
            raise st.namespace_not_found(namespace)
        if (ns.get("status") or {}).get("phase") == "Terminating":
            raise st.StatusError(403, "Forbidden",
                                 f'unable to create new content in namespace {namespace} because it is being '
                                 "terminated")

    def create(self, resource: ResourceType, namespace: str | None, obj: Any, dry_run: bool = False) -> dict:
        obj = copy.deepcopy(self._check_type(resource, obj))
        self._check_namespace(resource, namespace, obj)
        md = obj["metadata"]
        if not md.get("name") and md.get("generateName"):
            md["name"] = f"{md['generateName']}{meta.random_suffix()}"
        name = md.get("name") or ""
        if resource.namespaced:
            self._require_namespace(resource, md["namespace"])
        for field in ("uid", "resourceVersion", "deletionTimestamp", "selfLink"):
            md.pop(field, None)
        apply_defaults(resource.kind, obj)
        self._prepare_create(resource, obj)
        errors = validate(resource.kind, obj)
        if errors:
            raise st.invalid(resource, name, errors)
        key = resource.storage_key(name, md.get("namespace"))
        if self.store.get(key) is not None:
            raise st.already_exists(resource, name)
        md["uid"] = meta.new_uid()
        md["creationTimestamp"] = meta.now()
        if "spec" in obj:
            md["generation"] = 1
        allocated = self._allocate(resource, obj, None)
        if dry_run:
            self._release(allocated)
            obj["metadata"]["resourceVersion"] = ""
            return obj
        try:
            return self.store.create(key, obj)
        except KeyExistsError:
            self._release(allocated)
            raise st.already_exists(resource, name) from None

    def _prepare_create(self, resource: ResourceType, obj: dict) -> None:
        if resource.kind == "Pod":
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj.get("spec") or {})}
        elif resource.kind in ("Deployment", "ReplicaSet"):
            obj["status"] = {}

    def update(self, resource: ResourceType, namespace: str | None, name: str, obj: Any,
               subresource: str | None = None, dry_run: bool = False) -> dict:
        obj = copy.deepcopy(self._check_type(resource, obj))
        self._check_namespace(resource, namespace, obj)
        md = obj["metadata"]
        if md.get("name") and md["name"] != name:
            raise st.bad_request(f'the name of the object ({md["name"]}) does not match the name on the URL ({name})')
        md["name"] = name
        key = resource.storage_key(name, md.get("namespace"))
        current = self.store.get(key)
        if current is None:
            raise st.not_found(resource, name)
        expected = md.get("resourceVersion")
        if expected and str(expected) != current["metadata"].get("resourceVersion"):
            raise st.conflict(resource, name)
        new = self._merge_for_update(resource, current, obj, subresource)
        apply_defaults(resource.kind, new)
        errors = validate(resource.kind, new) + self._immutable_errors(resource, current, new)
        if errors:
            raise st.invalid(resource, name, errors)
        if subresource is None and current.get("spec") != new.get("spec"):
            new["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        allocated = self._allocate(resource, new, current)
        if dry_run:
            self._release(allocated)
            return new
        try:
            stored = self.store.update(key, new, int(expected) if expected else None)
        except ConflictError:
            self._release(allocated)
            raise st.conflict(resource, name) from None
        self._release_unused(resource, current, stored)
        return stored

    def _merge_for_update(self, resource: ResourceType, current: dict, incoming: dict,
                          subresource: str | None) -> dict:
        if subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = incoming.get("status", {})
            return new
        if subresource is not None:
            raise st.path_not_found(f"{resource.plural}/{subresource}")
        new = incoming
        md, cur_md = new["metadata"], current["metadata"]
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if field in cur_md:
                md[field] = cur_md[field]
            else:
                md.pop(field, None)
        if resource.plural in _STATUS_SPLIT:
            new["status"] = copy.deepcopy(current.get("status", {}))
        if resource.kind == "Service":
            _keep_allocated_values(current, new)
        return new

    def _immutable_errors(self, resource: ResourceType, current: dict, new: dict) -> list[FieldError]:
        errors: list[FieldError] = []
        if resource.kind == "Service":
            old_ip = current["spec"].get("clusterIP")
            new_ip = new["spec"].get("clusterIP")
            if old_ip and new_ip != old_ip and new["spec"].get("type") != "ExternalName":
                errors.append(FieldError("spec.clusterIP", ErrorType.INVALID, new_ip, "field is immutable"))
        if resource.kind in ("Deployment", "ReplicaSet"):
            if current["spec"].get("selector") != new["spec"].get("selector"):
                errors.append(FieldError("spec.selector", ErrorType.INVALID, new["spec"].get("selector"),
                                         "field is immutable"))
        if resource.kind == "Pod":
            old_node, new_node = current["spec"].get("nodeName"), new["spec"].get("nodeName")
            if old_node and new_node != old_node:
                errors.append(FieldError("spec.nodeName", ErrorType.FORBIDDEN,
                                         detail="pod updates may not change fields other than "
                                                "`spec.containers[*].image`, `spec.activeDeadlineSeconds`, "
                                                "`spec.tolerations` (only additions to existing tolerations)"))
        return errors

    def patch(self, resource: ResourceType, namespace: str | None, name: str, content_type: str, body: Any,
              subresource: str | None = None, dry_run: bool = False) -> dict:
        current = self.get(resource, namespace, name)
        try:
            patched = apply_patch(content_type, copy.deepcopy(current), body)
        except ValueError:
            raise st.unsupported_media_type(content_type) from None
        except PatchError as exc:
            raise st.StatusError(422, "Invalid", f"the server rejected our request due to an error in our "
                                 f"request: {exc}") from None
        # A patch applies to the version it read unless it names one itself.
        body_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = body_rv or current["metadata"]["resourceVersion"]
        return self.update(resource, namespace, name, patched, subresource, dry_run)

    def delete(self, resource: ResourceType, namespace: str | None, name: str,
               propagation: str = "Background", preconditions: dict | None = None,
               dry_run: bool = False) -> dict:
        current = self.get(resource, namespace, name)
        if preconditions:
            if preconditions.get("uid") and preconditions["uid"] != meta.uid_of(current):
                raise st.StatusError(409, "Conflict", f"Precondition failed: UID in precondition: "
                                     f"{preconditions['uid']}, UID in object meta: {meta.uid_of(current)}")
            if (preconditions.get("resourceVersion")
                    and preconditions["resourceVersion"] != current["metadata"].get("resourceVersion")):
                raise st.conflict(resource, name)
        if dry_run:
            return current
        if resource.kind == "Namespace":
            if name in SYSTEM_NAMESPACES[:3]:
                raise st.StatusError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may '
                                     "not be deleted")
            self._delete_namespace_contents(name)
        try:
            deleted = self.store.delete(resource.storage_key(name, namespace))
        except KeyNotFoundError:
            raise st.not_found(resource, name) from None
        if resource.kind == "Service":
            self._release(self._allocations_of(current))
        self._collect_dependents(current, propagation)
        return deleted

    def _delete_namespace_contents(self, namespace: str) -> None:
        for resource in RESOURCES:
            if not resource.namespaced:
                continue
            items, _ = self.store.list(resource.storage_prefix(namespace))
            for obj in items:
                try:
                    self.delete(resource, namespace, meta.name_of(obj))
                except st.StatusError as exc:
                    if exc.code != 404:
                        raise

    def _collect_dependents(self, owner: dict, propagation: str) -> None:
        """Garbage-collect (or orphan) objects whose ownerReferences name ``owner``."""
        uid = meta.uid_of(owner)
        namespace = meta.namespace_of(owner) or None
        for resource in RESOURCES:
            if namespace and not resource.namespaced:
                continue
            items, _ = self.store.list(resource.storage_prefix(namespace))
            for obj in items:
                refs = (obj.get("metadata") or {}).get("ownerReferences") or []
                if not any(ref.get("uid") == uid for ref in refs):
                    continue
                if propagation == "Orphan":
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    self.store.update(resource.storage_key(meta.name_of(obj), meta.namespace_of(obj) or None), new)
                    continue
                remaining = [r for r in refs if r.get("uid") != uid]
                if remaining:
                    continue  # another owner keeps it alive
                try:
                    self.delete(resource, meta.namespace_of(obj) or None, meta.name_of(obj), propagation)
                except st.StatusError as exc:
                    if exc.code != 404:
                        raise

    def bind(self, namespace: str, name: str, binding: Any) -> dict:
        if not isinstance(binding, dict) or not (binding.get("target") or {}).get("name"):
            raise st.invalid(PODS, name, [FieldError("target.name", ErrorType.REQUIRED)])
        node = binding["target"]["name"]
        current = self.get(PODS, namespace, name)
        if current["spec"].get("nodeName"):
            raise st.StatusError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": pod '
                                 f'{name} is already assigned to node "{current["spec"]["nodeName"]}"')
        new = copy.deepcopy(current)
        new["spec"]["nodeName"] = node
        status = new.setdefault("status", {})
        status["conditions"] = meta.set_condition(status.get("conditions") or [], "PodScheduled", "True")
        self.store.update(PODS.storage_key(name, namespace), new)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    # -- Service allocations ---------------------------------------------------------

    @staticmethod
    def _cluster_ips_of(svc: dict) -> list[ipaddress.IPv4Address]:
        out = []
        spec = svc.get("spec") or {}
        for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
            if ip and ip != "None":
                try:
                    out.append(ipaddress.IPv4Address(ip))
                except ValueError:
                    pass
        return out

    def _allocations_of(self, svc: dict) -> list[tuple[str, Any]]:
        allocs: list[tuple[str, Any]] = [("ip", ip) for ip in self._cluster_ips_of(svc)]
        allocs += [("port", int(p["nodePort"])) for p in (svc.get("spec") or {}).get("ports") or []
                   if p.get("nodePort")]
        return allocs

    def _release(self, allocations: list[tuple[str, Any]]) -> None:
        for kind, value in allocations:
            if kind == "ip":
                self.cluster_ips.release(value)
            else:
                self.node_ports.release(value)

    def _release_unused(self, resource: ResourceType, old: dict, new: dict) -> None:
        if resource.kind != "Service":
            return
        keep = set(self._allocations_of(new))
        self._release([a for a in self._allocations_of(old) if a not in keep])

    def _allocate(self, resource: ResourceType, svc: dict, current: dict | None) -> list[tuple[str, Any]]:
        """Allocate what a Service create/update needs; returns what was newly taken."""
        if resource.kind != "Service":
            return []
        spec = svc["spec"]
        svc_type = spec.get("type", "ClusterIP")
        held = set(self._allocations_of(current)) if current else set()
        taken: list[tuple[str, Any]] = []
        name = meta.name_of(svc)
        try:
            if svc_type == "ExternalName":
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)
            elif spec.get("clusterIP") == "None":
                spec["clusterIPs"] = ["None"]
            else:
                wanted = spec.get("clusterIP")
                if wanted:
                    ip = ipaddress.IPv4Address(wanted)
                    if ("ip", ip) not in held:
                        try:
                            self.cluster_ips.allocate(ip)
                        except AllocationError as exc:
                            raise st.invalid(resource, name, [FieldError("spec.clusterIPs", ErrorType.INVALID,
                                                                         [wanted], f"failed to allocate IP "
                                                                         f"{wanted}: {exc}")]) from None
                        taken.append(("ip", ip))
                else:
                    try:
                        ip = self.cluster_ips.allocate()
                    except AllocationError as exc:
                        raise st.internal(f"failed to allocate a serviceIP: {exc}") from None
                    taken.append(("ip", ip))
                    spec["clusterIP"] = str(ip)
                spec["clusterIPs"] = [spec["clusterIP"]]
            for i, port in enumerate(spec.get("ports") or []):
                if svc_type in ("NodePort", "LoadBalancer"):
                    if svc_type == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False \
                            and not port.get("nodePort"):
                        continue
                    wanted_port = port.get("nodePort")
                    if wanted_port:
                        if ("port", int(wanted_port)) not in held:
                            try:
                                self.node_ports.allocate(int(wanted_port))
                            except AllocationError as exc:
                                raise st.invalid(resource, name, [FieldError(
                                    f"spec.ports[{i}].nodePort", ErrorType.INVALID, wanted_port, str(exc))]) from None
                            taken.append(("port", int(wanted_port)))
                    else:
                        try:
                            port["nodePort"] = self.node_ports.allocate()
                        except AllocationError as exc:
                            raise st.internal(f"failed to allocate a nodePort: {exc}") from None
                        taken.append(("port", port["nodePort"]))
                else:
                    port.pop("nodePort", None)
        except st.StatusError:
            self._release(taken)
            raise
        return taken


def _keep_allocated_values(current: dict, new: dict) -> None:
    """On Service update, keep the ClusterIP and NodePorts the caller left out
    (kubectl apply of a manifest without them must not reallocate)."""
    cur_spec, new_spec = current.get("spec") or {}, new.setdefault("spec", {})
    if not new_spec.get("clusterIP") and cur_spec.get("clusterIP") and new_spec.get("type") != "ExternalName":
        new_spec["clusterIP"] = cur_spec["clusterIP"]
        new_spec["clusterIPs"] = cur_spec.get("clusterIPs") or [cur_spec["clusterIP"]]
    if new_spec.get("type", "ClusterIP") in ("NodePort", "LoadBalancer"):
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in cur_spec.get("ports") or []}
        for port in new_spec.get("ports") or []:
            if not port.get("nodePort"):
                old = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                if old:
                    port["nodePort"] = old


def _qos_class(spec: dict) -> str:
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
