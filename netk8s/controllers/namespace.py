"""Namespace controller: empty a Terminating namespace, then finalize it.

On DELETE of a Namespace the API server sets ``metadata.deletionTimestamp`` and
``status.phase: Terminating`` and keeps the object while ``spec.finalizers``
holds ``kubernetes``. Like kube-controller-manager's namespace controller, this
controller then deletes every namespaced object in it (Events last), waits
(re-queueing) until none is left (pods take their grace period; objects with
finalizers wait for them), reporting progress in the Namespace's
``status.conditions`` (NamespaceContentRemaining, NamespaceFinalizersRemaining,
...), and finally PUTs the Namespace to its ``finalize`` subresource without
the ``kubernetes`` finalizer, after which the API server removes it.

Ordering, the content summary and the conditions are pure functions;
``NamespaceController`` does the listing, deleting and writing.
"""

from __future__ import annotations

import copy
import enum
import logging
from dataclasses import dataclass, field

from netk8s.api import meta
from netk8s.api.resources import EVENTS, NAMESPACES, RESOURCES, ResourceType
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.errors import ApiError, NetK8sError

log = logging.getLogger(__name__)

FINALIZER = "kubernetes"


class ConditionType(str, enum.Enum):
    DISCOVERY_FAILURE = "NamespaceDeletionDiscoveryFailure"
    GROUP_VERSION_PARSING_FAILURE = "NamespaceDeletionGroupVersionParsingFailure"
    CONTENT_FAILURE = "NamespaceDeletionContentFailure"
    CONTENT_REMAINING = "NamespaceContentRemaining"
    FINALIZERS_REMAINING = "NamespaceFinalizersRemaining"


@dataclass
class ContentReport:
    """What a deletion pass left in a namespace."""

    remaining: dict[str, int] = field(default_factory=dict)  # group_resource -> objects still there
    finalizers: dict[str, int] = field(default_factory=dict)  # finalizer -> objects still carrying it
    errors: list[str] = field(default_factory=list)  # deletions that failed

    @property
    def empty(self) -> bool:
        return not self.remaining

    def count(self, resource: ResourceType, objects: list[dict]) -> None:
        if objects:
            self.remaining[_resource_label(resource)] = len(objects)
        for obj in objects:
            for finalizer in (obj.get("metadata") or {}).get("finalizers") or []:
                self.finalizers[finalizer] = self.finalizers.get(finalizer, 0) + 1


def _resource_label(resource: ResourceType) -> str:
    # Kubernetes names them "<resource>.<group>" in these messages, "pods." for the core group.
    return f"{resource.plural}.{resource.group}"


def deletion_order(resources: tuple[ResourceType, ...] = RESOURCES) -> list[ResourceType]:
    """Every namespaced, deletable resource, Events last (they tell what happened to the rest)."""
    namespaced = [r for r in resources if r.namespaced and "delete" in r.verbs and "list" in r.verbs]
    return [r for r in namespaced if r is not EVENTS] + [r for r in namespaced if r is EVENTS]


def needs_finalizing(ns: dict) -> bool:
    return meta.is_terminating(ns) and FINALIZER in ((ns.get("spec") or {}).get("finalizers") or [])


def finalized(ns: dict) -> dict:
    """The Namespace to PUT to ``finalize``: a copy without the ``kubernetes`` finalizer."""
    out = copy.deepcopy(ns)
    spec = out.setdefault("spec", {})
    spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != FINALIZER]
    return out


def deletion_conditions(report: ContentReport) -> list[tuple[ConditionType, str, str, str]]:
    """(type, status, reason, message) for each namespace deletion condition."""
    if report.errors:
        content_failure = ("True", "ContentDeletionFailed",
                           "Failed to delete all resource types, " f"{len(report.errors)} remaining: "
                           + ", ".join(report.errors))
    else:
        content_failure = ("False", "ContentDeleted", "All content successfully deleted, may be waiting on "
                                                      "finalization")
    if report.remaining:
        remaining = ("True", "SomeResourcesRemain", "Some resources are remaining: " + ", ".join(
            f"{name} has {n} resource instances" for name, n in sorted(report.remaining.items())))
    else:
        remaining = ("False", "ContentRemoved", "All content successfully removed")
    if report.finalizers:
        finalizers = ("True", "SomeFinalizersRemain", "Some content in the namespace has finalizers remaining: "
                      + ", ".join(f"{name} in {n} resource instances"
                                  for name, n in sorted(report.finalizers.items())))
    else:
        finalizers = ("False", "ContentHasNoFinalizers", "All content-preserving finalizers finished")
    return [
        (ConditionType.DISCOVERY_FAILURE, "False", "ResourcesDiscovered", "All resources successfully discovered"),
        (ConditionType.GROUP_VERSION_PARSING_FAILURE, "False", "ParsedGroupVersions",
         "All legacy kube types successfully parsed"),
        (ConditionType.CONTENT_FAILURE, *content_failure),
        (ConditionType.CONTENT_REMAINING, *remaining),
        (ConditionType.FINALIZERS_REMAINING, *finalizers),
    ]


def with_conditions(ns: dict, report: ContentReport) -> dict | None:
    """The Namespace with its deletion conditions set from ``report``; None when unchanged."""
    current = (ns.get("status") or {}).get("conditions") or []
    conditions = list(current)
    for cond_type, status, reason, message in deletion_conditions(report):
        conditions = meta.set_condition(conditions, cond_type.value, status, reason, message)

    def comparable(conds: list[dict]) -> list[dict]:
        return [{k: v for k, v in c.items() if not k.endswith("Time")} for c in conds]
    if comparable(conditions) == comparable(current):
        return None
    out = copy.deepcopy(ns)
    out.setdefault("status", {})["conditions"] = conditions
    return out


class NamespaceController(Controller):
    name = "namespace-controller"

    def __init__(self, client: ApiClient, poll_interval: float = 0.5, max_poll_interval: float = 5.0) -> None:
        super().__init__(client)
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise NetK8sError(f"namespace controller: need 0 < poll interval ({poll_interval}) <= maximum poll "
                              f"interval ({max_poll_interval})")
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        # namespace -> (what remained at the last pass, delay before the next pass)
        self._waiting: dict[str, tuple[dict[str, int], float]] = {}

    def setup(self) -> None:
        self.namespaces = self.informer(NAMESPACES)
        self.namespaces.add_handler(self._on_namespace)

    def _on_namespace(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is not None and needs_finalizing(new):
            self.queue.add(meta.name_of(new))

    def sync(self, key: str) -> None:
        try:
            ns = self.client.get(NAMESPACES, key)  # fresh: we are about to write it
        except ApiError as exc:
            if exc.code == 404:
                self._waiting.pop(key, None)
                return
            raise
        if not needs_finalizing(ns):
            self._waiting.pop(key, None)
            return
        report = self._delete_content(key)
        self._report(ns, report)
        if not report.empty:
            delay = self._next_delay(key, report)
            log.debug("namespace %s: waiting %.1fs for %s", key, delay, report.remaining)
            self.queue.add_after(key, delay)
            return
        self._waiting.pop(key, None)
        self._finalize(key)

    def _next_delay(self, key: str, report: ContentReport) -> float:
        """Poll quickly while content is going away, slower and slower while nothing changes
        (a pod on a dead node stays Terminating until someone force-deletes it)."""
        previous, delay = self._waiting.get(key, ({}, 0.0))
        if previous != report.remaining or delay == 0.0:
            delay = self.poll_interval
        else:
            delay = min(delay * 2, self.max_poll_interval)
        self._waiting[key] = (dict(report.remaining), delay)
        return delay

    def _delete_content(self, namespace: str) -> ContentReport:
        report = ContentReport()
        order = deletion_order()
        for resource in order:
            if resource is EVENTS and not report.empty:
                continue  # Events go once everything else has
            items = self.client.list(resource, namespace).get("items") or []
            for obj in items:
                if (obj.get("metadata") or {}).get("deletionTimestamp"):
                    continue  # already going (graceful deletion or finalizers)
                try:
                    self.client.delete(resource, meta.name_of(obj), namespace)
                except ApiError as exc:
                    if exc.code != 404:
                        report.errors.append(f"{_resource_label(resource)} {meta.name_of(obj)}: {exc}")
            if items:
                report.count(resource, self.client.list(resource, namespace).get("items") or [])
        return report

    def _report(self, ns: dict, report: ContentReport) -> None:
        updated = with_conditions(ns, report)
        if updated is None:
            return
        try:
            self.client.update_status(NAMESPACES, updated)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise
            # Conditions are informative: a newer version wins; the next pass writes them again.
            log.debug("namespace %s: status update skipped: %s", meta.name_of(ns), exc)

    def _finalize(self, name: str) -> None:
        try:
            ns = self.client.get(NAMESPACES, name)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        if not needs_finalizing(ns):
            return
        try:
            self.client.request("PUT", NAMESPACES.object_path(name) + "/finalize", finalized(ns))
        except ApiError as exc:
            if exc.code != 404:
                raise
        log.info("namespace %s: content removed; finalized", name)
