"""Deployment controller: one ReplicaSet per pod template, named by its hash.

The current template's ReplicaSet (``<deployment>-<pod-template-hash>``, with
the ``pod-template-hash`` label added to its selector and pods) is scaled to
``spec.replicas``; older ReplicaSets are scaled down once the new one's pods
are ready, so a template change never leaves the Deployment without ready
pods. Status carries replica counts, the revision annotation and the
Available/Progressing conditions ``kubectl rollout status`` reads.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from netk8s.api import meta
from netk8s.api.resources import DEPLOYMENTS, REPLICASETS
from netk8s.client.controller import Controller
from netk8s.client.rest import ignore_not_found
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: dict, collision_count: int = 0) -> str:
    """Kubernetes-style pod-template-hash: FNV-32a of the template, digits mapped to a safe alphabet."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return "".join(meta.SUFFIX_ALPHABET[int(d)] for d in str(fnv32a(data)))


def _revision(obj: dict) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


class DeploymentController(Controller):
    name = "deployment-controller"

    def setup(self) -> None:
        self.deployments = self.informer(DEPLOYMENTS)
        self.replicasets = self.informer(REPLICASETS)
        self.deployments.add_handler(lambda e, o, n: self.queue.add(meta.key_of(n or o)))  # type: ignore[arg-type]
        self.replicasets.add_handler(self._on_replicaset)

    def _on_replicaset(self, event: str, old: dict | None, new: dict | None) -> None:
        rs = new or old
        assert rs is not None
        ref = meta.controller_of(rs)
        if ref and ref.get("kind") == "Deployment":
            self.queue.add(f"{meta.namespace_of(rs)}/{ref.get('name')}")

    def sync(self, key: str) -> None:
        deploy = self.deployments.get(key)
        if deploy is None or (deploy.get("metadata") or {}).get("deletionTimestamp"):
            return
        ns = meta.namespace_of(deploy)
        spec = deploy.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        owned = [rs for rs in self.replicasets.list()
                 if meta.namespace_of(rs) == ns and meta.is_controlled_by(rs, deploy)]
        pod_hash = template_hash(template)
        new_name = f"{meta.name_of(deploy)}-{pod_hash}"
        new_rs = next((rs for rs in owned if meta.name_of(rs) == new_name), None)
        old_rss = [rs for rs in owned if meta.name_of(rs) != new_name]
        max_revision = max([_revision(rs) for rs in owned] + [0])
        if spec.get("paused"):
            self._update_status(deploy, new_rs, old_rss)
            return
        if new_rs is None:
            new_rs = self._create_replicaset(deploy, pod_hash, desired, max_revision + 1)
        elif int((new_rs.get("spec") or {}).get("replicas", 0)) != desired:
            new_rs = self._scale(new_rs, desired)
        new_ready = int((new_rs.get("status") or {}).get("readyReplicas", 0))
        if new_ready >= desired:
            for rs in old_rss:
                if int((rs.get("spec") or {}).get("replicas", 0)) != 0:
                    self._scale(rs, 0)
        self._prune_history(deploy, old_rss)
        self._update_status(deploy, new_rs, old_rss)

    def _create_replicaset(self, deploy: dict, pod_hash: str, replicas: int, revision: int) -> dict:
        spec = deploy.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = dict(tmeta.get("labels") or {}, **{HASH_LABEL: pod_hash})
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = dict(selector.get("matchLabels") or {}, **{HASH_LABEL: pod_hash})
        rs: dict[str, Any] = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta.name_of(deploy)}-{pod_hash}", "namespace": meta.namespace_of(deploy),
                "labels": dict(tmeta["labels"]),
                "annotations": {REVISION_ANNOTATION: str(revision),
                                "deployment.kubernetes.io/desired-replicas": str(replicas)},
                "ownerReferences": [meta.owner_reference(deploy)],
            },
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
        try:
            created = self.client.create(REPLICASETS, rs, meta.namespace_of(deploy))
        except ApiError as exc:
            if exc.code != 409:
                raise
            created = self.client.get(REPLICASETS, rs["metadata"]["name"], meta.namespace_of(deploy))
        log.info("%s: created replicaset %s (revision %d)", meta.key_of(deploy), meta.name_of(created), revision)
        return created

    def _scale(self, rs: dict, replicas: int) -> dict:
        log.info("scaling replicaset %s to %d", meta.key_of(rs), replicas)
        return self.client.patch(REPLICASETS, meta.name_of(rs), {"spec": {"replicas": replicas}},
                                 meta.namespace_of(rs))

    def _prune_history(self, deploy: dict, old_rss: list[dict]) -> None:
        limit = int((deploy.get("spec") or {}).get("revisionHistoryLimit", 10))
        idle = [rs for rs in old_rss if int((rs.get("spec") or {}).get("replicas", 0)) == 0
                and int((rs.get("status") or {}).get("replicas", 0)) == 0]
        idle.sort(key=_revision)
        for rs in idle[:max(len(idle) - limit, 0)]:
            with ignore_not_found():
                self.client.delete(REPLICASETS, meta.name_of(rs), meta.namespace_of(rs))

    def _update_status(self, deploy: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        all_rs = ([new_rs] if new_rs else []) + old_rss

        def total(field: str) -> int:
            return sum(int((rs.get("status") or {}).get(field, 0)) for rs in all_rs)

        desired = int((deploy.get("spec") or {}).get("replicas", 1))
        updated = int((new_rs.get("status") or {}).get("replicas", 0)) if new_rs else 0
        available = total("availableReplicas")
        replicas = total("replicas")
        status = dict(deploy.get("status") or {})
        status.update({
            "observedGeneration": (deploy.get("metadata") or {}).get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(desired - available, 0),
        })
        conditions = status.get("conditions") or []
        if available >= desired:
            conditions = meta.set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                            "Deployment has minimum availability.")
        else:
            conditions = meta.set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                            "Deployment does not have minimum availability.")
        rs_name = meta.name_of(new_rs) if new_rs else ""
        if new_rs and updated == desired and available >= desired and replicas == desired:
            conditions = meta.set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                            f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif new_rs:
            conditions = meta.set_condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                                            f'ReplicaSet "{rs_name}" is progressing.')
        status["conditions"] = conditions
        # Zero counts are omitted, as the Go types' omitempty does; None removes them in the merge patch.
        for field in ("readyReplicas", "availableReplicas", "updatedReplicas", "unavailableReplicas"):
            if status.get(field) == 0:
                status[field] = None
        if new_rs and _revision(new_rs) != _revision(deploy):
            annotations = dict((deploy.get("metadata") or {}).get("annotations") or {})
            annotations[REVISION_ANNOTATION] = str(_revision(new_rs))
            with ignore_not_found():
                self.client.patch(DEPLOYMENTS, meta.name_of(deploy), {"metadata": {"annotations": annotations}},
                                  meta.namespace_of(deploy))
        if _same_status(deploy.get("status") or {}, status):
            return
        with ignore_not_found():
            self.client.patch(DEPLOYMENTS, meta.name_of(deploy), {"status": status}, meta.namespace_of(deploy),
                              subresource="status")


def _same_status(old: dict, new: dict) -> bool:
    def strip(status: dict) -> dict:
        out = {k: v for k, v in status.items() if v is not None}
        out["conditions"] = [{k: v for k, v in c.items() if not k.endswith("Time")}
                             for c in status.get("conditions") or []]
        return out
    return strip(old) == strip(new)
