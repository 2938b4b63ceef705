"""kube-proxy's nftables mode: a pure renderer (values in, ``nft -f`` transactions out) and its sync driver.

The layout is kube-proxy's (pkg/proxy/nftables, 1.31/1.32): everything lives in
one table, ``ip kube-proxy``, so no name needs a ``KUBE-`` prefix and no other
table is ever touched. Base chains hook into netfilter (``filter-prerouting``
... ``nat-postrouting``); the ``services`` chain dispatches every packet with
*one* lookup in the ``service-ips`` verdict map (``ip daddr . meta l4proto .
th dport``) and one in ``service-nodeports`` (``meta l4proto . th dport``), so
the cost of the first packet does not grow with the number of services, unlike
the linear KUBE-SERVICES chain of iptables mode. Per service port there are
``service-<HASH>-ns/name/proto/port`` (cluster traffic policy),
``local-<HASH>-...`` (Local policy), ``external-<HASH>-...`` (NodePort,
LoadBalancer and external IPs), ``firewall-<HASH>-...`` (loadBalancerSourceRanges)
and ``endpoint-<HASH>-ns/name/proto/port__ip/port`` chains; load balancing is ``numgen random
mod N vmap { 0 : goto endpoint-A , 1 : goto endpoint-B }`` and ClientIP affinity
uses per-endpoint dynamic ``affinity-...`` sets with timeouts. Services without
(usable) endpoints get an element in ``no-endpoint-services`` /
``no-endpoint-nodeports`` that rejects (``goto reject-chain``) or drops.

``build`` computes the desired per-service state (chains, affinity sets, map
and set elements, grouped by service) as a plain value; ``full_sync`` renders
the transaction(s) that (re)declare every fixed object, flush the maps and
rewrite every chain (kube-proxy's setupNFTables + a full syncProxyRules);
``partial_sync`` rewrites only the changed chains of the services that
changed and adds or deletes only the elements that differ. Stale per-service
chains are unlinked in the sync's transaction and deleted by a later one
(``delete_chains``): kernels before 6.2 notice a moment late that a chain is
no longer referenced by a deleted map element, so deleting it in the same
transaction could fail the whole sync; kube-proxy defers the delete the same way.
A stale chain that binds an anonymous set (a service chain's ``vmap``) is
flushed at once, releasing what it references; a leaf chain (an endpoint's
``dnat``) is left as it is, unreachable, and flushed with its delete: at
10,000 services each ``flush chain`` adds ~6 ms to an endpoint change.

Transaction shape follows what nft 1.0.6 and the kernel charge for (measured
in bench/bench_proxy.py, see ``netk8s.kernel.nft``): a partial sync writes
rules as ``add chain X { ... }`` blocks and new elements as ``add map M {
... elements = { ... } }`` blocks, so that nft does not fetch the whole table
first (``needs_full_cache``); a full sync binds each anonymous set while the
transaction is still short and, when big, goes in chunks of services. The
scripts' meaning is unchanged: ``expand_script`` (in ``nftables_trace``, whose
parser expands scripts with it) writes block forms as one command per line.

``NftablesRuleSet`` is the sync driver the proxier calls (the ``RuleSet``
contract in ``netk8s.proxy.backend``): it remembers the last applied state,
runs partial syncs from it, falls back to a full sync after a failed
transaction and batches stale-chain deletes. Its kernel side is injected
(``NftBackend``; ``netk8s.kernel.nft.NetnsNft`` for a node namespace), so
everything here runs without root.

Not supported, as in kube-proxy's nftables mode: NodePorts on 127.0.0.1
(localhost NodePorts need route_localnet, which this mode refuses to rely on);
NodePorts are accepted only on the node's primary IP (``nodeport-ips``),
kube-proxy's nftables default ``--nodeport-addresses primary``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping, Protocol, Sequence

from netk8s.proxy.backend import ProxyMode, ProxyState, ServiceKey, SyncResult, group_ports, service_order
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort, categorize_endpoints
from netk8s.proxy.nftables_trace import expand_script, trace_nftables
from netk8s.proxy.trace import Packet, TraceResult

log = logging.getLogger(__name__)

FAMILY = "ip"
TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# base chains
FILTER_PREROUTING = "filter-prerouting"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
FILTER_OUTPUT_POST_DNAT = "filter-output-post-dnat"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"

# regular top-level chains
SERVICES = "services"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"

# sets and maps
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"

# per-service object name prefixes
SERVICE_PREFIX = "service-"
LOCAL_PREFIX = "local-"
EXTERNAL_PREFIX = "external-"
FIREWALL_PREFIX = "firewall-"
ENDPOINT_PREFIX = "endpoint-"
AFFINITY_PREFIX = "affinity-"

NAME_LENGTH_MAX = 256  # nftables' object name limit (NFT_NAME_MAXLEN)
_CHAIN_PREFIX_LENGTH_MAX = 16
_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - _CHAIN_PREFIX_LENGTH_MAX

_SERVICE_KEY = "ipv4_addr . inet_proto . inet_service"
_PORT_KEY = "inet_proto . inet_service"


class ChainType(str, Enum):
    FILTER = "filter"
    NAT = "nat"


class Hook(str, Enum):
    PREROUTING = "prerouting"
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"
    POSTROUTING = "postrouting"


@dataclass(frozen=True)
class BaseChain:
    """A chain attached to a netfilter hook: ``<type>-<hook>`` in kube-proxy's naming."""

    name: str
    type: ChainType
    hook: Hook
    priority: int

    @property
    def spec(self) -> str:
        return f"{{ type {self.type.value} hook {self.hook.value} priority {self.priority} ; }}"


# Filter chains run at dstnat-10 so they see destinations before DNAT;
# filter-output-post-dnat (dstnat+10) sees them after.
BASE_CHAINS: tuple[BaseChain, ...] = (
    BaseChain(FILTER_PREROUTING, ChainType.FILTER, Hook.PREROUTING, -110),
    BaseChain(FILTER_INPUT, ChainType.FILTER, Hook.INPUT, -110),
    BaseChain(FILTER_FORWARD, ChainType.FILTER, Hook.FORWARD, -110),
    BaseChain(FILTER_OUTPUT, ChainType.FILTER, Hook.OUTPUT, -110),
    BaseChain(FILTER_OUTPUT_POST_DNAT, ChainType.FILTER, Hook.OUTPUT, -90),
    BaseChain(NAT_PREROUTING, ChainType.NAT, Hook.PREROUTING, -100),
    BaseChain(NAT_OUTPUT, ChainType.NAT, Hook.OUTPUT, -100),
    BaseChain(NAT_POSTROUTING, ChainType.NAT, Hook.POSTROUTING, 100),
)


@dataclass(frozen=True)
class JumpChain:
    """A top-level regular chain and the base chain rule that jumps to it."""

    target: str
    source: str
    match: str = ""

    @property
    def rule(self) -> str:
        return f"{self.match} jump {self.target}".strip()


# reject is only valid in input/forward/output hooks on older kernels, so the
# endpoints checks hang off those and not off filter-prerouting.
JUMP_CHAINS: tuple[JumpChain, ...] = (
    JumpChain(NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    JumpChain(SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    JumpChain(SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new"),
    JumpChain(SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new"),
    JumpChain(FIREWALL_CHECK, FILTER_PREROUTING, "ct state new"),
    JumpChain(FIREWALL_CHECK, FILTER_OUTPUT, "ct state new"),
    JumpChain(SERVICES, NAT_OUTPUT),
    JumpChain(SERVICES, NAT_PREROUTING),
    JumpChain(MASQUERADING, NAT_POSTROUTING),
    JumpChain(CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new"),
    JumpChain(CLUSTER_IPS_CHECK, FILTER_OUTPUT_POST_DNAT, "ct state new"),
)


class ContainerKind(str, Enum):
    SET = "set"
    MAP = "map"


@dataclass(frozen=True)
class Container:
    """A named set or map of the table."""

    kind: ContainerKind
    name: str
    type: str
    comment: str

    @property
    def spec(self) -> str:
        return f'{{ type {self.type} ; comment "{self.comment}" ; }}'


CLUSTER_IPS_SET = Container(ContainerKind.SET, CLUSTER_IPS, "ipv4_addr", "Active ClusterIPs")
NODEPORT_IPS_SET = Container(ContainerKind.SET, NODEPORT_IPS, "ipv4_addr", "IPs that accept NodePort traffic")
NO_ENDPOINT_SERVICES_MAP = Container(ContainerKind.MAP, NO_ENDPOINT_SERVICES, f"{_SERVICE_KEY} : verdict",
                                     "vmap to drop or reject packets to services with no endpoints")
NO_ENDPOINT_NODEPORTS_MAP = Container(ContainerKind.MAP, NO_ENDPOINT_NODEPORTS, f"{_PORT_KEY} : verdict",
                                      "vmap to drop or reject packets to service nodeports with no endpoints")
FIREWALL_IPS_MAP = Container(ContainerKind.MAP, FIREWALL_IPS, f"{_SERVICE_KEY} : verdict",
                             "destinations that are subject to LoadBalancerSourceRanges")
SERVICE_IPS_MAP = Container(ContainerKind.MAP, SERVICE_IPS, f"{_SERVICE_KEY} : verdict",
                            "ClusterIP, ExternalIP and LoadBalancer IP traffic")
SERVICE_NODEPORTS_MAP = Container(ContainerKind.MAP, SERVICE_NODEPORTS, f"{_PORT_KEY} : verdict", "NodePort traffic")

# The containers a sync fills per service, in the order kube-proxy resets them.
SYNCED_CONTAINERS: tuple[Container, ...] = (
    CLUSTER_IPS_SET, SERVICE_IPS_MAP, FIREWALL_IPS_MAP, NO_ENDPOINT_SERVICES_MAP, NO_ENDPOINT_NODEPORTS_MAP,
    SERVICE_NODEPORTS_MAP,
)


# -- names ---------------------------------------------------------------------------------------

def hash_and_truncate(name: str) -> str:
    """kube-proxy's name base: first 8 chars of base32(sha256(name)), "-", name (truncated with "...")."""
    # 8 base32 characters encode exactly the first 5 bytes of the digest.
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode("ascii")
    based = f"{digest}-{name}"
    if len(based) > _NAME_BASE_LENGTH_MAX:
        based = based[:_NAME_BASE_LENGTH_MAX - 3] + "..."
    return based


def service_name_base(sp: ServicePort) -> str:
    """``HASH-namespace/name/protocol/portname`` ("/" cannot appear in any of the parts)."""
    return hash_and_truncate(f"{sp.namespace}/{sp.name}/{sp.protocol.lowercase}/{sp.port_name}")


def endpoint_name_base(sp: ServicePort, ep: Endpoint) -> str:
    """``HASH-namespace/name/protocol/portname__ip/port``."""
    return hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{sp.protocol.lowercase}/{sp.port_name}__{ep.ip}/{ep.port}")


def service_chain(sp: ServicePort) -> str:
    """The cluster traffic policy chain (all usable endpoints)."""
    return SERVICE_PREFIX + service_name_base(sp)


def local_chain(sp: ServicePort) -> str:
    """The Local traffic policy chain (this node's endpoints only)."""
    return LOCAL_PREFIX + service_name_base(sp)


def external_chain(sp: ServicePort) -> str:
    """Where NodePort, LoadBalancer and external IP traffic goes first."""
    return EXTERNAL_PREFIX + service_name_base(sp)


def firewall_chain(sp: ServicePort) -> str:
    """The loadBalancerSourceRanges filter of a LoadBalancer service port."""
    return FIREWALL_PREFIX + service_name_base(sp)


def endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    """The chain that DNATs to one endpoint."""
    return ENDPOINT_PREFIX + endpoint_name_base(sp, ep)


def affinity_set(sp: ServicePort, ep: Endpoint) -> str:
    """The dynamic set of client IPs stuck to one endpoint (sessionAffinity: ClientIP)."""
    return AFFINITY_PREFIX + endpoint_name_base(sp, ep)


def is_service_chain(name: str) -> bool:
    """True for per-service chains: only they contain "/" (none of the fixed chain names do)."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    return name.startswith(AFFINITY_PREFIX)


def mark_text(config: ProxyConfig) -> str:
    """The masquerade mark the way kube-proxy writes it (``%#08x``: "0x004000")."""
    return f"{1 << config.masquerade_bit:#08x}"


# -- desired state ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Element:
    """One set or map element: ``key`` parts joined by " . ", the verdict for maps, an optional comment."""

    key: tuple[str, ...]
    value: str | None = None
    comment: str | None = None

    @property
    def key_text(self) -> str:
        return " . ".join(self.key)

    def text(self) -> str:
        """The element as it goes between braces in ``add element``."""
        out = self.key_text
        if self.comment is not None:
            out += f' comment "{self.comment}"'
        if self.value is not None:
            out += f" : {self.value}"
        return out


@dataclass(frozen=True)
class ServiceObjects:
    """Everything the ports of one service own: chains (in creation order), affinity sets, elements."""

    chains: Mapping[str, tuple[str, ...]]
    affinity_sets: Mapping[str, int]  # name -> timeout in seconds
    elements: tuple[tuple[str, Element], ...]  # (container name, element)
    ports: int = 1


ClaimKey = tuple[str, tuple[str, ...]]  # (container name, element key)


@dataclass(frozen=True)
class DesiredState:
    """The per-service part of the table, keyed by service (``namespace/name``, the unit of partial syncs).

    ``services`` iterate in ``service_order``.
    """

    services: Mapping[ServiceKey, ServiceObjects]
    nodeport_ips: tuple[IPv4Address, ...] = ()
    # (container, key) -> the services whose elements claim it, in service order; computed on first use
    # (O(services)), or carried over by the sync driver from the previous state (O(change)).
    claims_index: dict[ClaimKey, tuple[ServiceKey, ...]] | None = field(default=None, compare=False, repr=False)

    @property
    def service_ports(self) -> int:
        return sum(objs.ports for objs in self.services.values())

    def chains(self) -> dict[str, tuple[str, ...]]:
        return {name: rules for objs in self.services.values() for name, rules in objs.chains.items()}

    def affinity_sets(self) -> dict[str, int]:
        return {name: t for objs in self.services.values() for name, t in objs.affinity_sets.items()}

    def elements(self) -> dict[str, dict[tuple[str, ...], Element]]:
        """Elements per container; when two services claim one key (a shared external IP) the first wins."""
        out: dict[str, dict[tuple[str, ...], Element]] = {c.name: {} for c in SYNCED_CONTAINERS}
        for objs in self.services.values():
            for container, element in objs.elements:
                out[container].setdefault(element.key, element)
        return out

    def claims(self) -> dict[ClaimKey, tuple[ServiceKey, ...]]:
        """Which services claim each element key, in service order (the first one's element is installed)."""
        if self.claims_index is None:
            index: dict[ClaimKey, list[ServiceKey]] = {}
            for key, objs in self.services.items():
                for container, element in objs.elements:
                    holders = index.setdefault((container, element.key), [])
                    if not holders or holders[-1] != key:
                        holders.append(key)
            object.__setattr__(self, "claims_index", {k: tuple(v) for k, v in index.items()})
        assert self.claims_index is not None
        return self.claims_index

    def installed(self, container: str, key: tuple[str, ...]) -> Element | None:
        """The element installed for ``key`` in ``container`` (see ``elements``), found without a full scan."""
        holders = self.claims().get((container, key))
        if not holders:
            return None
        for name, element in self.services[holders[0]].elements:
            if name == container and element.key == key:
                return element
        return None


@dataclass(frozen=True)
class NftablesOptions:
    """kube-proxy settings that shape the nftables ruleset beyond ``ProxyConfig``."""

    # ServiceCIDRs: traffic to an unallocated cluster IP in them is dropped ("Drop traffic to
    # unallocated ClusterIPs"). Empty, as kube-proxy without ServiceCIDR objects: no such rule.
    service_cidrs: tuple[IPv4Network, ...] = ()
    # --nodeport-addresses as addresses: the IPs that accept NodePort traffic. None: the node's
    # primary IP, kube-proxy's nftables-mode default ("primary").
    nodeport_addresses: tuple[IPv4Address, ...] | None = None


def build(service_ports: Iterable[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]], config: ProxyConfig,
          options: NftablesOptions = NftablesOptions()) -> DesiredState:
    """The desired per-service chains, affinity sets and elements (kube-proxy's syncProxyRules loop)."""
    services = {key: service_objects(ports, endpoints, config) for key, ports in group_ports(service_ports).items()}
    return DesiredState(services, nodeport_ips(config, options))


def nodeport_ips(config: ProxyConfig, options: NftablesOptions) -> tuple[IPv4Address, ...]:
    """The elements of ``nodeport-ips``: loopback addresses are refused, as kube-proxy does."""
    addresses = options.nodeport_addresses if options.nodeport_addresses is not None else (config.node_ip,)
    kept = set()
    for ip in addresses:
        if ip.is_loopback:
            log.warning("nodeport address %s ignored: localhost NodePorts are not supported in nftables mode", ip)
            continue
        kept.add(ip)
    return tuple(sorted(kept))


def service_objects(ports: Sequence[ServicePort], endpoints: Mapping[str, Sequence[Endpoint]],
                    config: ProxyConfig) -> ServiceObjects:
    """The objects of all ports of one service; a port name + protocol seen twice is rendered once."""
    chains: dict[str, tuple[str, ...]] = {}
    affinity: dict[str, int] = {}
    elements: list[tuple[str, Element]] = []
    seen: set[tuple[str, str]] = set()
    for sp in ports:
        ident = (sp.service_port_name, sp.protocol.lowercase)
        if ident in seen:
            continue
        seen.add(ident)
        _port_objects(sp, endpoints.get(sp.service_port_name, ()), config, chains, affinity, elements)
    return ServiceObjects(chains, affinity, tuple(elements), len(seen))


def _port_objects(sp: ServicePort, all_endpoints: Sequence[Endpoint], config: ProxyConfig,
                  out_chains: dict[str, tuple[str, ...]], out_affinity: dict[str, int],
                  elements: list[tuple[str, Element]]) -> None:
    proto = sp.protocol.lowercase
    spn = sp.service_port_name
    port = str(sp.port)
    cat = categorize_endpoints(sp, all_endpoints)
    chains: dict[str, list[str]] = {}
    ep_chains = {ep: endpoint_chain(sp, ep) for ep in cat.reachable}
    base = service_name_base(sp)
    cluster_chain, policy_local_chain = SERVICE_PREFIX + base, LOCAL_PREFIX + base
    ext_chain, fw_chain = EXTERNAL_PREFIX + base, FIREWALL_PREFIX + base

    for ep in cat.reachable:
        chains[ep_chains[ep]] = []
    uses_cluster_chain = bool(cat.cluster) and sp.uses_cluster_endpoints
    if uses_cluster_chain:
        chains[cluster_chain] = []
    uses_local_chain = bool(cat.local) and sp.uses_local_endpoints
    if uses_local_chain:
        chains[policy_local_chain] = []

    internal_chain, has_internal = cluster_chain, cat.has_any
    if sp.internal_policy_local:
        internal_chain, has_internal = policy_local_chain, cat.has_any and bool(cat.local)
    external_policy_chain, has_external = cluster_chain, cat.has_any
    if sp.external_local:
        external_policy_chain, has_external = policy_local_chain, cat.has_any and bool(cat.local)
    # The external chain exists whenever there are endpoints at all: its
    # short-circuit rules for pod and node traffic work without local endpoints.
    uses_ext_chain = cat.has_any and sp.has_external
    if uses_ext_chain:
        chains[ext_chain] = []

    if not cat.has_any:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = external_verdict = "drop"  # no local endpoints under a Local policy

    elements.append((CLUSTER_IPS, Element((str(sp.cluster_ip),))))
    key = (str(sp.cluster_ip), proto, port)
    if has_internal:
        elements.append((SERVICE_IPS, Element(key, f"goto {internal_chain}")))
    else:
        elements.append((NO_ENDPOINT_SERVICES, Element(key, internal_verdict, spn)))

    for ip in sp.external_ips:
        key = (str(ip), proto, port)
        if cat.has_any:
            elements.append((SERVICE_IPS, Element(key, f"goto {ext_chain}")))
        if not has_external:
            # No endpoints (reject) or none for external traffic (drop what the
            # external chain did not short-circuit).
            elements.append((NO_ENDPOINT_SERVICES, Element(key, external_verdict, spn)))

    uses_fw_chain = bool(sp.load_balancer_ips) and bool(sp.load_balancer_source_ranges)
    if uses_fw_chain:
        chains[fw_chain] = []
    for ip in sp.load_balancer_ips:
        key = (str(ip), proto, port)
        if cat.has_any:
            elements.append((SERVICE_IPS, Element(key, f"goto {ext_chain}")))
        if uses_fw_chain:
            elements.append((FIREWALL_IPS, Element(key, f"goto {fw_chain}", spn)))
    if not has_external:
        for ip in sp.load_balancer_ips:
            elements.append((NO_ENDPOINT_SERVICES, Element((str(ip), proto, port), external_verdict, spn)))

    if sp.node_port:
        key = (proto, str(sp.node_port))
        if cat.has_any:
            # NodePorts are not subject to loadBalancerSourceRanges (kube-proxy keeps it that way).
            elements.append((SERVICE_NODEPORTS, Element(key, f"goto {ext_chain}")))
        if not has_external:
            elements.append((NO_ENDPOINT_NODEPORTS, Element(key, external_verdict, spn)))

    masq = f"jump {MARK_FOR_MASQUERADE}"
    if has_internal:
        match = f"ip daddr {sp.cluster_ip} {proto} dport {sp.port}"
        if config.masquerade_all:
            chains[internal_chain].append(f"{match} {masq}")
        elif config.cluster_cidr is not None:
            # Off-cluster traffic to a cluster IP (routed to the service range via
            # this node) may be forwarded to another node: masquerade it.
            chains[internal_chain].append(f"{match} ip saddr != {config.cluster_cidr} {masq}")

    if uses_ext_chain:
        rules = chains[ext_chain]
        if not sp.external_local:
            # Endpoints may be on other nodes: masquerade so that replies come back through here.
            rules.append(masq)
        else:
            if config.cluster_cidr is not None:
                # Pod -> external destination acts as if it went out to the load balancer and back.
                rules.append(f'ip saddr {config.cluster_cidr} goto {cluster_chain} comment "short-circuit pod traffic"')
            # The node's own traffic has a local source (maybe the LB IP itself): masquerade it.
            rules.append(f'fib saddr type local {masq} comment "masquerade local traffic"')
            rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
        if has_external:
            rules.append(f"goto {external_policy_chain}")

    if uses_fw_chain:
        sources = [str(cidr) for cidr in sp.load_balancer_source_ranges]
        if any(config.node_ip in cidr for cidr in sp.load_balancer_source_ranges):
            # A VIP-style LB address is often local to the node: traffic from the
            # node to it loops back with the VIP as source, so allow that too.
            sources += [str(ip) for ip in sp.load_balancer_ips]
        chains[fw_chain].append(f"ip saddr != {{ {' , '.join(sources)} }} drop")

    if sp.session_affinity_seconds is not None:
        for ep in cat.reachable:
            out_affinity[affinity_set(sp, ep)] = sp.session_affinity_seconds

    if uses_cluster_chain:
        chains[cluster_chain] += _endpoint_dispatch(sp, cat.cluster, ep_chains)
    if uses_local_chain:
        chains[policy_local_chain] += _endpoint_dispatch(sp, cat.local, ep_chains)

    for ep in cat.reachable:
        rules = chains[ep_chains[ep]]
        # Hairpin: a pod reaching itself through the service must be SNATed.
        rules.append(f"ip saddr {ep.ip} {masq}")
        if sp.session_affinity_seconds is not None:
            rules.append(f"update @{affinity_set(sp, ep)} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {ep.address}")

    for name, rules in chains.items():
        out_chains[name] = tuple(rules)


def _endpoint_dispatch(sp: ServicePort, endpoints: Sequence[Endpoint], names: Mapping[Endpoint, str]) -> list[str]:
    """Affinity lookups first, then the random pick: ``numgen random mod N vmap { 0 : goto A , ... }``."""
    rules = []
    if sp.session_affinity_seconds is not None:
        for ep in endpoints:
            rules.append(f"ip saddr @{affinity_set(sp, ep)} goto {names[ep]}")
    branches = " , ".join(f"{i} : goto {names[ep]}" for i, ep in enumerate(endpoints))
    rules.append(f"numgen random mod {len(endpoints)} vmap {{ {branches} }}")
    return rules


# -- transactions ----------------------------------------------------------------------------------

_T = f"{FAMILY} {TABLE}"


def _add_chain(name: str) -> list[str]:
    return [f"add chain {_T} {name}", f"flush chain {_T} {name}"]


def _rule(chain: str, rule: str) -> str:
    return f"add rule {_T} {chain} {rule}"


def _add_elements(container: str, elements: Sequence[Element]) -> str:
    return f"add element {_T} {container} {{ {' , '.join(e.text() for e in elements)} }}"


def _delete_element(container: str, element: Element) -> str:
    return f"delete element {_T} {container} {{ {element.key_text} }}"


def _affinity_set_line(name: str, timeout: int) -> str:
    # "dynamic" too: the kernel gives it to sets an "update" statement writes
    # to, and re-adding the set without it would look like a flags change.
    return f"add set {_T} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"


def _chain_block(name: str, rules: Sequence[str]) -> str:
    """``add chain T NAME { rule ; rule ; }``: nft 1.0.6 evaluates this with its table cache only."""
    return f"add chain {_T} {name} {{ {' ; '.join(rules)} ; }}"


def _elements_block(container: Container, elements: Sequence[Element]) -> str:
    """``add set|map T NAME { type ... ; comment ... ; elements = { ... } ; }`` (table cache only, see below)."""
    return (f'add {container.kind.value} {_T} {container.name} {{ type {container.type} ; '
            f'comment "{container.comment}" ; elements = {{ {" , ".join(e.text() for e in elements)} }} ; }}')


# nft 1.0.6 fetches every chain and set of the table (O(table): ~150-300 ms at 10,000
# services) before a script with any of these; "add chain/set/map" (also in block form
# with rules or elements) and "flush chain" need only the table list.
_FULL_CACHE_COMMANDS = ("delete ", "add rule ", "insert rule ", "replace rule ", "add element ", "flush set ",
                        "flush map ")


def needs_full_cache(script: str) -> bool:
    """True if nft 1.0.6 must fetch the whole table before running ``script`` (see ``_FULL_CACHE_COMMANDS``)."""
    return any(line.startswith(_FULL_CACHE_COMMANDS) for line in script.splitlines())


@dataclass(frozen=True)
class Transaction:
    """One sync's ``nft -f`` payload and what it does.

    ``chunks`` are applied in order, one ``nft -f`` transaction each (one
    chunk unless a big full sync was split, see ``full_sync``); ``text`` is
    all of them. ``lines`` are the commands with block forms expanded into
    their one-line equivalents (``expand_script``).
    """

    text: str
    full: bool
    written_chains: tuple[str, ...]  # per-service chains (re)written
    stale_chains: tuple[str, ...]  # per-service chains unlinked now, to delete in a later transaction
    deleted_sets: tuple[str, ...]  # stale affinity sets deleted
    written_sets: tuple[str, ...] = ()  # affinity sets declared
    added_elements: int = 0
    deleted_elements: int = 0
    deleted_chains: tuple[str, ...] = ()  # chains flushed by an earlier transaction, deleted in this one
    chunks: tuple[str, ...] = ()

    @property
    def lines(self) -> list[str]:
        return expand_script(self.text).splitlines()

    @property
    def scripts(self) -> tuple[str, ...]:
        """The ``nft -f`` transactions to run, in order."""
        return self.chunks if self.chunks else ((self.text,) if self.text else ())


def with_chain_deletes(tx: Transaction, chains: Iterable[str]) -> Transaction:
    """``tx`` also deleting ``chains`` (unreferenced since an earlier transaction), in its last chunk."""
    todo = tuple(sorted(chains))
    if not todo:
        return tx
    extra = delete_chains(todo)
    scripts = list(tx.scripts) or [""]
    scripts[-1] += extra
    return replace(tx, text=tx.text + extra, deleted_chains=tx.deleted_chains + todo, chunks=tuple(scripts))


def setup_lines(config: ProxyConfig, options: NftablesOptions, nodeport_addresses: Sequence[IPv4Address],
                recreate_base_chains: bool = False) -> list[str]:
    """Declare the table's fixed objects, flush them and refill their fixed rules (kube-proxy's setupNFTables)."""
    mark = mark_text(config)
    out = [f'add table {_T} {{ comment "{TABLE_COMMENT}" ; }}']
    if recreate_base_chains:
        # Once per process: delete the base chains so that changed properties
        # (a new priority) apply; "add" first so that the delete cannot fail.
        for bc in BASE_CHAINS:
            out += [f"add chain {_T} {bc.name}", f"delete chain {_T} {bc.name}"]
    for bc in BASE_CHAINS:
        out += [f"add chain {_T} {bc.name} {bc.spec}", f"flush chain {_T} {bc.name}"]
    created: set[str] = set()

    def ensure(chain: str, comment: str | None = None) -> None:
        if chain not in created:
            created.add(chain)
            spec = f' {{ comment "{comment}" ; }}' if comment else ""
            out.extend([f"add chain {_T} {chain}{spec}", f"flush chain {_T} {chain}"])

    for jc in JUMP_CHAINS:
        ensure(jc.target)
        out.append(_rule(jc.source, jc.rule))
    for chain in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_FOR_MASQUERADE):
        ensure(chain)
    out.append(_rule(MARK_FOR_MASQUERADE, f"mark set mark or {mark}"))
    out.append(_rule(MASQUERADING, f"mark and {mark} == 0 return"))
    # Clear the bit so a packet that re-traverses the stack is not masqueraded twice.
    out.append(_rule(MASQUERADING, f"mark set mark xor {mark}"))
    out.append(_rule(MASQUERADING, "masquerade fully-random"))

    out.append(f"add set {_T} {CLUSTER_IPS} {CLUSTER_IPS_SET.spec}")
    out.append(_rule(CLUSTER_IPS_CHECK,
                     f'ip daddr @{CLUSTER_IPS} reject comment "Reject traffic to invalid ports of ClusterIPs"'))
    if options.service_cidrs:
        cidrs = " , ".join(str(c) for c in options.service_cidrs)
        out.append(_rule(CLUSTER_IPS_CHECK,
                         f'ip daddr {{ {cidrs} }} drop comment "Drop traffic to unallocated ClusterIPs"'))

    out.append(f"add set {_T} {NODEPORT_IPS} {NODEPORT_IPS_SET.spec}")
    out.append(f"flush set {_T} {NODEPORT_IPS}")
    out += [f"add element {_T} {NODEPORT_IPS} {{ {ip} }}" for ip in nodeport_addresses]

    out.append(f"add map {_T} {NO_ENDPOINT_SERVICES} {NO_ENDPOINT_SERVICES_MAP.spec}")
    out.append(f"add map {_T} {NO_ENDPOINT_NODEPORTS} {NO_ENDPOINT_NODEPORTS_MAP.spec}")
    ensure(REJECT_CHAIN, "helper for @no-endpoint-services / @no-endpoint-nodeports")
    out.append(_rule(REJECT_CHAIN, "reject"))
    out.append(_rule(SERVICE_ENDPOINTS_CHECK, f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"))
    out.append(_rule(NODEPORT_ENDPOINTS_CHECK,
                     f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"))

    out.append(f"add map {_T} {FIREWALL_IPS} {FIREWALL_IPS_MAP.spec}")
    ensure(FIREWALL_CHECK)
    out.append(_rule(FIREWALL_CHECK, f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"))

    out.append(f"add map {_T} {SERVICE_IPS} {SERVICE_IPS_MAP.spec}")
    out.append(f"add map {_T} {SERVICE_NODEPORTS} {SERVICE_NODEPORTS_MAP.spec}")
    out.append(_rule(SERVICES, f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"))
    out.append(_rule(SERVICES, f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"))

    for container in SYNCED_CONTAINERS:
        out.append(f"flush {container.kind.value} {_T} {container.name}")
    return out


def _service_lines(services: Iterable[ServiceObjects]) -> list[str]:
    """Declare (add + flush) and fill the services' chains and sets, chains before any rule jumps to them.

    The rules with an anonymous set (``numgen ... vmap { ... }``, ``ip saddr
    != { ... }``) go in right after their service's chains are declared; the
    other chains' rules after every service. The kernel walks the whole
    transaction once per anonymous set it binds (and once more to look it
    up by id), so binding them while the transaction is short is cheaper; the
    ruleset is the same.
    """
    early: list[str] = []
    late: list[str] = []
    for objs in services:
        early += [_affinity_set_line(name, timeout) for name, timeout in objs.affinity_sets.items()]
        for name in objs.chains:
            early += _add_chain(name)
        for name, rules in objs.chains.items():
            (early if _binds_anonymous_set(rules) else late).extend(_rule(name, r) for r in rules)
    return early + late


def _element_lines(desired: DesiredState, batch: int = 1000) -> tuple[list[str], int]:
    """``add element`` commands for every installed element, grouped per container (fewer kernel messages)."""
    lines: list[str] = []
    count = 0
    for name, elements in desired.elements().items():
        items = list(elements.values())
        count += len(items)
        lines += [_add_elements(name, items[i:i + batch]) for i in range(0, len(items), batch)]
    return lines, count


def _mark_for_masquerade_lines(config: ProxyConfig) -> list[str]:
    return [*_add_chain(MARK_FOR_MASQUERADE), _rule(MARK_FOR_MASQUERADE, f"mark set mark or {mark_text(config)}")]


DEFAULT_CHUNK_SERVICES = 1000  # services per transaction of a big full sync (see full_sync)


def full_sync(desired: DesiredState, config: ProxyConfig, options: NftablesOptions = NftablesOptions(),
              existing_chains: Iterable[str] = (), existing_sets: Iterable[str] = (),
              recreate_base_chains: bool = False, chunk_services: int | None = None) -> Transaction:
    """The transaction(s) that make the whole table match ``desired``.

    ``existing_chains`` / ``existing_sets`` (the names in the table now) let
    stale per-service chains be flushed and stale affinity sets deleted.

    With more than ``chunk_services`` services the service chains go first,
    ``chunk_services`` services per transaction (the first also declares
    ``mark-for-masquerade``, which they jump to), and one last transaction
    re-declares the fixed objects, refills the maps and flushes stale
    chains. Until that last commit nothing new is reachable and every
    rewritten service's chains change in one commit, so each commit leaves a
    consistent table. Why: the kernel's cost per anonymous set (a name
    search over every set of the table, walks over the whole transaction)
    makes one transaction of 10,000 services take ~35 s where chunks of
    1,000 take ~12 s (see bench/bench_proxy.py).
    """
    services = list(desired.services.values())
    elements, added = _element_lines(desired)
    chains, sets = desired.chains(), desired.affinity_sets()
    stale = sorted(c for c in set(existing_chains) if is_service_chain(c) and c not in chains)
    stale_sets = sorted(s for s in set(existing_sets) if is_affinity_set(s) and s not in sets)
    setup = setup_lines(config, options, desired.nodeport_ips, recreate_base_chains)
    cleanup = [f"flush chain {_T} {c}" for c in stale] + [f"delete set {_T} {s}" for s in stale_sets]
    chunks: list[str] = []
    if chunk_services is not None and 0 < chunk_services < len(services):
        for start in range(0, len(services), chunk_services):
            lines = [f'add table {_T} {{ comment "{TABLE_COMMENT}" ; }}']
            if start == 0:
                lines += _mark_for_masquerade_lines(config)
            lines += _service_lines(services[start:start + chunk_services])
            chunks.append("\n".join(lines) + "\n")
        chunks.append("\n".join(setup + elements + cleanup) + "\n")
    else:
        chunks.append("\n".join(setup + _service_lines(services) + elements + cleanup) + "\n")
    return Transaction("".join(chunks), True, tuple(chains), tuple(stale), tuple(stale_sets), tuple(sets), added, 0,
                       chunks=tuple(chunks))


def partial_sync(previous: DesiredState, desired: DesiredState, changed: Iterable[ServiceKey]) -> Transaction:
    """Only what differs from ``previous`` (the state last applied successfully) for the ``changed`` services.

    Cost and size follow the change: only the ``changed`` services are
    compared (the others must be identical in both states, as the sync
    driver guarantees); of their objects, only chains whose rules changed
    are rewritten, and map and set elements are added and deleted one by one.
    The script avoids what makes nft 1.0.6 fetch the whole table first
    (``needs_full_cache``): rules go in ``add chain X { ... }`` blocks and new
    elements in ``add map M { ... elements = { ... } }`` blocks; only
    deleting an element or an affinity set still needs it.
    """
    touched = sorted(set(changed), key=service_order)
    rewrite: dict[str, tuple[str, ...]] = {}
    sets: dict[str, int] = {}
    stale: list[str] = []
    previous_rules: dict[str, tuple[str, ...]] = {}  # the stale chains' rules
    stale_sets: list[str] = []
    claimed: dict[ClaimKey, None] = {}  # element keys of the touched services, in order
    for key in touched:
        old, new = previous.services.get(key), desired.services.get(key)
        old_chains = old.chains if old is not None else {}
        new_chains = new.chains if new is not None else {}
        for name, rules in new_chains.items():
            if old_chains.get(name) != rules:
                rewrite[name] = rules
        stale += [name for name in old_chains if name not in new_chains]
        previous_rules.update((name, rules) for name, rules in old_chains.items() if name not in new_chains)
        old_sets = old.affinity_sets if old is not None else {}
        new_sets = new.affinity_sets if new is not None else {}
        sets.update((name, t) for name, t in new_sets.items() if old_sets.get(name) != t)
        stale_sets += [name for name in old_sets if name not in new_sets]
        for objs in (old, new):
            for container, element in (objs.elements if objs is not None else ()):
                claimed[(container, element.key)] = None
    deletes: list[str] = []
    adds: dict[str, list[Element]] = {}
    for container in SYNCED_CONTAINERS:
        for name, key in claimed:
            if name != container.name:
                continue
            before, after = previous.installed(name, key), desired.installed(name, key)
            if before == after:
                continue
            if before is not None:
                # A changed value cannot be added over the old one ("File exists"): delete, then add.
                deletes.append(_delete_element(name, before))
            if after is not None:
                adds.setdefault(name, []).append(after)
    lines = [_affinity_set_line(name, timeout) for name, timeout in sets.items()]
    for name in rewrite:
        lines += _add_chain(name)
    lines += [_chain_block(name, rules) for name, rules in rewrite.items() if rules]
    if previous.nodeport_ips != desired.nodeport_ips:
        lines.append(f"flush set {_T} {NODEPORT_IPS}")
        if desired.nodeport_ips:
            lines.append(_elements_block(NODEPORT_IPS_SET, [Element((str(ip),)) for ip in desired.nodeport_ips]))
    lines += deletes
    lines += [_elements_block(c, adds[c.name]) for c in SYNCED_CONTAINERS if c.name in adds]
    lines += [f"flush chain {_T} {c}" for c in sorted(stale) if _binds_anonymous_set(previous_rules[c])]
    lines += [f"delete set {_T} {s}" for s in sorted(stale_sets)]
    text = "\n".join(lines) + "\n" if lines else ""
    return Transaction(text, False, tuple(rewrite), tuple(sorted(stale)), tuple(sorted(stale_sets)), tuple(sets),
                       sum(len(v) for v in adds.values()), len(deletes), chunks=(text,) if text else ())


def _binds_anonymous_set(rules: Sequence[str]) -> bool:
    """True if a rule of the chain has an anonymous set or map (``{ ... }``): flushing it must not wait."""
    return any("{" in rule for rule in rules)


def delete_chains(chains: Iterable[str]) -> str:
    """The follow-up transaction that deletes stale chains (unreferenced; flushed here first if not yet).

    All flushes come before the deletes: a stale chain may still jump to
    another one (both unreachable), and a plain jump's reference is dropped
    at once when its rule goes, even on old kernels.
    """
    todo = list(chains)
    return "".join([f"flush chain {_T} {c}\n" for c in todo] + [f"delete chain {_T} {c}\n" for c in todo])


def delete_table() -> str:
    """Remove everything the nftables mode made (kube-proxy's CleanupLeftovers); never fails on a missing table."""
    return f"add table {_T}\ndelete table {_T}\n"


# -- the sync driver -------------------------------------------------------------------------------

class NftBackend(Protocol):
    """The kernel side of the nftables mode for one namespace (``netk8s.kernel.nft.NetnsNft``; fakes in tests)."""

    def apply(self, script: str) -> None:
        """Run ``script`` as one ``nft -f`` transaction (all or nothing); raise ``KernelError`` on failure."""
        ...

    def objects(self) -> tuple[set[str], set[str]]:
        """(chains, sets) now in table ``ip kube-proxy``; both empty when the table does not exist."""
        ...

    def list_text(self) -> str:
        """``nft list table ip kube-proxy`` ("" when the table does not exist)."""
        ...

    def list_json(self) -> str:
        """``nft -j list table ip kube-proxy`` ("" when the table does not exist)."""
        ...


STALE_BATCH_FRACTION = 0.01  # delete flushed stale chains once they are this share of the table's chains


class NftablesRuleSet:
    """kube-proxy's nftables mode for one node: the ``RuleSet`` the proxier drives (see ``backend``).

    A full sync re-declares the table's fixed objects, flushes every map and
    rewrites every chain (in chunks when big, see ``full_sync``); a partial
    sync rewrites the changed chains of the changed services and
    adds/deletes only the map elements that differ (``partial_sync``).

    Stale per-service chains are unlinked in the sync's transaction (see
    the module docstring) and deleted by a later one (kube-proxy defers the
    delete the same way: kernels before 6.2 notice a moment late that a
    flushed chain is no longer referenced). Deleting costs a full cache fetch in nft 1.0.6
    (O(table)), so flushed chains are batched: they are deleted right after
    a full sync, along with any transaction that needs that fetch anyway,
    or in their own transaction once ``STALE_BATCH_FRACTION`` of the table's
    chains (at least one) are waiting. Small tables thus delete at once;
    at 10,000 services an endpoint change stays one cheap transaction. A
    waiting chain is unreachable and unreferenced; one that is wanted again is
    simply rewritten. When a delete fails it is retried later.

    After a failed transaction (nft applies all of it or none) the
    remembered state is dropped: the next sync is a full one that reads the
    kernel, whatever the proxier asks for.

    Construct with ``NftablesRuleSet(NetnsNft(netns_name), config)``, the same
    shape as the iptables mode's ``IptablesRuleSet(backend, config)``.
    """

    mode = ProxyMode.NFTABLES

    def __init__(self, backend: NftBackend, config: ProxyConfig, options: NftablesOptions = NftablesOptions(),
                 chunk_services: int | None = DEFAULT_CHUNK_SERVICES) -> None:
        self.backend = backend
        self.config = config
        self.options = options
        self.chunk_services = chunk_services
        self.applied: DesiredState | None = None  # what the last successful transaction installed
        self.pending_stale: set[str] = set()  # unreachable, unreferenced chains waiting to be deleted
        self.full_syncs = 0
        self.partial_syncs = 0
        self.failed_syncs = 0
        self.last_transaction: Transaction | None = None
        self._base_chains_recreated = False
        self._chain_count = 0  # per-service chains in the table (kept up to date without a scan)

    def _stale_batch(self) -> int:
        return max(1, int((self._chain_count + len(self.pending_stale)) * STALE_BATCH_FRACTION))

    def sync(self, state: ProxyState, full: bool, changed: frozenset[ServiceKey]) -> SyncResult:
        previous = self.applied
        full = full or previous is None
        if full:
            desired = build(state.service_ports, state.endpoints, self.config, self.options)
            desired.claims()  # O(services) once here, so that partial syncs stay O(change)
            chains, sets = self.backend.objects()
            tx = full_sync(desired, self.config, self.options, chains, sets,
                           recreate_base_chains=not self._base_chains_recreated,
                           chunk_services=self.chunk_services)
            pending: set[str] = set()  # the full sync flushes whatever is stale now
        else:
            assert previous is not None
            desired = self._rebuild(previous, state, changed)
            tx = partial_sync(previous, desired, changed)
            pending = self.pending_stale - set(tx.written_chains)  # wanted again: rewritten, not deleted
            if pending and needs_full_cache(tx.text):
                tx = with_chain_deletes(tx, pending)  # the cache fetch is paid anyway
                pending = set()
        try:
            for script in tx.scripts:
                self.backend.apply(script)
        except Exception:
            self.failed_syncs += 1
            self.applied = None  # forces a full sync (which lists the kernel) even if asked for a partial one
            raise
        self.applied = desired
        self.last_transaction = tx
        if full:
            self.full_syncs += 1
            self._base_chains_recreated = True
            self._chain_count = len(tx.written_chains)
        else:
            self.partial_syncs += 1
            self._chain_count += self._chain_delta(previous, desired, changed)
        self.pending_stale = pending | set(tx.stale_chains)
        deleted = len(tx.deleted_chains)
        if self.pending_stale and (full or len(self.pending_stale) >= self._stale_batch()):
            deleted += self._delete_pending()
        log.debug("nftables %s sync: %d scripts, %d bytes, %d chains written, %d stale, %d deleted",
                  "full" if full else "partial", len(tx.scripts), len(tx.text), len(tx.written_chains),
                  len(tx.stale_chains), deleted)
        return SyncResult(
            mode=self.mode, full=full, payload=tx.text, services=len(state.service_ports),
            changed=frozenset(desired.services) if full else frozenset(changed),
            objects_written=len(tx.written_chains) + len(tx.written_sets),
            objects_deleted=deleted + len(tx.deleted_sets),
        )

    @staticmethod
    def _chain_delta(previous: DesiredState, desired: DesiredState, changed: frozenset[ServiceKey]) -> int:
        delta = 0
        for key in changed:
            old, new = previous.services.get(key), desired.services.get(key)
            delta += (len(new.chains) if new is not None else 0) - (len(old.chains) if old is not None else 0)
        return delta

    def _rebuild(self, previous: DesiredState, state: ProxyState, changed: frozenset[ServiceKey]) -> DesiredState:
        """``previous`` with the objects of the ``changed`` services recomputed (the others are reused as is).

        O(change) apart from copying two dicts: the claims index is carried
        over and updated, and the service order is kept unless services come
        or go.
        """
        ports = state.ports_of(changed)
        updates = {key: service_objects(sorted(ports[key], key=lambda p: (p.port_name, p.protocol.value)),
                                        state.endpoints, self.config) if key in ports else None
                   for key in changed}
        services = dict(previous.services)
        added = False
        for key, objs in updates.items():
            if objs is None:
                services.pop(key, None)
            else:
                added = added or key not in services
                services[key] = objs
        if added:
            services = {key: services[key] for key in sorted(services, key=service_order)}
        claims = dict(previous.claims())
        for key, objs in updates.items():
            old = previous.services.get(key)
            for container, element in (old.elements if old is not None else ()):
                holders = claims.get((container, element.key), ())
                if key in holders:
                    rest = tuple(k for k in holders if k != key)
                    if rest:
                        claims[(container, element.key)] = rest
                    else:
                        del claims[(container, element.key)]
            for container, element in (objs.elements if objs is not None else ()):
                holders = claims.get((container, element.key), ())
                if key not in holders:
                    claims[(container, element.key)] = tuple(sorted((*holders, key), key=service_order))
        # config and options are fixed for the ruleset: the nodeport addresses are the previous ones.
        return DesiredState(services, previous.nodeport_ips, claims_index=claims)

    def _delete_pending(self) -> int:
        """Delete the waiting stale chains in their own transaction; the number deleted (0 if it failed)."""
        todo = sorted(self.pending_stale)
        try:
            self.backend.apply(delete_chains(todo))
        except Exception as exc:  # the chains are unreachable and unused: retrying later is harmless
            log.debug("deleting %d stale nftables chains failed (%s); retrying later", len(todo), exc)
            return 0
        self.pending_stale = set()
        return len(todo)

    def dump(self) -> str:
        return self.backend.list_text()

    def trace(self, packet: Packet, local_addresses: set[IPv4Address]) -> TraceResult:
        return trace_nftables(self.backend.list_json(), packet, local_addresses)
