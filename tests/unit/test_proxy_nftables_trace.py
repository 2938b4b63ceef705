"""Packet flows through kube-proxy's nftables ruleset, and the nft tracer itself (pure, no root).

The packet-flow table is the one the iptables mode is checked against
(``test_proxy_trace.FLOW_CASES`` over ``small_cluster_state()``), run through
the nftables renderer and ``trace_nftables``. Where the two kube-proxy modes
really differ, ``NFT_EXPECTED`` says what nftables mode does instead.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest
from test_proxy_trace import (
    CONFIG,
    EXTERNAL,
    FLOW_CASES,
    LOCAL_ADDRESSES,
    NODE_S,
    OTHER_LOCAL_POD,
    FlowCase,
    _pkt,
    small_cluster_state,
)

from netk8s.errors import ValidationError
from netk8s.proxy import nftables as nft
from netk8s.proxy.model import Protocol
from netk8s.proxy.nftables_trace import parse_rule, parse_ruleset, trace_nftables
from netk8s.proxy.trace import TraceResult, Verdict

# kube-proxy's nftables mode (1.31+) rejects new connections to a cluster IP on a port no service
# port uses ("Reject traffic to invalid ports of ClusterIPs"); iptables mode lets them through.
NFT_EXPECTED: dict[str, tuple[Verdict, tuple[str, ...], bool]] = {
    "wrong port of a cluster IP is not DNATed": (Verdict.REJECT, (), False),
    "SCTP rule does not catch TCP": (Verdict.REJECT, (), False),
}
NFT_CASES = [c for c in FLOW_CASES if not c.iptables_only]


def rendered() -> str:
    state = small_cluster_state()
    return nft.full_sync(nft.build(state.service_ports, state.endpoints, CONFIG), CONFIG).text


@pytest.fixture(scope="module")
def script() -> str:
    return rendered()


def expected(case: FlowCase) -> tuple[Verdict, tuple[str, ...], bool]:
    return NFT_EXPECTED.get(case.id, (case.verdict, case.endpoints, case.masquerade))


def check(result: TraceResult, case: FlowCase) -> None:
    assert (result.verdict, result.endpoints, result.masquerade) == expected(case), "\n".join(result.path)


@pytest.mark.parametrize("case", NFT_CASES, ids=lambda c: c.id)
def test_packet_flow(script: str, case: FlowCase) -> None:
    check(trace_nftables(script, case.packet, set(LOCAL_ADDRESSES)), case)


def test_overrides_name_real_cases() -> None:
    assert set(NFT_EXPECTED) <= {c.id for c in NFT_CASES}
    assert len(NFT_CASES) >= 30


def test_localhost_nodeports_are_not_supported(script: str) -> None:
    # kube-proxy's nftables mode accepts NodePorts on the node's primary IP only (nodeport-ips).
    result = trace_nftables(script, _pkt("127.0.0.1", "127.0.0.1", 30080, from_node=True), set(LOCAL_ADDRESSES))
    assert (result.verdict, result.endpoints) == (Verdict.ACCEPT, ())
    second = trace_nftables(script, _pkt(NODE_S, "10.244.1.1", 30080, from_node=True), set(LOCAL_ADDRESSES))
    assert second.endpoints == ()  # another local address is not a NodePort address either


def test_path_names_the_rules_taken(script: str) -> None:
    result = trace_nftables(script, _pkt(EXTERNAL, NODE_S, 30081), set(LOCAL_ADDRESSES))
    path = result.path
    assert path[0] == "kube-proxy filter-prerouting: ct state new jump firewall-check"
    hit = [p for p in path if p.startswith("kube-proxy services: ip daddr @nodeport-ips")]
    assert len(hit) == 1 and "[element tcp . 30081 : goto external-" in hit[0]
    assert any(p.startswith("kube-proxy external-") and ": goto local-" in p for p in path)
    assert not any("short-circuit pod traffic" in p for p in path)  # the source is not a pod
    assert any(p.endswith("dnat to 10.244.1.5:8080") for p in path)
    assert not any("10.244.2.7:8080" in p for p in path)
    assert any(p.startswith("kube-proxy filter-forward: ") for p in path)  # DNATed to a pod: forwarded
    assert not any(p.startswith("kube-proxy filter-input: ") for p in path)


def test_drop_and_reject_reasons_end_the_path(script: str) -> None:
    denied = trace_nftables(script, _pkt("198.51.100.7", "172.18.255.200", 80), set(LOCAL_ADDRESSES))
    assert denied.path[-1].startswith("kube-proxy firewall-") and denied.path[-1].endswith(" drop")
    no_local = trace_nftables(script, _pkt(EXTERNAL, NODE_S, 30082), set(LOCAL_ADDRESSES))
    assert no_local.path[-1].startswith("kube-proxy nodeport-endpoints-check: ")
    assert no_local.path[-1].endswith("[element tcp . 30082 : drop]")
    rejected = trace_nftables(script, _pkt(OTHER_LOCAL_POD, "10.96.0.20", 80), set(LOCAL_ADDRESSES))
    assert rejected.path[-2:] == (
        "kube-proxy service-endpoints-check: ip daddr . meta l4proto . th dport vmap @no-endpoint-services "
        "[element 10.96.0.20 . tcp . 80 : goto reject-chain]",
        "kube-proxy reject-chain: reject")


def test_affinity_lookups_are_followed_both_ways(script: str) -> None:
    result = trace_nftables(script, _pkt(OTHER_LOCAL_POD, "10.96.0.23", 80), set(LOCAL_ADDRESSES))
    assert sum(" ip saddr @affinity-" in p for p in result.path) == 2
    assert sum(p.startswith("kube-proxy endpoint-") and "update @affinity-" in p for p in result.path) == 2
    assert any("numgen random mod 2 vmap" in p for p in result.path)


def test_masquerade_happens_in_postrouting(script: str) -> None:
    result = trace_nftables(script, _pkt(EXTERNAL, NODE_S, 30080), set(LOCAL_ADDRESSES))
    assert result.masquerade
    path = list(result.path)
    first_dnat = next(i for i, p in enumerate(path) if " dnat to " in p)
    assert path.index("kube-proxy masquerading: mark set mark xor 0x004000") > first_dnat
    assert path.index("kube-proxy masquerading: masquerade fully-random") > first_dnat
    # Without the mark, masquerading returns before the masquerade statement.
    pod = trace_nftables(script, _pkt(OTHER_LOCAL_POD, "10.96.0.11", 80), set(LOCAL_ADDRESSES))
    assert not pod.masquerade
    assert "kube-proxy masquerading: mark and 0x004000 == 0 return" in pod.path
    assert "kube-proxy masquerading: masquerade fully-random" not in pod.path


# -- the same tables in the kernel's spellings ------------------------------------------------------

# What "nft -j list table ip kube-proxy" prints for a tiny ruleset (nft 1.0.6), plus a foreign table.
KERNEL_JSON = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
    {"table": {"family": "ip", "name": "other", "handle": 2}},
    {"chain": {"family": "ip", "table": "other", "name": "nat-prerouting", "handle": 1, "type": "nat",
               "hook": "prerouting", "prio": -300, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "other", "chain": "nat-prerouting", "handle": 2,
              "expr": [{"dnat": {"addr": "192.0.2.99", "port": 1}}]}},
    {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto",
                                                                                   "inet_service"],
             "handle": 3, "map": "verdict",
             "elem": [[{"concat": ["10.96.0.1", "tcp", 443]}, {"goto": {"target": "svc"}}]]}},
    {"map": {"family": "ip", "name": "no-endpoint-services", "table": "kube-proxy",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 4, "map": "verdict",
             "elem": [[{"elem": {"val": {"concat": ["10.96.0.2", "udp", 53]}, "comment": "ns/dns:dns"}},
                       {"goto": {"target": "reject-chain"}}]]}},
    {"set": {"family": "ip", "name": "affinity-x", "table": "kube-proxy", "type": "ipv4_addr", "handle": 5,
             "size": 65535, "flags": ["timeout"], "timeout": 600,
             "elem": [{"elem": {"val": "10.244.1.9", "timeout": 600, "expires": 599}}]}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-prerouting", "handle": 1, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "filter-forward", "handle": 2, "type": "filter",
               "hook": "forward", "prio": -110, "policy": "accept"}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "mark-for-masquerade", "handle": 6}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "reject-chain", "handle": 7}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "svc", "handle": 8}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "ep-a", "handle": 9}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "ep-b", "handle": 10}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "nat-prerouting", "handle": 11,
              "expr": [{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                                    {"meta": {"key": "l4proto"}},
                                                    {"payload": {"protocol": "th", "field": "dport"}}]},
                                 "data": "@service-ips"}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "filter-forward", "handle": 12,
              "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                       {"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                                    {"meta": {"key": "l4proto"}},
                                                    {"payload": {"protocol": "th", "field": "dport"}}]},
                                 "data": "@no-endpoint-services"}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "mark-for-masquerade", "handle": 13,
              "expr": [{"mangle": {"key": {"meta": {"key": "mark"}},
                                   "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "reject-chain", "handle": 14,
              "expr": [{"reject": {"type": "icmp", "expr": "port-unreachable"}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "svc", "handle": 15,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                  "right": "10.96.0.1"}},
                       {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                  "right": 443}},
                       {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                  "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                       {"jump": {"target": "mark-for-masquerade"}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "svc", "handle": 16,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                  "right": "@affinity-x"}}, {"goto": {"target": "ep-b"}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "svc", "handle": 17,
              "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                                 "data": {"set": [[0, {"goto": {"target": "ep-a"}}],
                                                  [1, {"goto": {"target": "ep-b"}}]]}}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "ep-a", "handle": 18,
              "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                       {"dnat": {"addr": "10.244.1.5", "port": 6443}}]}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "ep-b", "handle": 19,
              "expr": [{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                                "set": "@affinity-x"}},
                       {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                       {"dnat": {"addr": "10.244.2.7", "port": 6443}}]}},
]}

# The same table as "nft list table ip kube-proxy" prints it.
KERNEL_LIST = """\
table ip kube-proxy {
\tcomment "rules for kube-proxy"
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.1 . tcp . 443 : goto svc }
\t}

\tmap no-endpoint-services {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.2 . udp . 53 comment "ns/dns:dns" : goto reject-chain }
\t}

\tset affinity-x {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 10m
\t\telements = { 10.244.1.9 timeout 10m expires 9m59s }
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}

\tchain filter-forward {
\t\ttype filter hook forward priority dstnat - 10; policy accept;
\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}

\tchain mark-for-masquerade {
\t\tmeta mark set meta mark | 0x00004000
\t}

\tchain reject-chain {
\t\treject
\t}

\tchain svc {
\t\tip daddr 10.96.0.1 tcp dport 443 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
\t\tip saddr @affinity-x goto ep-b
\t\tnumgen random mod 2 vmap { 0 : goto ep-a, 1 : goto ep-b }
\t}

\tchain ep-a {
\t\tmeta l4proto tcp dnat to 10.244.1.5:6443
\t}

\tchain ep-b {
\t\tupdate @affinity-x { ip saddr }
\t\tmeta l4proto tcp dnat to 10.244.2.7:6443
\t}
}
table ip other {
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority raw; policy accept;
\t\tdnat to 192.0.2.99:1
\t}
}
"""

LOCAL = {IPv4Address("172.18.0.2")}


@pytest.mark.parametrize("form", ["json", "json-text", "list"])
def test_kernel_spellings(form: str) -> None:
    data = {"json": KERNEL_JSON, "json-text": json.dumps(KERNEL_JSON), "list": KERNEL_LIST}[form]
    rs = parse_ruleset(data)  # type: ignore[arg-type]
    assert rs.exists and set(rs.chains) == {"nat-prerouting", "filter-forward", "mark-for-masquerade",
                                            "reject-chain", "svc", "ep-a", "ep-b"}
    assert rs.chains["filter-forward"].priority == -110 and rs.chains["nat-prerouting"].priority == -100
    assert rs.sets["affinity-x"].dynamic and ("10.244.1.9",) in rs.sets["affinity-x"].elements
    # A client recorded in the affinity set sticks to its endpoint; anyone else may get either.
    stuck = trace_nftables(data, _pkt("10.244.1.9", "10.96.0.1", 443), LOCAL)  # type: ignore[arg-type]
    assert (stuck.verdict, stuck.endpoints, stuck.masquerade) == (Verdict.ACCEPT, ("10.244.2.7:6443",), False)
    anyone = trace_nftables(data, _pkt("172.18.0.50", "10.96.0.1", 443), LOCAL)  # type: ignore[arg-type]
    assert anyone.endpoints == ("10.244.1.5:6443", "10.244.2.7:6443") and anyone.masquerade
    refused = trace_nftables(data, _pkt("10.244.1.9", "10.96.0.2", 53, Protocol.UDP), LOCAL)  # type: ignore[arg-type]
    assert refused.verdict is Verdict.REJECT
    # Table "ip other" (which would DNAT everything) is not kube-proxy's and is never looked at.
    untouched = trace_nftables(data, _pkt("10.244.1.9", "10.96.0.3", 80), LOCAL)  # type: ignore[arg-type]
    assert untouched == TraceResult(Verdict.ACCEPT, (), False, ())


def test_json_rule_text_reads_like_nft() -> None:
    rs = parse_ruleset(KERNEL_JSON)
    assert [r.text for r in rs.chains["svc"].rules] == [
        "ip daddr 10.96.0.1 tcp dport 443 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "ip saddr @affinity-x goto ep-b",
        "numgen random mod 2 vmap { 0 : goto ep-a, 1 : goto ep-b }",
    ]
    assert [r.exprs for r in parse_ruleset(KERNEL_LIST).chains["svc"].rules] == \
        [r.exprs for r in rs.chains["svc"].rules]


def test_script_commands_apply_in_order() -> None:
    base = ("add table ip kube-proxy\n"
            "add chain ip kube-proxy pre { type nat hook prerouting priority -100 ; }\n"
            "add chain ip kube-proxy a\n"
            "add rule ip kube-proxy pre jump a\n"
            "add rule ip kube-proxy a ip daddr 10.0.0.1 dnat to 10.0.0.2\n"
            "add map ip kube-proxy m { type inet_proto . inet_service : verdict ; }\n"
            "add element ip kube-proxy m { tcp . 80 : drop, udp . 53 : accept }\n"
            "add rule ip kube-proxy pre meta l4proto . th dport vmap @m\n")
    dnat = trace_nftables(base, _pkt("10.9.9.9", "10.0.0.1", 80), LOCAL)
    assert dnat.endpoints == ("10.0.0.2:80",)  # a dnat without a port keeps the destination port
    assert trace_nftables(base, _pkt("10.9.9.9", "10.0.0.5", 80), LOCAL).verdict is Verdict.DROP
    changed = base + ("flush chain ip kube-proxy a\n"
                      "delete element ip kube-proxy m { tcp . 80 }\n"
                      "add rule ip kube-proxy pre ip saddr 10.9.0.0/16 drop\n")
    rs = parse_ruleset(changed)
    assert rs.chains["a"].rules == [] and set(rs.sets["m"].elements) == {("udp", "53")}
    assert trace_nftables(changed, _pkt("10.9.9.9", "10.0.0.1", 80), LOCAL).verdict is Verdict.DROP
    assert trace_nftables(changed, _pkt("10.8.9.9", "10.0.0.1", 80), LOCAL).verdict is Verdict.ACCEPT
    gone = changed + "delete table ip kube-proxy\n"
    assert parse_ruleset(gone).chains == {} and not parse_ruleset(gone).exists
    # Lines about other tables are not kube-proxy's and are skipped.
    assert parse_ruleset("add table ip filter\nadd chain ip filter x\n").chains == {}


def test_base_chain_order_and_policy() -> None:
    script = ("add table ip kube-proxy\n"
              "add chain ip kube-proxy late { type filter hook forward priority 10 ; policy drop ; }\n"
              "add chain ip kube-proxy early { type filter hook forward priority -10 ; }\n"
              "add rule ip kube-proxy early tcp dport 22 accept\n"
              "add rule ip kube-proxy late tcp dport 22 accept\n"
              "add rule ip kube-proxy early udp dport 53 drop\n")
    local: set[IPv4Address] = set()
    # accept ends only its own base chain: the later one still runs and its policy is drop.
    ssh = trace_nftables(script, _pkt("10.1.1.1", "10.2.2.2", 22), local)
    assert ssh.verdict is Verdict.ACCEPT
    assert ssh.path == ("kube-proxy early: tcp dport 22 accept", "kube-proxy late: tcp dport 22 accept")
    assert trace_nftables(script, _pkt("10.1.1.1", "10.2.2.2", 80), local).verdict is Verdict.DROP
    assert trace_nftables(script, _pkt("10.1.1.1", "10.2.2.2", 53, Protocol.UDP), local).verdict is Verdict.DROP
    # Input hook chains only see packets for local addresses.
    only_input = "add table ip kube-proxy\nadd chain ip kube-proxy in { type filter hook input priority 0 ; }\n" \
                 "add rule ip kube-proxy in reject\n"
    assert trace_nftables(only_input, _pkt("10.1.1.1", "10.2.2.2", 1), local).verdict is Verdict.ACCEPT
    assert trace_nftables(only_input, _pkt("10.1.1.1", "10.2.2.2", 1), {IPv4Address("10.2.2.2")}).verdict \
        is Verdict.REJECT


def test_rule_parser_spellings() -> None:
    a = parse_rule("mark and 0x004000 == 0 return")
    b = parse_rule("meta mark & 0x00004000 == 0x00000000 return")
    assert a.exprs == b.exprs
    assert parse_rule("mark set mark or 0x004000").exprs == parse_rule("meta mark set meta mark | 0x00004000").exprs
    assert parse_rule("ct state established,related accept").exprs[0].text == "ct state { established, related }"
    assert parse_rule('ip saddr 10.0.0.1 counter packets 3 bytes 180 drop comment "x y"').text == \
        'ip saddr 10.0.0.1 counter packets 3 bytes 180 drop comment "x y"'
    assert len(parse_rule("ip saddr 10.0.0.1 counter packets 3 bytes 180 drop").exprs) == 2


@pytest.mark.parametrize("bad, message", [
    ("ip6 saddr ::1 drop", "unsupported expression"),
    ("tcp flags syn drop", "unsupported expression"),
    ("ip daddr", "incomplete match"),
    ("dnat to example.com", "bad dnat address"),
    ("mark set mark and 0x1", "unsupported mark operation"),
    ("numgen random mod many vmap { 0 : drop }", "cannot read rule"),
])
def test_rule_parser_refuses_what_it_does_not_understand(bad: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        parse_rule(bad, "chain x")
    assert str(info.value).startswith("chain x: ")


def test_dangling_references_are_errors() -> None:
    jump = "add table ip kube-proxy\nadd chain ip kube-proxy p { type nat hook prerouting priority -100 ; }\n" \
           "add rule ip kube-proxy p jump nowhere\n"
    with pytest.raises(ValidationError, match="chain nowhere"):
        trace_nftables(jump, _pkt("10.0.0.1", "10.0.0.2", 1), LOCAL)
    lookup = "add table ip kube-proxy\nadd chain ip kube-proxy p { type nat hook prerouting priority -100 ; }\n" \
             "add rule ip kube-proxy p ip daddr @nothing drop\n"
    with pytest.raises(ValidationError, match="@nothing"):
        trace_nftables(lookup, _pkt("10.0.0.1", "10.0.0.2", 1), LOCAL)
    with pytest.raises(ValidationError, match="element of unknown set"):
        parse_ruleset("add table ip kube-proxy\nadd element ip kube-proxy s { 1.2.3.4 }\n")
    with pytest.raises(ValidationError, match="not valid nft JSON"):
        parse_ruleset("{ nope")
