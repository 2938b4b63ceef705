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

Rendering is per service (``render_service`` -> ``ServiceRules``: the
service's lines for each top-level chain and its own chains), so a sync can
keep the fragments of services that did not change. ``render`` composes a
whole payload (``only=``: the top-level chains in full but the per-service
chains of the named services only); ``render_changes`` composes a partial
sync from the fragments before and after: only the own chains whose lines
changed, and the top-level chains only where a changed service's lines in
them changed, as rule edits (``-D`` by spec, ``-I`` at the rule's final
position) when the chain is long, else as a rewrite. ``IptablesRuleSet``
keeps the fragments between syncs and drives a ``RuleBackend``.

Payload shape, for iptables-nft (v1.8.9) speed: chain declarations come in
descending name order, because iptables-nft keeps its chain cache in a list
sorted on insertion (walked from the head), so descending inserts are O(1)
instead of a walk over every chain; and a big sync can be split into
``*nat`` sections of ``chunk_services`` services each (one kernel
transaction per ``COMMIT``; iptables-nft keeps a sorted list of every chain
named in a transaction, so one huge transaction is quadratic). Chunks are
ordered so that every commit leaves a consistent table: the service chains
(with KUBE-MARK-MASQ, which they jump to) first, each service's chains in one
chunk, the top-level chains and the deletion of stale chains last.
``IptablesRuleSet`` splits only syncs of more than ``chunk_above`` services
(500): anything smaller is one transaction, as kube-proxy writes it; above
that, streaming chunks also hides the rendering time behind the kernel's work.

Also here, because they are pure text work: parsing ``iptables-save`` output
(``chains_in``, ``rules_by_chain``), building the same form from a cheap
inventory (``nft_chain_names``, ``inventory_dump``) and finding which of
kube-proxy's jump rules from the built-in chains are missing
(``missing_jumps``). Nothing in this module touches the kernel itself.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from netk8s.proxy import hashing
from netk8s.proxy.backend import (
    ProxyMode,
    ProxyState,
    RuleBackend,
    ServiceKey,
    SyncResult,
    group_ports,
    port_order,
    service_key,
)
from netk8s.proxy.hashing import endpoint_chain, port_proto_hash, service_chain
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort, categorize_endpoints
from netk8s.proxy.trace import LOOPBACK, Packet, TraceResult, trace_iptables

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

SVC_PREFIX = hashing.SERVICE_CHAIN_PREFIX
SVL_PREFIX = "KUBE-SVL-"
EXT_PREFIX = "KUBE-EXT-"
FW_PREFIX = "KUBE-FW-"
SEP_PREFIX = hashing.ENDPOINT_CHAIN_PREFIX

# Base chains, in the order kube-proxy declares them in each table.
FILTER_BASE_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_BASE_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# Per-service chains kube-proxy owns and deletes when no longer rendered.
# Any other chain (KUBE-FIREWALL, CNI chains, ...) is never deleted.
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SEP_PREFIX, EXT_PREFIX, FW_PREFIX, "KUBE-XLB-", SVL_PREFIX)

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
LOCALNET_COMMENT = "block incoming localnet connections"

_CT_NEW = ("-m", "conntrack", "--ctstate", "NEW")
_REJECT = "REJECT --reject-with icmp-port-unreachable"  # how iptables-save prints a bare -j REJECT


def is_service_chain(chain: str) -> bool:
    """True for per-service chains kube-proxy creates and garbage-collects."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


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


@functools.lru_cache(maxsize=1 << 16)
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


@functools.lru_cache(maxsize=1 << 18)
def _addr(value: IPv4Address | IPv4Network) -> str:
    # Cached: formatting an ipaddress object is slow and the same addresses recur every sync.
    return f"{value}/32" if isinstance(value, IPv4Address) else str(value)


@functools.lru_cache(maxsize=1 << 18)
def _address(ip: IPv4Address, port: int) -> str:
    """``ip:port`` (``Endpoint.address``), cached."""
    return f"{ip}:{port}"


@functools.lru_cache(maxsize=1024)
def _probability(index: int, count: int) -> str:
    """``saved_probability(kube_probability(index, count))``, cached: the same few values recur."""
    return saved_probability(kube_probability(index, count))


def _comment(text: str) -> str:
    return f"-m comment --comment {quote(text)}"


def _dest_match(ip: IPv4Address, proto: str, port: int, comment: str, not_source: IPv4Network | None = None) -> str:
    """Destination match in save order: [! -s CIDR] -d IP/32 -p proto -m comment ... -m proto --dport N."""
    match = f"-d {_addr(ip)} -p {proto} -m comment --comment {quote(comment)} -m {proto} --dport {port}"
    return match if not_source is None else f"! -s {_addr(not_source)} {match}"


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

    ``filter_rules`` and ``nat_top_rules`` go into the shared top-level chains;
    ``chains`` / ``chain_rules`` are the port's own nat chains.
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
            address = _address(ep.ip, ep.port)
            sep = endpoint_chain(spn, proto, address)
            # Save order of the recent match: --rcheck --seconds N --reap --name X --mask M --rsource.
            out.add(chain, f"{_comment(f'{spn} -> {address}')} -m recent --rcheck --seconds "
                           f"{sp.session_affinity_seconds} --reap --name {sep} --mask 255.255.255.255 --rsource "
                           f"-j {sep}")
    for i, ep in enumerate(endpoints):
        address = _address(ep.ip, ep.port)
        sep = endpoint_chain(spn, proto, address)
        jump = _comment(f"{spn} -> {address}")
        if i < len(endpoints) - 1:
            jump += f" -m statistic --mode random --probability {_probability(i, len(endpoints))}"
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

    # -- top-level chains
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
        address = _address(ep.ip, ep.port)
        sep = endpoint_chain(spn, proto, address)
        out.chain(sep)
        if not with_chain_rules:
            continue
        # Hairpin: an endpoint reaching itself through the service must be SNATed.
        out.add(sep, f"-s {_addr(ep.ip)} {_comment(spn)} -j {KUBE_MARK_MASQ}")
        recent = (f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource"
                  if sp.session_affinity_seconds is not None else "")
        out.add(sep, f"-p {proto} {_comment(spn)}{recent} -m {proto} -j DNAT --to-destination {address}")
    return out


# -- one service: the unit a sync keeps or re-renders ------------------------------------------

TopChain = tuple[str, str]  # (table, chain) of a top-level chain several services write into


def _chain_of(line: str) -> str:
    """The chain of an ``-A CHAIN ...`` line."""
    return line.split(" ", 2)[1]


@dataclass(frozen=True)
class ServiceRules:
    """One service's rendered rules (all its ports), reused by later syncs until its inputs change.

    ``top`` holds the service's lines in each top-level chain, ``chains`` its
    own nat chains (render order) and ``chain_rules`` their ``-A`` lines.
    ``inputs`` are what it was rendered from (compared, not trusted blindly).
    """

    key: ServiceKey
    order: tuple[str, str]  # (namespace, name): services are laid out in this order
    ports: tuple[PortRules, ...]
    inputs: object = None
    top: Mapping[TopChain, tuple[str, ...]] = field(default_factory=dict)
    chains: tuple[str, ...] = ()
    chain_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, key: ServiceKey, order: tuple[str, str], ports: Sequence[PortRules],
           inputs: object = None) -> "ServiceRules":
        top: dict[TopChain, list[str]] = {}
        chains: list[str] = []
        rules: dict[str, list[str]] = {}
        for port in ports:
            for table, lines in ((TABLE_FILTER, port.filter_rules), (TABLE_NAT, port.nat_top_rules)):
                for line in lines:
                    top.setdefault((table, _chain_of(line)), []).append(line)
            for chain in port.chains:
                if chain not in rules:
                    chains.append(chain)
                    rules[chain] = []
            for line in port.chain_rules:
                rules.setdefault(_chain_of(line), []).append(line)
        return cls(key, order, tuple(ports), inputs, {k: tuple(v) for k, v in top.items()}, tuple(chains),
                   {k: tuple(v) for k, v in rules.items()})


def service_inputs(ports: Sequence[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]]) -> object:
    """What a service's rules depend on: its ports (sorted) and their endpoints; equal inputs, equal rules."""
    ordered = tuple(sorted(set(ports), key=port_order))
    return ordered, tuple(tuple(endpoints.get(sp.service_port_name, ())) for sp in ordered)


def render_service(ports: Sequence[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]],
                   config: ProxyConfig, with_chain_rules: bool = True) -> ServiceRules:
    """All ports of one service (a port name + protocol seen twice is rendered once)."""
    ordered = sorted(set(ports), key=port_order)
    if not ordered:
        raise ValueError("render_service needs at least one service port")
    seen: set[tuple[str, str]] = set()
    rendered: list[PortRules] = []
    for sp in ordered:
        ident = (sp.service_port_name, sp.protocol.lowercase)
        if ident in seen:
            continue
        seen.add(ident)
        rendered.append(render_port(sp, endpoints.get(sp.service_port_name, ()), config, with_chain_rules))
    first = ordered[0]
    return ServiceRules.of(service_key(first), (first.namespace, first.name), rendered,
                           service_inputs(ordered, endpoints))


class ServiceTable:
    """Rendered services by key plus their layout order; ``replaced`` derives the next sync's table."""

    def __init__(self, services: Mapping[ServiceKey, ServiceRules]) -> None:
        self.services: dict[ServiceKey, ServiceRules] = dict(services)
        self._order: list[tuple[tuple[str, str], ServiceKey]] = sorted((s.order, k) for k, s in self.services.items())

    def __len__(self) -> int:
        return len(self.services)

    def get(self, key: ServiceKey) -> ServiceRules | None:
        return self.services.get(key)

    def ordered(self) -> Iterator[ServiceRules]:
        """Services in layout order."""
        return (self.services[key] for _, key in self._order)

    def replaced(self, updates: Mapping[ServiceKey, ServiceRules | None]) -> "ServiceTable":
        """A copy with ``updates`` applied (None removes the service); costs a copy, no re-sort."""
        table = ServiceTable.__new__(ServiceTable)
        table.services = dict(self.services)
        table._order = list(self._order)
        for key, rules in updates.items():
            old = table.services.pop(key, None)
            if old is not None:
                del table._order[bisect.bisect_left(table._order, (old.order, key))]
            if rules is not None:
                table.services[key] = rules
                bisect.insort(table._order, (rules.order, key))
        return table


# -- the fixed parts of the top-level chains ---------------------------------------------------------

def _fixed_rules(config: ProxyConfig) -> tuple[dict[TopChain, tuple[str, ...]], dict[TopChain, tuple[str, ...]]]:
    """(rules before the services' rules, rules after them) per top-level chain."""
    mark = config.masquerade_mark
    head: dict[TopChain, tuple[str, ...]] = {
        (TABLE_NAT, KUBE_POSTROUTING): (
            f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            # Clear the bit so a packet that re-traverses the stack is not masqueraded
            # twice; --xor-mark M is stored (and saved) as --set-xmark M/0x0.
            f"-A {KUBE_POSTROUTING} -j MARK --set-xmark {mark}/0x0",
            f'-A {KUBE_POSTROUTING} {_comment("kubernetes service traffic requiring SNAT")} '
            "-j MASQUERADE --random-fully",
        ),
        # --or-mark M is stored as --set-xmark M/M.
        (TABLE_NAT, KUBE_MARK_MASQ): (f"-A {KUBE_MARK_MASQ} -j MARK --set-xmark {mark}/{mark}",),
    }
    if config.localhost_node_ports:
        # route_localnet=1 (needed for 127.0.0.1:NodePort) would also let other hosts reach
        # services bound to 127.0.0.1; only DNATed (NodePort) connections may enter that way.
        head[(TABLE_FILTER, KUBE_FIREWALL)] = (
            f"-A {KUBE_FIREWALL} ! -s {LOOPBACK} -d {LOOPBACK} {_comment(LOCALNET_COMMENT)} "
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",)
    nodeports_dst = "" if config.localhost_node_ports else f"! -d {LOOPBACK} "
    tail: dict[TopChain, tuple[str, ...]] = {
        (TABLE_NAT, KUBE_SERVICES): (f"-A {KUBE_SERVICES} {nodeports_dst}{_comment(NODEPORTS_COMMENT)} "
                                     f"-m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}",),
        (TABLE_FILTER, KUBE_FORWARD): (
            f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP",
            # Marked (to be masqueraded) service traffic is forwarded even when FORWARD's policy is DROP.
            f'-A {KUBE_FORWARD} {_comment("kubernetes forwarding rules")} -m mark --mark {mark}/{mark} -j ACCEPT',
            f'-A {KUBE_FORWARD} {_comment("kubernetes forwarding conntrack rule")} '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
    }
    return head, tail


def top_chains(config: ProxyConfig) -> dict[str, tuple[str, ...]]:
    """The top-level chains kube-proxy keeps per table, in its declaration order."""
    filter_chains = FILTER_BASE_CHAINS + ((KUBE_FIREWALL,) if config.localhost_node_ports else ())
    return {TABLE_FILTER: filter_chains, TABLE_NAT: NAT_BASE_CHAINS}


def _declare(chains: Iterable[str]) -> list[str]:
    # iptables-nft (1.8.9) inserts each new chain into a name-sorted list walked from
    # the head: declaring in descending order makes every insert O(1).
    return [f":{chain} - [0:0]" for chain in sorted(set(chains), reverse=True)]


# -- composing payloads ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderResult:
    """One restore payload and what it contains."""

    text: str
    chains: dict[str, tuple[str, ...]]  # table -> chains written and kept (render order; declared sorted)
    jump_rules: tuple[JumpRule, ...]
    deleted_chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> stale chains removed
    # Every service's rules after this payload (also those it did not write).
    services: Mapping[ServiceKey, ServiceRules] = field(default_factory=dict)
    written_services: frozenset[ServiceKey] = frozenset()  # services whose lines are in the payload
    full: bool = True
    written_chains: tuple[str, ...] = ()  # per-service chains declared (and so rewritten) by the payload

    @property
    def service_chains(self) -> dict[ServiceKey, tuple[str, ...]]:
        """Every per-service nat chain the ruleset has after this payload, per service."""
        return {key: rules.chains for key, rules in self.services.items()}

    def rules(self) -> dict[tuple[str, str], list[str]]:
        """The ``-A`` lines per written (table, chain), comparable with ``rules_by_chain(iptables-save)``."""
        return {key: lines for key, lines in rules_by_chain(self.text).items()
                if key[1] in self.chains.get(key[0], ())}

    @property
    def written_chain_count(self) -> int:
        """Per-service chains declared (and so rewritten) by the payload."""
        return len(self.written_chains)


def _stale(existing: Mapping[str, set[str]] | None, table: str, kept: set[str]) -> tuple[str, ...]:
    return tuple(sorted(c for c in (existing or {}).get(table, set()) if is_service_chain(c) and c not in kept))


def _section(table: str, declared: Iterable[str], rules: Iterable[str], tail: Iterable[str] = ()) -> str:
    return "\n".join([f"*{table}", *_declare(declared), *rules, *tail, "COMMIT"])


class Composer:
    """Builds a payload from services fed in layout order, handing finished sections to ``sink`` at once.

    Every top-level chain is written in full, with the own chains of the
    ``write`` services (None: all). Once more than ``chunk_services`` written
    services have arrived, the own chains go out as ``*nat`` sections of
    that many services (KUBE-MARK-MASQ, which they jump to, in the first),
    each handed to ``sink`` as soon as it is complete, so the kernel can
    apply one chunk while the next is rendered; the filter section and the
    final nat section (top-level chains, missing jumps, stale chains) follow
    in ``finish``. Without chunking the payload is one filter and one nat
    section, as kube-proxy writes it.
    """

    def __init__(self, config: ProxyConfig, write: frozenset[ServiceKey] | None = None,
                 chunk_services: int | None = None, sink: Callable[[str], None] | None = None,
                 expected: int | None = None) -> None:
        self.config = config
        self.write = write
        self.chunk_services = chunk_services if chunk_services and chunk_services > 0 else None
        self.sink = sink
        # Told how many services will be written, a chunked payload starts with a small chunk, so
        # that the kernel starts working while the rest renders.
        self._first_chunk = (max(1, self.chunk_services // 5) if self.chunk_services is not None
                             and expected is not None and expected > self.chunk_services else None)
        self._head, self._tail = _fixed_rules(config)
        self._services: list[ServiceRules] = []
        self._pending: list[ServiceRules] = []  # written services not yet sent in a chunk
        self._sections: list[str] = []
        self._chunked = False
        self._own_chains: list[str] = []
        self._written: set[ServiceKey] = set()

    def _emit(self, section: str) -> None:
        self._sections.append(section)
        if self.sink is not None:
            self.sink(section)

    def _flush_chunk(self) -> None:
        chunk, self._pending = self._pending, []
        chains = [c for s in chunk for c in s.chains]
        lines = [line for s in chunk for port in s.ports for line in port.chain_rules]
        if not self._chunked:
            # The service chains jump to KUBE-MARK-MASQ: it must exist before the first chunk commits.
            self._chunked = True
            chains.append(KUBE_MARK_MASQ)
            lines += self._head[(TABLE_NAT, KUBE_MARK_MASQ)]
        self._emit(_section(TABLE_NAT, chains, lines) + "\n")

    def add(self, service: ServiceRules) -> None:
        """The next service in layout order."""
        self._services.append(service)
        if self.write is not None and service.key not in self.write:
            return
        self._written.add(service.key)
        self._own_chains += service.chains
        self._pending.append(service)
        if self._first_chunk is not None and not self._chunked and len(self._pending) >= self._first_chunk:
            self._flush_chunk()
        elif self.chunk_services is not None and len(self._pending) > self.chunk_services:
            # More than one chunk's worth: from now on the own chains go out chunk by chunk.
            rest = self._pending[self.chunk_services:]
            self._pending = self._pending[:self.chunk_services]
            self._flush_chunk()
            self._pending = rest

    def finish(self, existing_chains: Mapping[str, set[str]] | None = None,
               jump_lines: Mapping[str, Sequence[str]] | None = None) -> RenderResult:
        """The remaining sections. ``existing_chains``: stale per-service chains among them are flushed and
        deleted; ``jump_lines``: restore lines added to their table's section."""
        if self._chunked and self._pending:
            self._flush_chunk()
        head, tail = self._head, self._tail
        tops = top_chains(self.config)
        active = {c for s in self._services for c in s.chains}
        filter_rules = list(head.get((TABLE_FILTER, KUBE_FIREWALL), ()))
        nat_rules = list(head[(TABLE_NAT, KUBE_POSTROUTING)]) + list(head[(TABLE_NAT, KUBE_MARK_MASQ)])
        for s in self._services:
            own = s.key in self._written and not self._chunked
            for port in s.ports:
                filter_rules += port.filter_rules
                nat_rules += port.nat_top_rules
                if own:
                    nat_rules += port.chain_rules
        filter_rules += tail[(TABLE_FILTER, KUBE_FORWARD)]
        nat_rules += tail[(TABLE_NAT, KUBE_SERVICES)]
        deleted: dict[str, tuple[str, ...]] = {}
        kept: dict[str, tuple[str, ...]] = {}
        for table, rules in ((TABLE_FILTER, filter_rules), (TABLE_NAT, nat_rules)):
            base = tops[table]
            stale = _stale(existing_chains, table, set(base) | active)
            if stale:
                deleted[table] = stale
            declared = list(base) + (self._own_chains if table == TABLE_NAT and not self._chunked else [])
            kept[table] = tuple(base) + (tuple(self._own_chains) if table == TABLE_NAT else ())
            # Under --noflush, declaring a chain creates or flushes it: stale chains are
            # emptied first so that deleting them cannot hit a reference.
            self._emit(_section(table, [*declared, *stale], rules,
                                [*(jump_lines or {}).get(table, ()), *(f"-X {c}" for c in stale)]) + "\n")
        return RenderResult(
            text="".join(self._sections),
            chains=kept,
            jump_rules=jump_rules(self.config),
            deleted_chains=deleted,
            services={s.key: s for s in self._services},
            written_services=frozenset(self._written),
            full=self.write is None,
            written_chains=tuple(self._own_chains),
        )


def compose(services: Iterable[ServiceRules], config: ProxyConfig,
            existing_chains: Mapping[str, set[str]] | None = None,
            jump_lines: Mapping[str, Sequence[str]] | None = None,
            write: frozenset[ServiceKey] | None = None,
            chunk_services: int | None = None) -> RenderResult:
    """The whole payload for ``services`` (in layout order); see ``Composer``."""
    composer = Composer(config, write, chunk_services)
    for service in services:
        composer.add(service)
    return composer.finish(existing_chains, jump_lines)


def render(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
           existing_chains: Mapping[str, set[str]] | None = None,
           jump_lines: Mapping[str, Sequence[str]] | None = None,
           only: frozenset[ServiceKey] | None = None,
           chunk_services: int | None = None) -> RenderResult:
    """The kube-proxy ruleset for ``service_ports`` as one ``iptables-restore --noflush`` payload.

    ``existing_chains`` (from ``chains_in(iptables-save)``, or the chains a
    partial sync knows were installed) lets stale per-service chains be
    flushed and deleted in the same transaction; ``jump_lines`` (from
    ``missing_jumps_by_table``) are restore lines added to their table's
    section after the rules. ``only``: write the per-service chains of these
    services only (a partial sync); None writes all of them.
    ``chunk_services``: see ``compose``.
    """
    services = [render_service(ports, endpoints, config, with_chain_rules=only is None or key in only)
                for key, ports in group_ports(service_ports).items()]
    return compose(services, config, existing_chains, jump_lines, only, chunk_services)


def plan(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
         save_text: str, chunk_services: int | None = None) -> RenderResult:
    """A full ``render`` against the node's current ``iptables-save`` dump: stale chains and missing jumps included."""
    return render(service_ports, endpoints, config, existing_chains=chains_in(save_text),
                  jump_lines=missing_jumps_by_table(save_text, jump_rules(config)), chunk_services=chunk_services)


# -- partial syncs: only what changed ------------------------------------------------------------------

EDIT_MIN_RULES = 64  # top-level chains at least this long are edited rule by rule instead of rewritten


def _top_lines(table: ServiceTable, chain: TopChain, head: Mapping[TopChain, tuple[str, ...]],
               tail: Mapping[TopChain, tuple[str, ...]]) -> list[str]:
    lines = list(head.get(chain, ()))
    for s in table.ordered():
        lines += s.top.get(chain, ())
    lines += tail.get(chain, ())
    return lines


def _spec(chain: str, line: str) -> str:
    return line[len(f"-A {chain} "):]


def _top_edit(chain: TopChain, old: ServiceTable, new: ServiceTable, dirty: set[ServiceKey],
              head: Mapping[TopChain, tuple[str, ...]], tail: Mapping[TopChain, tuple[str, ...]],
              edit_min_rules: int) -> tuple[bool, list[str]]:
    """(rewrite?, lines) for one changed top-level chain: its full content, or ``-D``/``-I``/``-A`` edits.

    Edits delete the changed services' old rules by spec (an exact match,
    so a rule someone else changed fails the restore, and the next full sync
    repairs it), then insert their new rules in ascending final position.
    """
    name = chain[1]
    new_lines: list[str] = list(head.get(chain, ()))
    inserts: list[tuple[int, str]] = []
    for s in new.ordered():
        lines = s.top.get(chain, ())
        if s.key in dirty:
            inserts += [(len(new_lines) + i + 1, line) for i, line in enumerate(lines)]
        new_lines += lines
    new_lines += tail.get(chain, ())
    deletes = [line for key in sorted(dirty) if (s := old.get(key)) is not None for line in s.top.get(chain, ())]
    old_count = len(new_lines) - len(inserts) + len(deletes)
    if old_count < edit_min_rules or 2 * (len(deletes) + len(inserts)) > len(new_lines):
        return True, new_lines
    doomed = set(deletes)
    if len(doomed) < len(deletes) or sum(
            1 for line in _top_lines(old, chain, head, tail) if line in doomed) != len(deletes):
        return True, new_lines  # a duplicate rule: deleting by spec would be ambiguous
    out = [f"-D {name} {_spec(name, line)}" for line in deletes]
    length = old_count - len(deletes)
    for position, line in inserts:
        # -I needs an existing position: a rule that lands at the end is appended.
        out.append(line if position == length + 1 else f"-I {name} {position} {_spec(name, line)}")
        length += 1
    return False, out


def render_changes(old: ServiceTable, new: ServiceTable, changed: Iterable[ServiceKey], config: ProxyConfig,
                   edit_min_rules: int = EDIT_MIN_RULES) -> RenderResult:
    """A partial payload taking the kernel from ``old`` (installed) to ``new``.

    Only the ``changed`` services are compared: their own chains whose lines
    changed are declared and rewritten, chains they no longer use are flushed
    and deleted, and a top-level chain is touched only when a changed
    service's lines in it changed (see ``_top_edit``). Nothing else is read or
    written, so the cost follows the change, not the number of services.
    """
    head, tail = _fixed_rules(config)
    keys = sorted(set(changed))
    written_chains: list[str] = []
    own_lines: list[str] = []
    stale: list[str] = []
    written_services: set[ServiceKey] = set()
    dirty: dict[TopChain, set[ServiceKey]] = {}
    for key in keys:
        before, after = old.get(key), new.get(key)
        old_rules = before.chain_rules if before is not None else {}
        new_rules = after.chain_rules if after is not None else {}
        for chain in (after.chains if after is not None else ()):
            if old_rules.get(chain) != new_rules[chain]:
                written_chains.append(chain)
                own_lines += new_rules[chain]
                written_services.add(key)
        for chain in (before.chains if before is not None else ()):
            if chain not in new_rules:
                stale.append(chain)
                written_services.add(key)
        old_top = before.top if before is not None else {}
        new_top = after.top if after is not None else {}
        for chain in set(old_top) | set(new_top):
            if old_top.get(chain, ()) != new_top.get(chain, ()):
                dirty.setdefault(chain, set()).add(key)
                written_services.add(key)

    sections: list[str] = []
    kept: dict[str, tuple[str, ...]] = {}
    for table in TABLES:
        declared: list[str] = list(written_chains) if table == TABLE_NAT else []
        table_stale = stale if table == TABLE_NAT else []
        edits: list[str] = []
        rewritten: list[str] = []
        for chain in top_chains(config)[table]:
            top = (table, chain)
            if top not in dirty:
                continue
            rewrite, lines = _top_edit(top, old, new, dirty[top], head, tail, edit_min_rules)
            if rewrite:
                rewritten.append(chain)
            edits += lines
        if not (declared or table_stale or edits or rewritten):
            continue
        kept[table] = tuple(rewritten) + tuple(declared)
        rules = (own_lines if table == TABLE_NAT else []) + edits
        sections.append(_section(table, [*rewritten, *declared, *table_stale], rules,
                                 [f"-X {c}" for c in table_stale]))
    return RenderResult(
        text="\n".join(sections) + "\n" if sections else "",
        chains=kept,
        jump_rules=jump_rules(config),
        deleted_chains={TABLE_NAT: tuple(stale)} if stale else {},
        services=new.services,
        written_services=frozenset(written_services),
        full=False,
        written_chains=tuple(written_chains),
    )


# -- reading the kernel cheaply ------------------------------------------------------------------------

def nft_chain_names(nft_json: str, tables: Sequence[str] = TABLES) -> dict[str, set[str]]:
    """Chains per table of family ip from ``nft -j list chains ip`` (iptables-nft's tables are nft tables)."""
    try:
        items = json.loads(nft_json or "{}").get("nftables", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"nft -j list chains: unreadable JSON ({exc})") from None
    chains: dict[str, set[str]] = {table: set() for table in tables}
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if chain and chain.get("family") == "ip" and chain.get("table") in chains:
            chains[chain["table"]].add(chain["name"])
    return chains


def inventory_dump(chains: Mapping[str, set[str]], builtin_rules: Mapping[str, Sequence[str]]) -> str:
    """An ``iptables-save``-shaped text with every chain declared and only the built-in chains' rules.

    ``builtin_rules``: table -> the ``iptables -t TABLE -S CHAIN`` lines of
    its built-in chains (``-P`` lines are ignored). ``chains_in`` and
    ``missing_jumps_by_table`` read it like a full dump, which is all a full
    sync needs to know about the kernel.
    """
    out: list[str] = []
    for table in sorted(set(chains) | set(builtin_rules)):
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in sorted(chains.get(table, ()))]
        out += [line for line in builtin_rules.get(table, ()) if line.startswith("-A ")]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def builtin_chains(config: ProxyConfig | None = None) -> tuple[tuple[str, str], ...]:
    """The (table, built-in chain) pairs kube-proxy keeps jump rules in."""
    pairs: list[tuple[str, str]] = []
    for rule in jump_rules(config):
        if (rule.table, rule.chain) not in pairs:
            pairs.append((rule.table, rule.chain))
    return tuple(pairs)


class RestoreSink(Protocol):
    """One ``iptables-restore --noflush`` run fed section by section (``netk8s.kernel.iptables.RestoreStream``)."""

    def write(self, text: str) -> None:
        """Send the next complete section(s); the kernel may commit them before the rest arrives."""
        ...

    def close(self) -> None:
        """End the input and wait; raise ``KernelError`` (naming the failing line) if the restore failed."""
        ...

    def abort(self) -> None:
        """Stop the restore: sections not completely sent are not applied (committed ones stay)."""
        ...


@runtime_checkable
class StreamingBackend(Protocol):
    """A ``RuleBackend`` that can apply a payload while it is still being rendered."""

    def restore_stream(self) -> RestoreSink:
        ...


@runtime_checkable
class InventoryBackend(Protocol):
    """A ``RuleBackend`` that can also list chains and built-in rules without a full ``iptables-save``."""

    def inventory(self, builtin: Sequence[tuple[str, str]]) -> str:
        """``inventory_dump`` of the namespace: every chain, and the rules of the ``builtin`` chains."""
        ...


# -- the iptables mode's RuleSet ---------------------------------------------------------------

DEFAULT_CHUNK_SERVICES = 250  # services per nat section of a big sync (see the module docstring)
DEFAULT_CHUNK_ABOVE = 500  # syncs of at most this many services are one transaction


class IptablesRuleSet:
    """kube-proxy's iptables mode for one node: renders ``ProxyState`` and applies it through a ``RuleBackend``.

    Full syncs read the kernel (the backend's cheap ``inventory`` when it has
    one, else ``iptables-save``) for stale chains and missing jump rules and
    write everything, re-rendering only the services whose inputs changed
    since they were last rendered. Partial syncs read nothing and write only
    what changed (``render_changes``). Any failure forgets what is installed,
    so the next sync is full whatever the caller asks.
    """

    mode = ProxyMode.IPTABLES

    def __init__(self, backend: RuleBackend, config: ProxyConfig,
                 chunk_services: int | None = DEFAULT_CHUNK_SERVICES,
                 edit_min_rules: int = EDIT_MIN_RULES, chunk_above: int = DEFAULT_CHUNK_ABOVE) -> None:
        self.backend = backend
        self.config = config
        self.chunk_services = chunk_services
        self.chunk_above = chunk_above
        self.edit_min_rules = edit_min_rules
        self._installed: ServiceTable | None = None  # what the kernel has, after the last successful sync
        self._rendered: dict[ServiceKey, ServiceRules] = {}  # the latest rendering per service (kept or not)

    def _render(self, key: ServiceKey, ports: Sequence[ServicePort],
                endpoints: Mapping[str, Sequence[Endpoint]]) -> ServiceRules:
        cached = self._rendered.get(key)
        if cached is not None and cached.inputs == service_inputs(ports, endpoints):
            return cached
        rules = render_service(ports, endpoints, self.config)
        self._rendered[key] = rules
        return rules

    def _read_kernel(self) -> str:
        if isinstance(self.backend, InventoryBackend):
            return self.backend.inventory(builtin_chains(self.config))
        return self.backend.save()

    def _full(self, state: ProxyState) -> tuple[ServiceTable, RenderResult]:
        """Render everything and apply it; a streaming backend applies chunks while later ones render."""
        grouped = group_ports(state.service_ports)
        for key in set(self._rendered) - set(grouped):
            del self._rendered[key]
        stream = self.backend.restore_stream() if isinstance(self.backend, StreamingBackend) else None
        chunk = self.chunk_services if len(grouped) > self.chunk_above else None
        composer = Composer(self.config, chunk_services=chunk,
                            sink=stream.write if stream is not None else None, expected=len(grouped))
        try:
            # The kernel is read (for stale chains and missing jumps, needed only by the last
            # section) while the service chains render and the first chunks apply.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iptables-inventory") as pool:
                reading = pool.submit(self._read_kernel)
                for key, ports in grouped.items():
                    composer.add(self._render(key, ports, state.endpoints))
                dump = reading.result()
            result = composer.finish(chains_in(dump), missing_jumps_by_table(dump, jump_rules(self.config)))
        except BaseException:
            if stream is not None:
                stream.abort()
            raise
        if stream is not None:
            stream.close()
        else:
            self.backend.restore(result.text)
        return ServiceTable(result.services), result

    def _partial(self, state: ProxyState, changed: frozenset[ServiceKey]) -> tuple[ServiceTable, RenderResult]:
        """Re-render the ``changed`` services only and apply what differs from what is installed."""
        assert self._installed is not None
        ports = state.ports_of(changed)
        updates: dict[ServiceKey, ServiceRules | None] = {}
        for key in changed:
            if key in ports:
                updates[key] = self._render(key, ports[key], state.endpoints)
            else:
                updates[key] = None
                self._rendered.pop(key, None)
        table = self._installed.replaced(updates)
        result = render_changes(self._installed, table, changed, self.config, self.edit_min_rules)
        if result.text:
            self.backend.restore(result.text)
        return table, result

    def sync(self, state: ProxyState, full: bool, changed: frozenset[ServiceKey]) -> SyncResult:
        full = full or self._installed is None
        try:
            table, result = self._full(state) if full else self._partial(state, changed)
        except Exception:
            self._installed = None
            raise
        self._installed = table
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
