"""Packet tracer for kube-proxy's nftables ruleset: where would the first packet of a connection go?

``trace_nftables`` reads table ``ip kube-proxy`` in any of three forms: the JSON
of ``nft -j list table ip kube-proxy`` (or ``list ruleset``), the text of
``nft list table ip kube-proxy``, or an ``nft -f`` script such as the
renderer's transactions (``add``/``flush``/``delete`` commands, applied in
order to an empty table). It then runs a ``Packet`` through the base chains
the way netfilter would for a new connection: for a packet arriving at the
node, prerouting (``filter-prerouting`` at -110, ``nat-prerouting`` at -100),
then input when its (possibly DNATed) destination is local, else forward and
postrouting; for a packet the node sends, output (-110, -100 and the
post-DNAT -90 chains) and postrouting. Verdict maps are looked up, ``numgen``
vmaps and affinity-set lookups (dynamic sets: the entry may or may not be
there) follow every branch, ``dnat`` rewrites the destination for the chains
that run after it, and the masquerade mark is tracked through
``mark-for-masquerade`` / ``masquerading``.

Only the expressions kube-proxy writes (and their ``nft list``/JSON spellings)
are understood; anything else raises ``ValidationError`` naming the chain and
rule, rather than guessing. Nothing here touches the kernel.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, ip_network
from typing import Any, Iterable, Iterator, Mapping, Sequence

from netk8s.errors import ValidationError
from netk8s.proxy.trace import LOOPBACK, MAX_DEPTH, Packet, TraceResult, Verdict, overall_verdict, sorted_endpoints

__all__ = ["NftRuleset", "parse_ruleset", "trace_nftables"]

DEFAULT_FAMILY = "ip"
DEFAULT_TABLE = "kube-proxy"
_PROTO_NUMBERS = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmp"}
# Named chain priorities of the ip family (nft's "dstnat - 10" style).
_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_VERDICTS = ("jump", "goto", "return", "accept", "drop", "reject", "continue")


# -- the parsed ruleset -------------------------------------------------------------------------------

class FieldKind(str, Enum):
    SADDR = "ip saddr"
    DADDR = "ip daddr"
    L4PROTO = "meta l4proto"
    DPORT = "dport"
    MARK = "meta mark"
    CT_STATE = "ct state"
    FIB_SADDR = "fib saddr type"
    FIB_DADDR = "fib daddr type"


@dataclass(frozen=True)
class Field:
    """A packet property a rule looks at; ``proto`` qualifies ports ("tcp dport"; None: "th dport")."""

    kind: FieldKind
    proto: str | None = None
    mask: int | None = None  # "meta mark & MASK"

    @property
    def text(self) -> str:
        if self.kind is FieldKind.DPORT:
            return f"{self.proto or 'th'} dport"
        if self.mask is not None:
            return f"{self.kind.value} & {self.mask:#010x}"
        return self.kind.value


Atom = str  # one value as nft prints it: "10.0.0.1", "10.0.0.0/8", "tcp", "80", "80-90", "local", "new"
Key = tuple[Atom, ...]  # one set element (a concatenation when it has several atoms)


@dataclass(frozen=True)
class SetRef:
    name: str

    @property
    def text(self) -> str:
        return f"@{self.name}"


@dataclass(frozen=True)
class AnonSet:
    items: tuple[Key, ...]

    @property
    def text(self) -> str:
        return "{ " + ", ".join(" . ".join(k) for k in self.items) + " }"


@dataclass(frozen=True)
class Match:
    """``left op right``: fields (a concatenation when several) compared with a value, a literal set or a named set."""

    fields: tuple[Field, ...]
    negate: bool
    right: Key | AnonSet | SetRef

    @property
    def text(self) -> str:
        left = " . ".join(f.text for f in self.fields)
        right = " . ".join(self.right) if isinstance(self.right, tuple) else self.right.text
        if isinstance(self.right, SetRef) and not self.negate:
            return f"{left} {right}"
        return f"{left} {'!= ' if self.negate else ''}{right}"


@dataclass(frozen=True)
class VerdictStmt:
    kind: str  # jump goto return accept drop reject continue
    target: str | None = None

    @property
    def text(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


@dataclass(frozen=True)
class VMap:
    """``KEY vmap @map`` / ``KEY vmap { k : verdict, ... }``; ``numgen_mod`` set for ``numgen random mod N``."""

    fields: tuple[Field, ...]
    data: SetRef | tuple[tuple[Key, VerdictStmt], ...]
    numgen_mod: int | None = None

    @property
    def text(self) -> str:
        key = f"numgen random mod {self.numgen_mod}" if self.numgen_mod is not None else \
            " . ".join(f.text for f in self.fields)
        if isinstance(self.data, SetRef):
            data = self.data.text
        else:
            data = "{ " + ", ".join(f"{' . '.join(k)} : {v.text}" for k, v in self.data) + " }"
        return f"{key} vmap {data}"


@dataclass(frozen=True)
class Dnat:
    address: IPv4Address
    port: int | None

    @property
    def text(self) -> str:
        return f"dnat to {self.address}" + (f":{self.port}" if self.port is not None else "")


@dataclass(frozen=True)
class Masquerade:
    @property
    def text(self) -> str:
        return "masquerade"


@dataclass(frozen=True)
class MarkSet:
    op: str  # "or" | "xor" | "set"
    value: int

    @property
    def text(self) -> str:
        return f"meta mark set {self.value:#010x}" if self.op == "set" else \
            f"meta mark set meta mark {'|' if self.op == 'or' else '^'} {self.value:#010x}"


@dataclass(frozen=True)
class SetUpdate:
    name: str

    @property
    def text(self) -> str:
        return f"update @{self.name} {{ ip saddr }}"


Expr = Match | VerdictStmt | VMap | Dnat | Masquerade | MarkSet | SetUpdate


@dataclass(frozen=True)
class Rule:
    exprs: tuple[Expr, ...]
    text: str


@dataclass
class Chain:
    name: str
    rules: list[Rule] = field(default_factory=list)
    hook: str | None = None  # set for base chains
    priority: int = 0
    policy: str = "accept"


@dataclass
class NamedSet:
    """A set (``value`` None) or verdict map; ``dynamic`` for sets the datapath fills (affinity)."""

    name: str
    is_map: bool
    elements: dict[Key, VerdictStmt | None] = field(default_factory=dict)
    dynamic: bool = False


@dataclass
class NftRuleset:
    """One table: chains with parsed rules, sets and maps."""

    family: str = DEFAULT_FAMILY
    table: str = DEFAULT_TABLE
    exists: bool = False
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NamedSet] = field(default_factory=dict)

    def base_chains(self, hook: str) -> list[Chain]:
        return sorted((c for c in self.chains.values() if c.hook == hook), key=lambda c: c.priority)


# -- tokens and expressions ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r'"[^"]*"|[{},;]|[^\s{},;"]+')


def _tokens(text: str) -> list[str]:
    """Words, quoted strings (kept with their quotes) and the punctuation ``{ } , ;``; ":" alone is a word too."""
    return _TOKEN_RE.findall(text)


class _Tokens:
    def __init__(self, tokens: Sequence[str], where: str) -> None:
        self.items = list(tokens)
        self.pos = 0
        self.where = where

    def peek(self, offset: int = 0) -> str | None:
        i = self.pos + offset
        return self.items[i] if i < len(self.items) else None

    def next(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end")
        self.pos += 1
        return token

    def take(self, *words: str) -> bool:
        if all(self.peek(i) == w for i, w in enumerate(words)):
            self.pos += len(words)
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.take(word):
            raise self.error(f"expected {word!r}")

    def error(self, what: str) -> ValidationError:
        near = " ".join(self.items[self.pos:self.pos + 4])
        return ValidationError(self.where, f"{what} at {near!r}" if near else what)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.items)


def _unquote(token: str) -> str:
    return token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token


def _int(token: str) -> int:
    return int(token, 0)


def _parse_field(t: _Tokens) -> Field | None:
    """One field at the cursor ("ip daddr", "meta l4proto", "tcp dport", "th dport", ...) or None."""
    a, b = t.peek(), t.peek(1)
    if a == "ip" and b in ("saddr", "daddr"):
        t.pos += 2
        return Field(FieldKind.SADDR if b == "saddr" else FieldKind.DADDR)
    if a == "meta" and b == "l4proto":
        t.pos += 2
        return Field(FieldKind.L4PROTO)
    if a in ("tcp", "udp", "sctp", "th") and b == "dport":
        t.pos += 2
        return Field(FieldKind.DPORT, None if a == "th" else a)
    if a == "ct" and b == "state":
        t.pos += 2
        return Field(FieldKind.CT_STATE)
    if a == "fib" and b in ("saddr", "daddr") and t.peek(2) == "type":
        t.pos += 3
        return Field(FieldKind.FIB_SADDR if b == "saddr" else FieldKind.FIB_DADDR)
    if (a == "meta" and b == "mark") or a == "mark":
        t.pos += 2 if a == "meta" else 1
        if t.peek() in ("&", "and"):
            t.pos += 1
            return Field(FieldKind.MARK, mask=_int(t.next()))
        return Field(FieldKind.MARK)
    return None


def _parse_key(t: _Tokens) -> Key:
    """Atoms joined by ".": ``10.0.0.1 . tcp . 80``."""
    atoms = [_unquote(t.next())]
    while t.peek() == "." and t.peek(1) not in (None, "}", ","):
        t.pos += 1
        atoms.append(_unquote(t.next()))
    return tuple(atoms)


def _parse_value(t: _Tokens) -> Key | AnonSet | SetRef:
    token = t.peek()
    if token is None:
        raise t.error("missing value")
    if token.startswith("@"):
        t.pos += 1
        return SetRef(token[1:])
    if token == "{":
        t.pos += 1
        items: list[Key] = []
        while not t.take("}"):
            if t.take(","):
                continue
            items.append(_parse_key(t))
        return AnonSet(tuple(items))
    key = _parse_key(t)
    if t.peek() != ",":
        return key
    items = [key]
    while t.take(","):  # "ct state established,related"
        items.append(_parse_key(t))
    return AnonSet(tuple(items))


def _parse_verdict(t: _Tokens) -> VerdictStmt:
    kind = t.next()
    if kind in ("jump", "goto"):
        return VerdictStmt(kind, t.next())
    if kind in ("return", "accept", "drop", "continue"):
        return VerdictStmt(kind)
    if kind == "reject":
        # "reject with icmp type port-unreachable" / "reject with tcp reset": the kind of reject is not traced.
        if t.take("with"):
            while t.peek() not in (None, "comment", ",", "}"):
                t.pos += 1
        return VerdictStmt("reject")
    t.pos -= 1
    raise t.error("expected a verdict")


def _parse_vmap_data(t: _Tokens) -> SetRef | tuple[tuple[Key, VerdictStmt], ...]:
    if t.peek() is not None and t.peek().startswith("@"):  # type: ignore[union-attr]
        return SetRef(t.next()[1:])
    t.expect("{")
    entries: list[tuple[Key, VerdictStmt]] = []
    while not t.take("}"):
        if t.take(","):
            continue
        key = _parse_key(t)
        t.expect(":")
        entries.append((key, _parse_verdict(t)))
    return tuple(entries)


def _parse_address(text: str, t: _Tokens) -> tuple[IPv4Address, int | None]:
    host, _, port = text.partition(":")
    try:
        return IPv4Address(host), (int(port) if port else None)
    except ValueError:
        raise t.error(f"bad dnat address {text!r}") from None


def parse_rule(text: str, where: str = "rule") -> Rule:
    """One rule in nft syntax (as written by kube-proxy or printed by ``nft list``)."""
    try:
        return _parse_rule(text, where)
    except ValueError as exc:  # a malformed number
        raise ValidationError(where, f"cannot read rule {text.strip()[:120]!r}: {exc}") from None


def _parse_rule(text: str, where: str) -> Rule:
    t = _Tokens(_tokens(text), where)
    exprs: list[Expr] = []
    while not t.done:
        token = t.peek()
        if token == "comment":
            t.pos += 2
            continue
        if token == "counter":
            t.pos += 1
            while t.peek() in ("packets", "bytes"):
                t.pos += 2
            continue
        if token == "log":
            t.pos += 1
            while t.peek() in ("prefix", "level", "flags"):
                t.pos += 2
            continue
        if token == "numgen":
            t.pos += 1
            t.expect("random")
            t.expect("mod")
            mod = _int(t.next())
            if t.take("offset"):
                t.next()
            t.expect("vmap")
            exprs.append(VMap((), _parse_vmap_data(t), numgen_mod=mod))
            continue
        if token in ("update", "add") and (t.peek(1) or "").startswith("@"):
            t.pos += 1
            name = t.next()[1:]
            t.expect("{")
            while not t.take("}"):
                t.next()
            exprs.append(SetUpdate(name))
            continue
        if token == "dnat":
            t.pos += 1
            t.take("ip")
            t.expect("to")
            exprs.append(Dnat(*_parse_address(t.next(), t)))
            continue
        if token == "masquerade":
            t.pos += 1
            while t.peek() in ("fully-random", "random", "persistent", ","):
                t.pos += 1
            exprs.append(Masquerade())
            continue
        if token in _VERDICTS:
            exprs.append(_parse_verdict(t))
            continue
        start = t.pos
        first = _parse_field(t)
        if first is None:
            raise t.error("unsupported expression")
        if first.kind is FieldKind.MARK and t.peek() == "set":
            # "mark set mark or 0x4000" / "meta mark set meta mark | 0x00004000"
            t.pos += 1
            if t.take("meta", "mark") or t.take("mark"):
                op = {"or": "or", "|": "or", "xor": "xor", "^": "xor"}.get(t.next())
                if op is None:
                    raise t.error("unsupported mark operation")
                exprs.append(MarkSet(op, _int(t.next())))
            else:
                exprs.append(MarkSet("set", _int(t.next())))
            continue
        fields = [first]
        while t.peek() == ".":
            t.pos += 1
            more = _parse_field(t)
            if more is None:
                raise t.error("unsupported concatenation")
            fields.append(more)
        if t.take("vmap"):
            exprs.append(VMap(tuple(fields), _parse_vmap_data(t)))
            continue
        negate = False
        if t.peek() in ("!=", "ne"):
            negate = True
            t.pos += 1
        elif t.peek() in ("==", "eq"):
            t.pos += 1
        if t.done:
            t.pos = start
            raise t.error("incomplete match")
        right = _parse_value(t)
        if isinstance(right, tuple) and len(fields) == 1 and fields[0].kind is FieldKind.MARK:
            right = (str(_int(right[0])),)  # "0x00000000" (nft list) and "0" (kube-proxy) are one value
        # "tcp dport 80" also means "the protocol is tcp".
        for f in fields:
            if f.kind is FieldKind.DPORT and f.proto is not None and len(fields) == 1:
                exprs.append(Match((Field(FieldKind.L4PROTO),), False, (f.proto,)))
        exprs.append(Match(tuple(fields), negate, right))
    return Rule(tuple(exprs), text.strip())


# -- JSON ---------------------------------------------------------------------------------------------

def _json_atom(value: Any, where: str) -> Atom:
    if isinstance(value, bool):
        raise ValidationError(where, f"unsupported value {value!r}")
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, dict):
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_json_atom(low, where)}-{_json_atom(high, where)}"
    raise ValidationError(where, f"unsupported value {json.dumps(value)[:120]}")


def _json_key(value: Any, where: str) -> Key:
    if isinstance(value, dict) and "elem" in value:
        value = value["elem"]["val"]
    if isinstance(value, dict) and "concat" in value:
        return tuple(_json_atom(v, where) for v in value["concat"])
    return (_json_atom(value, where),)


def _json_field(left: Any, where: str) -> Field:
    if isinstance(left, dict):
        if "payload" in left:
            proto, name = left["payload"].get("protocol"), left["payload"].get("field")
            if proto == "ip" and name in ("saddr", "daddr"):
                return Field(FieldKind.SADDR if name == "saddr" else FieldKind.DADDR)
            if name == "dport" and proto in ("tcp", "udp", "sctp", "th"):
                return Field(FieldKind.DPORT, None if proto == "th" else proto)
        if "meta" in left and left["meta"].get("key") in ("l4proto", "mark"):
            return Field(FieldKind.L4PROTO if left["meta"]["key"] == "l4proto" else FieldKind.MARK)
        if "ct" in left and left["ct"].get("key") == "state":
            return Field(FieldKind.CT_STATE)
        if "fib" in left and left["fib"].get("result") == "type":
            flags = left["fib"].get("flags") or []
            return Field(FieldKind.FIB_SADDR if "saddr" in flags else FieldKind.FIB_DADDR)
        if "&" in left:
            inner, mask = left["&"]
            base = _json_field(inner, where)
            if base.kind is FieldKind.MARK and isinstance(mask, int):
                return Field(FieldKind.MARK, mask=mask)
    raise ValidationError(where, f"unsupported match on {json.dumps(left)[:120]}")


def _json_fields(left: Any, where: str) -> tuple[Field, ...]:
    if isinstance(left, dict) and "concat" in left:
        return tuple(_json_field(part, where) for part in left["concat"])
    return (_json_field(left, where),)


def _json_verdict(value: Any, where: str) -> VerdictStmt:
    if isinstance(value, dict) and len(value) == 1:
        kind, arg = next(iter(value.items()))
        if kind in ("jump", "goto"):
            return VerdictStmt(kind, arg["target"])
        if kind in ("return", "accept", "drop", "continue", "reject"):
            return VerdictStmt(kind)
    raise ValidationError(where, f"unsupported verdict {json.dumps(value)[:120]}")


def _json_expr(expr: Mapping[str, Any], where: str) -> list[Expr]:
    kind, body = next(iter(expr.items()))
    if kind == "match":
        fields = _json_fields(body["left"], where)
        right = body["right"]
        negate = body.get("op") == "!="
        value: Key | AnonSet | SetRef
        if isinstance(right, str) and right.startswith("@"):
            value = SetRef(right[1:])
        elif isinstance(right, dict) and "set" in right:
            value = AnonSet(tuple(_json_key(v, where) for v in right["set"]))
        elif isinstance(right, list):  # ct state in { new, established }
            value = AnonSet(tuple((_json_atom(v, where),) for v in right))
        else:
            value = _json_key(right, where)
        out: list[Expr] = []
        if len(fields) == 1 and fields[0].kind is FieldKind.DPORT and fields[0].proto is not None:
            out.append(Match((Field(FieldKind.L4PROTO),), False, (fields[0].proto,)))
        return out + [Match(fields, negate, value)]
    if kind == "vmap":
        key, data = body["key"], body["data"]
        mapped: SetRef | tuple[tuple[Key, VerdictStmt], ...]
        if isinstance(data, str) and data.startswith("@"):
            mapped = SetRef(data[1:])
        else:
            mapped = tuple((_json_key(k, where), _json_verdict(v, where)) for k, v in data["set"])
        if isinstance(key, dict) and "numgen" in key:
            return [VMap((), mapped, numgen_mod=int(key["numgen"]["mod"]))]
        return [VMap(_json_fields(key, where), mapped)]
    if kind in _VERDICTS:
        return [_json_verdict(expr, where)]
    if kind == "dnat":
        return [Dnat(IPv4Address(body["addr"]), int(body["port"]) if body.get("port") is not None else None)]
    if kind == "masquerade":
        return [Masquerade()]
    if kind == "mangle":
        key, val = body["key"], body["value"]
        if key == {"meta": {"key": "mark"}}:
            if isinstance(val, int):
                return [MarkSet("set", val)]
            if isinstance(val, dict) and len(val) == 1:
                op, (_, amount) = next(iter(val.items()))
                if op in ("|", "^") and isinstance(amount, int):
                    return [MarkSet("or" if op == "|" else "xor", amount)]
    if kind == "set" and body.get("op") in ("update", "add"):
        return [SetUpdate(str(body["set"]).lstrip("@"))]
    if kind in ("counter", "log"):
        return []
    raise ValidationError(where, f"unsupported expression {json.dumps(expr)[:160]}")


def _json_rule_text(exprs: Sequence[Expr], comment: str | None) -> str:
    parts: list[str] = []
    for i, e in enumerate(exprs):
        # The protocol implied by "tcp dport N" was split off: print it once, as nft does.
        if isinstance(e, Match) and e.fields == (Field(FieldKind.L4PROTO),) and i + 1 < len(exprs):
            nxt = exprs[i + 1]
            if isinstance(nxt, Match) and len(nxt.fields) == 1 and nxt.fields[0].proto is not None:
                continue
        parts.append(e.text)
    text = " ".join(parts)
    return f'{text} comment "{comment}"' if comment else text


def _from_json(doc: Mapping[str, Any], family: str, table: str) -> NftRuleset:
    rs = NftRuleset(family, table)
    for obj in doc.get("nftables", []):
        kind, body = next(iter(obj.items()))
        if not isinstance(body, dict) or body.get("family") != family or body.get("table", body.get("name")) != table:
            continue
        if kind == "table":
            rs.exists = True
        elif kind == "chain":
            rs.exists = True
            rs.chains[body["name"]] = Chain(body["name"], hook=body.get("hook"), priority=int(body.get("prio", 0)),
                                            policy=body.get("policy", "accept"))
        elif kind in ("set", "map"):
            where = f"{kind} {body['name']}"
            flags = body.get("flags") or []
            named = NamedSet(body["name"], kind == "map", dynamic="dynamic" in flags or "timeout" in flags)
            for item in body.get("elem") or []:
                if kind == "map":
                    named.elements[_json_key(item[0], where)] = _json_verdict(item[1], where)
                else:
                    named.elements[_json_key(item, where)] = None
            rs.sets[named.name] = named
    for obj in doc.get("nftables", []):
        body = obj.get("rule")
        if not isinstance(body, dict) or body.get("family") != family or body.get("table") != table:
            continue
        where = f"chain {body['chain']}"
        exprs: list[Expr] = []
        for expr in body.get("expr") or []:
            exprs += _json_expr(expr, where)
        chain = rs.chains.setdefault(body["chain"], Chain(body["chain"]))
        chain.rules.append(Rule(tuple(exprs), _json_rule_text(exprs, body.get("comment"))))
    return rs


# -- text: nft -f scripts and nft list output ----------------------------------------------------------

def _priority(tokens: Sequence[str], where: str) -> int:
    """``-110``, ``dstnat``, ``dstnat - 10``, ``srcnat + 5``."""
    total = 0
    sign = 1
    for token in tokens:
        if token in ("+", "-"):
            sign = 1 if token == "+" else -1
        elif token in _PRIORITIES:
            total += sign * _PRIORITIES[token]
            sign = 1
        else:
            try:
                total += sign * int(token)
            except ValueError:
                raise ValidationError(where, f"unsupported chain priority {' '.join(tokens)!r}") from None
            sign = 1
    return total


def _chain_spec(chain: Chain, statements: Iterable[str]) -> None:
    """Apply ``type T hook H priority P`` / ``policy X`` statements to a chain."""
    for statement in statements:
        words = statement.split()
        if not words:
            continue
        if words[0] == "type" and "hook" in words:
            chain.hook = words[words.index("hook") + 1]
            if "priority" in words:
                chain.priority = _priority(words[words.index("priority") + 1:], f"chain {chain.name}")
        elif words[0] == "policy" and len(words) > 1:
            chain.policy = words[1]


def _split_elements(tokens: Sequence[str]) -> Iterator[list[str]]:
    """Top-level comma-separated items between an element list's braces."""
    depth = 0
    item: list[str] = []
    for token in tokens:
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
        if token == "," and depth == 0:
            if item:
                yield item
            item = []
        else:
            item.append(token)
    if item:
        yield item


def _parse_elements(named: NamedSet, tokens: Sequence[str], where: str,
                    keys_only: bool = False) -> dict[Key, VerdictStmt | None]:
    """Elements between braces; ``keys_only`` for ``delete element`` (map elements without their verdicts)."""
    out: dict[Key, VerdictStmt | None] = {}
    for item in _split_elements(tokens):
        t = _Tokens(item, where)
        key = _parse_key(t)
        while t.peek() in ("comment", "timeout", "expires", "counter", "packets", "bytes"):
            t.pos += 2 if t.peek() != "counter" else 1
        value: VerdictStmt | None = None
        if named.is_map and not (keys_only and t.done):
            t.expect(":")
            value = _parse_verdict(t)
        out[key] = value
    return out


def _braced(tokens: Sequence[str], start: int) -> list[str]:
    """The tokens between the "{" at ``start`` and its matching "}"."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i] == "{":
            depth += 1
        elif tokens[i] == "}":
            depth -= 1
            if depth == 0:
                return list(tokens[start + 1:i])
    return list(tokens[start + 1:])


def _split_top(body: str, separator: str) -> list[str]:
    """``body`` split at ``separator`` outside braces and double quotes, items stripped, empty ones dropped."""
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(body):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            depth -= 1
        elif not quoted and depth == 0 and ch == separator:
            items.append(body[start:i].strip())
            start = i + 1
    items.append(body[start:].strip())
    return [item for item in items if item]


_CHAIN_SPEC_WORDS = ("type ", "policy ", "comment ", "devices ", "flags ")


def expand_script(script: str) -> str:
    """``script`` with block forms written as one command per line (same effect, for readers and tracers).

    ``add chain T X { rule ; rule ; }`` becomes ``add chain T X`` and one
    ``add rule`` per rule (chain properties stay in the braces);
    ``add set|map T X { ... ; elements = { a , b } ; }`` becomes the
    declaration and one ``add element``. Other lines pass through.
    """
    out: list[str] = []
    for line in script.splitlines():
        words = line.split(None, 4)
        if (len(words) < 5 or words[0] != "add" or words[1] not in ("chain", "set", "map")
                or not line.rstrip().endswith("}")):
            out.append(line)
            continue
        head_words, rest = words[:4], words[4]
        name, _, body = rest.partition(" ")
        body = body.strip()
        if not body.startswith("{"):
            out.append(line)
            continue
        items = _split_top(body[1:-1], ";")
        prefix = " ".join(head_words)
        if words[1] == "chain":
            specs = [item for item in items if item.startswith(_CHAIN_SPEC_WORDS)]
            rules = [item for item in items if not item.startswith(_CHAIN_SPEC_WORDS)]
            out.append(f"{prefix} {name}" + (f" {{ {' ; '.join(specs)} ; }}" if specs else ""))
            out += [f"add rule {head_words[2]} {head_words[3]} {name} {rule}" for rule in rules]
        else:
            specs = [item for item in items if not item.startswith("elements")]
            elements = [item.split("=", 1)[1].strip() for item in items if item.startswith("elements")]
            out.append(f"{prefix} {name}" + (f" {{ {' ; '.join(specs)} ; }}" if specs else ""))
            out += [f"add element {head_words[2]} {head_words[3]} {name} {block}" for block in elements]
    return "\n".join(out) + ("\n" if script.endswith("\n") else "")


def _from_script(text: str, family: str, table: str) -> NftRuleset:
    rs = NftRuleset(family, table)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        words = line.split(None, 4)
        if len(words) < 4:
            raise ValidationError(where, f"not an nft command: {line[:120]!r}")
        verb, kind, fam, tab = words[:4]
        if (fam, tab) != (family, table):
            continue
        rest = words[4] if len(words) > 4 else ""
        if kind == "table":
            if verb in ("delete", "destroy"):
                rs.chains.clear()
                rs.sets.clear()
                rs.exists = False
            elif verb == "flush":
                for chain in rs.chains.values():
                    chain.rules.clear()
            else:
                rs.exists = True
            continue
        rs.exists = True
        name, _, body = rest.partition(" ")
        body = body.strip()
        if kind == "chain":
            if verb in ("delete", "destroy"):
                rs.chains.pop(name, None)
            elif verb == "flush":
                if name in rs.chains:
                    rs.chains[name].rules.clear()
            else:
                chain = rs.chains.setdefault(name, Chain(name))
                if body.startswith("{"):
                    _chain_spec(chain, body.strip("{} ").split(";"))
        elif kind == "rule":
            if verb not in ("add", "insert"):
                raise ValidationError(where, f"unsupported rule command {verb!r}")
            chain = rs.chains.setdefault(name, Chain(name))
            rule = parse_rule(body, f"chain {name}")
            if verb == "insert":
                chain.rules.insert(0, rule)
            else:
                chain.rules.append(rule)
        elif kind in ("set", "map"):
            if verb in ("delete", "destroy"):
                rs.sets.pop(name, None)
            elif verb == "flush":
                if name in rs.sets:
                    rs.sets[name].elements.clear()
            else:
                named = rs.sets.setdefault(name, NamedSet(name, kind == "map"))
                spec = body.strip("{} ").split(";")
                for statement in spec:
                    words2 = statement.split()
                    if words2[:1] == ["flags"] and len(words2) > 1:
                        flags = words2[1].split(",")
                        named.dynamic = named.dynamic or "dynamic" in flags or "timeout" in flags
        elif kind == "element":
            named_set = rs.sets.get(name)
            if named_set is None:
                raise ValidationError(where, f"element of unknown set or map {name!r}")
            tokens = _tokens(body)
            inner = _braced(tokens, tokens.index("{")) if "{" in tokens else []
            elements = _parse_elements(named_set, inner, f"{kind} {name}", keys_only=verb in ("delete", "destroy"))
            if verb in ("delete", "destroy"):
                for key in elements:
                    named_set.elements.pop(key, None)
            else:
                named_set.elements.update(elements)
        else:
            raise ValidationError(where, f"unsupported object kind {kind!r}")
    return rs


def _from_listing(text: str, family: str, table: str) -> NftRuleset:
    """The block format of ``nft list table``/``list ruleset``."""
    rs = NftRuleset(family, table)
    lines = text.splitlines()
    i = 0
    in_table = False
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "table":
            in_table = words[1:3] == [family, table]
            rs.exists = rs.exists or in_table
            continue
        if not in_table or line == "}":
            continue
        if words[0] in ("chain", "set", "map") and line.endswith("{"):
            kind, name = words[0], words[1]
            body: list[str] = []
            depth = 1
            while i < len(lines) and depth > 0:
                inner = lines[i].strip()
                i += 1
                # Element lists and long rules may span lines: join until braces balance.
                depth += inner.count("{") - inner.count("}")
                if depth == 0 and inner == "}":
                    break
                body.append(inner)
            if kind == "chain":
                chain = rs.chains.setdefault(name, Chain(name))
                for stmt in body:
                    if not stmt:
                        continue
                    if stmt.startswith("type ") or stmt.startswith("policy "):
                        _chain_spec(chain, stmt.split(";"))
                    elif stmt.startswith("comment "):
                        continue
                    else:
                        chain.rules.append(parse_rule(stmt, f"chain {name}"))
            else:
                named = rs.sets.setdefault(name, NamedSet(name, kind == "map"))
                joined = " ".join(body)
                for stmt in body:
                    if stmt.startswith("flags "):
                        flags = stmt.split(None, 1)[1].replace(" ", "").split(",")
                        named.dynamic = "dynamic" in flags or "timeout" in flags
                if "elements = {" in joined:
                    tokens = _tokens(joined[joined.index("elements = {") + len("elements = "):])
                    named.elements.update(_parse_elements(named, _braced(tokens, 0), f"{kind} {name}"))
        # table-level "comment", "flags" lines are ignored
    return rs


def parse_ruleset(data: str | Mapping[str, Any], family: str = DEFAULT_FAMILY,
                  table: str = DEFAULT_TABLE) -> NftRuleset:
    """Table ``<family> <table>`` from nft JSON (text or parsed), ``nft list`` output or an ``nft -f`` script."""
    if isinstance(data, Mapping):
        return _from_json(data, family, table)
    stripped = data.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValidationError("ruleset", f"not valid nft JSON: {exc}") from None
        return _from_json(doc, family, table)
    first = next((ln.strip() for ln in stripped.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    if first.startswith("table "):
        return _from_listing(stripped, family, table)
    # The renderer writes chains with their rules and sets with their elements as blocks: expand them first.
    return _from_script(expand_script(stripped), family, table)


# -- tracing ------------------------------------------------------------------------------------------

class _Flow(Enum):
    NEXT = "next"  # the rule did not match, or its jump returned: go on with the next rule
    RETURN = "return"  # leave this chain (return, a goto that came back, the end of the chain)
    ACCEPT = "accept"  # the hook is done with the packet (accept or a nat statement)
    DROP = "drop"
    REJECT = "reject"


@dataclass(frozen=True)
class _State:
    saddr: IPv4Address
    daddr: IPv4Address
    proto: str
    dport: int
    mark: int = 0
    endpoint: str | None = None
    masquerade: bool = False
    path: tuple[str, ...] = ()


class _Tracer:
    def __init__(self, rs: NftRuleset, local_addresses: set[IPv4Address]) -> None:
        self.rs = rs
        self.local = set(local_addresses)
        self.masq_mark = self._masquerade_mark()

    def _masquerade_mark(self) -> int:
        chain = self.rs.chains.get("mark-for-masquerade")
        for rule in chain.rules if chain else ():
            for expr in rule.exprs:
                if isinstance(expr, MarkSet) and expr.op == "or":
                    return expr.value
        return 0x4000

    def is_local(self, ip: IPv4Address) -> bool:
        return ip in self.local or ip in LOOPBACK

    # -- matching

    def _value(self, f: Field, st: _State) -> str | int | IPv4Address:
        if f.kind is FieldKind.SADDR:
            return st.saddr
        if f.kind is FieldKind.DADDR:
            return st.daddr
        if f.kind is FieldKind.L4PROTO:
            return st.proto
        if f.kind is FieldKind.DPORT:
            return st.dport
        if f.kind is FieldKind.MARK:
            return st.mark & f.mask if f.mask is not None else st.mark
        if f.kind is FieldKind.CT_STATE:
            return "new"  # the tracer follows the first packet of a connection
        if f.kind is FieldKind.FIB_SADDR:
            return "local" if self.is_local(st.saddr) else "unicast"
        return "local" if self.is_local(st.daddr) else "unicast"

    def _atom_matches(self, f: Field, atom: Atom, st: _State, where: str) -> bool:
        value = self._value(f, st)
        if f.proto is not None and st.proto != f.proto:
            return False
        try:
            if isinstance(value, IPv4Address):
                if "-" in atom:
                    low, high = atom.split("-", 1)
                    return IPv4Address(low) <= value <= IPv4Address(high)
                return value in ip_network(atom, strict=False)
            if f.kind is FieldKind.L4PROTO:
                return _PROTO_NUMBERS.get(atom, atom) == value
            if isinstance(value, int):
                if "-" in atom and not atom.startswith("-"):
                    low, high = atom.split("-", 1)
                    return int(low, 0) <= value <= int(high, 0)
                return value == int(atom, 0)
        except ValueError:
            raise ValidationError(where, f"cannot compare {f.text} with {atom!r}") from None
        return value == atom

    def _key_matches(self, fields: Sequence[Field], key: Key, st: _State, where: str) -> bool:
        return len(key) == len(fields) and all(self._atom_matches(f, a, st, where) for f, a in zip(fields, key))

    def _named(self, name: str, where: str) -> NamedSet:
        named = self.rs.sets.get(name)
        if named is None:
            raise ValidationError(where, f"rule refers to @{name}, which the ruleset does not declare")
        return named

    def _match(self, m: Match, st: _State, where: str) -> bool | None:
        """True/False, or None when the answer depends on a dynamic set's contents at that moment."""
        if isinstance(m.right, SetRef):
            named = self._named(m.right.name, where)
            hit = any(self._key_matches(m.fields, k, st, where) for k in named.elements)
            if not hit and named.dynamic:
                return None  # e.g. an affinity entry that may exist or not: follow both branches
            return hit != m.negate
        if isinstance(m.right, AnonSet):
            hit = any(self._key_matches(m.fields, k, st, where) for k in m.right.items)
            return hit != m.negate
        return self._key_matches(m.fields, m.right, st, where) != m.negate

    # -- evaluation

    def run_chain(self, name: str, st: _State, depth: int) -> list[tuple[_State, _Flow]]:
        chain = self.rs.chains.get(name)
        if chain is None:
            raise ValidationError(f"chain {name}", "jumped to, but the ruleset does not declare it")
        if depth > MAX_DEPTH:
            raise ValidationError(f"chain {name}", f"more than {MAX_DEPTH} nested jumps")
        results: list[tuple[_State, _Flow]] = []
        work: list[tuple[int, _State]] = [(0, st)]
        while work:
            index, state = work.pop(0)
            while True:
                if index >= len(chain.rules):
                    results.append((state, _Flow.RETURN))
                    break
                outcomes = self._run_rule(chain, chain.rules[index], state, depth)
                nexts = [s for s, flow in outcomes if flow is _Flow.NEXT]
                results += [(s, flow) for s, flow in outcomes if flow is not _Flow.NEXT]
                if not nexts:
                    break
                index += 1
                state = nexts[0]
                work += [(index, s) for s in nexts[1:]]
        return results

    def _run_rule(self, chain: Chain, rule: Rule, st: _State, depth: int) -> list[tuple[_State, _Flow]]:
        where = f"chain {chain.name}"
        label = f"{self.rs.table} {chain.name}: {rule.text}"
        live = [st]
        done: list[tuple[_State, _Flow]] = []
        recorded = False
        for expr in rule.exprs:
            if isinstance(expr, Match):
                kept = []
                for s in live:
                    verdict = self._match(expr, s, where)
                    if verdict is None:
                        done.append((s, _Flow.NEXT))
                        kept.append(s)
                    elif verdict:
                        kept.append(s)
                    else:
                        done.append((s, _Flow.NEXT))
                live = kept
                if not live:
                    return done
                continue
            if isinstance(expr, VMap):
                for s in live:
                    done += self._vmap(expr, chain, label, s, depth)
                return done
            if not recorded:
                live = [replace(s, path=s.path + (label,)) for s in live]
                recorded = True
            if isinstance(expr, MarkSet):
                live = [replace(s, mark=(s.mark | expr.value) if expr.op == "or" else
                                (s.mark ^ expr.value) if expr.op == "xor" else expr.value) for s in live]
            elif isinstance(expr, SetUpdate):
                continue
            elif isinstance(expr, Dnat):
                for s in live:
                    port = expr.port if expr.port is not None else s.dport
                    done.append((replace(s, daddr=expr.address, dport=port,
                                         endpoint=f"{expr.address}:{port}"), _Flow.ACCEPT))
                return done
            elif isinstance(expr, Masquerade):
                done += [(replace(s, masquerade=True), _Flow.ACCEPT) for s in live]
                return done
            elif isinstance(expr, VerdictStmt):
                for s in live:
                    done += self._verdict(expr, s, depth)
                return done
        if not recorded:
            live = [replace(s, path=s.path + (label,)) for s in live]
        return done + [(s, _Flow.NEXT) for s in live]

    def _vmap(self, vm: VMap, chain: Chain, label: str, st: _State, depth: int) -> list[tuple[_State, _Flow]]:
        where = f"chain {chain.name}"
        if vm.numgen_mod is not None:
            entries = self._named(vm.data.name, where).elements.items() if isinstance(vm.data, SetRef) else vm.data
            out: list[tuple[_State, _Flow]] = []
            for key, verdict in entries:
                if verdict is None:
                    raise ValidationError(where, "numgen vmap element without a verdict")
                note = replace(st, path=st.path + (f"{label} [branch {' . '.join(key)} : {verdict.text}]",))
                out += self._verdict(verdict, note, depth)
            return out
        items = self._named(vm.data.name, where).elements.items() if isinstance(vm.data, SetRef) else vm.data
        for key, verdict in items:
            if verdict is not None and self._key_matches(vm.fields, key, st, where):
                note = replace(st, path=st.path + (f"{label} [element {' . '.join(key)} : {verdict.text}]",))
                return self._verdict(verdict, note, depth)
        return [(st, _Flow.NEXT)]

    def _verdict(self, v: VerdictStmt, st: _State, depth: int) -> list[tuple[_State, _Flow]]:
        if v.kind == "jump":
            assert v.target is not None
            return [(s, _Flow.NEXT if flow is _Flow.RETURN else flow)
                    for s, flow in self.run_chain(v.target, st, depth + 1)]
        if v.kind == "goto":
            assert v.target is not None
            return self.run_chain(v.target, st, depth + 1)
        if v.kind == "return":
            return [(st, _Flow.RETURN)]
        if v.kind == "continue":
            return [(st, _Flow.NEXT)]
        return [(st, {"accept": _Flow.ACCEPT, "drop": _Flow.DROP, "reject": _Flow.REJECT}[v.kind])]

    # -- hooks

    def run_hook(self, hook: str, states: list[_State]) -> tuple[list[_State], list[tuple[_State, Verdict]]]:
        """Run every base chain of ``hook`` (by priority); returns the packets that go on and those stopped."""
        alive = states
        stopped: list[tuple[_State, Verdict]] = []
        for chain in self.rs.base_chains(hook):
            after: list[_State] = []
            for st in alive:
                for s, flow in self.run_chain(chain.name, st, 0):
                    if flow is _Flow.DROP or (flow is _Flow.RETURN and chain.policy == "drop"):
                        stopped.append((s, Verdict.DROP))
                    elif flow is _Flow.REJECT:
                        stopped.append((s, Verdict.REJECT))
                    else:
                        after.append(s)
            alive = after
        return alive, stopped


def trace_nftables(ruleset_json_or_text: str | Mapping[str, Any], packet: Packet,
                   local_addresses: set[IPv4Address]) -> TraceResult:
    """Follow ``packet`` through table ``ip kube-proxy`` (see the module docstring for the forms accepted).

    ``local_addresses`` are the node's own addresses ("fib ... type local";
    127.0.0.0/8 always is). The result lists every endpoint the packet may be
    DNATed to on a branch that is accepted, whether it is masqueraded (gets
    the masquerade mark) there, the verdict (ACCEPT when some branch goes
    through, else REJECT or DROP) and the rules matched, as
    ``"kube-proxy <chain>: <rule>"``.
    """
    rs = parse_ruleset(ruleset_json_or_text)
    tracer = _Tracer(rs, local_addresses)
    start = _State(packet.source, packet.destination, packet.protocol.lowercase, packet.port)
    stopped: list[tuple[_State, Verdict]] = []
    if packet.from_node:
        alive, lost = tracer.run_hook("output", [start])
        stopped += lost
        alive, lost = tracer.run_hook("postrouting", alive)
        stopped += lost
    else:
        alive, lost = tracer.run_hook("prerouting", [start])
        stopped += lost
        delivered = [s for s in alive if tracer.is_local(s.daddr)]
        forwarded = [s for s in alive if not tracer.is_local(s.daddr)]
        delivered, lost = tracer.run_hook("input", delivered)
        stopped += lost
        forwarded, lost = tracer.run_hook("forward", forwarded)
        stopped += lost
        forwarded, lost = tracer.run_hook("postrouting", forwarded)
        stopped += lost
        alive = delivered + forwarded
    finals = [(s, Verdict.ACCEPT) for s in alive] + stopped
    verdict = overall_verdict(v for _, v in finals)
    endpoints = sorted_endpoints(s.endpoint for s in alive if s.endpoint is not None)
    masquerade = any(s.masquerade or s.mark & tracer.masq_mark for s in alive)
    path: list[str] = []
    seen: set[str] = set()
    for s, _ in finals:
        for step in s.path:
            if step not in seen:
                seen.add(step)
                path.append(step)
    return TraceResult(verdict, endpoints, masquerade, tuple(path))
