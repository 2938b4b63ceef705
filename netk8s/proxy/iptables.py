"""Pure renderer of kube-proxy's iptables-mode ruleset: values in, restore text out.

``render`` lays out the filter and nat tables the way kube-proxy's iptables
proxier (1.28+) does: the same chain names (KUBE-SERVICES, KUBE-NODEPORTS,
KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-FIREWALL, KUBE-SVC-/SVL-/
EXT-/FW-/SEP-<hash>), comments, rule order, masquerade mark, statistic
probabilities and ``recent`` affinity matches, and returns one
``iptables-restore --noflush`` payload. Rules are written in the canonical
form ``iptables-save`` prints (address/prefix, ``-p`` before ``-m`` matches,
quoted comments, ``--set-xmark`` marks, quantized probabilities, the
``recent`` options in save order), so a rendered chain and the same chain read
back from the kernel compare equal line for line.

Partial renders (``only=``) write the top-level chains in full but the
per-service chains of the named services only, which is kube-proxy's "only
sync changed chains"; ``IptablesRuleSet`` keeps the bookkeeping between syncs
(which chains each service has installed) and drives a ``RuleBackend``.

Also here, because they are pure text work: parsing ``iptables-save`` output
(``chains_in``, ``rules_by_chain``) and finding which of kube-proxy's jump
rules from the built-in chains are missing (``missing_jumps``). Nothing in
this module touches the kernel itself.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping, Sequence

from netk8s.proxy.backend import ProxyMode, ProxyState, RuleBackend, ServiceKey, SyncResult, service_key
from netk8s.proxy import hashing
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort, categorize_endpoints
from netk8s.proxy.trace import Packet, TraceResult, trace_iptables

log = logging.getLogger(__name__)

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
KUBE_FIREWALL = "KUBE-FIREWALL"  # the kubelet's chain; kube-proxy writes the same localnet guard into it

SVC_PREFIX = "KUBE-SVC-"
SVL_PREFIX = "KUBE-SVL-"
EXT_PREFIX = "KUBE-EXT-"
FW_PREFIX = "KUBE-FW-"
SEP_PREFIX = "KUBE-SEP-"

# Base chains, in the order kube-proxy declares them in each table.
FILTER_BASE_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_BASE_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# Per-service chains kube-proxy owns and deletes when no longer rendered.
# Any other chain (KUBE-FIREWALL, CNI chains, ...) is never deleted.
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SEP_PREFIX, EXT_PREFIX, FW_PREFIX, "KUBE-XLB-", SVL_PREFIX)

LOOPBACK = IPv4Network("127.0.0.0/8")
NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
LOCALNET_COMMENT = "block incoming localnet connections"

_CT_NEW = ("-m", "conntrack", "--ctstate", "NEW")
_REJECT = "REJECT --reject-with icmp-port-unreachable"  # how iptables-save prints a bare -j REJECT


def is_service_chain(chain: str) -> bool:
    """True for per-service chains kube-proxy creates and garbage-collects."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


# Chain names are hashes of stable inputs, needed again at every sync: cache them (bounded).
@functools.lru_cache(maxsize=1 << 16)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    return hashing.port_proto_hash(service_port_name, protocol)


@functools.lru_cache(maxsize=1 << 18)
def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-<hash>`` (see ``netk8s.proxy.hashing.endpoint_chain``)."""
    return hashing.endpoint_chain(service_port_name, protocol, endpoint)


def service_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVC-<hash>``: the endpoints for Cluster traffic policy."""
    return SVC_PREFIX + port_proto_hash(service_port_name, protocol)


def svl_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVL-<hash>``: endpoints on this node only (a Local traffic policy)."""
    return SVL_PREFIX + port_proto_hash(service_port_name, protocol)


def ext_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-EXT-<hash>``: where NodePort, load-balancer and external-IP traffic enters."""
    return EXT_PREFIX + port_proto_hash(service_port_name, protocol)


def fw_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-FW-<hash>``: loadBalancerSourceRanges filtering for load-balancer IPs."""
    return FW_PREFIX + port_proto_hash(service_port_name, protocol)


# -- canonical text ------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+\Z")
_ESCAPED = re.compile(r"([\"\\'])")


def quote(value: str) -> str:
    """A string argument as ``iptables-save`` prints it: bare when only [A-Za-z0-9_-], else double-quoted."""
    if _BARE.match(value):
        return value
    return '"' + _ESCAPED.sub(r"\\\1", value) + '"'


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


def _dest_match(ip: IPv4Address, proto: str, port: int, comment: str, not_source: IPv4Network | None = None) -> str:
    """Destination match in save order: [! -s CIDR] -d IP/32 -p proto -m comment ... -m proto --dport N."""
    parts = []
    if not_source is not None:
        parts.append(f"! -s {_addr(not_source)}")
    parts += [f"-d {_addr(ip)}", f"-p {proto}", _comment(comment), f"-m {proto} --dport {port}"]
    return " ".join(parts)


def _service_match(sp: ServicePort, comment: str, not_source: IPv4Network | None = None) -> str:
    """The cluster-IP match of ``sp`` (see ``_dest_match``)."""
    return _dest_match(sp.cluster_ip, sp.protocol.lowercase, sp.port, comment, not_source)


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
        parts = list(self.extra)
        if self.comment:
            parts += ["-m", "comment", "--comment", quote(self.comment)]
        parts += ["-j", self.target]
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

# Copies of the kubelet's jumps to KUBE-FIREWALL (no comment), which kube-proxy ensures too.
KUBELET_JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule(TABLE_FILTER, "INPUT", KUBE_FIREWALL, ""),
    JumpRule(TABLE_FILTER, "OUTPUT", KUBE_FIREWALL, ""),
)


def jump_rules(config: ProxyConfig | None = None) -> tuple[JumpRule, ...]:
    """The jump rules a proxy with ``config`` keeps (KUBE-FIREWALL's only with localhost NodePorts)."""
    if config is None or config.localhost_node_ports:
        return JUMP_RULES + KUBELET_JUMP_RULES
    return JUMP_RULES


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


def missing_jumps_by_table(save_text: str, rules: Sequence[JumpRule] = JUMP_RULES) -> dict[str, list[str]]:
    """``-I CHAIN 1 ...`` restore lines, per table, for the jump ``rules`` the dump lacks."""
    present: set[tuple[str, str]] = set(save_lines(save_text))
    missing: dict[str, list[str]] = {}
    for rule in rules:
        if (rule.table, rule.save_line) not in present:
            missing.setdefault(rule.table, []).append(rule.insert_line)
    return missing


def missing_jumps(save_text: str, rules: Sequence[JumpRule] = JUMP_RULES) -> list[str]:
    """``-I CHAIN 1 ...`` lines for the jump rules not in the dump (filter table's first, then nat's)."""
    by_table = missing_jumps_by_table(save_text, rules)
    return [line for table in TABLES for line in by_table.get(table, [])]


# -- rendering one service port --------------------------------------------------------------

@dataclass
class PortRules:
    """Everything one service port contributes to a payload.

    ``filter_rules`` and ``nat_top_rules`` go into the shared top-level chains
    (always rewritten); ``chains`` / ``chain_rules`` are the port's own nat
    chains (written only when its service is part of the sync).
    """

    key: ServiceKey
    filter_rules: list[str] = field(default_factory=list)
    nat_top_rules: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    chain_rules: list[str] = field(default_factory=list)
    with_chain_rules: bool = True  # False: only the chain names (a partial sync skipping this service)

    def chain(self, name: str) -> None:
        if name not in self.chains:
            self.chains.append(name)

    def add(self, chain: str, spec: str) -> None:
        if self.with_chain_rules:
            self.chain_rules.append(f"-A {chain} {spec}")


def _endpoint_jumps(out: PortRules, sp: ServicePort, chain: str, endpoints: Sequence[Endpoint]) -> None:
    """Affinity checks (all endpoints), then the random load-balancing jumps, as kube-proxy writes them."""
    spn, proto = sp.service_port_name, sp.protocol.lowercase
    if sp.session_affinity_seconds is not None:
        for ep in endpoints:
            sep = endpoint_chain(spn, proto, ep.address)
            # Save order of the recent match: --rcheck --seconds N --reap --name X --mask M --rsource.
            out.add(chain, f"{_comment(f'{spn} -> {ep.address}')} -m recent --rcheck --seconds "
                           f"{sp.session_affinity_seconds} --reap --name {sep} --mask 255.255.255.255 --rsource "
                           f"-j {sep}")
    for i, ep in enumerate(endpoints):
        sep = endpoint_chain(spn, proto, ep.address)
        jump = _comment(f"{spn} -> {ep.address}")
        if i < len(endpoints) - 1:
            probability = saved_probability(kube_probability(i, len(endpoints)))
            jump += f" -m statistic --mode random --probability {probability}"
        out.add(chain, f"{jump} -j {sep}")


def render_port(sp: ServicePort, endpoints: Sequence[Endpoint], config: ProxyConfig,
                with_chain_rules: bool = True) -> PortRules:
    """The rules of one service port, following kube-proxy's syncProxyRules service loop.

    ``with_chain_rules=False`` leaves the port's own chains' rules out (their names are still listed).
    """
    spn, proto = sp.service_port_name, sp.protocol.lowercase
    out = PortRules(service_key(sp), with_chain_rules=with_chain_rules)
    cats = categorize_endpoints(sp, endpoints)
    svc, svl = service_chain(spn, proto), svl_chain(spn, proto)
    ext, fw = ext_chain(spn, proto), fw_chain(spn, proto)

    uses_cluster_chain = bool(cats.cluster) and sp.uses_cluster_endpoints
    uses_local_chain = bool(cats.local) and sp.uses_local_endpoints
    internal_chain = svl if sp.internal_policy_local else svc
    has_internal = cats.has_any and (not sp.internal_policy_local or bool(cats.local))
    external_policy_chain = svl if sp.external_local else svc
    has_external = cats.has_any and (not sp.external_local or bool(cats.local))
    # The EXT chain exists whenever there are endpoints anywhere: its
    # short-circuit rules for pod and node traffic need no local endpoint.
    uses_ext = cats.has_any and sp.has_external
    uses_fw = cats.has_any and bool(sp.load_balancer_ips) and bool(sp.load_balancer_source_ranges)
    lb_chain = fw if uses_fw else ext

    if not cats.has_any:
        # REJECT answers with icmp-port-unreachable, so clients fail at once
        # (TCP connect() gets ECONNREFUSED) instead of timing out.
        internal_target = external_target = _REJECT
        internal_comment = external_comment = f"{spn} has no endpoints"
    else:
        internal_target = external_target = "DROP"
        internal_comment = external_comment = f"{spn} has no local endpoints"

    # -- top-level chains (always written)
    if has_internal:
        out.nat_top_rules.append(f"-A {KUBE_SERVICES} {_service_match(sp, f'{spn} cluster IP')} -j {internal_chain}")
    else:
        out.filter_rules.append(f"-A {KUBE_SERVICES} {_service_match(sp, internal_comment)} -j {internal_target}")
    for ip in sp.external_ips:
        if cats.has_any:
            out.nat_top_rules.append(
                f"-A {KUBE_SERVICES} {_dest_match(ip, proto, sp.port, f'{spn} external IP')} -j {ext}")
        if not has_external:
            out.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} {_dest_match(ip, proto, sp.port, external_comment)} -j {external_target}")
    for ip in sp.load_balancer_ips:
        if cats.has_any:
            out.nat_top_rules.append(
                f"-A {KUBE_SERVICES} {_dest_match(ip, proto, sp.port, f'{spn} loadbalancer IP')} -j {lb_chain}")
        if uses_fw:
            # Reached only by packets KUBE-FW-* did not DNAT (filter runs after nat PREROUTING).
            out.filter_rules.append(
                f"-A {KUBE_PROXY_FIREWALL} {_dest_match(ip, proto, sp.port, f'{spn} traffic not accepted by {fw}')}"
                " -j DROP")
    if not has_external:
        for ip in sp.load_balancer_ips:
            out.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} {_dest_match(ip, proto, sp.port, external_comment)} -j {external_target}")
    if sp.node_port:
        if cats.has_any:
            out.nat_top_rules.append(
                f"-A {KUBE_NODEPORTS} -p {proto} {_comment(spn)} -m {proto} --dport {sp.node_port} -j {ext}")
        if not has_external:
            out.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -p {proto} {_comment(external_comment)} -m addrtype --dst-type LOCAL "
                f"-m {proto} --dport {sp.node_port} -j {external_target}")
    if sp.health_check_node_port:
        out.filter_rules.append(
            f"-A {KUBE_NODEPORTS} -p tcp {_comment(f'{spn} health check node port')} "
            f"-m tcp --dport {sp.health_check_node_port} -j ACCEPT")

    # -- the port's own nat chains
    if has_internal:
        if config.masquerade_all:
            out.add(internal_chain, f"{_service_match(sp, f'{spn} cluster IP')} -j {KUBE_MARK_MASQ}")
        elif config.cluster_cidr is not None:
            # Traffic to the cluster IP from outside the pod network gets SNAT.
            out.add(internal_chain,
                    f"{_service_match(sp, f'{spn} cluster IP', config.cluster_cidr)} -j {KUBE_MARK_MASQ}")
    if uses_ext:
        out.chain(ext)
        if not sp.external_local:
            # Endpoints may be on another node: SNAT so replies come back through this one.
            out.add(ext, f"{_comment(f'masquerade traffic for {spn} external destinations')} -j {KUBE_MARK_MASQ}")
        else:
            if config.cluster_cidr is not None:
                # Pods reaching an external destination act as if they went out to a load balancer
                # and back: neither traffic policy applies.
                out.add(ext, f"-s {_addr(config.cluster_cidr)} "
                             f"{_comment(f'pod traffic for {spn} external destinations')} -j {svc}")
            # The node's own traffic has a local source address (maybe the LB IP itself): SNAT it
            # and send it to any endpoint.
            out.add(ext, f"{_comment(f'masquerade LOCAL traffic for {spn} external destinations')} "
                         f"-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}")
            out.add(ext, f"{_comment(f'route LOCAL traffic for {spn} external destinations')} "
                         f"-m addrtype --src-type LOCAL -j {svc}")
        if has_external:
            out.add(ext, f"-j {external_policy_chain}")
    if uses_fw:
        out.chain(fw)
        allow_from_node = False
        for cidr in sp.load_balancer_source_ranges:
            out.add(fw, f"-s {_addr(cidr)} {_comment(f'{spn} loadbalancer IP')} -j {ext}")
            allow_from_node = allow_from_node or config.node_ip in cidr
        if allow_from_node:
            # A node reaching a VIP it holds locally loops back with the VIP as source.
            for ip in sp.load_balancer_ips:
                out.add(fw, f"-s {_addr(ip)} {_comment(f'{spn} loadbalancer IP')} -j {ext}")
        out.add(fw, _comment(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"))
    if uses_cluster_chain:
        out.chain(svc)
        if with_chain_rules:
            _endpoint_jumps(out, sp, svc, cats.cluster)
    if uses_local_chain:
        out.chain(svl)
        if with_chain_rules:
            _endpoint_jumps(out, sp, svl, cats.local)
    for ep in cats.reachable:
        sep = endpoint_chain(spn, proto, ep.address)
        out.chain(sep)
        if not with_chain_rules:
            continue
        # Hairpin: an endpoint reaching itself through the service must be SNATed.
        out.add(sep, f"-s {_addr(ep.ip)} {_comment(spn)} -j {KUBE_MARK_MASQ}")
        recent = (f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource"
                  if sp.session_affinity_seconds is not None else "")
        out.add(sep, f"-p {proto} {_comment(spn)}{recent} -m {proto} -j DNAT --to-destination {ep.address}")
    return out


# -- rendering the whole payload ---------------------------------------------------------------

@dataclass(frozen=True)
class RenderResult:
    """One restore payload and what it contains."""

    text: str
    chains: dict[str, tuple[str, ...]]  # table -> chains declared and kept, in declaration order
    jump_rules: tuple[JumpRule, ...]
    deleted_chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> stale chains removed
    # Every per-service nat chain the ruleset now has, per service (also those a partial render did not write).
    service_chains: dict[ServiceKey, tuple[str, ...]] = field(default_factory=dict)
    written_services: frozenset[ServiceKey] = frozenset()  # services whose own chains are in the payload
    full: bool = True

    def rules(self) -> dict[tuple[str, str], list[str]]:
        """The rendered ``-A`` lines per (table, chain), comparable with ``rules_by_chain(iptables-save)``."""
        return {key: lines for key, lines in rules_by_chain(self.text).items()
                if key[1] in self.chains.get(key[0], ())}

    @property
    def written_chain_count(self) -> int:
        """Per-service chains declared (and so rewritten) by the payload."""
        return sum(len(chains) for chains in self.service_chains_written().values())

    def service_chains_written(self) -> dict[ServiceKey, tuple[str, ...]]:
        return {k: v for k, v in self.service_chains.items() if k in self.written_services}


def _sorted_ports(service_ports: Iterable[ServicePort]) -> list[ServicePort]:
    return sorted(set(service_ports), key=lambda p: (p.namespace, p.name, p.port_name, p.protocol.value))


def render(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
           existing_chains: Mapping[str, set[str]] | None = None,
           jump_lines: Mapping[str, Sequence[str]] | None = None,
           only: frozenset[ServiceKey] | None = None) -> RenderResult:
    """The kube-proxy ruleset for ``service_ports`` as one ``iptables-restore --noflush`` payload.

    ``existing_chains`` (from ``chains_in(iptables-save)``, or the chains a
    partial sync knows were installed) lets stale per-service chains be
    flushed and deleted in the same transaction; ``jump_lines`` (from
    ``missing_jumps_by_table``) are restore lines added to their table's
    section after the rules. ``only``: write the per-service chains of these
    services only (a partial sync); None writes all of them.
    """
    mark = config.masquerade_mark
    filter_chains: list[str] = list(FILTER_BASE_CHAINS)
    nat_chains: list[str] = list(NAT_BASE_CHAINS)
    filter_rules: list[str] = []
    nat_rules: list[str] = [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        # Clear the bit so a packet that re-traverses the stack is not masqueraded
        # twice; --xor-mark M is stored (and saved) as --set-xmark M/0x0.
        f"-A {KUBE_POSTROUTING} -j MARK --set-xmark {mark}/0x0",
        f'-A {KUBE_POSTROUTING} {_comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully',
        # --or-mark M is stored as --set-xmark M/M.
        f"-A {KUBE_MARK_MASQ} -j MARK --set-xmark {mark}/{mark}",
    ]
    if config.localhost_node_ports:
        # route_localnet=1 (needed for 127.0.0.1:NodePort) would also let other hosts reach
        # services bound to 127.0.0.1; only DNATed (NodePort) connections may enter that way.
        filter_chains.append(KUBE_FIREWALL)
        filter_rules.append(f"-A {KUBE_FIREWALL} ! -s {LOOPBACK} -d {LOOPBACK} {_comment(LOCALNET_COMMENT)} "
                            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

    service_chains: dict[ServiceKey, list[str]] = {}
    written: set[ServiceKey] = set()
    seen: set[tuple[str, str]] = set()
    for sp in _sorted_ports(service_ports):
        if (sp.service_port_name, sp.protocol.lowercase) in seen:
            continue
        seen.add((sp.service_port_name, sp.protocol.lowercase))
        write = only is None or service_key(sp) in only
        port = render_port(sp, endpoints.get(sp.service_port_name, ()), config, with_chain_rules=write)
        filter_rules += port.filter_rules
        nat_rules += port.nat_top_rules
        service_chains.setdefault(port.key, []).extend(port.chains)
        if write:
            written.add(port.key)
            nat_chains += port.chains
            nat_rules += port.chain_rules

    nodeports_dst = "" if config.localhost_node_ports else f"! -d {LOOPBACK} "
    nat_rules.append(f"-A {KUBE_SERVICES} {nodeports_dst}{_comment(NODEPORTS_COMMENT)} "
                     f"-m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}")

    filter_rules += [
        f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP",
        # Marked (to be masqueraded) service traffic is forwarded even when FORWARD's policy is DROP.
        f'-A {KUBE_FORWARD} {_comment("kubernetes forwarding rules")} -m mark --mark {mark}/{mark} -j ACCEPT',
        f'-A {KUBE_FORWARD} {_comment("kubernetes forwarding conntrack rule")} '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]

    active = {chain for chains in service_chains.values() for chain in chains}
    sections: list[str] = []
    deleted: dict[str, tuple[str, ...]] = {}
    kept_by_table: dict[str, tuple[str, ...]] = {}
    for table, chains, rules in ((TABLE_FILTER, filter_chains, filter_rules), (TABLE_NAT, nat_chains, nat_rules)):
        kept = tuple(chains)
        kept_by_table[table] = kept
        stale = sorted(c for c in (existing_chains or {}).get(table, set())
                       if is_service_chain(c) and c not in kept and c not in active)
        if stale:
            deleted[table] = tuple(stale)
        lines = [f"*{table}"]
        # Under --noflush, declaring a chain creates it or flushes it: stale
        # chains are emptied first so that deleting them cannot hit a reference.
        lines += [f":{chain} - [0:0]" for chain in (*kept, *stale)]
        lines += rules
        lines += list((jump_lines or {}).get(table, ()))
        lines += [f"-X {chain}" for chain in stale]
        lines.append("COMMIT")
        sections.append("\n".join(lines))
    return RenderResult(
        text="\n".join(sections) + "\n",
        chains=kept_by_table,
        jump_rules=jump_rules(config),
        deleted_chains=deleted,
        service_chains={key: tuple(chains) for key, chains in service_chains.items()},
        written_services=frozenset(written),
        full=only is None,
    )


def plan(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
         save_text: str) -> RenderResult:
    """A full ``render`` against the node's current ``iptables-save`` dump: stale chains and missing jumps included."""
    return render(service_ports, endpoints, config, existing_chains=chains_in(save_text),
                  jump_lines=missing_jumps_by_table(save_text, jump_rules(config)))


# -- the iptables mode's RuleSet ---------------------------------------------------------------

class IptablesRuleSet:
    """kube-proxy's iptables mode for one node: renders ``ProxyState`` and applies it through a ``RuleBackend``.

    Full syncs read ``iptables-save`` (stale chains, missing jump rules) and
    write everything. Partial syncs read nothing: they rewrite the top-level
    chains, write the chains of the changed services only, and delete the
    chains those services had and no longer use (known from the previous
    sync). Any failure forgets what is installed, so the next sync is full
    whatever the caller asks.
    """

    mode = ProxyMode.IPTABLES

    def __init__(self, backend: RuleBackend, config: ProxyConfig) -> None:
        self.backend = backend
        self.config = config
        self._installed: dict[ServiceKey, tuple[str, ...]] | None = None

    def sync(self, state: ProxyState, full: bool, changed: frozenset[ServiceKey]) -> SyncResult:
        full = full or self._installed is None
        try:
            if full:
                result = plan(state.service_ports, state.endpoints, self.config, self.backend.save())
            else:
                assert self._installed is not None
                known = {c for key in changed for c in self._installed.get(key, ())}
                result = render(state.service_ports, state.endpoints, self.config,
                                existing_chains={TABLE_NAT: known}, only=changed)
            self.backend.restore(result.text)
        except Exception:
            self._installed = None
            raise
        self._installed = dict(result.service_chains)
        log.debug("iptables %s sync: %d service chains written, %d deleted, %d bytes",
                  "full" if full else "partial", result.written_chain_count,
                  sum(len(c) for c in result.deleted_chains.values()), len(result.text))
        return SyncResult(
            mode=self.mode, full=full, payload=result.text, services=len(state.service_ports),
            changed=result.written_services, objects_written=result.written_chain_count,
            objects_deleted=sum(len(c) for c in result.deleted_chains.values()),
        )

    def dump(self) -> str:
        return self.backend.save()

    def trace(self, packet: Packet, local_addresses: set[IPv4Address]) -> TraceResult:
        return trace_iptables(self.dump(), packet, local_addresses)
