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

from netk8s.api import fields, meta
from netk8s.api.defaults import apply_defaults
from netk8s.api.resources import (
    NAMESPACES,
    PODS,
    RESOURCES,
    SERVICES,
    ResourceType,
    by_kind,
)
from netk8s.api.selectors import FieldRequirement, FieldSelector, LabelSelector
from netk8s.api.validation import ErrorType, FieldError, validate
from netk8s.apiserver import apply as ssa
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

# Field selector names that stand for another field path.
_FIELD_ALIASES: dict[str, dict[str, str]] = {"events": {"source": "source.component"}}

# Resources whose main-resource updates ignore .status (they have a status subresource).
_STATUS_SPLIT = {r.plural for r in RESOURCES if "status" in r.subresources}


@dataclass(frozen=True)
class RegistryConfig:
    service_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/16")
    node_port_range: tuple[int, int] = (30000, 32767)
    # DefaultTolerationSeconds admission: how long pods tolerate a not-ready/unreachable node.
    default_toleration_seconds: int = 300


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
        # owner uid -> keys of the objects naming it in ownerReferences (for cascading deletes)
        self._dependents: dict[str, set[tuple[str, str]]] = {}
        self._rebuild_allocations()
        self._rebuild_dependents()
        self._ensure_system_namespaces()

    # -- start-up -------------------------------------------------------------

    def _rebuild_allocations(self) -> None:
        services, _ = self.store.list(SERVICES.storage_prefix())
        for svc in services:
            for kind, value in self._allocations_of(svc):
                (self.cluster_ips if kind == "ip" else self.node_ports).occupy(value)

    def _rebuild_dependents(self) -> None:
        for resource in RESOURCES:
            items, _ = self.store.list(resource.storage_prefix())
            for obj in items:
                self._index_owners(resource, None, obj)

    def _index_owners(self, resource: ResourceType, old: dict | None, new: dict | None) -> None:
        """Keep the owner -> dependents index in step with one object's change."""
        def refs(obj: dict | None) -> set[str]:
            return {r.get("uid", "") for r in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []}
        obj = new or old
        assert obj is not None
        entry = (resource.plural, _key(resource, obj))
        before, after = refs(old), refs(new)
        for uid in before - after:
            self._dependents.get(uid, set()).discard(entry)
            if not self._dependents.get(uid, True):
                del self._dependents[uid]
        for uid in after - before:
            self._dependents.setdefault(uid, set()).add(entry)

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

    @staticmethod
    def _resolve_aliases(resource: ResourceType, selector: FieldSelector) -> FieldSelector:
        aliases = _FIELD_ALIASES.get(resource.plural)
        if not aliases:
            return selector
        return FieldSelector(tuple(FieldRequirement(aliases.get(r.path, r.path), r.value, r.negate)
                                   for r in selector.requirements))

    def check_field_selector(self, resource: ResourceType, selector: FieldSelector) -> None:
        allowed = ("metadata.name", "metadata.namespace") + _FIELD_LABELS.get(resource.plural, ())
        for req in selector.requirements:
            if req.path not in allowed:
                raise st.bad_request(f'field label not supported: {req.path}')

    def list_objects(self, resource: ResourceType, namespace: str | None, options: ListOptions) -> dict:
        self.check_field_selector(resource, options.field_selector)
        fields = self._resolve_aliases(resource, options.field_selector)
        items, revision = self.store.list(resource.storage_prefix(namespace if resource.namespaced else None))
        selected = [
            obj for obj in items
            if options.label_selector.matches(meta.labels_of(obj)) and fields.matches(obj)
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
        labels, fields = options.label_selector, self._resolve_aliases(resource, options.field_selector)

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
            raise st.gone(str(exc)) from None
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
            raise st.not_found(NAMESPACES, namespace)
        if (ns.get("status") or {}).get("phase") == "Terminating":
            raise st.StatusError(403, "Forbidden",
                                 f'unable to create new content in namespace {namespace} because it is being '
                                 "terminated")

    @staticmethod
    def _check_fields(resource: ResourceType, obj: dict, mode: str, warnings: list[str] | None) -> dict:
        """fieldValidation: Strict rejects unknown fields; Warn (the default) and Ignore drop them,
        Warn with a warning each, as kube-apiserver (which decodes into typed structs) does."""
        unknown = fields.unknown_fields(resource.kind, obj)
        if not unknown:
            return obj
        if mode == "Strict":
            raise st.bad_request(f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                                 f"{resource.kind}: {fields.strict_error(unknown)}")
        if mode != "Ignore" and warnings is not None:
            warnings.extend(fields.unknown_field_warnings(unknown))
        return fields.drop_unknown_fields(resource.kind, obj)

    def create(self, resource: ResourceType, namespace: str | None, obj: Any, dry_run: bool = False,
               field_validation: str = "Warn", warnings: list[str] | None = None) -> dict:
        obj = copy.deepcopy(self._check_type(resource, obj))
        obj = self._check_fields(resource, obj, field_validation, warnings)
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
            created = self.store.create(key, obj)
        except KeyExistsError:
            self._release(allocated)
            raise st.already_exists(resource, name) from None
        self._index_owners(resource, None, created)
        return created

    def _prepare_create(self, resource: ResourceType, obj: dict) -> None:
        if resource.kind == "Pod":
            obj["status"] = {"phase": "Pending", "qosClass": meta.qos_class(obj.get("spec") or {})}
            # DefaultTolerationSeconds admission: tolerate not-ready/unreachable nodes for a while.
            spec = obj.get("spec") or {}
            spec["tolerations"] = meta.with_default_tolerations(spec.get("tolerations") or [],
                                                                self.config.default_toleration_seconds)
        elif resource.kind in ("Deployment", "ReplicaSet"):
            obj["status"] = {}

    def update(self, resource: ResourceType, namespace: str | None, name: str, obj: Any,
               subresource: str | None = None, dry_run: bool = False, field_validation: str = "Warn",
               warnings: list[str] | None = None) -> dict:
        return self._update(resource, namespace, name, copy.deepcopy(self._check_type(resource, obj)), subresource,
                            dry_run, field_validation, warnings)

    def _update(self, resource: ResourceType, namespace: str | None, name: str, obj: dict,
                subresource: str | None = None, dry_run: bool = False, field_validation: str = "Warn",
                warnings: list[str] | None = None) -> dict:
        """``update`` of an ``obj`` the caller hands over (a private copy it will not touch again)."""
        if subresource is None:
            obj = self._check_fields(resource, obj, field_validation, warnings)
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
        self._index_owners(resource, current, stored)
        if (stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers")
                and not _namespace_finalizers(resource, stored) and not _graceful_pod(resource, stored)):
            # The last finalizer is gone: the deletion that was waiting for it completes now.
            return self._remove(resource, stored, "Background")
        return stored

    def _merge_for_update(self, resource: ResourceType, current: dict, incoming: dict,
                          subresource: str | None) -> dict:
        if subresource == "status":
            # Everything but the status from the stored object (its old status is not copied for nothing).
            new = {k: incoming.get("status", {}) if k == "status" else copy.deepcopy(v) for k, v in current.items()}
            new.setdefault("status", incoming.get("status", {}))
            return new
        if subresource == "finalize" and resource is NAMESPACES:
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["finalizers"] = list((incoming.get("spec") or {}).get("finalizers") or [])
            return new
        if subresource is not None:
            raise st.path_not_found(f"{resource.plural}/{subresource}")
        new = incoming
        md, cur_md = new["metadata"], current["metadata"]
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if field in cur_md:
                md[field] = cur_md[field]
            else:
                md.pop(field, None)
        if resource.plural in _STATUS_SPLIT:
            new["status"] = copy.deepcopy(current.get("status", {}))
        if resource.kind == "Service":
            _keep_allocated_values(current, new)
            _drop_type_dependent_fields(current, new)
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
              subresource: str | None = None, dry_run: bool = False, field_validation: str = "Warn",
              warnings: list[str] | None = None) -> dict:
        current = self.get(resource, namespace, name)
        patched = _patched(content_type, copy.deepcopy(current), body, resource.kind)
        # A patch applies to the version it read unless it names one itself.
        body_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = body_rv or current["metadata"]["resourceVersion"]
        # ``patched`` is already a private copy: no need for update's.
        self._check_type(resource, patched)
        return self._update(resource, namespace, name, patched, subresource, dry_run, field_validation, warnings)

    def delete(self, resource: ResourceType, namespace: str | None, name: str,
               propagation: str = "Background", preconditions: dict | None = None,
               dry_run: bool = False, grace_period: int | None = None) -> dict:
        """Delete as kube-apiserver does: graceful for running pods (the kubelet finishes it),
        deferred while finalizers remain, cascading to dependents per ``propagation``."""
        current = self.get(resource, namespace, name)
        if preconditions:
            if preconditions.get("uid") and preconditions["uid"] != meta.uid_of(current):
                raise st.StatusError(409, "Conflict", f"Precondition failed: UID in precondition: "
                                     f"{preconditions['uid']}, UID in object meta: {meta.uid_of(current)}")
            if (preconditions.get("resourceVersion")
                    and preconditions["resourceVersion"] != current["metadata"].get("resourceVersion")):
                raise st.conflict(resource, name)
        if resource is NAMESPACES and name in SYSTEM_NAMESPACES[:3]:
            raise st.StatusError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may '
                                 "not be deleted")
        if dry_run:
            return current
        md = current["metadata"]
        finalizers = list(md.get("finalizers") or [])
        if propagation == "Foreground" and self._dependents.get(meta.uid_of(current)) \
                and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        grace = self._grace_period(resource, current, grace_period)
        if md.get("deletionTimestamp"):
            # Already being deleted: only a shorter grace period (or grace 0 from the kubelet) changes things.
            if grace == 0 and not finalizers and not _namespace_finalizers(resource, current):
                return self._remove(resource, current, propagation)
            if resource is PODS and grace < int(md.get("deletionGracePeriodSeconds") or 0):
                return self._mark_deleting(resource, current, finalizers, grace)
            return current
        if finalizers or grace > 0 or _namespace_finalizers(resource, current):
            marked = self._mark_deleting(resource, current, finalizers, grace)
            if propagation == "Foreground":
                self._delete_dependents(marked, "Foreground")
            elif propagation == "Orphan":
                self._orphan_dependents(marked)
            return marked
        return self._remove(resource, current, propagation)

    @staticmethod
    def _grace_period(resource: ResourceType, obj: dict, requested: int | None) -> int:
        if resource is not PODS:
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0  # nothing runs it: nobody would finish a graceful deletion
        grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds", 30)
        return max(int(grace), 0)

    def _mark_deleting(self, resource: ResourceType, current: dict, finalizers: list[str], grace: int) -> dict:
        new = copy.deepcopy(current)
        md = new["metadata"]
        md["deletionTimestamp"] = meta.later(grace)
        md["deletionGracePeriodSeconds"] = grace
        if finalizers:
            md["finalizers"] = finalizers
        if resource is NAMESPACES:
            new.setdefault("status", {})["phase"] = "Terminating"
        key = _key(resource, current)
        return self.store.update(key, new)

    def _remove(self, resource: ResourceType, obj: dict, propagation: str) -> dict:
        """Take the object out of the store, release what it held, then handle its dependents and owners."""
        try:
            deleted = self.store.delete(_key(resource, obj))
        except KeyNotFoundError:
            raise st.not_found(resource, meta.name_of(obj)) from None
        self._index_owners(resource, obj, None)
        if resource is SERVICES:
            self._release(self._allocations_of(obj))
        if propagation == "Orphan":
            self._orphan_dependents(obj)
        else:
            self._delete_dependents(obj, "Background")
        self._finish_foreground_owners(obj)
        return deleted

    def _dependents_of(self, owner: dict) -> list[tuple[ResourceType, dict]]:
        out = []
        for plural, key in sorted(self._dependents.get(meta.uid_of(owner), ())):
            obj = self.store.get(key)
            resource = _BY_PLURAL.get(plural)
            if obj is not None and resource is not None:
                out.append((resource, obj))
        return out

    def _delete_dependents(self, owner: dict, propagation: str) -> None:
        uid = meta.uid_of(owner)
        for resource, obj in self._dependents_of(owner):
            refs = (obj.get("metadata") or {}).get("ownerReferences") or []
            if any(r.get("uid") != uid for r in refs):
                continue  # another owner keeps it alive
            try:
                self.delete(resource, meta.namespace_of(obj) or None, meta.name_of(obj), propagation)
            except st.StatusError as exc:
                if exc.code != 404:
                    raise

    def _orphan_dependents(self, owner: dict) -> None:
        uid = meta.uid_of(owner)
        for resource, obj in self._dependents_of(owner):
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                r for r in new["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            stored = self.store.update(_key(resource, obj), new)
            self._index_owners(resource, obj, stored)

    def _finish_foreground_owners(self, removed: dict) -> None:
        """An owner deleted in the foreground goes once its last dependent has."""
        for ref in (removed.get("metadata") or {}).get("ownerReferences") or []:
            owner_type = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner_type is None:
                continue
            owner = self.store.get(owner_type.storage_key(ref.get("name", ""), meta.namespace_of(removed) or None))
            if owner is None or meta.uid_of(owner) != ref.get("uid"):
                continue
            finalizers = (owner.get("metadata") or {}).get("finalizers") or []
            if "foregroundDeletion" not in finalizers or self._dependents.get(meta.uid_of(owner)):
                continue
            new = copy.deepcopy(owner)
            new["metadata"]["finalizers"] = [f for f in finalizers if f != "foregroundDeletion"]
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            self._update(owner_type, meta.namespace_of(owner) or None, meta.name_of(owner), new)

    # -- scale subresource ---------------------------------------------------------------

    def get_scale(self, resource: ResourceType, namespace: str | None, name: str) -> dict:
        return _to_scale(self.get(resource, namespace, name))

    def update_scale(self, resource: ResourceType, namespace: str | None, name: str, scale: Any,
                     dry_run: bool = False) -> dict:
        if not isinstance(scale, dict):
            raise st.bad_request("the body of the request must be a Scale object")
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise st.StatusError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid '
                                 f"value: {json.dumps(replicas)}: must be greater than or equal to 0",
                                 {"name": name, "group": "autoscaling", "kind": "Scale",
                                  "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas"}]})
        current = copy.deepcopy(self.get(resource, namespace, name))
        expected = (scale.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise st.conflict(resource, name)
        current["spec"]["replicas"] = replicas
        return _to_scale(self._update(resource, namespace, name, current, dry_run=dry_run))

    def patch_scale(self, resource: ResourceType, namespace: str | None, name: str, content_type: str, body: Any,
                    dry_run: bool = False) -> dict:
        scale = self.get_scale(resource, namespace, name)
        patched = _patched(content_type, scale, body)
        return self.update_scale(resource, namespace, name, patched, dry_run)

    # -- server-side apply -----------------------------------------------------------------

    def apply(self, resource: ResourceType, namespace: str | None, name: str, config: Any, manager: str,
              force: bool = False, dry_run: bool = False) -> tuple[dict, bool]:
        """Server-side apply of ``config`` by ``manager``; returns (object, created)."""
        if not manager:
            raise st.bad_request("PATCH requests with apply patch type must have a fieldManager query parameter")
        if not isinstance(config, dict):
            raise st.bad_request("the body of an apply patch must be an object")
        config = copy.deepcopy(self._check_type(resource, config))
        self._check_namespace(resource, namespace, config)
        if config["metadata"].get("name", name) != name:
            raise st.bad_request(f'the name of the object ({config["metadata"]["name"]}) does not match the '
                                 f"name on the URL ({name})")
        config["metadata"]["name"] = name
        owned = set(ssa.field_paths(config))
        entry = {"manager": manager, "operation": "Apply", "apiVersion": resource.api_version, "time": meta.now(),
                 "fieldsType": "FieldsV1", "fieldsV1": ssa.to_fields_v1(owned)}
        live = self.store.get(resource.storage_key(name, config["metadata"].get("namespace")))
        if live is None:
            obj = copy.deepcopy(config)
            obj["metadata"]["managedFields"] = [entry]
            return self.create(resource, namespace, obj, dry_run), True
        managers = {m.get("manager", ""): ssa.from_fields_v1(m.get("fieldsV1") or {})
                    for m in live["metadata"].get("managedFields") or [] if m.get("operation") == "Apply"}
        previous = managers.pop(manager, set())
        found = ssa.conflicts(config, live, managers, owned)
        if found and not force:
            raise st.StatusError(409, "Conflict", ssa.conflict_message(found),
                                 {"causes": [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                                              "field": ssa.render_path(p)} for m, p in found]})
        others = set().union(*managers.values()) if managers else set()
        if force:  # forced fields change hands
            for m in managers:
                managers[m] -= owned
        merged = ssa.merge(live, config, previous, others, owned)
        kept = []
        for e in live["metadata"].get("managedFields") or []:
            other = e.get("manager", "")
            if e.get("operation") == "Apply":
                if other == manager or (other in managers and not managers[other]):
                    continue  # replaced by the new entry, or lost every field to a forced apply
                e = dict(e, fieldsV1=ssa.to_fields_v1(managers.get(other, set())))
            kept.append(e)
        merged["metadata"]["managedFields"] = kept + [entry]
        merged["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        return self.update(resource, namespace, name, merged, dry_run=dry_run), False

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
        spec = svc.get("spec") or {}
        allocs: list[tuple[str, Any]] = [("ip", ip) for ip in self._cluster_ips_of(svc)]
        allocs += [("port", int(p["nodePort"])) for p in spec.get("ports") or [] if p.get("nodePort")]
        if spec.get("healthCheckNodePort"):
            allocs.append(("port", int(spec["healthCheckNodePort"])))
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
            def take_port(wanted: Any, path: str) -> int:
                """A node port: the one asked for (if free or already ours), or any free one."""
                if wanted:
                    if ("port", int(wanted)) not in held:
                        try:
                            self.node_ports.allocate(int(wanted))
                        except AllocationError as exc:
                            raise st.invalid(resource, name, [FieldError(path, ErrorType.INVALID, wanted,
                                                                         str(exc))]) from None
                        taken.append(("port", int(wanted)))
                    return int(wanted)
                try:
                    port_number = self.node_ports.allocate()
                except AllocationError as exc:
                    raise st.internal(f"failed to allocate a nodePort: {exc}") from None
                taken.append(("port", port_number))
                return port_number

            for i, port in enumerate(spec.get("ports") or []):
                if svc_type in ("NodePort", "LoadBalancer"):
                    if svc_type == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False \
                            and not port.get("nodePort"):
                        continue
                    port["nodePort"] = take_port(port.get("nodePort"), f"spec.ports[{i}].nodePort")
                else:
                    port.pop("nodePort", None)
            # kube-proxy answers load balancer health checks on this port for Local traffic policy.
            if svc_type == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
                spec["healthCheckNodePort"] = take_port(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort")
            elif spec.get("healthCheckNodePort"):
                if svc_type != "LoadBalancer" or spec.get("externalTrafficPolicy") != "Local":
                    raise st.invalid(resource, name, [FieldError(
                        "spec.healthCheckNodePort", ErrorType.INVALID, spec["healthCheckNodePort"],
                        "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")])
        except st.StatusError:
            self._release(taken)
            raise
        return taken


def _to_scale(obj: dict) -> dict:
    """The autoscaling/v1 Scale view of a Deployment or ReplicaSet."""
    md = obj.get("metadata") or {}
    selector = LabelSelector.from_dict((obj.get("spec") or {}).get("selector"))
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in md},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": str(selector)},
    }


def _namespace_finalizers(resource: ResourceType, obj: dict) -> bool:
    """A Namespace is only removed once the namespace controller cleared spec.finalizers."""
    return resource is NAMESPACES and bool((obj.get("spec") or {}).get("finalizers"))


def _graceful_pod(resource: ResourceType, obj: dict) -> bool:
    """A pod in graceful deletion stays until its kubelet deletes it with grace 0."""
    return resource is PODS and int((obj.get("metadata") or {}).get("deletionGracePeriodSeconds") or 0) > 0




_BY_PLURAL = {r.plural: r for r in RESOURCES}


def _key(resource: ResourceType, obj: dict) -> str:
    """The object's key in the store."""
    return resource.storage_key(meta.name_of(obj), meta.namespace_of(obj) or None)


def _patched(content_type: str, target: Any, body: Any, kind: str | None = None) -> Any:
    """``apply_patch``, its errors as the API's: 415 for an unknown patch type, 422 for a bad patch."""
    try:
        return apply_patch(content_type, target, body, kind)
    except ValueError:
        raise st.unsupported_media_type(content_type) from None
    except PatchError as exc:
        raise st.StatusError(422, "Invalid", f"the server rejected our request due to an error in our "
                             f"request: {exc}") from None


def _drop_type_dependent_fields(current: dict, new: dict) -> None:
    """A Service changing type loses the fields only the old type had, unless the caller changed
    them on purpose in this update (kube-apiserver's dropTypeDependentFields)."""
    cur_spec, new_spec = current.get("spec") or {}, new.get("spec") or {}
    new_type = new_spec.get("type", "ClusterIP")
    if new_type == cur_spec.get("type", "ClusterIP"):
        return
    external = new_type in ("NodePort", "LoadBalancer") or bool(new_spec.get("externalIPs"))
    if not external and new_spec.get("externalTrafficPolicy") == cur_spec.get("externalTrafficPolicy"):
        new_spec.pop("externalTrafficPolicy", None)
    if new_type != "LoadBalancer":
        for field in ("healthCheckNodePort", "allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if new_spec.get(field) == cur_spec.get(field):
                new_spec.pop(field, None)


def _keep_allocated_values(current: dict, new: dict) -> None:
    """On Service update, keep the ClusterIP and NodePorts the caller left out
    (kubectl apply of a manifest without them must not reallocate)."""
    cur_spec, new_spec = current.get("spec") or {}, new.setdefault("spec", {})
    if not new_spec.get("clusterIP") and cur_spec.get("clusterIP") and new_spec.get("type") != "ExternalName":
        new_spec["clusterIP"] = cur_spec["clusterIP"]
        new_spec["clusterIPs"] = cur_spec.get("clusterIPs") or [cur_spec["clusterIP"]]
    if (new_spec.get("type") == "LoadBalancer" and new_spec.get("externalTrafficPolicy") == "Local"
            and not new_spec.get("healthCheckNodePort") and cur_spec.get("healthCheckNodePort")):
        new_spec["healthCheckNodePort"] = cur_spec["healthCheckNodePort"]
    if new_spec.get("type", "ClusterIP") in ("NodePort", "LoadBalancer"):
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in cur_spec.get("ports") or []}
        for port in new_spec.get("ports") or []:
            if not port.get("nodePort"):
                old = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                if old:
                    port["nodePort"] = old
