"""Packet-flow table for kube-proxy's iptables mode, checked with the tracer over rendered rules (pure, no root).

``small_cluster_state()`` (a fixed cluster seen from node-1) and ``FLOW_CASES``
(packet -> verdict, endpoints, masquerade) are mode-neutral: the nftables
tests import them (``from test_proxy_trace import FLOW_CASES, ...``) and run
the same table through their own renderer and tracer. Cases that only hold in
iptables mode (localhost NodePorts and the localnet guard, which kube-proxy's
nftables mode does not implement) carry ``iptables_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import pytest

from netk8s.errors import ValidationError
from netk8s.proxy import iptables as ipt
from netk8s.proxy.backend import ProxyState
from netk8s.proxy.model import Protocol, ProxyConfig, build_endpoints, build_service_ports
from netk8s.proxy.trace import IptablesTables, Packet, TraceResult, Verdict, describe, trace_iptables

NODE = "node-1"
NODE_IP = IPv4Address("172.18.0.2")
CONFIG = ProxyConfig(NODE, NODE_IP, IPv4Network("10.244.0.0/16"))
# The node's own addresses: its underlay address and its pod bridge gateway.
LOCAL_ADDRESSES = frozenset({NODE_IP, IPv4Address("10.244.1.1")})

LOCAL_POD = "10.244.1.5"  # an endpoint on node-1
OTHER_LOCAL_POD = "10.244.1.9"  # a client pod on node-1, endpoint of nothing
REMOTE_POD = "10.244.2.7"  # an endpoint on node-2
EXTERNAL = "172.18.0.100"  # an external host on the underlay
ALLOWED = "203.0.113.7"  # inside the LB's loadBalancerSourceRanges
DENIED = "198.51.100.7"  # outside them


def _svc(name: str, cluster_ip: str, ports: list[dict], svc_type: str = "ClusterIP", namespace: str = "default",
         **spec: object) -> dict:
    status = spec.pop("status", None)
    obj: dict = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": name},
                 "spec": {"type": svc_type, "clusterIP": cluster_ip, "ports": ports, **spec}}
    if status:
        obj["status"] = status
    return obj


def _ep(ip: str, node: str, ready: bool = True, serving: bool | None = None, terminating: bool = False) -> dict:
    conditions = {"ready": ready, "serving": ready if serving is None else serving, "terminating": terminating}
    return {"addresses": [ip], "nodeName": node, "conditions": conditions}


def _slice(service: str, endpoints: list[dict], ports: list[dict], namespace: str = "default") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": namespace, "name": f"{service}-x",
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": endpoints, "ports": ports}


HTTP = [{"name": "http", "port": 80, "protocol": "TCP"}]
HTTP_EP = [{"name": "http", "port": 8080, "protocol": "TCP"}]
BOTH = [_ep(LOCAL_POD, NODE), _ep(REMOTE_POD, "node-2")]


def small_cluster_objects() -> tuple[list[dict], list[dict]]:
    """Services and EndpointSlices covering every kube-proxy feature the modes implement."""
    services = [
        _svc("web", "10.96.0.11", HTTP),
        _svc("solo", "10.96.0.12", HTTP),
        _svc("np-cluster", "10.96.0.13", [{**HTTP[0], "nodePort": 30080}], "NodePort"),
        _svc("np-local", "10.96.0.14", [{**HTTP[0], "nodePort": 30081}], "NodePort",
             externalTrafficPolicy="Local", healthCheckNodePort=32000),
        _svc("np-local-remote", "10.96.0.15", [{**HTTP[0], "nodePort": 30082}], "NodePort",
             externalTrafficPolicy="Local"),
        _svc("lb", "10.96.0.16", [{**HTTP[0], "nodePort": 30083}], "LoadBalancer",
             loadBalancerSourceRanges=["203.0.113.0/24", "172.18.0.0/24"],
             status={"loadBalancer": {"ingress": [{"ip": "172.18.255.200"}]}}),
        _svc("lb-open", "10.96.0.17", [{**HTTP[0], "nodePort": 30085}], "LoadBalancer",
             status={"loadBalancer": {"ingress": [{"ip": "172.18.255.201"}]}}),
        _svc("extip", "10.96.0.18", HTTP, externalIPs=["192.0.2.50"]),
        _svc("empty", "10.96.0.20", [{**HTTP[0], "nodePort": 30084}], "NodePort", externalIPs=["192.0.2.51"]),
        _svc("itp-local", "10.96.0.21", HTTP, internalTrafficPolicy="Local"),
        _svc("itp-local-none", "10.96.0.22", HTTP, internalTrafficPolicy="Local"),
        _svc("sticky", "10.96.0.23", HTTP, sessionAffinity="ClientIP",
             sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
        _svc("drain", "10.96.0.24", HTTP),
        _svc("kube-dns", "10.96.0.10", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
             namespace="kube-system"),
        _svc("sctp", "10.96.0.25", [{"name": "s", "port": 9, "protocol": "SCTP"}]),
    ]
    slices = [
        _slice("web", BOTH, HTTP_EP),
        _slice("solo", [_ep("10.244.1.6", NODE)], HTTP_EP),
        _slice("np-cluster", BOTH, HTTP_EP),
        _slice("np-local", BOTH, HTTP_EP),
        _slice("np-local-remote", [_ep("10.244.2.8", "node-2")], HTTP_EP),
        _slice("lb", [_ep(REMOTE_POD, "node-2")], HTTP_EP),
        _slice("lb-open", [_ep(REMOTE_POD, "node-2")], HTTP_EP),
        _slice("extip", [_ep(REMOTE_POD, "node-2")], HTTP_EP),
        _slice("empty", [_ep("10.244.1.30", NODE, ready=False, serving=False)], HTTP_EP),
        _slice("itp-local", BOTH, HTTP_EP),
        _slice("itp-local-none", [_ep(REMOTE_POD, "node-2")], HTTP_EP),
        _slice("sticky", BOTH, HTTP_EP),
        _slice("drain", [_ep("10.244.1.7", NODE, ready=False, serving=True, terminating=True),
                         _ep("10.244.2.9", "node-2", ready=False, serving=False, terminating=True)], HTTP_EP),
        _slice("kube-dns", [_ep("10.244.1.3", NODE)], [{"name": "dns", "port": 53, "protocol": "UDP"}],
               namespace="kube-system"),
        {**_slice("kube-dns", [_ep("10.244.2.3", "node-2")], [{"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
                  namespace="kube-system"),
         "metadata": {"namespace": "kube-system", "name": "kube-dns-tcp",
                      "labels": {"kubernetes.io/service-name": "kube-dns"}}},
        _slice("sctp", [_ep(REMOTE_POD, "node-2")], [{"name": "s", "port": 9999, "protocol": "SCTP"}]),
    ]
    return services, slices


def small_cluster_state() -> ProxyState:
    services, slices = small_cluster_objects()
    return ProxyState.of(build_service_ports(services), build_endpoints(slices, NODE))


@dataclass(frozen=True)
class FlowCase:
    """One packet and what must happen to it on node-1."""

    id: str
    packet: Packet
    verdict: Verdict
    endpoints: tuple[str, ...] = ()
    masquerade: bool = False
    iptables_only: bool = False


def _pkt(src: str, dst: str, port: int, proto: Protocol = Protocol.TCP, from_node: bool = False) -> Packet:
    return Packet(IPv4Address(src), proto, IPv4Address(dst), port, from_node)


A, R = Verdict.ACCEPT, Verdict.REJECT
LOCAL_EP, REMOTE_EP = f"{LOCAL_POD}:8080", f"{REMOTE_POD}:8080"
NODE_S = str(NODE_IP)

FLOW_CASES: tuple[FlowCase, ...] = (
    # ClusterIP
    FlowCase("pod to cluster IP", _pkt(OTHER_LOCAL_POD, "10.96.0.11", 80), A, (LOCAL_EP, REMOTE_EP)),
    FlowCase("hairpin: endpoint to its own service", _pkt("10.244.1.6", "10.96.0.12", 80), A, ("10.244.1.6:8080",),
             masquerade=True),
    FlowCase("other pod to one-endpoint service", _pkt(OTHER_LOCAL_POD, "10.96.0.12", 80), A, ("10.244.1.6:8080",)),
    FlowCase("external to cluster IP is masqueraded", _pkt(EXTERNAL, "10.96.0.11", 80), A, (LOCAL_EP, REMOTE_EP),
             masquerade=True),
    FlowCase("node to cluster IP is masqueraded", _pkt(NODE_S, "10.96.0.11", 80, from_node=True), A,
             (LOCAL_EP, REMOTE_EP), masquerade=True),
    FlowCase("wrong port of a cluster IP is not DNATed", _pkt(OTHER_LOCAL_POD, "10.96.0.11", 81), A),
    # NodePort, externalTrafficPolicy Cluster
    FlowCase("external to NodePort (Cluster)", _pkt(EXTERNAL, NODE_S, 30080), A, (LOCAL_EP, REMOTE_EP),
             masquerade=True),
    FlowCase("node to its own NodePort", _pkt(NODE_S, NODE_S, 30080, from_node=True), A, (LOCAL_EP, REMOTE_EP),
             masquerade=True),
    FlowCase("node to 127.0.0.1:NodePort", _pkt("127.0.0.1", "127.0.0.1", 30080, from_node=True), A,
             (LOCAL_EP, REMOTE_EP), masquerade=True, iptables_only=True),
    FlowCase("pod to NodePort on node IP (Cluster)", _pkt(OTHER_LOCAL_POD, NODE_S, 30080), A, (LOCAL_EP, REMOTE_EP),
             masquerade=True),
    # NodePort, externalTrafficPolicy Local
    FlowCase("external to NodePort (Local) keeps source", _pkt(EXTERNAL, NODE_S, 30081), A, (LOCAL_EP,)),
    FlowCase("pod to NodePort (Local) short-circuits to all endpoints", _pkt(OTHER_LOCAL_POD, NODE_S, 30081), A,
             (LOCAL_EP, REMOTE_EP)),
    FlowCase("node to NodePort (Local) is masqueraded to all endpoints", _pkt(NODE_S, NODE_S, 30081, from_node=True),
             A, (LOCAL_EP, REMOTE_EP), masquerade=True),
    FlowCase("health check node port is accepted", _pkt(EXTERNAL, NODE_S, 32000), A),
    FlowCase("external to NodePort (Local) without local endpoints is dropped", _pkt(EXTERNAL, NODE_S, 30082),
             Verdict.DROP),
    FlowCase("pod to NodePort (Local) without local endpoints reaches remote ones", _pkt(OTHER_LOCAL_POD, NODE_S,
                                                                                           30082),
             A, ("10.244.2.8:8080",)),
    # LoadBalancer
    FlowCase("LB IP from an allowed source", _pkt(ALLOWED, "172.18.255.200", 80), A, (REMOTE_EP,), masquerade=True),
    FlowCase("LB IP from a source outside the ranges is dropped", _pkt(DENIED, "172.18.255.200", 80), Verdict.DROP),
    FlowCase("LB IP with the node's own address as source (hairpin VIP)", _pkt("172.18.255.200", "172.18.255.200",
                                                                                  80),
             A, (REMOTE_EP,), masquerade=True),
    FlowCase("NodePort of a source-ranged LB ignores the ranges", _pkt(DENIED, NODE_S, 30083), A, (REMOTE_EP,),
             masquerade=True),
    FlowCase("LB IP without source ranges", _pkt(DENIED, "172.18.255.201", 80), A, (REMOTE_EP,), masquerade=True),
    # externalIPs
    FlowCase("external IP", _pkt(EXTERNAL, "192.0.2.50", 80), A, (REMOTE_EP,), masquerade=True),
    # No endpoints
    FlowCase("cluster IP without endpoints is rejected", _pkt(OTHER_LOCAL_POD, "10.96.0.20", 80), R),
    FlowCase("NodePort without endpoints is rejected", _pkt(EXTERNAL, NODE_S, 30084), R),
    FlowCase("external IP without endpoints is rejected", _pkt(EXTERNAL, "192.0.2.51", 80), R),
    # internalTrafficPolicy Local
    FlowCase("internal Local uses local endpoints only", _pkt(OTHER_LOCAL_POD, "10.96.0.21", 80), A, (LOCAL_EP,)),
    FlowCase("internal Local without local endpoints is dropped", _pkt(OTHER_LOCAL_POD, "10.96.0.22", 80),
             Verdict.DROP),
    # Session affinity: either the remembered endpoint or a random one; both remain possible.
    FlowCase("ClientIP affinity", _pkt(OTHER_LOCAL_POD, "10.96.0.23", 80), A, (LOCAL_EP, REMOTE_EP)),
    # Terminating fallback: only the serving one of the terminating endpoints.
    FlowCase("terminating endpoints serve when none is ready", _pkt(OTHER_LOCAL_POD, "10.96.0.24", 80), A,
             ("10.244.1.7:8080",)),
    # Several ports and protocols on one service, routed independently.
    FlowCase("DNS over UDP", _pkt(OTHER_LOCAL_POD, "10.96.0.10", 53, Protocol.UDP), A, ("10.244.1.3:53",)),
    FlowCase("DNS over TCP", _pkt(OTHER_LOCAL_POD, "10.96.0.10", 53, Protocol.TCP), A, ("10.244.2.3:53",)),
    FlowCase("SCTP", _pkt(OTHER_LOCAL_POD, "10.96.0.25", 9, Protocol.SCTP), A, (f"{REMOTE_POD}:9999",)),
    FlowCase("SCTP rule does not catch TCP", _pkt(OTHER_LOCAL_POD, "10.96.0.25", 9, Protocol.TCP), A),
    # The localnet guard that comes with route_localnet=1.
    FlowCase("external to 127.0.0.1 (not a NodePort) is dropped", _pkt(EXTERNAL, "127.0.0.1", 8080), Verdict.DROP,
             iptables_only=True),
    FlowCase("external to 127.0.0.1:NodePort is DNATed", _pkt(EXTERNAL, "127.0.0.1", 30080), A,
             (LOCAL_EP, REMOTE_EP), masquerade=True, iptables_only=True),
    FlowCase("unrelated traffic passes untouched", _pkt(EXTERNAL, "10.244.2.7", 8080), A),
)


def rendered_rules() -> str:
    state = small_cluster_state()
    return ipt.plan(state.service_ports, state.endpoints, CONFIG, "").text


@pytest.fixture(scope="module")
def rules() -> str:
    return rendered_rules()


def _check(result: TraceResult, case: FlowCase) -> None:
    got = (result.verdict, result.endpoints, result.masquerade)
    assert got == (case.verdict, case.endpoints, case.masquerade), "\n".join(result.path)


@pytest.mark.parametrize("case", FLOW_CASES, ids=lambda c: c.id)
def test_packet_flow(rules: str, case: FlowCase) -> None:
    _check(trace_iptables(rules, case.packet, set(LOCAL_ADDRESSES)), case)


def test_flow_cases_hold_on_the_restored_ruleset(rules: str) -> None:
    # The same table through what the kernel would hold (payload applied to empty tables, then saved).
    tables = IptablesTables()
    tables.restore(rules)
    saved = tables.save()
    assert "-I " not in saved
    for case in FLOW_CASES:
        _check(trace_iptables(saved, case.packet, set(LOCAL_ADDRESSES)), case)


def test_path_names_the_rules_taken(rules: str) -> None:
    result = trace_iptables(rules, _pkt(EXTERNAL, NODE_S, 30081), set(LOCAL_ADDRESSES))
    path = "\n".join(result.path)
    assert result.path[0].startswith("nat -A PREROUTING ")
    assert "nat -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports;" in path
    assert '--comment "default/np-local:http" -m tcp --dport 30081 -j KUBE-EXT-' in path
    assert '"pod traffic for default/np-local:http external destinations"' not in path  # source is not a pod
    assert "-j KUBE-SVL-" in path and "DNAT --to-destination 10.244.1.5:8080" in path
    assert "DNAT --to-destination 10.244.2.7:8080" not in path
    assert any(p.startswith("filter -A INPUT") for p in result.path) is False  # DNATed to a pod: FORWARD
    assert any(p.startswith("filter -A FORWARD") for p in result.path)


def test_affinity_rules_are_followed(rules: str) -> None:
    result = trace_iptables(rules, _pkt(OTHER_LOCAL_POD, "10.96.0.23", 80), set(LOCAL_ADDRESSES))
    recent = [p for p in result.path if "--rcheck" in p]
    assert len(recent) == 2 and all("--seconds 600 --reap" in p for p in recent)
    assert sum("--set --name KUBE-SEP-" in p for p in result.path) == 2


def test_drop_reason_is_in_the_path(rules: str) -> None:
    dropped = trace_iptables(rules, _pkt(DENIED, "172.18.255.200", 80), set(LOCAL_ADDRESSES))
    assert dropped.path[-1].startswith("filter -A KUBE-PROXY-FIREWALL ")
    assert "traffic not accepted by KUBE-FW-" in dropped.path[-1]
    no_local = trace_iptables(rules, _pkt(EXTERNAL, NODE_S, 30082), set(LOCAL_ADDRESSES))
    assert '"default/np-local-remote:http has no local endpoints"' in no_local.path[-1]


# -- the tracer itself, on hand-written rules --------------------------------------------------------

BASIC = """\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CHECK - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 80,8000:8100 -j CHECK
-A CHECK -s 10.0.0.0/8 -j RETURN
-A CHECK -j ACCEPT
-A FORWARD -i eth0 -j DROP
-A FORWARD ! -o eth9 -m mark --mark 0x1/0x1 -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MARKIT - [0:0]
-A PREROUTING -d 192.0.2.1/32 -j MARKIT
-A MARKIT -j MARK --set-xmark 0x1/0x1
COMMIT
"""


@pytest.mark.parametrize("src, dst, port, verdict", [
    ("10.1.1.1", "172.18.0.2", 22, Verdict.ACCEPT),  # accepted before the DROP policy
    ("10.1.1.1", "172.18.0.2", 23, Verdict.DROP),  # policy
    ("192.168.1.1", "172.18.0.2", 8050, Verdict.ACCEPT),  # multiport range, CHECK accepts
    ("10.1.1.1", "172.18.0.2", 80, Verdict.DROP),  # RETURN from CHECK, then policy
    ("10.1.1.1", "192.0.2.1", 80, Verdict.REJECT),  # forwarded, marked in nat, -i never matches, ! -o does
    ("10.1.1.1", "192.0.2.2", 80, Verdict.ACCEPT),  # forwarded, unmarked
])
def test_basic_matches_and_policies(src: str, dst: str, port: int, verdict: Verdict) -> None:
    result = trace_iptables(BASIC, _pkt(src, dst, port), {IPv4Address("172.18.0.2")})
    assert result.verdict is verdict
    assert result.endpoints == () and not result.masquerade


def test_restore_semantics_of_the_fake_kernel() -> None:
    tables = IptablesTables()
    tables.restore("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j RETURN\n-I A 1 -s 1.2.3.4/32 -j B\nCOMMIT\n")
    assert tables.rules("nat", "A") == ["-s 1.2.3.4/32 -j B", "-j B"]
    # Re-declaring a chain flushes it (--noflush semantics); other chains keep their rules.
    tables.restore("*nat\n:A - [0:0]\nCOMMIT\n")
    assert tables.rules("nat", "A") == [] and tables.rules("nat", "B") == ["-j RETURN"]
    with pytest.raises(ValidationError, match="does not exist"):
        tables.restore("*nat\n-A A -j KUBE-NOPE\nCOMMIT\n")
    assert tables.rules("nat", "A") == []  # the failed table was not committed
    tables.restore("*nat\n-A A -j B\nCOMMIT\n")
    with pytest.raises(ValidationError, match="still referenced"):
        tables.restore("*nat\n:B - [0:0]\n-X B\nCOMMIT\n")
    with pytest.raises(ValidationError, match="does not exist"):
        tables.restore("*nat\n-X ZZZ\nCOMMIT\n")
    saved = tables.save()
    assert saved.splitlines()[:3] == ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]"]
    assert "-A A -j B" in saved and ":B - [0:0]" in saved


def test_describe_for_the_cli(rules: str) -> None:
    result = trace_iptables(rules, _pkt(EXTERNAL, "10.96.0.20", 80), set(LOCAL_ADDRESSES))
    text = describe(result)
    lines = text.splitlines()
    assert lines[:4] == ["verdict: REJECT", "endpoints: -", "masquerade: no", "path:"]
    assert lines[-1].startswith("  filter -A KUBE-SERVICES -d 10.96.0.20/32") and "has no endpoints" in lines[-1]
    empty = describe(TraceResult(Verdict.ACCEPT, ("10.244.1.5:8080",), True, ()))
    assert empty.splitlines()[1:] == ["endpoints: 10.244.1.5:8080", "masquerade: yes", "path:", "  (no rule matched)"]
