"""``apply``: create or update objects from manifests, all-or-nothing at validation.

Like ``kubectl apply`` (client-side): each object's last applied configuration
is kept in the ``kubectl.kubernetes.io/last-applied-configuration`` annotation
and an update sends a three-way merge patch (fields removed from the manifest
since the last apply are removed; fields set by the server or controllers are
kept). Every object is first sent with ``dryRun=All``, so a manifest with one
bad document changes nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from netk8s.api import meta
from netk8s.api.manifests import Manifest
from netk8s.apiserver.patch import merge_patch
from netk8s.client.rest import ApiClient
from netk8s.errors import ApiError, UserError

LAST_APPLIED = meta.LAST_APPLIED_ANNOTATION


class Action(str, Enum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Applied:
    manifest: Manifest
    action: Action
    obj: dict

    def describe(self) -> str:
        """kubectl's line: ``deployment.apps/echo created``."""
        r = self.manifest.resource
        kind = f"{r.singular}.{r.group}" if r.group else r.singular
        return f"{kind}/{self.obj.get('metadata', {}).get('name', self.manifest.name)} {self.action.value}"


def resolve_namespace(manifest: Manifest, namespace: str | None) -> str | None:
    if not manifest.resource.namespaced:
        return None
    own = (manifest.obj.get("metadata") or {}).get("namespace")
    if own and namespace and own != namespace:
        raise UserError(f'the namespace from the provided object "{own}" does not match the namespace '
                        f'"{namespace}". You must pass \'--namespace={own}\' to perform this operation.')
    return own or namespace or "default"


def three_way_patch(last: Any, new: Any, live: Any) -> Any:
    """A JSON merge patch taking ``live`` from the ``last`` applied state to ``new``."""
    if not isinstance(new, dict) or not isinstance(last, dict):
        return new
    patch: dict[str, Any] = {}
    for key in last:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        live_value = live.get(key) if isinstance(live, dict) else None
        if isinstance(value, dict) and isinstance(live_value, dict):
            sub = three_way_patch(last.get(key) if isinstance(last.get(key), dict) else {}, value, live_value)
            if sub:
                patch[key] = sub
        elif key in last and last[key] == value:
            continue  # unchanged since the last apply; the live value may carry server defaults
        elif value != live_value:
            patch[key] = value
    return patch


def _with_annotation(obj: dict) -> dict:
    """A copy of ``obj`` carrying kubectl's last-applied annotation (``obj`` without that annotation)."""
    clean = copy.deepcopy(obj)
    clean.get("metadata", {}).get("annotations", {}).pop(LAST_APPLIED, None)
    if not clean.get("metadata", {}).get("annotations"):
        clean.get("metadata", {}).pop("annotations", None)
    last_applied = json.dumps(clean, sort_keys=True, separators=(",", ":")) + "\n"
    out = clean  # the serialized form is taken: the copy can carry the annotation now
    out.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = last_applied
    return out


def apply(client: ApiClient, manifests: list[Manifest], namespace: str | None = None) -> list[Applied]:
    plans: list[tuple[Manifest, str | None, dict, dict | None]] = []
    for m in manifests:
        ns = resolve_namespace(m, namespace)
        desired = _with_annotation(m.obj)
        if ns is not None:
            desired["metadata"]["namespace"] = ns
        live = None
        name = (m.obj.get("metadata") or {}).get("name")
        if name:
            try:
                live = client.get(m.resource, name, ns)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        plans.append((m, ns, desired, live))
    # Validate everything before changing anything.
    patches: list[dict | None] = []
    for m, ns, desired, live in plans:
        patch = _patch_for(desired, live) if live is not None else None
        patches.append(patch)
        if live is None:
            client.create(m.resource, desired, ns, dry_run=True)
        elif patch:
            client.update(m.resource, merge_patch(live, patch), dry_run=True)
    results = []
    for (m, ns, desired, live), patch in zip(plans, patches):
        if live is None:
            results.append(Applied(m, Action.CREATED, client.create(m.resource, desired, ns)))
            continue
        if not patch:
            results.append(Applied(m, Action.UNCHANGED, live))
            continue
        updated = client.patch(m.resource, live["metadata"]["name"], patch, ns)
        results.append(Applied(m, Action.CONFIGURED, updated))
    return results


def _patch_for(desired: dict, live: dict) -> dict:
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    try:
        last = json.loads(annotations.get(LAST_APPLIED, "{}"))
    except ValueError:
        last = {}
    patch = three_way_patch(last, desired, live)
    patch.pop("status", None)
    return patch
