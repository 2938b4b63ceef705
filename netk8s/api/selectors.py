"""Label and field selectors, with Kubernetes' string syntax and semantics.

``parse_label_selector("app=web,tier in (a,b),!canary")`` and
``LabelSelector.from_dict(spec["selector"])`` give the same ``LabelSelector``;
``matches(labels)`` evaluates it. Field selectors support ``=``, ``==`` and
``!=`` on dotted paths (``spec.nodeName``, ``metadata.name``, ``status.phase``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from netk8s.errors import ValidationError


class Operator(str, Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op is Operator.EQUALS:
            return present and value == self.values[0]
        if self.op is Operator.NOT_EQUALS:
            return not present or value != self.values[0]
        if self.op is Operator.IN:
            return present and value in self.values
        if self.op is Operator.NOT_IN:
            return not present or value not in self.values
        if self.op is Operator.EXISTS:
            return present
        return not present


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()
    # A nil selector (as opposed to an empty one) selects nothing.
    selects_nothing: bool = False

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.selects_nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.selects_nothing

    @classmethod
    def nothing(cls) -> "LabelSelector":
        return cls((), True)

    @classmethod
    def from_map(cls, labels: Mapping[str, str] | None) -> "LabelSelector":
        """A Service-style selector (plain map); ``None`` or ``{}`` selects nothing."""
        if not labels:
            return cls.nothing()
        return cls(tuple(Requirement(k, Operator.EQUALS, (str(v),)) for k, v in sorted(labels.items())))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, path: str = "selector") -> "LabelSelector":
        """A metav1.LabelSelector (matchLabels + matchExpressions)."""
        if spec is None:
            return cls.nothing()
        reqs: list[Requirement] = []
        for key, value in sorted((spec.get("matchLabels") or {}).items()):
            reqs.append(Requirement(key, Operator.EQUALS, (str(value),)))
        ops = {"In": Operator.IN, "NotIn": Operator.NOT_IN, "Exists": Operator.EXISTS,
               "DoesNotExist": Operator.DOES_NOT_EXIST}
        for i, expr in enumerate(spec.get("matchExpressions") or []):
            where = f"{path}.matchExpressions[{i}]"
            op = ops.get(expr.get("operator", ""))
            if op is None:
                raise ValidationError(f"{where}.operator",
                                      f'Unsupported value: "{expr.get("operator")}": supported values: '
                                      '"In", "NotIn", "Exists", "DoesNotExist"')
            values = tuple(str(v) for v in expr.get("values") or ())
            if op in (Operator.IN, Operator.NOT_IN) and not values:
                raise ValidationError(f"{where}.values", "must be specified when `operator` is 'In' or 'NotIn'")
            if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
                raise ValidationError(f"{where}.values",
                                      "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            reqs.append(Requirement(str(expr.get("key", "")), op, values))
        return cls(tuple(reqs))

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op is Operator.EQUALS:
                parts.append(f"{r.key}={r.values[0]}")
            elif r.op is Operator.NOT_EQUALS:
                parts.append(f"{r.key}!={r.values[0]}")
            elif r.op is Operator.IN:
                parts.append(f"{r.key} in ({','.join(r.values)})")
            elif r.op is Operator.NOT_IN:
                parts.append(f"{r.key} notin ({','.join(r.values)})")
            elif r.op is Operator.EXISTS:
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts)


_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValidationError("labelSelector", f"unable to parse requirement: {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query syntax. Empty text selects everything."""
    if not text or not text.strip():
        return LabelSelector()
    tokens = _tokenize(text)
    reqs: list[Requirement] = []
    i = 0

    def fail(msg: str) -> ValidationError:
        return ValidationError("labelSelector", f"unable to parse requirement: {msg} in {text!r}")

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            if i + 1 >= len(tokens):
                raise fail("missing key after '!'")
            reqs.append(Requirement(tokens[i + 1], Operator.DOES_NOT_EXIST))
            i += 2
        else:
            key = tok
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ","
            if nxt in ("=", "==", "!="):
                # "key=" (empty value) is valid: the value token may be absent.
                if i + 2 >= len(tokens) or tokens[i + 2] in (",", "(", ")"):
                    value = ""
                    i += 2
                else:
                    value = tokens[i + 2]
                    i += 3
                op = Operator.NOT_EQUALS if nxt == "!=" else Operator.EQUALS
                reqs.append(Requirement(key, op, (value,)))
            elif nxt in ("in", "notin"):
                if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                    raise fail(f"expected '(' after {nxt}")
                j = i + 3
                values: list[str] = []
                while j < len(tokens) and tokens[j] != ")":
                    if tokens[j] != ",":
                        values.append(tokens[j])
                    j += 1
                if j >= len(tokens):
                    raise fail("missing ')'")
                op = Operator.IN if nxt == "in" else Operator.NOT_IN
                reqs.append(Requirement(key, op, tuple(values)))
                i = j + 1
            elif nxt == ",":
                reqs.append(Requirement(key, Operator.EXISTS))
                i += 1
            else:
                raise fail(f"unexpected {nxt!r} after {key!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise fail(f"expected ',' but found {tokens[i]!r}")
            i += 1
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    value: str
    negate: bool = False


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = field(default=())

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for r in self.requirements:
            actual = get_field(obj, r.path)
            if (actual == r.value) == r.negate:
                return False
        return True


def get_field(obj: Mapping[str, Any], path: str) -> str:
    """A dotted field's value as a string, "" when absent (Kubernetes semantics)."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    reqs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            path, value = part.split("!=", 1)
            reqs.append(FieldRequirement(path.strip(), value.strip(), True))
        elif "==" in part:
            path, value = part.split("==", 1)
            reqs.append(FieldRequirement(path.strip(), value.strip()))
        elif "=" in part:
            path, value = part.split("=", 1)
            reqs.append(FieldRequirement(path.strip(), value.strip()))
        else:
            raise ValidationError("fieldSelector", f"invalid selector: {part!r}; expected field=value or field!=value")
    return FieldSelector(tuple(reqs))
