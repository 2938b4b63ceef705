"""Pure renderer of kube-proxy's iptables-mode ruleset: values in, restore text out.

``render`` lays out the filter and nat tables the way kube-proxy's iptables
proxier does (same chain names, comments, rule order, masquerade mark and
statistic probabilities) and returns one ``iptables-restore --noflush``
payload. Rules are written in the canonical form ``iptables-save`` prints
(address/prefix, ``-p`` before ``-m`` matches, quoted comments, ``--set-xmark``
marks, quantized probabilities), so a rendered chain and the same chain read
back from the kernel compare equal line for line.

Also here, because they are pure text work: parsing ``iptables-save`` output
(``chains_in``, ``rules_by_chain``) and finding which of kube-proxy's jump
rules from the built-in chains are missing (``missing_jumps``). Nothing in
this module touches the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping, Sequence

from netk8s.proxy.hashing import endpoint_chain, service_chain
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort

TABLE_FILTER = "filter"
TABLE_NAT = "nat"
TABLES = (TABLE_FILTER, TABLE_NAT)

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"

# Base chains, in the order kube-proxy declares them in each table.
FILTER_BASE_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_BASE_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# Per-service chains kube-proxy owns and deletes when no longer rendered.
# Any other chain (KUBE-FIREWALL of the kubelet, CNI chains, ...) is never touched.
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-SVL-")

_CT_NEW = ("-m", "conntrack", "--ctstate", "NEW")


def is_service_chain(chain: str) -> bool:
    """True for per-service chains kube-proxy creates and garbage-collects."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


# -- canonical text ------------------------------------------------------------------------

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ESCAPED = frozenset("\"\\'")


def quote(value: str) -> str:
    """A string argument as ``iptables-save`` prints it: bare when only [A-Za-z0-9_-], else double-quoted."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    return '"' + "".join("\\" + c if c in _ESCAPED else c for c in value) + '"'


def kube_probability(index: int, count: int) -> str:
    """What kube-proxy writes for endpoint ``index`` of ``count``: 1/(count-index) as ``%0.10f``."""
    if not 0 <= index < count:
        raise ValueError(f"endpoint index {index} out of range for {count} endpoints")
    return "%0.10f" % (1.0 / (count - index))


def saved_probability(probability: str) -> str:
    """The probability ``iptables-save`` prints after the kernel stores ``probability``.

    xt_statistic keeps it as a 31-bit fraction (round(p * 2^31)) and
    iptables prints that back with ``%.11f``: kube-proxy's 0.3333333333 reads
    back as 0.33333333349, exactly as on a real node.
    """
    scaled = math.floor(float(probability) * 0x80000000 + 0.5)
    return "%.11f" % (scaled / 0x80000000)


def _addr(value: IPv4Address | IPv4Network) -> str:
    return f"{value}/32" if isinstance(value, IPv4Address) else str(value)


def _comment(text: str) -> str:
    return f"-m comment --comment {quote(text)}"


def _service_match(sp: ServicePort, comment: str, not_source: IPv4Network | None = None) -> str:
    """Cluster-IP match in save order: [! -s CIDR] -d IP/32 -p proto -m comment ... -m proto --dport N."""
    proto = sp.protocol.lowercase
    parts = []
    if not_source is not None:
        parts.append(f"! -s {_addr(not_source)}")
    parts += [f"-d {_addr(sp.cluster_ip)}", f"-p {proto}", _comment(comment), f"-m {proto} --dport {sp.port}"]
    return " ".join(parts)


# -- jump rules from the built-in chains -----------------------------------------------------

@dataclass(frozen=True)
class JumpRule:
    """A rule kube-proxy keeps in a built-in chain (its EnsureRule list), jumping to one of its chains."""

    table: str
    chain: str
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        parts = [*self.extra, "-m", "comment", "--comment", quote(self.comment), "-j", self.target]
        return " ".join(parts)

    @property
    def save_line(self) -> str:
        """The rule as ``iptables-save`` prints it."""
        return f"-A {self.chain} {self.spec}"

    @property
    def insert_line(self) -> str:
        """The restore line that puts the rule first in its chain, as kube-proxy's prepend does."""
        return f"-I {self.chain} 1 {self.spec}"


# kube-proxy's order. Each missing rule is inserted at position 1, so the last
# one ends up first, the same stacking as kube-proxy's one-by-one prepends.
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule(TABLE_FILTER, "INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _CT_NEW),
    JumpRule(TABLE_FILTER, "FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals",
             _CT_NEW),
    JumpRule(TABLE_FILTER, "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule(TABLE_FILTER, "FORWARD", KUBE_SERVICES, "kubernetes service portals", _CT_NEW),
    JumpRule(TABLE_FILTER, "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _CT_NEW),
    JumpRule(TABLE_FILTER, "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule(TABLE_FILTER, "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule(TABLE_FILTER, "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule(TABLE_FILTER, "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule(TABLE_NAT, "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule(TABLE_NAT, "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule(TABLE_NAT, "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


# -- parsing iptables-save output ----------------------------------------------------------

def save_lines(save_text: str) -> Iterable[tuple[str, str]]:
    """(table, line) for every chain and rule line of an iptables-save dump or a restore payload."""
    table = ""
    for raw in save_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
        elif line == "COMMIT":
            table = ""
        elif table:
            yield table, line


def chains_in(save_text: str) -> dict[str, set[str]]:
    """Chains per table declared in an ``iptables-save`` dump (built-in ones included)."""
    chains: dict[str, set[str]] = {}
    for table, line in save_lines(save_text):
        chains.setdefault(table, set())
        if line.startswith(":"):
            chains[table].add(line[1:].split(" ", 1)[0])
    return chains


def rules_by_chain(save_text: str) -> dict[tuple[str, str], list[str]]:
    """``-A`` lines of a dump (or of a rendered payload) grouped by (table, chain), in order."""
    rules: dict[tuple[str, str], list[str]] = {}
    for table, line in save_lines(save_text):
        if line.startswith(":"):
            rules.setdefault((table, line[1:].split(" ", 1)[0]), [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            rules.setdefault((table, chain), []).append(line)
    return rules


def missing_jumps_by_table(save_text: str) -> dict[str, list[str]]:
    """``-I CHAIN 1 ...`` restore lines, per table, for the jump rules the dump lacks."""
    present: set[tuple[str, str]] = set(save_lines(save_text))
    missing: dict[str, list[str]] = {}
    for rule in JUMP_RULES:
        if (rule.table, rule.save_line) not in present:
            missing.setdefault(rule.table, []).append(rule.insert_line)
    return missing


def missing_jumps(save_text: str) -> list[str]:
    """``-I CHAIN 1 ...`` lines for the jump rules not in the dump (filter table's first, then nat's)."""
    by_table = missing_jumps_by_table(save_text)
    return [line for table in TABLES for line in by_table.get(table, [])]


# -- rendering -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderResult:
    """One restore payload and what it contains."""

    text: str
    chains: dict[str, tuple[str, ...]]  # table -> chains declared and kept, in declaration order
    jump_rules: tuple[JumpRule, ...]
    deleted_chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> stale chains removed

    def rules(self) -> dict[tuple[str, str], list[str]]:
        """The rendered ``-A`` lines per (table, chain), comparable with ``rules_by_chain(iptables-save)``."""
        return {key: lines for key, lines in rules_by_chain(self.text).items()
                if key[1] in self.chains.get(key[0], ())}


class _Table:
    def __init__(self, name: str, base_chains: Sequence[str]) -> None:
        self.name = name
        self.chains: list[str] = list(base_chains)
        self.rules: list[str] = []

    def chain(self, chain: str) -> None:
        if chain not in self.chains:
            self.chains.append(chain)

    def add(self, chain: str, spec: str) -> None:
        self.rules.append(f"-A {chain} {spec}")


def _ready(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    return [ep for ep in endpoints if ep.ready]


def render(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
           existing_chains: Mapping[str, set[str]] | None = None,
           jump_lines: Mapping[str, Sequence[str]] | None = None) -> RenderResult:
    """The kube-proxy ruleset for ``service_ports`` as one ``iptables-restore --noflush`` payload.

    ``existing_chains`` (from ``chains_in(iptables-save)``) lets stale
    per-service chains be flushed and deleted in the same transaction;
    ``jump_lines`` (from ``missing_jumps_by_table``) are restore lines added
    to their table's section after the rules.
    """
    mark = config.masquerade_mark
    flt = _Table(TABLE_FILTER, FILTER_BASE_CHAINS)
    nat = _Table(TABLE_NAT, NAT_BASE_CHAINS)

    flt.add(KUBE_FORWARD, "-m conntrack --ctstate INVALID -j DROP")
    flt.add(KUBE_FORWARD, f'{_comment("kubernetes forwarding rules")} -m mark --mark {mark}/{mark} -j ACCEPT')
    flt.add(KUBE_FORWARD, f'{_comment("kubernetes forwarding conntrack rule")} '
                          "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

    nat.add(KUBE_POSTROUTING, f"-m mark ! --mark {mark}/{mark} -j RETURN")
    # Clear the bit so a packet that re-traverses the stack is not masqueraded
    # twice; --xor-mark M is stored (and saved) as --set-xmark M/0x0.
    nat.add(KUBE_POSTROUTING, f"-j MARK --set-xmark {mark}/0x0")
    nat.add(KUBE_POSTROUTING, f'{_comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully')
    # --or-mark M is stored as --set-xmark M/M.
    nat.add(KUBE_MARK_MASQ, f"-j MARK --set-xmark {mark}/{mark}")

    seen: set[tuple[str, str]] = set()
    for sp in sorted(set(service_ports), key=lambda p: (p.namespace, p.name, p.port_name, p.protocol.value)):
        spn = sp.service_port_name
        proto = sp.protocol.lowercase
        if (spn, proto) in seen:
            continue
        seen.add((spn, proto))
        ready = _ready(endpoints.get(spn, ()))
        if not ready:
            # REJECT answers with icmp-port-unreachable, so clients fail at once
            # (TCP connect() gets ECONNREFUSED) instead of timing out.
            flt.add(KUBE_SERVICES, _service_match(sp, f"{spn} has no endpoints")
                    + " -j REJECT --reject-with icmp-port-unreachable")
            continue
        svc_chain = service_chain(spn, proto)
        nat.chain(svc_chain)
        nat.add(KUBE_SERVICES, f"{_service_match(sp, f'{spn} cluster IP')} -j {svc_chain}")
        if config.cluster_cidr is not None:
            # Traffic to the cluster IP from outside the pod network gets SNAT.
            nat.add(svc_chain, f"{_service_match(sp, f'{spn} cluster IP', config.cluster_cidr)} -j {KUBE_MARK_MASQ}")
        sep_rules: list[tuple[str, str]] = []
        for i, ep in enumerate(ready):
            sep = endpoint_chain(spn, proto, ep.address)
            nat.chain(sep)
            jump = _comment(f"{spn} -> {ep.address}")
            if i < len(ready) - 1:
                probability = saved_probability(kube_probability(i, len(ready)))
                jump += f" -m statistic --mode random --probability {probability}"
            nat.add(svc_chain, f"{jump} -j {sep}")
            # Hairpin: an endpoint reaching itself through the service must be SNATed.
            sep_rules.append((sep, f"-s {_addr(ep.ip)} {_comment(spn)} -j {KUBE_MARK_MASQ}"))
            sep_rules.append((sep, f"-p {proto} {_comment(spn)} -m {proto} -j DNAT --to-destination {ep.address}"))
        for sep, spec in sep_rules:
            nat.add(sep, spec)

    nat.add(KUBE_SERVICES, f'{_comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")}'
                           f" -m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}")

    sections: list[str] = []
    deleted: dict[str, tuple[str, ...]] = {}
    for table in (flt, nat):
        kept = tuple(table.chains)
        stale = sorted(c for c in (existing_chains or {}).get(table.name, set())
                       if is_service_chain(c) and c not in kept)
        if stale:
            deleted[table.name] = tuple(stale)
        lines = [f"*{table.name}"]
        # Under --noflush, declaring a chain creates it or flushes it: stale
        # chains are emptied first so that deleting them cannot hit a reference.
        lines += [f":{chain} - [0:0]" for chain in (*kept, *stale)]
        lines += table.rules
        lines += list((jump_lines or {}).get(table.name, ()))
        lines += [f"-X {chain}" for chain in stale]
        lines.append("COMMIT")
        sections.append("\n".join(lines))
    return RenderResult(
        text="\n".join(sections) + "\n",
        chains={flt.name: tuple(flt.chains), nat.name: tuple(nat.chains)},
        jump_rules=JUMP_RULES,
        deleted_chains=deleted,
    )


def plan(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
         save_text: str) -> RenderResult:
    """``render`` against the node's current ``iptables-save`` dump: stale chains and missing jumps included."""
    return render(service_ports, endpoints, config, existing_chains=chains_in(save_text),
                  jump_lines=missing_jumps_by_table(save_text))
