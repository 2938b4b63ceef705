"""Garbage collector: delete dependents whose owners are gone.

The API server cascades deletions through ownerReferences when an owner is
deleted; this controller catches the objects that race past it (a pod created
for a ReplicaSet that was deleted a moment earlier), as kube-controller-manager's
garbage collector does: an object all of whose owners no longer exist (or exist
with another uid) is deleted.
"""

from __future__ import annotations

import logging

from netk8s.api import meta
from netk8s.api.resources import (
    ENDPOINTSLICES,
    PODS,
    REPLICASETS,
    ResourceType,
    by_kind,
)
from netk8s.client.controller import Controller
from netk8s.client.rest import ignore_not_found
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

# Kinds that netk8s controllers create with owners.
_DEPENDENTS = (PODS, REPLICASETS, ENDPOINTSLICES)


class GarbageCollector(Controller):
    name = "garbage-collector"

    def setup(self) -> None:
        self._by_plural: dict[str, ResourceType] = {}
        for resource in _DEPENDENTS:
            self._by_plural[resource.plural] = resource
            informer = self.informer(resource)
            informer.add_handler(self._handler(resource))

    def _handler(self, resource: ResourceType):  # type: ignore[no-untyped-def]
        def on_event(event: str, old: dict | None, new: dict | None) -> None:
            if event == "ADDED" and new is not None and (new.get("metadata") or {}).get("ownerReferences"):
                self.queue.add(f"{resource.plural}|{meta.namespace_of(new)}|{meta.name_of(new)}")
        return on_event

    def _owner_exists(self, namespace: str, ref: dict) -> bool:
        owner_type = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if owner_type is None:
            return True  # an owner kind we do not serve: leave the object alone
        try:
            owner = self.client.get(owner_type, ref.get("name", ""), namespace if owner_type.namespaced else None)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return meta.uid_of(owner) == ref.get("uid")

    def sync(self, key: str) -> None:
        plural, namespace, name = key.split("|", 2)
        resource = self._by_plural[plural]
        try:
            obj = self.client.get(resource, name, namespace or None)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        if not refs or any(self._owner_exists(namespace, ref) for ref in refs):
            return
        log.info("deleting %s %s/%s: its owners are gone", resource.kind, namespace, name)
        with ignore_not_found():
            self.client.delete(resource, name, namespace or None, propagation="Background")
