"""Reading manifests: multi-document YAML/JSON files, directories, stdin, inline dicts.

``load(source)`` returns every object with where it came from, expanding
``kind: List`` documents and skipping empty documents, as kubectl does; every
object is checked to be a mapping with apiVersion, kind and metadata.name
(or generateName) before anything is sent to a server.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from netk8s.api.resources import ResourceType, for_object
from netk8s.errors import NotFoundError, UserError

_EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Manifest:
    obj: dict
    source: str
    resource: ResourceType

    @property
    def name(self) -> str:
        md = self.obj.get("metadata") or {}
        return md.get("name") or md.get("generateName") or ""


def _parse_text(text: str, source: str) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: invalid YAML{where}: {problem}") from None


def _expand(docs: Iterable[Any], source: str) -> list[dict]:
    out: list[dict] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise UserError(f"{source}: document {i + 1} is not a mapping (got {type(doc).__name__})")
        if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
            out.extend(_expand(doc.get("items") or [], source))
        else:
            out.append(doc)
    return out


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in _EXTENSIONS and p.is_file())
    if not path.exists():
        raise NotFoundError(f'the path "{path}" does not exist')
    return [path]


def load(source: str | Path | dict | list, base_dir: Path | None = None) -> list[Manifest]:
    """Objects from a path ("-" is stdin), a directory, YAML text, a dict or a list of dicts."""
    raw: list[tuple[dict, str]] = []
    if isinstance(source, dict):
        raw = [(obj, "<object>") for obj in _expand([source], "<object>")]
    elif isinstance(source, list):
        raw = [(obj, "<objects>") for obj in _expand(source, "<objects>")]
    elif isinstance(source, str) and source == "-":
        raw = [(obj, "<stdin>") for obj in _expand(_parse_text(sys.stdin.read(), "<stdin>"), "<stdin>")]
    elif isinstance(source, str) and ("\n" in source or source.lstrip().startswith(("apiVersion", "{", "kind"))):
        raw = [(obj, "<text>") for obj in _expand(_parse_text(source, "<text>"), "<text>")]
    else:
        path = Path(source)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        for file in _files(path):
            try:
                text = file.read_text()
            except OSError as exc:
                raise UserError(f"{file}: cannot read: {exc.strerror}") from None
            raw += [(obj, str(file)) for obj in _expand(_parse_text(text, str(file)), str(file))]
    manifests = []
    for obj, where in raw:
        resource = for_object(obj, where)
        md = obj.get("metadata")
        if not isinstance(md, dict) or not (md.get("name") or md.get("generateName")):
            raise UserError(f'error validating "{where}": {resource.kind} needs metadata.name')
        manifests.append(Manifest(obj, where, resource))
    return manifests
