"""kube-proxy nftables mode: names, rendering, golden ruleset, partial syncs and the sync driver (pure, no root)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from netk8s.errors import KernelError
from netk8s.kernel.nft import check_script
from netk8s.proxy import nftables as nft
from netk8s.proxy.backend import ProxyMode, ProxyState, changed_services
from netk8s.proxy.model import Endpoint, Protocol, ProxyConfig, ServicePort, ServiceType
from netk8s.proxy.nftables_trace import NftRuleset, VerdictStmt, VMap, parse_ruleset

GOLDEN = Path(__file__).parent / "golden" / "proxy_nftables_small.nft"
NODE_IP = IPv4Address("172.18.0.2")
CONFIG = ProxyConfig("node-1", NODE_IP, IPv4Network("10.244.0.0/16"))
OPTIONS = nft.NftablesOptions(service_cidrs=(IPv4Network("10.96.0.0/16"),))
T = "ip kube-proxy"


def port(name: str, cluster_ip: str, number: int = 80, proto: Protocol = Protocol.TCP, port_name: str = "http",
         namespace: str = "default", **kw: object) -> ServicePort:
    if "node_port" in kw and "service_type" not in kw:
        kw["service_type"] = ServiceType.NODE_PORT
    return ServicePort(namespace, name, port_name, proto, IPv4Address(cluster_ip), number, **kw)  # type: ignore[arg-type]


def ep(ip: str, number: int = 8080, local: bool = True, ready: bool = True, serving: bool | None = None,
       terminating: bool = False) -> Endpoint:
    return Endpoint(IPv4Address(ip), number, ready=ready, serving=ready if serving is None else serving,
                    terminating=terminating, node_name="node-1" if local else "node-2", is_local=local)


LOCAL, REMOTE = ep("10.244.1.5"), ep("10.244.2.7", local=False)
WEB = port("web", "10.96.0.11")
DNS_UDP = port("kube-dns", "10.96.0.10", 53, Protocol.UDP, "dns", "kube-system")
DNS_TCP = port("kube-dns", "10.96.0.10", 53, Protocol.TCP, "dns-tcp", "kube-system")
NP = port("np", "10.96.0.13", node_port=30080)
NP_LOCAL = port("np-local", "10.96.0.14", node_port=30081, external_policy_local=True)
NP_REMOTE = port("np-remote", "10.96.0.15", node_port=30082, external_policy_local=True)
LB = port("lb", "10.96.0.16", node_port=30083, service_type=ServiceType.LOAD_BALANCER,
          load_balancer_ips=(IPv4Address("172.18.255.200"),),
          load_balancer_source_ranges=(IPv4Network("172.18.0.0/24"), IPv4Network("203.0.113.0/24")))
EXTIP = port("extip", "10.96.0.18", external_ips=(IPv4Address("192.0.2.50"),))
EMPTY = port("empty", "10.96.0.20", node_port=30084, external_ips=(IPv4Address("192.0.2.51"),))
ITP = port("itp", "10.96.0.21", internal_policy_local=True)
ITP_NONE = port("itp-none", "10.96.0.22", internal_policy_local=True)
STICKY = port("sticky", "10.96.0.23", session_affinity_seconds=600)
DRAIN = port("drain", "10.96.0.24")
SCTP = port("sctp", "10.96.0.25", 9, Protocol.SCTP, "s")

SMALL_PORTS = [WEB, DNS_UDP, DNS_TCP, NP, NP_LOCAL, NP_REMOTE, LB, EXTIP, EMPTY, ITP, ITP_NONE, STICKY, DRAIN, SCTP]
SMALL_ENDPOINTS: dict[str, list[Endpoint]] = {
    "default/web:http": [LOCAL, REMOTE, ep("10.244.2.9", local=False, ready=False)],
    "kube-system/kube-dns:dns": [ep("10.244.1.3", 53)],
    "kube-system/kube-dns:dns-tcp": [ep("10.244.2.3", 53, local=False)],
    "default/np:http": [LOCAL, REMOTE],
    "default/np-local:http": [LOCAL, REMOTE],
    "default/np-remote:http": [ep("10.244.2.8", local=False)],
    "default/lb:http": [REMOTE],
    "default/extip:http": [REMOTE],
    "default/empty:http": [ep("10.244.1.30", ready=False, serving=False)],
    "default/itp:http": [LOCAL, REMOTE],
    "default/itp-none:http": [REMOTE],
    "default/sticky:http": [LOCAL, REMOTE],
    "default/drain:http": [ep("10.244.1.7", ready=False, serving=True, terminating=True),
                           ep("10.244.2.9", local=False, ready=False, serving=False, terminating=True)],
    "default/sctp:s": [ep("10.244.2.7", 9999, local=False)],
}


def small_state() -> nft.DesiredState:
    return nft.build(SMALL_PORTS, SMALL_ENDPOINTS, CONFIG, OPTIONS)


def small_table() -> NftRuleset:
    return parse_ruleset(nft.full_sync(small_state(), CONFIG, OPTIONS).text)


def elements(rs: NftRuleset, name: str) -> dict[tuple[str, ...], str | None]:
    return {k: (v.text if isinstance(v, VerdictStmt) else v) for k, v in rs.sets[name].elements.items()}


def rules(rs: NftRuleset, chain: str) -> list[str]:
    return [r.text for r in rs.chains[chain].rules]


# -- names -------------------------------------------------------------------------------------------

def test_names_match_kube_proxy() -> None:
    # The examples in kube-proxy's own nftables tests.
    p80 = port("svc1", "172.30.0.41", port_name="p80", namespace="ns1")
    assert nft.service_chain(p80) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.external_chain(p80) == "external-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.local_chain(p80) == "local-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.firewall_chain(p80) == "firewall-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.endpoint_chain(p80, ep("10.180.0.1", 80)) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    p5 = port("svc5", "172.30.0.45", port_name="p80", namespace="ns5")
    assert nft.affinity_set(p5, ep("10.180.0.3", 80)) == "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    # An unnamed port leaves the last part empty, as on a real node.
    assert nft.service_chain(port("hellopod-np-svc", "10.43.195.72", port_name="", namespace="riset")) == \
        "service-P6J77WGM-riset/hellopod-np-svc/tcp/"
    assert nft.is_service_chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
    assert not any(nft.is_service_chain(c.name) for c in nft.BASE_CHAINS)
    assert not any(nft.is_service_chain(j.target) for j in nft.JUMP_CHAINS)


def test_long_names_are_truncated_with_the_hash_kept() -> None:
    long_name = "n" * 300
    based = nft.hash_and_truncate(long_name)
    assert len(based) == nft.NAME_LENGTH_MAX - 16 and based.endswith("...")
    assert based[8] == "-" and based != nft.hash_and_truncate("n" * 299)
    assert nft.mark_text(CONFIG) == "0x004000"
    assert nft.mark_text(ProxyConfig("n", NODE_IP, masquerade_bit=15)) == "0x008000"


# -- golden and layout --------------------------------------------------------------------------------

def test_golden_small_cluster() -> None:
    text = nft.full_sync(small_state(), CONFIG, OPTIONS).text
    if os.environ.get("NETK8S_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    check_script(text)  # every command is about table ip kube-proxy


def test_fixed_objects_are_kube_proxys() -> None:
    rs = small_table()
    hooks = {c.name: (c.hook, c.priority) for c in rs.chains.values() if c.hook}
    assert hooks == {
        "filter-prerouting": ("prerouting", -110), "filter-input": ("input", -110),
        "filter-forward": ("forward", -110), "filter-output": ("output", -110),
        "filter-output-post-dnat": ("output", -90), "nat-prerouting": ("prerouting", -100),
        "nat-output": ("output", -100), "nat-postrouting": ("postrouting", 100),
    }
    assert rules(rs, "filter-input") == ["ct state new jump nodeport-endpoints-check",
                                         "ct state new jump service-endpoints-check"]
    assert rules(rs, "filter-forward") == ["ct state new jump service-endpoints-check",
                                           "ct state new jump cluster-ips-check"]
    assert rules(rs, "filter-output") == ["ct state new jump service-endpoints-check",
                                          "ct state new jump firewall-check"]
    assert rules(rs, "filter-output-post-dnat") == ["ct state new jump cluster-ips-check"]
    assert rules(rs, "nat-prerouting") == rules(rs, "nat-output") == ["jump services"]
    assert rules(rs, "services") == ["ip daddr . meta l4proto . th dport vmap @service-ips",
                                     "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
    assert rules(rs, "masquerading") == ["mark and 0x004000 == 0 return", "mark set mark xor 0x004000",
                                         "masquerade fully-random"]
    assert rules(rs, "cluster-ips-check") == [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"']
    # NodePorts only on the node's primary IP: never on 127.0.0.1.
    assert elements(rs, "nodeport-ips") == {("172.18.0.2",): None}
    assert {s for s, named in rs.sets.items() if not named.is_map} >= {"cluster-ips", "nodeport-ips"}


def test_localhost_nodeport_addresses_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    options = nft.NftablesOptions(nodeport_addresses=(IPv4Address("127.0.0.1"), IPv4Address("172.18.0.9")))
    assert nft.nodeport_ips(CONFIG, options) == (IPv4Address("172.18.0.9"),)
    assert "localhost NodePorts are not supported" in caplog.text


def test_cluster_ip_dispatch_and_endpoint_chains() -> None:
    rs = small_table()
    svc = nft.service_chain(WEB)
    assert elements(rs, "service-ips")[("10.96.0.11", "tcp", "80")] == f"goto {svc}"
    ep_chains = [nft.endpoint_chain(WEB, e) for e in (LOCAL, REMOTE)]
    assert rules(rs, svc) == [
        "ip daddr 10.96.0.11 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        f"numgen random mod 2 vmap {{ 0 : goto {ep_chains[0]} , 1 : goto {ep_chains[1]} }}"]
    assert rules(rs, ep_chains[0]) == ["ip saddr 10.244.1.5 jump mark-for-masquerade",
                                       "meta l4proto tcp dnat to 10.244.1.5:8080"]
    # The not-ready endpoint gets no chain; no per-service object for it anywhere.
    assert not any("10.244.2.9/8080" in c for c in rs.chains if "/web/" in c)
    assert ("10.96.0.11",) in elements(rs, "cluster-ips")


def test_same_port_number_on_two_protocols_is_routed_independently() -> None:
    rs = small_table()
    dispatch = elements(rs, "service-ips")
    assert dispatch[("10.96.0.10", "udp", "53")] == f"goto {nft.service_chain(DNS_UDP)}"
    assert dispatch[("10.96.0.10", "tcp", "53")] == f"goto {nft.service_chain(DNS_TCP)}"
    assert rules(rs, nft.endpoint_chain(DNS_UDP, ep("10.244.1.3", 53)))[-1] == "meta l4proto udp dnat to 10.244.1.3:53"
    assert rules(rs, nft.endpoint_chain(SCTP, ep("10.244.2.7", 9999, local=False)))[-1] == \
        "meta l4proto sctp dnat to 10.244.2.7:9999"
    assert rules(rs, nft.service_chain(SCTP))[0].startswith("ip daddr 10.96.0.25 sctp dport 9 ")


def test_nodeport_cluster_policy_masquerades() -> None:
    rs = small_table()
    ext = nft.external_chain(NP)
    assert elements(rs, "service-nodeports")[("tcp", "30080")] == f"goto {ext}"
    assert rules(rs, ext) == ["jump mark-for-masquerade", f"goto {nft.service_chain(NP)}"]


def test_nodeport_local_policy_short_circuits_pods_and_the_node() -> None:
    rs = small_table()
    ext, svc, loc = nft.external_chain(NP_LOCAL), nft.service_chain(NP_LOCAL), nft.local_chain(NP_LOCAL)
    assert rules(rs, ext) == [
        f'ip saddr 10.244.0.0/16 goto {svc} comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'fib saddr type local goto {svc} comment "short-circuit local traffic"',
        f"goto {loc}"]
    assert rules(rs, loc) == [f"numgen random mod 1 vmap {{ 0 : goto {nft.endpoint_chain(NP_LOCAL, LOCAL)} }}"]
    assert len(rules(rs, svc)) == 2  # masquerade rule + both endpoints


def test_nodeport_local_policy_without_local_endpoints_drops_external_traffic() -> None:
    rs = small_table()
    ext = nft.external_chain(NP_REMOTE)
    # The external chain stays for pod and node traffic, without the final goto.
    assert rules(rs, ext)[-1].startswith("fib saddr type local goto ")
    assert nft.local_chain(NP_REMOTE) not in rs.chains
    assert elements(rs, "service-nodeports")[("tcp", "30082")] == f"goto {ext}"
    assert elements(rs, "no-endpoint-nodeports")[("tcp", "30082")] == "drop"


def test_load_balancer_source_ranges() -> None:
    rs = small_table()
    fw = nft.firewall_chain(LB)
    assert elements(rs, "firewall-ips") == {("172.18.255.200", "tcp", "80"): f"goto {fw}"}
    # The node's IP is inside a range: the LB IP itself is allowed too (VIP hairpin).
    assert rules(rs, fw) == ["ip saddr != { 172.18.0.0/24 , 203.0.113.0/24 , 172.18.255.200 } drop"]
    assert elements(rs, "service-ips")[("172.18.255.200", "tcp", "80")] == f"goto {nft.external_chain(LB)}"
    # NodePorts are not subject to the ranges.
    assert elements(rs, "service-nodeports")[("tcp", "30083")] == f"goto {nft.external_chain(LB)}"
    only_remote = replace(LB, load_balancer_source_ranges=(IPv4Network("203.0.113.0/24"),))
    objs = nft.service_objects([only_remote], SMALL_ENDPOINTS, CONFIG)
    assert objs.chains[fw] == ("ip saddr != { 203.0.113.0/24 } drop",)


def test_external_ips_and_no_endpoints() -> None:
    rs = small_table()
    assert elements(rs, "service-ips")[("192.0.2.50", "tcp", "80")] == f"goto {nft.external_chain(EXTIP)}"
    no_eps = elements(rs, "no-endpoint-services")
    for key in (("10.96.0.20", "tcp", "80"), ("192.0.2.51", "tcp", "80")):
        assert no_eps[key] == "goto reject-chain"
    assert elements(rs, "no-endpoint-nodeports")[("tcp", "30084")] == "goto reject-chain"
    assert not [c for c in rs.chains if "/empty/" in c]
    assert ("10.96.0.20",) in elements(rs, "cluster-ips")
    assert rs.sets["no-endpoint-services"].elements  # comments do not become part of keys
    assert 'comment "default/empty:http" : goto reject-chain' in nft.full_sync(small_state(), CONFIG).text


def test_internal_traffic_policy_local() -> None:
    rs = small_table()
    loc = nft.local_chain(ITP)
    assert elements(rs, "service-ips")[("10.96.0.21", "tcp", "80")] == f"goto {loc}"
    assert rules(rs, loc)[0] == "ip daddr 10.96.0.21 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    assert nft.service_chain(ITP) not in rs.chains  # no external destinations: no cluster chain
    assert elements(rs, "no-endpoint-services")[("10.96.0.22", "tcp", "80")] == "drop"
    assert not [c for c in rs.chains if "/itp-none/" in c]


def test_session_affinity() -> None:
    rs = small_table()
    svc = nft.service_chain(STICKY)
    sets = [nft.affinity_set(STICKY, e) for e in (LOCAL, REMOTE)]
    chains = [nft.endpoint_chain(STICKY, e) for e in (LOCAL, REMOTE)]
    assert rules(rs, svc)[1:3] == [f"ip saddr @{sets[0]} goto {chains[0]}", f"ip saddr @{sets[1]} goto {chains[1]}"]
    assert isinstance(rs.chains[svc].rules[3].exprs[0], VMap)
    assert rules(rs, chains[0])[1] == f"update @{sets[0]} {{ ip saddr }}"
    assert all(rs.sets[s].dynamic for s in sets)
    text = nft.full_sync(small_state(), CONFIG).text
    assert f"add set {T} {sets[0]} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }}" in text


def test_terminating_endpoints_serve_when_none_is_ready() -> None:
    rs = small_table()
    serving = nft.endpoint_chain(DRAIN, ep("10.244.1.7", ready=False, serving=True, terminating=True))
    assert rules(rs, nft.service_chain(DRAIN))[-1] == f"numgen random mod 1 vmap {{ 0 : goto {serving} }}"
    assert not [c for c in rs.chains if "/drain/" in c and "10.244.2.9" in c]


def test_masquerade_all_and_no_cluster_cidr() -> None:
    everything = ProxyConfig("node-1", NODE_IP, IPv4Network("10.244.0.0/16"), masquerade_all=True)
    objs = nft.service_objects([WEB], SMALL_ENDPOINTS, everything)
    assert objs.chains[nft.service_chain(WEB)][0] == "ip daddr 10.96.0.11 tcp dport 80 jump mark-for-masquerade"
    no_cidr = ProxyConfig("node-1", NODE_IP)
    objs = nft.service_objects([WEB, NP_LOCAL], SMALL_ENDPOINTS, no_cidr)
    assert objs.chains[nft.service_chain(WEB)][0].startswith("numgen ")
    assert not any("short-circuit pod traffic" in r for r in objs.chains[nft.external_chain(NP_LOCAL)])


def test_duplicate_service_ports_render_once() -> None:
    state = nft.build([WEB, WEB, replace(WEB)], SMALL_ENDPOINTS, CONFIG)
    assert state.service_ports == 1
    assert list(state.services) == ["default/web"]


# -- transactions ------------------------------------------------------------------------------------

def test_full_sync_flushes_everything_it_rewrites_and_stale_objects() -> None:
    tx = nft.full_sync(small_state(), CONFIG, OPTIONS,
                       existing_chains={"service-OLDOLDOL-default/gone/tcp/http", "services", "foreign"},
                       existing_sets={"affinity-OLDOLDOL-default/gone/tcp/http__10.244.1.1/80", "cluster-ips"})
    lines = tx.lines
    for c in nft.SYNCED_CONTAINERS:
        assert f"flush {c.kind.value} {T} {c.name}" in lines
    assert f"flush chain {T} service-OLDOLDOL-default/gone/tcp/http" in lines
    assert tx.stale_chains == ("service-OLDOLDOL-default/gone/tcp/http",)  # "/" marks kube-proxy's chains only
    assert tx.deleted_sets == ("affinity-OLDOLDOL-default/gone/tcp/http__10.244.1.1/80",)
    assert lines[-1] == f"delete set {T} affinity-OLDOLDOL-default/gone/tcp/http__10.244.1.1/80"
    # Every per-service chain is declared (add + flush) before any rule refers to it.
    declared: set[str] = set()
    for line in lines:
        words = line.split()
        if words[:2] == ["add", "chain"]:
            declared.add(words[4])
        elif words[:2] == ["add", "rule"]:
            for i, w in enumerate(words):
                if w in ("goto", "jump") and i + 1 < len(words):
                    assert words[i + 1] in declared, line
    once = nft.full_sync(small_state(), CONFIG, OPTIONS, recreate_base_chains=True).lines
    assert once.count(f"delete chain {T} filter-prerouting") == 1
    assert once.index(f"delete chain {T} nat-prerouting") < once.index(
        f"add chain {T} nat-prerouting {{ type nat hook prerouting priority -100 ; }}")


def _state(ports: list[ServicePort], endpoints: dict[str, list[Endpoint]]) -> ProxyState:
    return ProxyState.of(ports, endpoints)


def _partial(before: ProxyState, after: ProxyState) -> nft.Transaction:
    old = nft.build(before.service_ports, before.endpoints, CONFIG)
    new = nft.build(after.service_ports, after.endpoints, CONFIG)
    return nft.partial_sync(old, new, changed_services(before, after))


def test_partial_sync_of_one_endpoint_change_touches_only_that_service() -> None:
    before = _state(SMALL_PORTS, SMALL_ENDPOINTS)
    moved = dict(SMALL_ENDPOINTS)
    moved["default/web:http"] = [LOCAL, ep("10.244.3.3", local=False)]
    tx = _partial(before, _state(SMALL_PORTS, moved))
    assert all("/web/" in c for c in tx.written_chains)
    # The service chain and the new endpoint's chain; LOCAL's endpoint chain is unchanged, not rewritten.
    assert set(tx.written_chains) == {nft.service_chain(WEB), nft.endpoint_chain(WEB, ep("10.244.3.3", local=False))}
    assert tx.stale_chains == (nft.endpoint_chain(WEB, REMOTE),)
    for line in tx.lines:
        assert "/web/" in line, line  # nothing about any other service
    assert not any(line.startswith(("add element", "delete element")) for line in tx.lines)  # dispatch unchanged
    # Rules go in as chain blocks: nft 1.0.6 runs this script without fetching the whole table.
    assert not nft.needs_full_cache(tx.text)
    assert f"add chain {T} {nft.service_chain(WEB)} {{ " in tx.text


def test_partial_sync_element_changes() -> None:
    before = _state(SMALL_PORTS, SMALL_ENDPOINTS)
    emptied = dict(SMALL_ENDPOINTS)
    emptied["default/extip:http"] = []
    tx = _partial(before, _state(SMALL_PORTS, emptied))
    lines = tx.lines
    ext = nft.external_chain(EXTIP)
    assert f"delete element {T} service-ips {{ 10.96.0.18 . tcp . 80 }}" in lines
    assert f"delete element {T} service-ips {{ 192.0.2.50 . tcp . 80 }}" in lines
    assert added(lines, "no-endpoint-services") == {
        '10.96.0.18 . tcp . 80 comment "default/extip:http" : goto reject-chain',
        '192.0.2.50 . tcp . 80 comment "default/extip:http" : goto reject-chain'}
    # The external chain only jumps and goes to chains by name: unlinked now, flushed when it is deleted.
    assert ext in tx.stale_chains and f"flush chain {T} {ext}" not in lines
    assert not tx.written_chains
    assert nft.needs_full_cache(tx.text)  # deleting elements: nft fetches the table first
    # A changed verdict for the same key is deleted first, then added.
    local_gone = dict(SMALL_ENDPOINTS)
    local_gone["default/itp:http"] = [REMOTE]
    lines = _partial(before, _state(SMALL_PORTS, local_gone)).lines
    delete = f"delete element {T} service-ips {{ 10.96.0.21 . tcp . 80 }}"
    add = f'add element {T} no-endpoint-services {{ 10.96.0.21 . tcp . 80 comment "default/itp:http" : drop }}'
    assert lines.index(delete) < lines.index(add)
    # New elements only: added through the map's declaration block, no full cache needed.
    grown = _partial(_state([WEB], SMALL_ENDPOINTS), _state([WEB, EXTIP], SMALL_ENDPOINTS))
    assert added(grown.lines, "service-ips") == {f"10.96.0.18 . tcp . 80 : goto {nft.service_chain(EXTIP)}",
                                                 f"192.0.2.50 . tcp . 80 : goto {nft.external_chain(EXTIP)}"}
    assert not nft.needs_full_cache(grown.text)


def added(lines: list[str], container: str) -> set[str]:
    """The elements ``add element`` lines (expanded) add to ``container``."""
    prefix = f"add element {T} {container} {{ "
    return {item.strip() for line in lines if line.startswith(prefix)
            for item in line[len(prefix):-2].split(" , ")}


def test_partial_sync_with_nothing_changed_is_empty() -> None:
    state = _state(SMALL_PORTS, SMALL_ENDPOINTS)
    tx = _partial(state, state)
    assert tx.text == "" and not tx.written_chains and not tx.stale_chains


def test_partial_sync_affinity_on_and_off() -> None:
    plain = _state([WEB], {"default/web:http": [LOCAL, REMOTE]})
    sticky = _state([replace(WEB, session_affinity_seconds=30)], {"default/web:http": [LOCAL, REMOTE]})
    on = _partial(plain, sticky)
    sets = [nft.affinity_set(WEB, e) for e in (LOCAL, REMOTE)]
    assert on.written_sets == tuple(sets)
    assert on.lines[0] == f"add set {T} {sets[0]} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 30s ; }}"
    off = _partial(sticky, plain)
    assert off.deleted_sets == tuple(sorted(sets))
    assert off.lines[-2:] == [f"delete set {T} {s}" for s in sorted(sets)]
    # The rules using the sets are rewritten (flushed) earlier in the same transaction.
    assert off.lines.index(f"flush chain {T} {nft.service_chain(WEB)}") < off.lines.index(f"delete set {T} {sets[0]}")


# -- the sync driver against a fake kernel -----------------------------------------------------------

class FakeNft:
    """An nftables "kernel" in memory: applied scripts parsed in order; a transaction leaving dangling
    references (a jump/goto/vmap to a missing chain, a missing set) fails as a whole, like the kernel."""

    def __init__(self) -> None:
        self.history = ""
        self.applied: list[str] = []
        self.fail_next = 0
        self.fail_deletes = 0

    def table(self) -> NftRuleset:
        return parse_ruleset(nft.expand_script(self.history))

    def apply(self, script: str) -> None:
        check_script(script)
        if self.fail_next:
            self.fail_next -= 1
            raise KernelError("nft -f in fake failed: injected")
        if self.fail_deletes and "\ndelete chain" in "\n" + script:
            self.fail_deletes -= 1
            raise KernelError("nft -f in fake failed: Device or resource busy")
        candidate = parse_ruleset(nft.expand_script(self.history + script))
        _check_references(candidate)
        self.history += script
        self.applied.append(script)

    def objects(self) -> tuple[set[str], set[str]]:
        rs = self.table()
        return set(rs.chains), {n for n, s in rs.sets.items() if not s.is_map}

    def list_text(self) -> str:
        return nft.expand_script(self.history)

    def list_json(self) -> str:
        return nft.expand_script(self.history)


def _check_references(rs: NftRuleset) -> None:
    def verdict_ok(v: VerdictStmt | None) -> None:
        if v is not None and v.target is not None and v.target not in rs.chains:
            raise KernelError(f"nft -f in fake failed: No such file or directory ({v.target})")

    for chain in rs.chains.values():
        for rule in chain.rules:
            for expr in rule.exprs:
                if isinstance(expr, VerdictStmt):
                    verdict_ok(expr)
                elif isinstance(expr, VMap) and not hasattr(expr.data, "name"):
                    for _, v in expr.data:  # type: ignore[union-attr]
                        verdict_ok(v)
    for named in rs.sets.values():
        for v in named.elements.values():
            verdict_ok(v)


def _normalized(rs: NftRuleset) -> tuple[dict, dict]:
    chains = {n: (c.hook, c.priority, [r.exprs for r in c.rules]) for n, c in rs.chains.items()}
    sets = {n: (s.is_map, dict(s.elements)) for n, s in rs.sets.items()}
    return chains, sets


def test_ruleset_full_then_partial_then_failure_forces_full() -> None:
    kernel = FakeNft()
    rs = nft.NftablesRuleSet(kernel, CONFIG, OPTIONS)
    assert rs.mode is ProxyMode.NFTABLES
    s1 = _state(SMALL_PORTS, SMALL_ENDPOINTS)
    first = rs.sync(s1, False, frozenset())  # nothing applied yet: full regardless
    assert first.full and first.services == len(SMALL_PORTS) and first.payload == kernel.applied[0]
    assert first.objects_written == len(small_state().chains()) + len(small_state().affinity_sets())

    moved = dict(SMALL_ENDPOINTS)
    moved["default/web:http"] = [LOCAL]
    s2 = _state(SMALL_PORTS, moved)
    second = rs.sync(s2, False, changed_services(s1, s2))
    assert not second.full and second.changed == frozenset({"default/web"})
    assert second.objects_deleted == 1  # REMOTE's endpoint chain: unlinked, then flushed and deleted right after
    gone = nft.endpoint_chain(WEB, REMOTE)
    assert f"flush chain {T} {gone}" not in second.payload  # a leaf chain: its flush waits for the delete
    assert kernel.applied[-1] == f"flush chain {T} {gone}\ndelete chain {T} {gone}\n"
    assert nft.endpoint_chain(WEB, REMOTE) not in kernel.table().chains

    kernel.fail_next = 1
    s3 = _state(SMALL_PORTS, SMALL_ENDPOINTS)
    with pytest.raises(KernelError, match="injected"):
        rs.sync(s3, False, changed_services(s2, s3))
    assert rs.failed_syncs == 1
    third = rs.sync(s3, False, changed_services(s2, s3))
    assert third.full  # after a failure the ruleset does not trust its memory
    assert rs.full_syncs == 2 and rs.partial_syncs == 1


def test_partial_syncs_converge_to_what_a_full_sync_installs() -> None:
    kernel = FakeNft()
    rs = nft.NftablesRuleSet(kernel, CONFIG, OPTIONS)
    states = [_state(SMALL_PORTS, SMALL_ENDPOINTS)]
    eps = dict(SMALL_ENDPOINTS)
    eps["default/web:http"] = [ep("10.244.1.50")]
    eps["default/np-remote:http"] = [LOCAL]
    states.append(_state(SMALL_PORTS, eps))
    # web gains ClientIP affinity (one port each: the API never gives a service two ports of one name).
    states.append(_state([replace(p, session_affinity_seconds=5) if p == WEB else p
                          for p in SMALL_PORTS if p.name != "lb"], eps))
    states.append(_state([p for p in SMALL_PORTS if p.name not in ("lb", "sticky", "np")], {}))
    states.append(_state(SMALL_PORTS, SMALL_ENDPOINTS))
    previous = None
    for state in states:
        result = rs.sync(state, False, changed_services(previous, state))
        assert result.full is (previous is None)
        previous = state
        fresh = FakeNft()
        nft.NftablesRuleSet(fresh, CONFIG, OPTIONS).sync(state, True, frozenset())
        assert _normalized(kernel.table()) == _normalized(fresh.table())


def test_stale_chain_deletes_are_retried_when_the_kernel_refuses() -> None:
    kernel = FakeNft()
    rs = nft.NftablesRuleSet(kernel, CONFIG)
    s1 = _state([WEB], {"default/web:http": [LOCAL, REMOTE]})
    rs.sync(s1, True, frozenset())
    kernel.fail_deletes = 1
    s2 = _state([WEB], {"default/web:http": [LOCAL]})
    result = rs.sync(s2, False, changed_services(s1, s2))
    stale = nft.endpoint_chain(WEB, REMOTE)
    assert result.objects_deleted == 0 and rs.pending_stale == {stale}
    assert kernel.table().chains[stale].rules  # unreachable, unreferenced, still there (a leaf: not flushed yet)
    assert not any(stale in rule.text for name, chain in kernel.table().chains.items() if name != stale
                   for rule in chain.rules)
    result = rs.sync(s2, False, frozenset())
    assert result.payload == "" and result.objects_deleted == 1 and stale not in kernel.table().chains


def test_full_sync_cleans_up_after_a_previous_process() -> None:
    kernel = FakeNft()
    nft.NftablesRuleSet(kernel, CONFIG).sync(_state(SMALL_PORTS, SMALL_ENDPOINTS), True, frozenset())
    restarted = nft.NftablesRuleSet(kernel, CONFIG)  # no memory: must read the kernel
    result = restarted.sync(_state([WEB], {"default/web:http": [LOCAL]}), True, frozenset())
    left = kernel.table()
    assert {c for c in left.chains if nft.is_service_chain(c)} == {nft.service_chain(WEB),
                                                                   nft.endpoint_chain(WEB, LOCAL)}
    assert not [s for s in left.sets if nft.is_affinity_set(s)]
    assert result.objects_deleted > 10
    assert f"delete chain {T} filter-prerouting" in result.payload  # base chains re-created once per process


def test_ruleset_trace_reads_the_kernel_listing() -> None:
    from netk8s.proxy.trace import Packet, Verdict

    kernel = FakeNft()
    rs = nft.NftablesRuleSet(kernel, CONFIG)
    rs.sync(_state([WEB], {"default/web:http": [LOCAL, REMOTE]}), True, frozenset())
    result = rs.trace(Packet(IPv4Address("10.244.1.9"), Protocol.TCP, IPv4Address("10.96.0.11"), 80), {NODE_IP})
    assert result.verdict is Verdict.ACCEPT and result.endpoints == ("10.244.1.5:8080", "10.244.2.7:8080")
    assert rs.dump() == nft.expand_script(kernel.history)


def test_check_script_refuses_other_tables() -> None:
    check_script(nft.delete_table())
    with pytest.raises(ValueError, match="line 2"):
        check_script(f"add chain {T} x\nadd rule ip filter INPUT drop\n")
    with pytest.raises(ValueError):
        check_script("flush ruleset\n")


def test_rendering_ten_thousand_services_is_fast() -> None:
    ports = [port(f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(10_000)]
    endpoints = {f"default/svc{i}:http": [ep(f"10.244.{i % 200}.{j + 2}", local=j == 0) for j in range(3)]
                 for i in range(10_000)}
    start = time.perf_counter()
    state = nft.build(ports, endpoints, CONFIG)
    tx = nft.full_sync(state, CONFIG)
    took = time.perf_counter() - start
    assert took < 2.0, f"rendering 10,000 services took {took:.2f}s"
    assert len(state.chains()) == 40_000 and tx.added_elements == 20_000
    # A partial sync after one endpoint change (only that service rebuilt, as the ruleset does) stays small.
    endpoints["default/svc42:http"] = endpoints["default/svc42:http"][:2]
    start = time.perf_counter()
    after = nft.DesiredState({**state.services, "default/svc42": nft.service_objects([ports[42]], endpoints, CONFIG)},
                             state.nodeport_ips)
    partial = nft.partial_sync(state, after, frozenset({"default/svc42"}))
    assert time.perf_counter() - start < 1.0
    assert partial.stale_chains == (nft.endpoint_chain(ports[42], ep("10.244.42.4")),)
    # The service chain (add, flush, add + its 2 rules); the stale endpoint chain is only unlinked.
    assert len(partial.lines) == 5 and all("/svc42/" in line for line in partial.lines)
