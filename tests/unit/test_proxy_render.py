"""kube-proxy model building and iptables rendering (pure, no root)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from test_proxy_trace import CONFIG as FEATURE_CONFIG
from test_proxy_trace import small_cluster_state

from netk8s.errors import ValidationError
from netk8s.proxy import iptables as ipt
from netk8s.proxy.backend import ProxyState
from netk8s.proxy.hashing import endpoint_chain, service_chain
from netk8s.proxy.model import (
    Endpoint,
    Protocol,
    ProxyConfig,
    ServicePort,
    ServiceType,
    build_endpoints,
    build_service_ports,
    categorize_endpoints,
)

GOLDEN = Path(__file__).parent / "golden" / "proxy_iptables_small.txt"
CONFIG = ProxyConfig("node-1", IPv4Address("172.18.0.2"), IPv4Network("10.244.0.0/16"))


def service(ns: str, name: str, cluster_ip: str | None, ports: list[dict], svc_type: str = "ClusterIP") -> dict:
    spec: dict = {"type": svc_type, "ports": ports}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def endpoint(ip: str, ready: bool | None = True, node: str | None = "node-1", **conds: bool) -> dict:
    conditions = dict(conds)
    if ready is not None:
        conditions["ready"] = ready
    ep: dict = {"addresses": [ip], "conditions": conditions}
    if node is not None:
        ep["nodeName"] = node
    return ep


def epslice(ns: str, name: str, svc: str | None, endpoints: list[dict], ports: list[dict],
            address_type: str = "IPv4") -> dict:
    labels = {"kubernetes.io/service-name": svc} if svc else {}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "addressType": address_type, "endpoints": endpoints, "ports": ports}


def small_cluster() -> tuple[list[dict], list[dict]]:
    services = [
        service("default", "web", "10.96.12.34", [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]),
        service("default", "empty", "10.96.7.7", [{"port": 8080}]),
        service("default", "db", "None", [{"name": "pg", "port": 5432}]),
        service("default", "ext", None, [], svc_type="ExternalName"),
    ]
    slices = [
        epslice("default", "web-abc", "web",
                [endpoint("10.244.2.7", node="node-2"), endpoint("10.244.1.10"),
                 endpoint("10.244.2.9", ready=False, node="node-2")],
                [{"name": "http", "port": 8080, "protocol": "TCP"}]),
        epslice("default", "web-def", "web", [endpoint("10.244.1.5")],
                [{"name": "http", "port": 8080, "protocol": "TCP"}]),
        epslice("default", "db-xyz", "db", [endpoint("10.244.1.20")], [{"name": "pg", "port": 5432}]),
    ]
    return services, slices


def render_small(save_text: str = "") -> ipt.RenderResult:
    services, slices = small_cluster()
    return ipt.plan(build_service_ports(services), build_endpoints(slices, "node-1"), CONFIG, save_text)


# -- model ---------------------------------------------------------------------------------

def test_build_service_ports_skips_headless_externalname_and_ipless() -> None:
    services, _ = small_cluster()
    services.append(service("default", "pending", "", [{"port": 1}]))
    services.append(service("default", "v6", "fd00::1", [{"port": 1}]))
    ports = build_service_ports(services)
    assert [(p.service_port_name, p.protocol, p.port) for p in ports] == [
        ("default/empty", Protocol.TCP, 8080),
        ("default/web:http", Protocol.TCP, 80),
    ]
    assert ports[1].cluster_ip == IPv4Address("10.96.12.34")
    assert ports[1].service_type is ServiceType.CLUSTER_IP


def test_build_service_ports_multiple_ports_and_protocols() -> None:
    svc = service("kube-system", "kube-dns", "10.96.0.10", [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153, "protocol": "SCTP"},
        {"name": "bad", "port": 99, "protocol": "ICMP"},
    ])
    ports = build_service_ports([svc])
    assert [(p.port_name, p.protocol) for p in ports] == [
        ("dns", Protocol.UDP), ("dns-tcp", Protocol.TCP), ("metrics", Protocol.SCTP)]


def test_build_endpoints_resolves_ports_by_name_and_sorts() -> None:
    _, slices = small_cluster()
    slices.append(epslice("default", "web-v6", "web", [endpoint("fd00::5")], [{"name": "http", "port": 8080}],
                          address_type="IPv6"))
    slices.append(epslice("default", "orphan", None, [endpoint("10.244.9.9")], [{"name": "http", "port": 1}]))
    eps = build_endpoints(slices, "node-1")
    assert set(eps) == {"default/web:http", "default/db:pg"}
    web = eps["default/web:http"]
    # Sorted numerically by IP: .1.5 < .1.10 < .2.7 < .2.9.
    assert [e.address for e in web] == ["10.244.1.5:8080", "10.244.1.10:8080", "10.244.2.7:8080", "10.244.2.9:8080"]
    assert [e.ready for e in web] == [True, True, True, False]
    assert [e.is_local for e in web] == [True, True, False, False]
    assert web[2].node_name == "node-2"


def test_build_endpoints_conditions_default_and_dedupe() -> None:
    slices = [
        epslice("ns", "a", "svc", [endpoint("10.0.0.1", ready=None), endpoint("10.0.0.2", ready=False,
                                                                                  serving=True, terminating=True)],
                [{"name": "", "port": 80}]),
        epslice("ns", "b", "svc", [endpoint("10.0.0.2", ready=True)], [{"port": 80}]),
    ]
    eps = build_endpoints(slices, "elsewhere")["ns/svc"]
    first, second = eps
    assert (first.ready, first.serving, first.terminating) == (True, True, False)
    # Listed twice (not ready, then ready): the ready copy wins.
    assert second.ip == IPv4Address("10.0.0.2") and second.ready and not second.terminating
    assert not first.is_local


def test_proxy_config_mark_and_validation() -> None:
    assert CONFIG.masquerade_mark == "0x4000"
    assert ProxyConfig("n", IPv4Address("1.1.1.1"), masquerade_bit=15).masquerade_mark == "0x8000"
    with pytest.raises(ValidationError, match="masqueradeBit"):
        ProxyConfig("n", IPv4Address("1.1.1.1"), masquerade_bit=32)


# -- text helpers --------------------------------------------------------------------------

def test_quote_like_iptables_save() -> None:
    assert ipt.quote("KUBE-SVC_1") == "KUBE-SVC_1"
    assert ipt.quote("default/web:http") == '"default/web:http"'
    assert ipt.quote("kubernetes service portals") == '"kubernetes service portals"'
    assert ipt.quote('say "hi"') == '"say \\"hi\\""'
    assert ipt.quote("") == '""'


@pytest.mark.parametrize("count, kube, saved", [
    (1, ["1.0000000000"], []),
    (2, ["0.5000000000", "1.0000000000"], ["0.50000000000"]),
    (3, ["0.3333333333", "0.5000000000", "1.0000000000"], ["0.33333333349", "0.50000000000"]),
    (4, ["0.2500000000", "0.3333333333", "0.5000000000", "1.0000000000"],
     ["0.25000000000", "0.33333333349", "0.50000000000"]),
])
def test_probabilities_for_one_to_four_endpoints(count: int, kube: list[str], saved: list[str]) -> None:
    assert [ipt.kube_probability(i, count) for i in range(count)] == kube
    sp = ServicePort("ns", "svc", "p", Protocol.TCP, IPv4Address("10.96.0.5"), 80)
    eps = [Endpoint(IPv4Address(f"10.244.1.{i + 1}"), 8080) for i in range(count)]
    result = ipt.render([sp], {"ns/svc:p": eps}, CONFIG)
    svc_rules = result.rules()[("nat", service_chain("ns/svc:p", "tcp"))]
    jumps = [r for r in svc_rules if "-j KUBE-SEP-" in r]
    assert len(jumps) == count
    assert [m.group(1) for r in jumps if (m := re.search(r"--probability (\S+)", r))] == saved
    # Every endpoint but the last has a statistic match; the last catches the rest.
    assert all("-m statistic --mode random" in r for r in jumps[:-1])
    assert "statistic" not in jumps[-1]
    for i, ep in enumerate(eps):
        assert jumps[i].endswith("-j " + endpoint_chain("ns/svc:p", "tcp", ep.address))
        assert f'--comment "ns/svc:p -> {ep.address}"' in jumps[i]


def _reference_hash(text: str) -> str:
    """kube-proxy's scheme as written: the whole digest in base32, cut to 16 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode("ascii")[:16]


def test_fast_chain_hashes_equal_the_reference_scheme() -> None:
    for i in range(300):
        spn = f"ns-{i % 7}/svc-{i}:{'p' * (i % 5)}"
        for proto in ("tcp", "udp", "sctp"):
            assert ipt.port_proto_hash(spn, proto) == _reference_hash(spn + proto)
            assert ipt.service_chain(spn, proto) == "KUBE-SVC-" + _reference_hash(spn + proto)
            address = f"10.244.{i % 250}.{i % 199}:{8000 + i}"
            assert ipt.endpoint_chain(spn, proto, address) == "KUBE-SEP-" + _reference_hash(spn + proto + address)


def test_kube_probability_rejects_bad_index() -> None:
    with pytest.raises(ValueError):
        ipt.kube_probability(3, 3)


# -- rendering -------------------------------------------------------------------------------

def test_golden_small_cluster() -> None:
    text = render_small().text
    if os.environ.get("NETK8S_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_small_cluster_structure() -> None:
    result = render_small()
    rules = result.rules()
    web_svc = service_chain("default/web:http", "tcp")
    assert result.chains["nat"][:4] == ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
    assert web_svc in result.chains["nat"]
    # Three ready endpoints -> three KUBE-SEP chains; the not-ready one is left out.
    seps = [c for c in result.chains["nat"] if c.startswith("KUBE-SEP-")]
    assert seps == [endpoint_chain("default/web:http", "tcp", a)
                    for a in ("10.244.1.5:8080", "10.244.1.10:8080", "10.244.2.7:8080")]
    assert endpoint_chain("default/web:http", "tcp", "10.244.2.9:8080") not in result.text
    # No endpoints: REJECT in filter KUBE-SERVICES, no KUBE-SVC chain, no nat rule.
    assert rules[("filter", "KUBE-SERVICES")] == [
        '-A KUBE-SERVICES -d 10.96.7.7/32 -p tcp -m comment --comment "default/empty has no endpoints" '
        "-m tcp --dport 8080 -j REJECT --reject-with icmp-port-unreachable"]
    assert service_chain("default/empty", "tcp") not in result.text
    assert "10.96.7.7" not in "\n".join(rules[("nat", "KUBE-SERVICES")])
    # Headless and ExternalName: nothing at all.
    assert "default/db" not in result.text and "default/ext" not in result.text
    # The nodeports jump is the last rule of nat KUBE-SERVICES.
    assert rules[("nat", "KUBE-SERVICES")][-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    # Masquerade for off-cluster sources comes first in the service chain.
    assert rules[("nat", web_svc)][0] == (
        f'-A {web_svc} ! -s 10.244.0.0/16 -d 10.96.12.34/32 -p tcp -m comment --comment "default/web:http cluster IP" '
        "-m tcp --dport 80 -j KUBE-MARK-MASQ")
    assert result.deleted_chains == {}


def test_udp_and_sctp_rules_use_their_protocol() -> None:
    ports = [ServicePort("kube-system", "kube-dns", "dns", Protocol.UDP, IPv4Address("10.96.0.10"), 53),
             ServicePort("ns", "s", "", Protocol.SCTP, IPv4Address("10.96.0.11"), 9)]
    eps = {"kube-system/kube-dns:dns": [Endpoint(IPv4Address("10.244.0.3"), 53)]}
    result = ipt.render(ports, eps, CONFIG)
    rules = result.rules()
    sep = endpoint_chain("kube-system/kube-dns:dns", "udp", "10.244.0.3:53")
    assert rules[("nat", sep)] == [
        f'-A {sep} -s 10.244.0.3/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ',
        f'-A {sep} -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp '
        "-j DNAT --to-destination 10.244.0.3:53",
    ]
    assert any("-p udp" in r and "--dport 53" in r and service_chain("kube-system/kube-dns:dns", "udp") in r
               for r in rules[("nat", "KUBE-SERVICES")])
    assert rules[("filter", "KUBE-SERVICES")] == [
        '-A KUBE-SERVICES -d 10.96.0.11/32 -p sctp -m comment --comment "ns/s has no endpoints" '
        "-m sctp --dport 9 -j REJECT --reject-with icmp-port-unreachable"]


def test_no_cluster_cidr_means_no_masquerade_rule_and_custom_mark() -> None:
    config = ProxyConfig("node-1", IPv4Address("172.18.0.2"), None, masquerade_bit=15)
    sp = ServicePort("ns", "svc", "p", Protocol.TCP, IPv4Address("10.96.0.5"), 80)
    result = ipt.render([sp], {"ns/svc:p": [Endpoint(IPv4Address("10.244.1.1"), 80)]}, config)
    svc_rules = result.rules()[("nat", service_chain("ns/svc:p", "tcp"))]
    assert len(svc_rules) == 1 and "KUBE-MARK-MASQ" not in svc_rules[0]
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000" in result.text
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x8000/0x8000 -j RETURN" in result.text
    assert "0x4000" not in result.text


def test_all_endpoints_not_serving_rejects() -> None:
    sp = ServicePort("ns", "svc", "p", Protocol.TCP, IPv4Address("10.96.0.5"), 80)
    eps = {"ns/svc:p": [Endpoint(IPv4Address("10.244.1.1"), 80, ready=False, serving=False, terminating=True),
                        Endpoint(IPv4Address("10.244.1.2"), 80, ready=False, serving=True, terminating=False)]}
    result = ipt.render([sp], eps, CONFIG)
    assert "ns/svc:p has no endpoints" in result.text
    assert "KUBE-SVC-" not in result.text and "KUBE-SEP-" not in result.text


def test_serving_terminating_endpoints_are_the_fallback() -> None:
    sp = ServicePort("ns", "svc", "p", Protocol.TCP, IPv4Address("10.96.0.5"), 80)
    draining = Endpoint(IPv4Address("10.244.1.1"), 80, ready=False, serving=True, terminating=True)
    eps = {"ns/svc:p": [draining]}
    result = ipt.render([sp], eps, CONFIG)
    assert "has no endpoints" not in result.text
    assert endpoint_chain("ns/svc:p", "tcp", "10.244.1.1:80") in result.chains["nat"]
    # As soon as one endpoint is ready, the terminating one gets no traffic.
    ready = Endpoint(IPv4Address("10.244.1.2"), 80)
    result = ipt.render([sp], {"ns/svc:p": [draining, ready]}, CONFIG)
    assert endpoint_chain("ns/svc:p", "tcp", "10.244.1.1:80") not in result.text
    assert endpoint_chain("ns/svc:p", "tcp", "10.244.1.2:80") in result.chains["nat"]


def test_stale_chains_deleted_only_for_our_prefixes() -> None:
    keep = service_chain("default/web:http", "tcp")
    ours = ["KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SEP-BBBBBBBBBBBBBBBB", "KUBE-EXT-CCCCCCCCCCCCCCCC",
            "KUBE-FW-DDDDDDDDDDDDDDDD", "KUBE-XLB-EEEEEEEEEEEEEEEE", "KUBE-SVL-FFFFFFFFFFFFFFFF"]
    foreign = ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "CNI-abc123", "KUBE-SERVICES", "KUBE-MARK-DROP", "nk-x-OTHER"]
    existing = {"nat": set(ours + foreign + [keep, "PREROUTING"]), "filter": {"KUBE-SVC-GGGGGGGGGGGGGGGG", "INPUT"}}
    services, slices = small_cluster()
    result = ipt.render(build_service_ports(services), build_endpoints(slices, "node-1"), CONFIG, existing)
    assert result.deleted_chains == {"nat": tuple(sorted(ours)), "filter": ("KUBE-SVC-GGGGGGGGGGGGGGGG",)}
    nat_section = result.text.split("*nat\n", 1)[1]
    lines = nat_section.splitlines()
    for chain in ours:
        # Declared (flushed) and then deleted, after every other rule of the table.
        assert f":{chain} - [0:0]" in lines
        assert f"-X {chain}" in lines
        assert lines.index(f"-X {chain}") > max(i for i, ln in enumerate(lines) if ln.startswith("-A "))
    for chain in foreign + [keep]:
        assert f"-X {chain}" not in result.text
    # KUBE-FIREWALL is declared (kube-proxy writes its localnet rule into it) but never deleted.
    assert ":KUBE-FIREWALL - [0:0]" in result.text.split("*nat\n", 1)[0]
    assert ":KUBE-FIREWALL" not in nat_section and ":PREROUTING" not in result.text
    assert "-X KUBE-SVC-GGGGGGGGGGGGGGGG" in result.text.split("*nat\n", 1)[0]


SAVE_WITH_SOME_JUMPS = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_missing_jumps_on_partial_save() -> None:
    missing = ipt.missing_jumps(SAVE_WITH_SOME_JUMPS)
    assert missing == [
        '-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-I INPUT 1 -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
    by_table = ipt.missing_jumps_by_table(SAVE_WITH_SOME_JUMPS)
    assert by_table["nat"] == [missing[-1]] and by_table["filter"] == missing[:-1]
    # The same rule text in the wrong table does not count as present.
    wrong_table = SAVE_WITH_SOME_JUMPS.replace("*nat", "*mangle")
    assert len(ipt.missing_jumps(wrong_table)) == len(missing) + 2
    assert len(ipt.missing_jumps("")) == len(ipt.JUMP_RULES) == 12
    complete = "*filter\n" + "\n".join(j.save_line for j in ipt.JUMP_RULES if j.table == "filter") + \
        "\nCOMMIT\n*nat\n" + "\n".join(j.save_line for j in ipt.JUMP_RULES if j.table == "nat") + "\nCOMMIT\n"
    assert ipt.missing_jumps(complete) == []


def test_plan_puts_missing_jumps_into_their_table_section() -> None:
    result = render_small(SAVE_WITH_SOME_JUMPS)
    filter_part, nat_part = result.text.split("*nat\n", 1)
    assert "-I POSTROUTING 1" in nat_part and "-I POSTROUTING 1" not in filter_part
    assert "-I INPUT 1" in filter_part and "-I PREROUTING 1" not in result.text
    # Jumps come after the chain declarations they refer to, before COMMIT.
    lines = nat_part.splitlines()
    assert lines.index(":KUBE-POSTROUTING - [0:0]") < [i for i, ln in enumerate(lines) if ln.startswith("-I ")][0]
    assert lines[-1] == "COMMIT"


def test_chains_in_and_rules_by_chain_parse_save_output() -> None:
    chains = ipt.chains_in(SAVE_WITH_SOME_JUMPS)
    assert chains == {"filter": {"INPUT", "FORWARD", "OUTPUT", "KUBE-FORWARD", "KUBE-SERVICES"},
                      "nat": {"PREROUTING", "OUTPUT", "POSTROUTING", "KUBE-SERVICES"}}
    rules = ipt.rules_by_chain(SAVE_WITH_SOME_JUMPS)
    assert rules[("nat", "OUTPUT")] == [
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    assert rules[("filter", "KUBE-SERVICES")] == []


# -- kube-proxy's full feature set -------------------------------------------------------------

FEATURES_GOLDEN = Path(__file__).parent / "golden" / "proxy_iptables_features.txt"


def _features() -> tuple[ProxyState, ipt.RenderResult]:
    state = small_cluster_state()
    return state, ipt.plan(state.service_ports, state.endpoints, FEATURE_CONFIG, "")


def test_golden_feature_cluster() -> None:
    # NodePort (Cluster/Local), LoadBalancer with and without source ranges, externalIPs, no
    # endpoints, internalTrafficPolicy Local, affinity, terminating fallback, TCP+UDP, SCTP.
    text = _features()[1].text
    if os.environ.get("NETK8S_UPDATE_GOLDEN") == "1":
        FEATURES_GOLDEN.write_text(text)
    assert text == FEATURES_GOLDEN.read_text()


def _chain_rules(result: ipt.RenderResult, chain: str) -> list[str]:
    return result.rules()[("nat", chain)]


def test_external_traffic_policy_local_chain_layout() -> None:
    _, result = _features()
    spn = "default/np-local:http"
    ext, svc, svl = ipt.ext_chain(spn, "tcp"), service_chain(spn, "tcp"), ipt.svl_chain(spn, "tcp")
    assert _chain_rules(result, ext) == [
        f'-A {ext} -s 10.244.0.0/16 -m comment --comment "pod traffic for {spn} external destinations" -j {svc}',
        f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {spn} external destinations" '
        "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
        f'-A {ext} -m comment --comment "route LOCAL traffic for {spn} external destinations" '
        f"-m addrtype --src-type LOCAL -j {svc}",
        f"-A {ext} -j {svl}",
    ]
    # SVL holds only the local endpoint; SVC (for the short-circuit) all of them.
    assert [r.rsplit(" -j ", 1)[1] for r in _chain_rules(result, svl)] == [
        endpoint_chain(spn, "tcp", "10.244.1.5:8080")]
    assert len([r for r in _chain_rules(result, svc) if "-j KUBE-SEP-" in r]) == 2
    assert f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{spn}" -m tcp --dport 30081 -j {ext}' in result.text
    assert (f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{spn} health check node port" -m tcp --dport 32000 '
            "-j ACCEPT") in result.rules()[("filter", "KUBE-NODEPORTS")]
    # Without local endpoints: no final jump in EXT, and a DROP in KUBE-EXTERNAL-SERVICES.
    remote = "default/np-local-remote:http"
    assert not any(r.endswith("-j " + ipt.svl_chain(remote, "tcp"))
                   for r in _chain_rules(result, ipt.ext_chain(remote, "tcp")))
    assert ipt.svl_chain(remote, "tcp") not in result.chains["nat"]
    assert (f'-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "{remote} has no local endpoints" '
            "-m addrtype --dst-type LOCAL -m tcp --dport 30082 -j DROP") in result.text


def test_load_balancer_source_ranges_layout() -> None:
    _, result = _features()
    spn = "default/lb:http"
    fw, ext = ipt.fw_chain(spn, "tcp"), ipt.ext_chain(spn, "tcp")
    assert (f'-A KUBE-SERVICES -d 172.18.255.200/32 -p tcp -m comment --comment "{spn} loadbalancer IP" '
            f"-m tcp --dport 80 -j {fw}") in result.text
    assert _chain_rules(result, fw) == [
        f'-A {fw} -s 172.18.0.0/24 -m comment --comment "{spn} loadbalancer IP" -j {ext}',
        f'-A {fw} -s 203.0.113.0/24 -m comment --comment "{spn} loadbalancer IP" -j {ext}',
        # The node IP (172.18.0.2) is in a range: the VIP itself is allowed as a source too.
        f'-A {fw} -s 172.18.255.200/32 -m comment --comment "{spn} loadbalancer IP" -j {ext}',
        f'-A {fw} -m comment --comment "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"',
    ]
    assert result.rules()[("filter", "KUBE-PROXY-FIREWALL")] == [
        f'-A KUBE-PROXY-FIREWALL -d 172.18.255.200/32 -p tcp -m comment --comment "{spn} traffic not accepted by '
        f'{fw}" -m tcp --dport 80 -j DROP']
    assert _chain_rules(result, ext)[0] == (
        f'-A {ext} -m comment --comment "masquerade traffic for {spn} external destinations" -j KUBE-MARK-MASQ')
    # Without source ranges the LB IP goes straight to EXT.
    open_spn = "default/lb-open:http"
    assert ipt.fw_chain(open_spn, "tcp") not in result.text
    assert f"--dport 80 -j {ipt.ext_chain(open_spn, 'tcp')}" in result.text


def test_no_endpoints_rejects_every_destination_of_the_service() -> None:
    _, result = _features()
    rejects = [r for r in result.text.splitlines() if '"default/empty:http has no endpoints"' in r]
    assert [r.split(" ", 2)[1] for r in rejects] == ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
                                                     "KUBE-EXTERNAL-SERVICES"]
    assert all(r.endswith("-j REJECT --reject-with icmp-port-unreachable") for r in rejects)
    assert "-d 192.0.2.51/32" in rejects[1] and "--dst-type LOCAL -m tcp --dport 30084" in rejects[2]
    assert service_chain("default/empty:http", "tcp") not in result.text
    assert ipt.ext_chain("default/empty:http", "tcp") not in result.text


def test_internal_traffic_policy_local() -> None:
    _, result = _features()
    spn = "default/itp-local:http"
    svl = ipt.svl_chain(spn, "tcp")
    assert (f'-A KUBE-SERVICES -d 10.96.0.21/32 -p tcp -m comment --comment "{spn} cluster IP" -m tcp --dport 80 '
            f"-j {svl}") in result.text
    assert service_chain(spn, "tcp") not in result.chains["nat"]
    rules = _chain_rules(result, svl)
    assert rules[0].startswith(f"-A {svl} ! -s 10.244.0.0/16 -d 10.96.0.21/32") and rules[0].endswith("KUBE-MARK-MASQ")
    assert rules[1:] == [f'-A {svl} -m comment --comment "{spn} -> 10.244.1.5:8080" '
                         f"-j {endpoint_chain(spn, 'tcp', '10.244.1.5:8080')}"]
    assert ('-A KUBE-SERVICES -d 10.96.0.22/32 -p tcp -m comment --comment "default/itp-local-none:http has no '
            'local endpoints" -m tcp --dport 80 -j DROP') in result.rules()[("filter", "KUBE-SERVICES")]


def test_session_affinity_rules() -> None:
    _, result = _features()
    spn = "default/sticky:http"
    svc = service_chain(spn, "tcp")
    a, b = (endpoint_chain(spn, "tcp", f"{ip}:8080") for ip in ("10.244.1.5", "10.244.2.7"))
    assert _chain_rules(result, svc)[1:] == [
        f'-A {svc} -m comment --comment "{spn} -> 10.244.1.5:8080" -m recent --rcheck --seconds 600 --reap '
        f"--name {a} --mask 255.255.255.255 --rsource -j {a}",
        f'-A {svc} -m comment --comment "{spn} -> 10.244.2.7:8080" -m recent --rcheck --seconds 600 --reap '
        f"--name {b} --mask 255.255.255.255 --rsource -j {b}",
        f'-A {svc} -m comment --comment "{spn} -> 10.244.1.5:8080" -m statistic --mode random '
        f"--probability 0.50000000000 -j {a}",
        f'-A {svc} -m comment --comment "{spn} -> 10.244.2.7:8080" -j {b}',
    ]
    assert _chain_rules(result, a)[1] == (
        f'-A {a} -p tcp -m comment --comment "{spn}" -m recent --set --name {a} --mask 255.255.255.255 --rsource '
        "-m tcp -j DNAT --to-destination 10.244.1.5:8080")


def test_external_ips_and_multiple_protocols() -> None:
    _, result = _features()
    spn = "default/extip:http"
    assert (f'-A KUBE-SERVICES -d 192.0.2.50/32 -p tcp -m comment --comment "{spn} external IP" -m tcp --dport 80 '
            f"-j {ipt.ext_chain(spn, 'tcp')}") in result.text
    udp = service_chain("kube-system/kube-dns:dns", "udp")
    tcp = service_chain("kube-system/kube-dns:dns-tcp", "tcp")
    assert udp != tcp and {udp, tcp} <= set(result.chains["nat"])
    assert "-A KUBE-SERVICES -d 10.96.0.25/32 -p sctp" in result.text and "-m sctp -j DNAT" in result.text


def test_localnet_guard_and_localhost_nodeports_off() -> None:
    _, result = _features()
    assert result.rules()[("filter", "KUBE-FIREWALL")] == [
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" '
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"]
    assert "-I INPUT 1 -j KUBE-FIREWALL" in result.text and "-I OUTPUT 1 -j KUBE-FIREWALL" in result.text
    config = dataclasses.replace(CONFIG, localhost_node_ports=False)
    services, slices = small_cluster()
    off = ipt.plan(build_service_ports(services), build_endpoints(slices, "node-1"), config, "")
    assert "KUBE-FIREWALL" not in off.text
    assert off.rules()[("nat", "KUBE-SERVICES")][-1] == (
        '-A KUBE-SERVICES ! -d 127.0.0.0/8 -m comment --comment "kubernetes service nodeports; NOTE: this must be '
        'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')


def test_masquerade_all() -> None:
    config = dataclasses.replace(CONFIG, masquerade_all=True)
    sp = ServicePort("ns", "svc", "p", Protocol.TCP, IPv4Address("10.96.0.5"), 80)
    result = ipt.render([sp], {"ns/svc:p": [Endpoint(IPv4Address("10.244.1.1"), 80)]}, config)
    svc = service_chain("ns/svc:p", "tcp")
    assert result.rules()[("nat", svc)][0] == (
        f'-A {svc} -d 10.96.0.5/32 -p tcp -m comment --comment "ns/svc:p cluster IP" -m tcp --dport 80 '
        "-j KUBE-MARK-MASQ")


def test_kubelet_jumps_are_checked_too() -> None:
    rules = ipt.jump_rules(CONFIG)
    assert rules[-2:] == ipt.KUBELET_JUMP_RULES
    assert [r.save_line for r in ipt.KUBELET_JUMP_RULES] == ["-A INPUT -j KUBE-FIREWALL", "-A OUTPUT -j KUBE-FIREWALL"]
    assert ipt.missing_jumps(SAVE_WITH_SOME_JUMPS, rules)[-2:] == [
        "-I OUTPUT 1 -j KUBE-FIREWALL", '-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" '
        "-j KUBE-POSTROUTING"]
    assert ipt.jump_rules(dataclasses.replace(CONFIG, localhost_node_ports=False)) == ipt.JUMP_RULES


def test_partial_render_writes_only_the_named_services_chains() -> None:
    state, full = _features()
    partial = ipt.render(state.service_ports, state.endpoints, FEATURE_CONFIG, only=frozenset({"default/lb"}))
    assert not partial.full and partial.written_services == {"default/lb"}
    service_declared = {c for c in partial.chains["nat"] if ipt.is_service_chain(c)}
    assert service_declared == set(full.service_chains["default/lb"])
    # The top-level chains are complete: identical to the full render's.
    for key in (("nat", "KUBE-SERVICES"), ("nat", "KUBE-NODEPORTS"), ("filter", "KUBE-SERVICES"),
                ("filter", "KUBE-EXTERNAL-SERVICES"), ("filter", "KUBE-PROXY-FIREWALL")):
        assert partial.rules()[key] == full.rules()[key], key
    # ... and the bookkeeping still knows every service's chains.
    assert partial.service_chains == full.service_chains
    assert partial.written_chain_count == len(full.service_chains["default/lb"])


# -- the model's traffic-policy logic ------------------------------------------------------------

def _sp(**kw: object) -> ServicePort:
    return ServicePort("ns", "s", "", Protocol.TCP, IPv4Address("10.96.0.1"), 80, **kw)  # type: ignore[arg-type]


def _e(last: int, local: bool = False, ready: bool = True, serving: bool = True, terminating: bool = False) -> Endpoint:
    return Endpoint(IPv4Address(f"10.244.0.{last}"), 80, ready=ready, serving=serving, terminating=terminating,
                    is_local=local)


def test_categorize_endpoints_cluster_and_local() -> None:
    eps = [_e(1, local=True), _e(2), _e(3, local=True, ready=False, terminating=True), _e(4, ready=False,
                                                                                        serving=False)]
    plain = categorize_endpoints(_sp(), eps)
    assert plain.cluster == (eps[0], eps[1]) and plain.local == () and plain.reachable == plain.cluster
    assert plain.has_any
    itp = categorize_endpoints(_sp(internal_policy_local=True), eps)
    assert itp.cluster == () and itp.local == (eps[0],) and itp.reachable == (eps[0],)
    etp = categorize_endpoints(_sp(node_port=30000, external_policy_local=True), eps)
    assert etp.cluster == (eps[0], eps[1]) and etp.local == (eps[0],) and etp.reachable == (eps[0], eps[1])
    # externalTrafficPolicy Local without an external destination is ignored, as kube-proxy does.
    assert not _sp(external_policy_local=True).external_local


def test_categorize_endpoints_terminating_fallback_per_set() -> None:
    remote_ready = _e(2)
    local_draining = _e(3, local=True, ready=False, terminating=True)
    cats = categorize_endpoints(_sp(node_port=30000, external_policy_local=True), [remote_ready, local_draining])
    # Cluster set: the ready one only. Local set: no ready local endpoint, so the serving terminating one.
    assert cats.cluster == (remote_ready,) and cats.local == (local_draining,)
    assert cats.reachable == (remote_ready, local_draining)
    none = categorize_endpoints(_sp(internal_policy_local=True), [remote_ready])
    assert none.local == () and none.has_any  # endpoints exist elsewhere: DROP, not REJECT
    assert not categorize_endpoints(_sp(), [_e(5, ready=False, serving=False)]).has_any


def test_build_service_ports_reads_every_proxy_field() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns", "name": "lb"},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9", "externalIPs": ["192.0.2.9", "bad"],
                    "loadBalancerSourceRanges": [" 203.0.113.0/24", "10.0.0.1/8"],
                    "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                    "healthCheckNodePort": 32001, "sessionAffinity": "ClientIP",
                    "ports": [{"port": 80, "nodePort": 30001}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.200"}, {"hostname": "lb.example"}]}}}
    (sp,) = build_service_ports([svc])
    assert sp.external_ips == (IPv4Address("192.0.2.9"),)
    assert sp.load_balancer_ips == (IPv4Address("172.18.255.200"),)
    assert sp.load_balancer_source_ranges == (IPv4Network("10.0.0.0/8"), IPv4Network("203.0.113.0/24"))
    assert sp.external_local and sp.internal_policy_local and sp.health_check_node_port == 32001
    assert sp.session_affinity_seconds == 10800 and sp.node_port == 30001
    # Ingress IPs and source ranges count only on LoadBalancer services.
    svc["spec"]["type"] = "NodePort"
    (np,) = build_service_ports([svc])
    assert np.load_balancer_ips == () and np.load_balancer_source_ranges == ()


def test_services_for_another_proxy_or_headless_get_no_rules() -> None:
    from netk8s.proxy.model import build_service_ports

    def svc(name: str, labels: dict, **spec: object) -> dict:
        return {"metadata": {"name": name, "namespace": "ns", "labels": labels},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}], **spec}}

    ports = build_service_ports([
        svc("mine", {}),
        svc("theirs", {"service.kubernetes.io/service-proxy-name": "other-proxy"}),
        svc("headless-label", {"service.kubernetes.io/headless": ""}),
        svc("headless", {}, clusterIP="None"),
        svc("external-name", {}, type="ExternalName", externalName="example.com"),
    ])
    assert [p.name for p in ports] == ["mine"]
