"""Server-side apply: field ownership by manager, merge, conflicts, removals.

A manager's applied configuration defines the set of fields it owns (a
"fieldset", serialised in ``metadata.managedFields`` as FieldsV1:
``{"f:spec": {"f:replicas": {}}}``; elements of keyed lists as
``k:{"name":"web"}``). Applying merges the configuration into the live object
(strategic merge: keyed lists merge by key), removes the fields the manager
owned before but no longer sets (unless another applier owns them too), and
reports conflicts with fields other Apply managers own with a different value.

Scope: ownership is tracked for Apply operations; ordinary updates and patches
do not take ownership (kube-apiserver also records "Update" managers).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from netk8s.apiserver.patch import merge_key, strategic_merge_patch

Path = tuple[str, ...]

_IGNORED_METADATA = {"name", "namespace", "managedFields", "resourceVersion", "uid", "creationTimestamp", "generation",
                     "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"}


def _element_key(field: str, item: Any, key: str | None) -> str | None:
    if key is None or not isinstance(item, dict) or key not in item:
        return None
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def field_paths(obj: Any, prefix: Path = (), field: str = "") -> Iterator[Path]:
    """Every leaf path the object sets; keyed list elements by key, other lists atomically."""
    if isinstance(obj, dict):
        if not obj and prefix:
            yield prefix
        for name, value in obj.items():
            if not prefix and name in ("apiVersion", "kind", "status"):
                continue
            if prefix == ("f:metadata",) and name in _IGNORED_METADATA:
                continue
            yield from field_paths(value, prefix + (f"f:{name}",), name)
    elif isinstance(obj, list):
        key = merge_key(field, obj)
        elements = [_element_key(field, item, key) for item in obj]
        if key is None or any(e is None for e in elements):
            yield prefix  # atomic list
            return
        for element, item in zip(elements, obj, strict=True):
            assert element is not None
            yield prefix + (element,)
            yield from field_paths(item, prefix + (element,), "")
    else:
        yield prefix


def to_fields_v1(paths: set[Path]) -> dict:
    """The FieldsV1 tree of a fieldset: nested dicts, ``{}`` at every owned leaf."""
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(part, {})
    return tree


def from_fields_v1(tree: dict, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for part, child in tree.items():
        path = prefix + (part,)
        if isinstance(child, dict) and child:
            out |= from_fields_v1(child, path)
        else:
            out.add(path)
    return out


def leaves(paths: set[Path]) -> set[Path]:
    """Paths that are not a prefix of another path in the set."""
    return {p for p in paths if not any(len(q) > len(p) and q[:len(p)] == p for q in paths)}


def _lookup(obj: Any, path: Path) -> tuple[bool, Any]:
    cur = obj
    for part in path:
        if part.startswith("f:"):
            if not isinstance(cur, dict) or part[2:] not in cur:
                return False, None
            cur = cur[part[2:]]
        elif part.startswith("k:"):
            if not isinstance(cur, list):
                return False, None
            (key, value), = json.loads(part[2:]).items()
            found = [item for item in cur if isinstance(item, dict) and item.get(key) == value]
            if not found:
                return False, None
            cur = found[0]
        else:
            return False, None
    return True, cur


def remove_path(obj: Any, path: Path) -> None:
    """Delete the field (or keyed list element) at ``path`` in place, if present."""
    if not path:
        return
    found, parent = _lookup(obj, path[:-1])
    if not found:
        return
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        (key, value), = json.loads(last[2:]).items()
        parent[:] = [item for item in parent if not (isinstance(item, dict) and item.get(key) == value)]


def conflicts(config: dict, live: dict, others: dict[str, set[Path]],
              owned: set[Path] | None = None) -> list[tuple[str, Path]]:
    """(manager, path) for every field the config sets to a value another applier owns differently.

    ``owned``: ``set(field_paths(config))`` when the caller has it already.
    """
    out = []
    for path in leaves(owned if owned is not None else set(field_paths(config))):
        want = _lookup(config, path)
        have = _lookup(live, path)
        if have[0] and have[1] == want[1]:
            continue
        for manager, owned in others.items():
            if path in owned:
                out.append((manager, path))
    return out


def conflict_message(found: list[tuple[str, Path]]) -> str:
    """kube-apiserver's wording for apply conflicts."""
    if len(found) == 1:
        manager, path = found[0]
        return f'Apply failed with 1 conflict: conflict with "{manager}": {render_path(path)}'
    by_manager: dict[str, list[Path]] = {}
    for manager, path in found:
        by_manager.setdefault(manager, []).append(path)
    parts = [f'conflicts with "{m}":\n' + "\n".join(f"- {render_path(p)}" for p in paths)
             for m, paths in by_manager.items()]
    return f"Apply failed with {len(found)} conflicts: " + "\n".join(parts)


def render_path(path: Path) -> str:
    parts = []
    for part in path:
        if part.startswith("f:"):
            parts.append("." + part[2:])
        else:
            parts.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(part[2:]).items()) + "]")
    return "".join(parts)


def merge(live: dict, config: dict, previously_owned: set[Path], still_owned_by_others: set[Path],
          now_owned: set[Path] | None = None) -> dict:
    """Live object with the config applied and the manager's dropped fields removed.

    ``now_owned``: ``set(field_paths(config))`` when the caller has it already.
    """
    result = strategic_merge_patch(live, {k: v for k, v in config.items() if k not in ("apiVersion", "kind")})
    if now_owned is None:
        now_owned = set(field_paths(config))
    for path in sorted(leaves(previously_owned - now_owned), key=len, reverse=True):
        if path not in still_owned_by_others and not any(p[:len(path)] == path for p in now_owned):
            remove_path(result, path)
    return result
