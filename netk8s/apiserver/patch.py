"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
strategic merge patch for the lists kubectl patches by key.

All functions are pure: they return a new document and raise ``PatchError``
on a malformed patch or a failed ``test`` operation.
"""

from __future__ import annotations

import copy
from typing import Any

from netk8s.api import fields


class PatchError(Exception):
    pass


MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges element-wise, by their merge key.
# (field name -> merge key), as in the Kubernetes Go types' patchMergeKey tags.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
}


def merge_key(field: str, items: list) -> str | None:
    # Container ports merge on containerPort, Service ports on port.
    if field == "ports":
        for item in items:
            if isinstance(item, dict):
                for key in ("containerPort", "port"):
                    if key in item:
                        return key
        return None
    return _MERGE_KEYS.get(field)


def _list_merge_key(kind: str | None, path: tuple[str, ...], items: list) -> str | None:
    """The merge key of the list at ``path``: from the kind's schema when it describes the
    path (Kubernetes' patchMergeKey/patchStrategy tags), else by field name."""
    if kind is not None and fields.field_at(kind, path) is not None:
        found = fields.list_patch_meta(kind, path)
        return found[0] if found and "merge" in found[1] else None
    return merge_key(path[-1], items)


def strategic_merge_patch(target: Any, patch: Any, kind: str | None = None, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys: ordering hints we do not need
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            key_name = _list_merge_key(kind, path + (key,), value + result[key])
            result[key] = (_merge_list(result[key], value, key_name, kind, path + (key,)) if key_name
                           else copy.deepcopy(value))
        else:
            result[key] = strategic_merge_patch(result.get(key), value, kind, path + (key,))
    return result


def _merge_list(current: list, patch: list, merge_key: str, kind: str | None = None,
                path: tuple[str, ...] = ()) -> list:
    merged = [copy.deepcopy(item) for item in current]
    index = {item.get(merge_key): i for i, item in enumerate(merged) if isinstance(item, dict)}
    deleted: set[Any] = set()
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"strategic merge patch: list items must be objects with {merge_key!r}")
        key = item.get(merge_key)
        if item.get("$patch") == "delete":
            deleted.add(key)
            continue
        if key in index:
            merged[index[key]] = strategic_merge_patch(merged[index[key]], item, kind, path)
        else:
            index[key] = len(merged)
            merged.append(strategic_merge_patch({}, item, kind, path))
    return [item for item in merged if not (isinstance(item, dict) and item.get(merge_key) in deleted)]


def _decode_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError):
                raise PatchError(f"path element {part!r} is not a valid index") from None
        elif isinstance(doc, dict):
            if part not in doc:
                raise PatchError(f"path element {part!r} not found")
            doc = doc[part]
        else:
            raise PatchError(f"cannot descend into {part!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                i = int(last)
            except ValueError:
                raise PatchError(f"invalid index {last!r}") from None
            if not 0 <= i <= len(parent):
                raise PatchError(f"index {i} out of range")
            parent.insert(i, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add to {type(parent).__name__}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    try:
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)
    except (KeyError, ValueError, IndexError, AttributeError):
        raise PatchError(f"unable to remove nonexistent key: {last}") from None


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {n}: needs 'op' and 'path'")
        kind = op["op"]
        parts = _decode_pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _walk(doc, parts)  # must exist
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _decode_pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, source))
            if kind == "move":
                _remove(doc, source)
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise PatchError(f"test operation at {op['path']!r} failed")
        else:
            raise PatchError(f"operation {n}: unknown op {kind!r}")
    return doc


def apply_patch(content_type: str, target: dict, patch: Any, kind: str | None = None) -> dict:
    media = content_type.split(";")[0].strip()
    if media == MERGE_PATCH:
        result = merge_patch(target, patch)
    elif media == JSON_PATCH:
        result = json_patch(target, patch)
    elif media == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, patch, kind)
    else:
        raise ValueError(media)
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result
