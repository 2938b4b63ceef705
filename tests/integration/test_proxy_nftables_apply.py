"""kube-proxy's nftables mode applied for real inside a throwaway node namespace (root).

Each test gets a namespace ``nk-t<random>-node`` with an interface holding
pod-network addresses and a default route through it (inside the namespace
only), syncs rendered rules with ``nft -f``, reads them back with
``nft -j list table ip kube-proxy`` and opens TCP connections to cluster IPs
from inside the namespace. The namespace is deleted in a finalizer even when a
test fails.
"""

from __future__ import annotations

import errno
import json
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from proxy_rig import API, CONFIG, EMPTY, POD_IPS, WEB, Listeners, Node, connect_errno, fetch, wait_until

from netk8s.api.resources import ENDPOINTSLICES as SLICES
from netk8s.api.resources import SERVICES
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.kernel import nft as knft
from netk8s.proxy import nftables as nft
from netk8s.proxy.backend import ProxyState, changed_services
from netk8s.proxy.model import Endpoint, Protocol, ServicePort
from netk8s.proxy.nftables_trace import AnonSet, Match, NftRuleset, parse_ruleset, trace_nftables
from netk8s.proxy.proxier import Proxier

STICKY = ServicePort("default", "sticky", "", Protocol.TCP, IPv4Address("10.96.12.36"), 80,
                     session_affinity_seconds=300)


def endpoints(*ips: str, port: int = 8080) -> list[Endpoint]:
    return [Endpoint(IPv4Address(ip), port, node_name="node-1", is_local=True) for ip in ips]


def state(ports: list[ServicePort], eps: dict[str, list[Endpoint]]) -> ProxyState:
    return ProxyState.of(ports, eps)


def normalized(rs: NftRuleset) -> tuple[dict, dict]:
    """Chains (hook, priority, parsed rules) and sets/maps (elements) in a spelling-neutral form."""
    def expr(e: object) -> object:
        if isinstance(e, Match) and isinstance(e.right, AnonSet):
            return Match(e.fields, e.negate, AnonSet(tuple(sorted(e.right.items))))  # the kernel sorts them
        return e

    chains = {n: (c.hook, c.priority, c.policy, [tuple(expr(e) for e in r.exprs) for r in c.rules])
              for n, c in rs.chains.items()}
    sets = {n: (s.is_map, s.dynamic, dict(s.elements)) for n, s in rs.sets.items()}
    return chains, sets


def rule_handles(ns: str) -> dict[str, list[int]]:
    """Rule handles per chain: a chain nobody rewrote keeps its handles."""
    doc = json.loads(knft.list_json(ns))
    out: dict[str, list[int]] = {}
    for obj in doc["nftables"]:
        if "rule" in obj:
            out.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["handle"])
    return out


# -- full syncs ------------------------------------------------------------------------------------------

def test_full_sync_is_what_the_kernel_lists_and_balances(node: Node, listeners: Listeners) -> None:
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    result = rs.sync(state([WEB, EMPTY], {WEB.service_port_name: endpoints(*POD_IPS)}), True, frozenset())
    assert result.full
    kernel = parse_ruleset(knft.list_json(node.name))
    assert normalized(kernel) == normalized(parse_ruleset(result.payload))
    assert normalized(parse_ruleset(knft.list_text(node.name))) == normalized(kernel)
    chains, _ = knft.objects(node.name)
    assert nft.service_chain(WEB) in chains and all(nft.endpoint_chain(WEB, e) in chains for e in endpoints(*POD_IPS))

    # A second full sync of the same state installs the same table.
    again = rs.sync(state([WEB, EMPTY], {WEB.service_port_name: endpoints(*POD_IPS)}), True, frozenset())
    assert again.objects_deleted == 0
    assert normalized(parse_ruleset(knft.list_json(node.name))) == normalized(kernel)

    # Real connections to the cluster IP are DNATed to every endpoint.
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS)


def test_no_endpoints_and_invalid_ports_are_refused_fast(node: Node) -> None:
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    rs.sync(state([WEB, EMPTY], {WEB.service_port_name: endpoints(*POD_IPS)}), True, frozenset())
    for ip, port in (("10.96.7.7", 8080), ("10.96.12.34", 81)):
        code, took = connect_errno(node.name, ip, port, timeout=3.0)
        assert code == errno.ECONNREFUSED and took < 1.0, (ip, port, code, took)
    # Control: an address no rule covers is not refused; the SYN goes unanswered.
    code, took = connect_errno(node.name, "10.96.99.99", 80, timeout=0.5)
    assert code != errno.ECONNREFUSED and took >= 0.4, (code, took)


def test_session_affinity_sticks_to_one_endpoint(node: Node, listeners: Listeners) -> None:
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    rs.sync(state([STICKY], {STICKY.service_port_name: endpoints(*POD_IPS)}), True, frozenset())
    seen = [fetch(node.name, "10.96.12.36", 80) for _ in range(15)]
    assert len(set(seen)) == 1, seen
    kernel = parse_ruleset(knft.list_json(node.name))
    stuck = [n for n in kernel.sets if nft.is_affinity_set(n) and kernel.sets[n].elements]
    assert stuck == [nft.affinity_set(STICKY, endpoints(seen[0])[0])]
    # Turning affinity off removes the sets; connections spread again.
    plain = ServicePort(STICKY.namespace, STICKY.name, "", Protocol.TCP, STICKY.cluster_ip, 80)
    s1 = state([STICKY], {STICKY.service_port_name: endpoints(*POD_IPS)})
    s2 = state([plain], {STICKY.service_port_name: endpoints(*POD_IPS)})
    result = rs.sync(s2, False, changed_services(s1, s2))
    assert not result.full and len(result.payload.splitlines()) < 30
    assert not [n for n in knft.objects(node.name)[1] if nft.is_affinity_set(n)]
    assert {fetch(node.name, "10.96.12.36", 80) for _ in range(40)} == set(POD_IPS)


# -- partial syncs ---------------------------------------------------------------------------------------

def test_partial_sync_changes_only_what_it_should(node: Node, listeners: Listeners) -> None:
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    s1 = state([WEB, API], {WEB.service_port_name: endpoints(*POD_IPS), API.service_port_name: endpoints(POD_IPS[0])})
    rs.sync(s1, True, frozenset())
    before = rule_handles(node.name)

    s2 = state([WEB, API], {WEB.service_port_name: endpoints(*POD_IPS[:2]),
                            API.service_port_name: endpoints(POD_IPS[0])})
    result = rs.sync(s2, False, changed_services(s1, s2))
    assert not result.full and result.changed == frozenset({"default/web"})
    assert all("/web/" in line for line in result.payload.splitlines())
    assert result.objects_deleted == 1
    after = rule_handles(node.name)
    # Every chain but web's own kept its rules untouched (same handles).
    for chain, handles in before.items():
        if "/web/" not in chain:
            assert after[chain] == handles, chain
    assert after[nft.service_chain(WEB)] != before[nft.service_chain(WEB)]
    gone = nft.endpoint_chain(WEB, endpoints(POD_IPS[2])[0])
    assert gone not in knft.objects(node.name)[0]
    assert normalized(parse_ruleset(knft.list_json(node.name))) == normalized(
        parse_ruleset(nft.full_sync(nft.build(s2.service_ports, s2.endpoints, CONFIG), CONFIG).text))
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS[:2])

    # A deleted service loses its chains and map elements; the other one is not mentioned.
    s3 = state([WEB], {WEB.service_port_name: endpoints(*POD_IPS[:2])})
    result = rs.sync(s3, False, changed_services(s2, s3))
    assert "/web/" not in result.payload and result.objects_deleted == 2
    assert not [c for c in knft.objects(node.name)[0] if "/api/" in c]
    assert "10.96.12.35" not in knft.list_text(node.name)
    assert rule_handles(node.name)[nft.service_chain(WEB)] == after[nft.service_chain(WEB)]


def test_failed_transaction_forces_a_full_resync(node: Node, listeners: Listeners) -> None:
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    s1 = state([WEB], {WEB.service_port_name: endpoints(*POD_IPS)})
    rs.sync(s1, True, frozenset())
    # Someone removes the table behind kube-proxy's back: the next partial transaction fails whole.
    netns.run(node.name, ["nft", "delete", "table", "ip", "kube-proxy"])
    s2 = state([WEB], {WEB.service_port_name: endpoints(*POD_IPS[:1])})
    with pytest.raises(KernelError) as info:
        rs.sync(s2, False, changed_services(s1, s2))
    message = str(info.value)
    assert node.name in message and "at line 1 'add chain ip kube-proxy" in message and "\n" not in message
    assert knft.list_text(node.name) == ""  # atomic: nothing of the failed transaction is left
    result = rs.sync(s2, False, changed_services(s1, s2))  # asked for partial, runs full
    assert result.full
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(10)} == {POD_IPS[0]}


def test_other_tables_are_never_touched(node: Node) -> None:
    other = f"{node.prefix}-other"
    netns.run(node.name, ["nft", "-f", "-"], input=(
        f"add table ip {other}\n"
        f"add chain ip {other} services {{ type filter hook input priority 0 ; }}\n"
        f"add rule ip {other} services tcp dport 9 counter accept\n"))
    listing = netns.run(node.name, ["nft", "list", "table", "ip", other]).stdout
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    s1 = state([WEB], {WEB.service_port_name: endpoints(*POD_IPS)})
    rs.sync(s1, True, frozenset())
    s2 = state([API], {API.service_port_name: endpoints(POD_IPS[0])})
    rs.sync(s2, False, changed_services(s1, s2))
    knft.apply(node.name, nft.delete_table())
    assert knft.list_text(node.name) == ""
    assert netns.run(node.name, ["nft", "list", "table", "ip", other]).stdout == listing
    with pytest.raises(KernelError, match="refusing to run nft"):
        knft.apply(node.name, f"delete table ip {other}\n")
    assert netns.run(node.name, ["nft", "list", "table", "ip", other]).stdout == listing


def test_kernel_listing_traces_like_the_rendered_script(node: Node) -> None:
    # The packet-flow table shared by both modes lives with the unit tests.
    unit = str(Path(__file__).resolve().parents[1] / "unit")
    if unit not in sys.path:
        sys.path.insert(0, unit)
    from test_proxy_nftables_trace import NFT_CASES, expected
    from test_proxy_trace import LOCAL_ADDRESSES, small_cluster_state

    cluster = small_cluster_state()
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    payload = rs.sync(cluster, True, frozenset()).payload
    as_json, as_text = knft.list_json(node.name), knft.list_text(node.name)
    assert normalized(parse_ruleset(as_json)) == normalized(parse_ruleset(payload))
    assert normalized(parse_ruleset(as_text)) == normalized(parse_ruleset(payload))
    for case in NFT_CASES:
        for listing in (as_json, as_text):
            got = trace_nftables(listing, case.packet, set(LOCAL_ADDRESSES))
            assert (got.verdict, got.endpoints, got.masquerade) == expected(case), case.id
    assert rs.trace(NFT_CASES[0].packet, set(LOCAL_ADDRESSES)).endpoints == expected(NFT_CASES[0])[1]


# -- big syncs: chunked full syncs, cheap partial scripts, batched stale-chain deletes ---------------

def bulk_state(count: int) -> ProxyState:
    ports = [WEB]
    eps: dict[str, list[Endpoint]] = {WEB.service_port_name: endpoints(*POD_IPS)}
    for i in range(count - 1):
        sp = ServicePort("bulk", f"s{i:03d}", "", Protocol.TCP, IPv4Address(f"10.96.{20 + i // 250}.{i % 250 + 1}"),
                         80)
        ports.append(sp)
        eps[sp.service_port_name] = [Endpoint(IPv4Address(f"10.245.{i // 100}.{2 * (i % 100) + 1}"), 8080),
                                     Endpoint(IPv4Address(f"10.245.{i // 100}.{2 * (i % 100) + 2}"), 8080)]
    return state(ports, eps)


def test_chunked_full_sync_installs_what_one_transaction_does(node: Node, listeners: Listeners) -> None:
    cluster = bulk_state(25)
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG, chunk_services=4)
    rs.sync(cluster, True, frozenset())
    assert rs.last_transaction is not None and len(rs.last_transaction.scripts) == 8  # 7 chunks of services + 1
    chunked = normalized(parse_ruleset(knft.list_json(node.name)))
    assert chunked == normalized(parse_ruleset(nft.full_sync(nft.build(cluster.service_ports, cluster.endpoints,
                                                                       CONFIG), CONFIG).text))
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(30)} == set(POD_IPS)
    # Again over the installed table (every chain rewritten, chunk by chunk): the same table.
    rs.sync(cluster, True, frozenset())
    assert normalized(parse_ruleset(knft.list_json(node.name))) == chunked


def test_partial_scripts_skip_nfts_full_cache_and_stale_deletes_wait_for_one(
        node: Node, listeners: Listeners, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a big table: stale chains wait until a transaction needs nft's full cache anyway.
    monkeypatch.setattr(nft, "STALE_BATCH_FRACTION", 1.0)
    rs = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    s1 = bulk_state(10)
    rs.sync(s1, True, frozenset())
    s2 = state(list(s1.service_ports), {**s1.endpoints, WEB.service_port_name: endpoints(*POD_IPS[:2])})
    result = rs.sync(s2, False, changed_services(s1, s2))
    assert not nft.needs_full_cache(result.payload) and result.objects_deleted == 0
    gone = nft.endpoint_chain(WEB, endpoints(POD_IPS[2])[0])
    assert rs.pending_stale == {gone}
    kernel = parse_ruleset(knft.list_json(node.name))
    # Unlinked (nothing jumps to it) but not flushed: a leaf chain is flushed with its delete, later.
    assert kernel.chains[gone].rules
    assert not any(gone in rule.text for name, chain in kernel.chains.items() if name != gone for rule in chain.rules)
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(30)} == set(POD_IPS[:2])
    # A new service: elements go in through the maps' declaration blocks, still no full cache.
    s3 = state([*s2.service_ports, API], {**s2.endpoints, API.service_port_name: endpoints(POD_IPS[0])})
    result = rs.sync(s3, False, changed_services(s2, s3))
    assert not nft.needs_full_cache(result.payload)
    assert fetch(node.name, "10.96.12.35", 443) == POD_IPS[0]
    # Removing it deletes elements (full cache): the waiting chain is deleted in the same transaction.
    result = rs.sync(s2, False, changed_services(s3, s2))
    assert f"delete chain ip kube-proxy {gone}" in result.payload and result.objects_deleted >= 1
    assert gone not in knft.objects(node.name)[0] and gone not in rs.pending_stale
    # The kernel holds what a full sync installs, plus api's chains (unlinked now, waiting to be deleted):
    # its service chain, which binds an anonymous vmap, is flushed at once.
    assert rs.pending_stale and all("/api/" in c for c in rs.pending_stale)
    kernel_chains, kernel_sets = normalized(parse_ruleset(knft.list_json(node.name)))
    waiting = {c: kernel_chains.pop(c)[3] for c in rs.pending_stale}
    assert waiting[nft.service_chain(API)] == [] and any(waiting.values())
    assert (kernel_chains, kernel_sets) == normalized(
        parse_ruleset(nft.full_sync(nft.build(s2.service_ports, s2.endpoints, CONFIG), CONFIG).text))


# -- the proxier against a real API server -----------------------------------------------------------

def test_proxier_drives_the_nftables_mode(api: ApiClient, node: Node, listeners: Listeners) -> None:
    ruleset = nft.NftablesRuleSet(knft.NetnsNft(node.name), CONFIG)
    proxier = Proxier(api, CONFIG, node.name, min_sync_interval=0.05, ruleset=ruleset)
    proxier.start()
    try:
        assert proxier.wait_for_sync(10)
        assert "chain services" in knft.list_text(node.name)
        api.create(SERVICES, {"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": "web", "namespace": "default"},
                              "spec": {"clusterIP": "10.96.12.34", "selector": {"app": "web"},
                                       "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        wait_until(lambda: '"default/web:http"' in knft.list_text(node.name), 10, "web's no-endpoint element")
        assert connect_errno(node.name, "10.96.12.34", 80, timeout=3.0)[0] == errno.ECONNREFUSED
        api.create(SLICES, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                            "metadata": {"name": "web-abcde", "namespace": "default",
                                         "labels": {"kubernetes.io/service-name": "web"}},
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"}
                                          for ip in POD_IPS]})
        wait_until(lambda: nft.service_chain(WEB) in knft.objects(node.name)[0], 10, "web's service chain")
        assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS)
        assert ruleset.partial_syncs >= 1
        api.delete(SERVICES, "web", "default")
        wait_until(lambda: "/web/" not in " ".join(knft.objects(node.name)[0]), 10, "web's chains to go")
        assert "10.96.12.34" not in knft.list_text(node.name)
    finally:
        proxier.stop()
        proxier.join(5)
