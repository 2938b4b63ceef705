"""ReplicaSet controller: keep ``spec.replicas`` pods matching the template.

Creates pods named ``<replicaset>-<suffix>`` with an ownerReference to the
ReplicaSet, deletes surplus pods (unscheduled, then not ready, then newest
first, as Kubernetes ranks them), adopts orphan pods its selector matches,
and reports replica counts in status. Creations and deletions it has asked for
but not yet seen in its pod cache are remembered ("expectations"), so a slow
watch never causes double creation.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import threading
import time
from typing import Callable

from netk8s.api import meta
from netk8s.api.resources import PODS, REPLICASETS
from netk8s.api.selectors import LabelSelector
from netk8s.client.controller import Controller
from netk8s.client.rest import ignore_not_found
from netk8s.controllers.deployment import pod_is_available, seconds_until_available
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

_EXPECTATION_TTL = 30.0


def is_active(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and \
        not (pod.get("metadata") or {}).get("deletionTimestamp")


def pod_from_template(owner: dict, template: dict) -> dict:
    tmeta = template.get("metadata") or {}
    pod_meta = {
        "generateName": f"{meta.name_of(owner)}-",
        "namespace": meta.namespace_of(owner),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [meta.owner_reference(owner)],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(template.get("spec") or {})}


def _deletion_rank(pod: dict) -> tuple:
    """Lower sorts first = deleted first (unassigned < pending < not ready < ready; newer first)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", ""), 0)
    created = meta.parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    return (1 if spec.get("nodeName") else 0, phase_rank, 1 if meta.pod_is_ready(pod) else 0,
            -(created.timestamp() if created else 0))


class ReplicaSetController(Controller):
    name = "replicaset-controller"

    def setup(self) -> None:
        self.replicasets = self.informer(REPLICASETS)
        self.pods = self.informer(PODS)
        self.replicasets.add_handler(lambda e, o, n: self.queue.add(meta.key_of(n or o)))  # type: ignore[arg-type]
        self.pods.add_handler(self._on_pod)
        self._lock = threading.Lock()
        # rs key -> {pod name: deadline} for creations/deletions not yet observed
        self._pending_adds: dict[str, dict[str, float]] = {}
        self._pending_deletes: dict[str, dict[str, float]] = {}

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        pod = new or old
        assert pod is not None
        ns, name = meta.namespace_of(pod), meta.name_of(pod)
        for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == "ReplicaSet" and ref.get("controller"):
                key = f"{ns}/{ref.get('name')}"
                with self._lock:
                    if new is not None:
                        self._pending_adds.get(key, {}).pop(name, None)
                    else:
                        self._pending_deletes.get(key, {}).pop(name, None)
                self.queue.add(key)
                return
        # An orphan may be adoptable by a ReplicaSet whose selector matches it.
        if new is not None and meta.controller_of(new) is None:
            for rs in self.replicasets.list():
                if meta.namespace_of(rs) == ns and self._selector(rs).matches(meta.labels_of(new)):
                    self.queue.add(meta.key_of(rs))

    @staticmethod
    def _selector(rs: dict) -> LabelSelector:
        return LabelSelector.from_dict((rs.get("spec") or {}).get("selector"))

    def _pending(self, table: dict[str, dict[str, float]], key: str) -> set[str]:
        now = time.monotonic()
        with self._lock:
            entries = table.get(key, {})
            for name in [n for n, deadline in entries.items() if deadline < now]:
                del entries[name]
            return set(entries)

    def _expect(self, table: dict[str, dict[str, float]], key: str, name: str, observed: Callable[[], bool]) -> None:
        """Remember a creation/deletion until the pod watch shows it, unless it already has: the
        watch can deliver our own write before the create/delete call returns to us."""
        with self._lock:
            if not observed():
                table.setdefault(key, {})[name] = time.monotonic() + _EXPECTATION_TTL

    def sync(self, key: str) -> None:
        rs = self.replicasets.get(key)
        if rs is None:
            with self._lock:
                self._pending_adds.pop(key, None)
                self._pending_deletes.pop(key, None)
            return
        if (rs.get("metadata") or {}).get("deletionTimestamp"):
            return
        ns = meta.namespace_of(rs)
        selector = self._selector(rs)
        owned: list[dict] = []
        for pod in self.pods.list():
            if meta.namespace_of(pod) != ns or not is_active(pod):
                continue
            if meta.is_controlled_by(pod, rs):
                owned.append(pod)
            elif meta.controller_of(pod) is None and selector.matches(meta.labels_of(pod)):
                owned.append(self._adopt(rs, pod))
        pending_deletes = self._pending(self._pending_deletes, key)
        owned = [p for p in owned if meta.name_of(p) not in pending_deletes]
        pending_adds = self._pending(self._pending_adds, key)
        desired = int((rs.get("spec") or {}).get("replicas", 1))
        diff = desired - (len(owned) + len(pending_adds))
        if diff > 0:
            # Our ReplicaSet cache can lag a cascading delete; never create pods for a gone owner.
            try:
                live = self.client.get(REPLICASETS, meta.name_of(rs), ns)
            except ApiError as exc:
                if exc.code == 404:
                    return
                raise
            if meta.uid_of(live) != meta.uid_of(rs):
                return
            template = (rs.get("spec") or {}).get("template") or {}
            for _ in range(diff):
                created = self.client.create(PODS, pod_from_template(rs, template), ns)
                pod_key = meta.key_of(created)
                self._expect(self._pending_adds, key, meta.name_of(created),
                             lambda: self.pods.get(pod_key) is not None)  # noqa: B023 (called at once)
                log.info("%s: created pod %s", key, meta.name_of(created))
        elif diff < 0 and not pending_adds:
            for pod in sorted(owned, key=_deletion_rank)[:-diff]:
                pod_key = meta.key_of(pod)
                with ignore_not_found():
                    self.client.delete(PODS, meta.name_of(pod), ns)

                def gone(pod_key: str = pod_key) -> bool:
                    current = self.pods.get(pod_key)
                    return current is None or bool((current.get("metadata") or {}).get("deletionTimestamp"))
                self._expect(self._pending_deletes, key, meta.name_of(pod), gone)
                log.info("%s: deleted pod %s", key, meta.name_of(pod))
                owned = [p for p in owned if meta.name_of(p) != meta.name_of(pod)]
        self._update_status(rs, owned)

    def _adopt(self, rs: dict, pod: dict) -> dict:
        refs = list((pod.get("metadata") or {}).get("ownerReferences") or []) + [meta.owner_reference(rs)]
        patch = {"metadata": {"ownerReferences": refs, "resourceVersion": pod["metadata"]["resourceVersion"]}}
        log.info("%s: adopting pod %s", meta.key_of(rs), meta.name_of(pod))
        return self.client.patch(PODS, meta.name_of(pod), patch, meta.namespace_of(pod))

    def _update_status(self, rs: dict, pods: list[dict]) -> None:
        template_labels = (((rs.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        ready = [p for p in pods if meta.pod_is_ready(p)]
        min_ready = int((rs.get("spec") or {}).get("minReadySeconds", 0) or 0)
        now = _dt.datetime.now(_dt.timezone.utc)
        available = [p for p in ready if pod_is_available(p, min_ready, now)]
        wait = seconds_until_available(ready, min_ready, now)
        if wait is not None:  # look again when the next pod has been ready for minReadySeconds
            self.queue.add_after(meta.key_of(rs), wait + 0.1)
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if all(meta.labels_of(p).get(k) == v
                                                                for k, v in template_labels.items())),
            "readyReplicas": len(ready),
            "availableReplicas": len(available),
            "observedGeneration": (rs.get("metadata") or {}).get("generation", 1),
        }
        current = rs.get("status") or {}
        if all(current.get(k, 0) == v for k, v in status.items()):
            return
        with ignore_not_found():
            self.client.patch(REPLICASETS, meta.name_of(rs), {"status": status}, meta.namespace_of(rs),
                              subresource="status")
