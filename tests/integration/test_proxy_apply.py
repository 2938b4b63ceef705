"""kube-proxy rules applied for real inside a throwaway node namespace (root).

Each test gets a namespace ``nk-t<random>-node`` holding an interface
with pod-network addresses and a default route through it (inside the
namespace only), applies rendered rules with iptables-restore, reads them back
with iptables-save and sends TCP connections to cluster IPs from inside the
namespace. The namespace is deleted in a finalizer even when a test fails.

The feature-cluster tests apply the unit tests' fixed cluster
(``tests/unit/test_proxy_trace.py``): the kernel must accept every rule form
and print it back exactly as rendered, and the packet-flow table must hold on
the ruleset read back from the kernel.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import sys
from ipaddress import IPv4Address
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import pytest
from proxy_rig import API, CONFIG, EMPTY, POD_IPS, WEB, Listeners, Node, connect_errno, fetch, wait_until

from netk8s.api.resources import ENDPOINTSLICES as SLICES
from netk8s.api.resources import SERVICES
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError
from netk8s.kernel import iptables as kipt
from netk8s.kernel import netns
from netk8s.proxy import iptables as ipt
from netk8s.proxy.backend import ProxyState, changed_services
from netk8s.proxy.hashing import endpoint_chain, service_chain
from netk8s.proxy.model import Endpoint, Protocol, ServicePort
from netk8s.proxy.proxier import Proxier
from netk8s.proxy.trace import trace_iptables


def apply(ns: str, ports: list[ServicePort], endpoints: dict[str, list[Endpoint]]) -> ipt.RenderResult:
    result = ipt.plan(ports, endpoints, CONFIG, kipt.save(ns))
    kipt.restore(ns, result.text)
    return result


def web_endpoints(port: int = 8080) -> list[Endpoint]:
    return [Endpoint(IPv4Address(ip), port) for ip in POD_IPS]


def assert_jumps_exactly_once(saved: str) -> None:
    lines = list(ipt.save_lines(saved))
    for rule in ipt.JUMP_RULES:
        assert lines.count((rule.table, rule.save_line)) == 1, rule.save_line


def assert_kernel_agrees(saved: str, result: ipt.RenderResult) -> None:
    saved_rules = ipt.rules_by_chain(saved)
    for key, rendered in result.rules().items():
        assert saved_rules.get(key) == rendered, key


# -- renderer + backend ------------------------------------------------------------------------

def test_service_with_endpoints_applies_and_balances(node: Node, listeners: Listeners) -> None:
    result = apply(node.name, [WEB], {WEB.service_port_name: web_endpoints()})
    saved = kipt.save(node.name)
    nat = kipt.chains_in(saved)["nat"]
    assert service_chain("default/web:http", "tcp") in nat
    seps = {endpoint_chain("default/web:http", "tcp", f"{ip}:8080") for ip in POD_IPS}
    assert seps <= nat
    assert_jumps_exactly_once(saved)
    assert_kernel_agrees(saved, result)

    # A second sync of the same state changes nothing and adds no duplicate jumps.
    again = apply(node.name, [WEB], {WEB.service_port_name: web_endpoints()})
    assert again.text.count("-I ") == 0
    saved2 = kipt.save(node.name)
    assert_jumps_exactly_once(saved2)
    assert ipt.rules_by_chain(saved2) == ipt.rules_by_chain(saved)

    # Real connections to the cluster IP are DNATed to every endpoint.
    seen = {fetch(node.name, "10.96.12.34", 80) for _ in range(40)}
    assert seen == set(POD_IPS)


def test_reapply_without_a_service_removes_only_its_chains(node: Node) -> None:
    foreign = f"{node.prefix}-OTHER"
    kipt.restore(node.name, f"*nat\n:{foreign} - [0:0]\n-A {foreign} -j RETURN\nCOMMIT\n")
    eps = {WEB.service_port_name: web_endpoints(), API.service_port_name: [Endpoint(IPv4Address("10.244.1.2"), 6443)]}
    apply(node.name, [WEB, API], eps)
    api_chains = {service_chain("default/api", "tcp"), endpoint_chain("default/api", "tcp", "10.244.1.2:6443")}
    assert api_chains <= kipt.chains_in(kipt.save(node.name))["nat"]

    result = apply(node.name, [WEB], {WEB.service_port_name: web_endpoints()})
    assert set(result.deleted_chains["nat"]) == api_chains
    saved = kipt.save(node.name)
    nat = kipt.chains_in(saved)["nat"]
    assert not api_chains & nat
    assert service_chain("default/web:http", "tcp") in nat
    assert "default/api" not in saved
    assert_jumps_exactly_once(saved)
    assert_kernel_agrees(saved, result)
    # Chains that are not kube-proxy's survive, rules and all.
    assert ipt.rules_by_chain(saved)[("nat", foreign)] == [f"-A {foreign} -j RETURN"]


def test_no_endpoint_service_refuses_tcp_fast(node: Node) -> None:
    result = apply(node.name, [EMPTY], {})
    saved = kipt.save(node.name)
    assert_kernel_agrees(saved, result)
    assert any("default/empty has no endpoints" in r and "-j REJECT" in r
               for r in ipt.rules_by_chain(saved)[("filter", "KUBE-SERVICES")])
    code, took = connect_errno(node.name, "10.96.7.7", 8080, timeout=3.0)
    assert code == errno.ECONNREFUSED and took < 1.0, (code, took)
    # Control: a port no rule covers is not refused, the SYN goes unanswered.
    code, took = connect_errno(node.name, "10.96.7.7", 9999, timeout=0.5)
    assert code != errno.ECONNREFUSED and took >= 0.4, (code, took)


def test_restore_error_names_the_failing_line(node: Node) -> None:
    bad = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-DOESNOTEXIST000\nCOMMIT\n"
    with pytest.raises(KernelError) as info:
        kipt.restore(node.name, bad)
    message = str(info.value)
    assert node.name in message and "\n" not in message
    assert "KUBE-SVC-DOESNOTEXIST000" in message


# -- the proxier against a real API server -----------------------------------------------------

@pytest.fixture
def start_proxier(api: ApiClient, node: Node) -> Iterator[Callable[..., Proxier]]:
    started: list[Proxier] = []

    def start(**kwargs: object) -> Proxier:
        proxier = Proxier(api, CONFIG, node.name, **kwargs)  # type: ignore[arg-type]
        proxier.start()
        started.append(proxier)
        return proxier

    try:
        yield start
    finally:
        for proxier in started:
            proxier.stop()
            proxier.join(5)


def web_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.12.34", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def web_slice() -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abcde", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"}
                          for ip in POD_IPS]}


def test_proxier_follows_services_and_slices(api: ApiClient, node: Node, listeners: Listeners,
                                             start_proxier: Callable[..., Proxier]) -> None:
    proxier = start_proxier(min_sync_interval=0.05)
    assert proxier.wait_for_sync(10)
    assert_jumps_exactly_once(kipt.save(node.name))
    svc_chain = service_chain("default/web:http", "tcp")

    api.create(SERVICES, web_service())
    wait_until(lambda: "default/web:http has no endpoints" in kipt.save(node.name), 10, "REJECT for web")
    assert connect_errno(node.name, "10.96.12.34", 80, timeout=3.0)[0] == errno.ECONNREFUSED

    api.create(SLICES, web_slice())
    wait_until(lambda: svc_chain in kipt.save(node.name), 10, "web's service chain")
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS)

    api.delete(SERVICES, "web", "default")
    wait_until(lambda: "default/web" not in kipt.save(node.name), 10, "web's rules to go")
    saved = kipt.save(node.name)
    assert not any(c.startswith(("KUBE-SVC-", "KUBE-SEP-")) for c in kipt.chains_in(saved)["nat"])
    assert_jumps_exactly_once(saved)
    assert proxier.last_sync_error is None and proxier.sync_count >= 3


class FlakyBackend:
    """The real backend, except that the first ``failures`` restores fail."""

    def __init__(self, ns: str, failures: int) -> None:
        self.inner = kipt.NetnsIptables(ns)
        self.failures = failures
        self.restores = 0

    def save(self) -> str:
        return self.inner.save()

    def restore(self, text: str) -> None:
        self.restores += 1
        if self.restores <= self.failures:
            raise KernelError(f"injected failure {self.restores}")
        self.inner.restore(text)


def test_proxier_retries_failed_restores(api: ApiClient, node: Node,
                                         start_proxier: Callable[..., Proxier]) -> None:
    api.create(SERVICES, web_service())
    backend = FlakyBackend(node.name, failures=3)
    proxier = start_proxier(backend=backend, min_sync_interval=0.01)
    wait_until(lambda: proxier.sync_count >= 1, 10, "a successful sync after failures")
    assert proxier.failed_sync_count == 3 and backend.restores >= 4
    assert proxier.last_sync_error is None
    assert "default/web:http has no endpoints" in kipt.save(node.name)


def test_proxier_reports_persistent_failure(api: ApiClient, node: Node,
                                            start_proxier: Callable[..., Proxier]) -> None:
    backend = FlakyBackend(node.name, failures=10**6)
    proxier = start_proxier(backend=backend)
    wait_until(lambda: proxier.failed_sync_count >= 2, 10, "repeated failed syncs")
    assert proxier.sync_count == 0
    assert proxier.last_sync_error is not None and "injected failure" in proxier.last_sync_error
    assert not proxier.wait_for_sync(0.2)


# -- kube-proxy's full feature set in a real kernel --------------------------------------------------

def _flow_table() -> ModuleType:
    # The packet-flow table lives with the unit tests; load it by path (tests/ is not a package).
    path = Path(__file__).parent.parent / "unit" / "test_proxy_trace.py"
    spec = importlib.util.spec_from_file_location("netk8s_flow_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


FLOWS = _flow_table()


def _without_sctp(state: ProxyState) -> tuple[ProxyState, ProxyState]:
    keep = tuple(p for p in state.service_ports if p.protocol is not Protocol.SCTP)
    sctp = tuple(p for p in state.service_ports if p.protocol is Protocol.SCTP)
    return ProxyState(keep, state.endpoints), ProxyState(sctp, state.endpoints)


def test_feature_cluster_rules_read_back_exactly_and_trace_the_same(node: Node) -> None:
    state, _ = _without_sctp(FLOWS.small_cluster_state())
    result = ipt.plan(state.service_ports, state.endpoints, FLOWS.CONFIG, kipt.save(node.name))
    kipt.restore(node.name, result.text)
    saved = kipt.save(node.name)
    # recent, addrtype, FW chains with target-less rules, REJECT/DROP, KUBE-FIREWALL: all read back verbatim.
    assert_kernel_agrees(saved, result)
    assert_jumps_exactly_once(saved)
    assert saved.count("-A INPUT -j KUBE-FIREWALL") == 1 and saved.count("-A OUTPUT -j KUBE-FIREWALL") == 1
    # The packet-flow table holds on what the kernel actually has.
    for case in FLOWS.FLOW_CASES:
        if case.packet.protocol is Protocol.SCTP:
            continue
        got = trace_iptables(saved, case.packet, set(FLOWS.LOCAL_ADDRESSES))
        assert (got.verdict, got.endpoints, got.masquerade) == (case.verdict, case.endpoints, case.masquerade), \
            case.id


def test_sctp_rules_apply_when_the_kernel_has_sctp(node: Node) -> None:
    _, sctp = _without_sctp(FLOWS.small_cluster_state())
    assert sctp.service_ports
    result = ipt.plan(sctp.service_ports, sctp.endpoints, FLOWS.CONFIG, kipt.save(node.name))
    try:
        kipt.restore(node.name, result.text)
    except KernelError as exc:
        if "sctp" in str(exc).lower():
            pytest.skip(f"this kernel refuses SCTP matches: {exc}")
        raise
    assert_kernel_agrees(kipt.save(node.name), result)


NODE_IP = "172.18.0.2"


def _node_with_address(node: Node) -> None:
    # The node's underlay address, inside the test namespace only; route_localnet as the node runtime sets it.
    netns.run(node.name, ["ip", "addr", "add", f"{NODE_IP}/24", "dev", f"{node.prefix}a"])
    netns.write_sysctl(node.name, "net.ipv4.conf.all.route_localnet", 1)


def test_nodeport_on_node_ip_and_localhost(node: Node, listeners: Listeners) -> None:
    _node_with_address(node)
    sp = dataclasses.replace(WEB, node_port=30080)
    apply(node.name, [sp], {WEB.service_port_name: web_endpoints()})
    assert {fetch(node.name, NODE_IP, 30080) for _ in range(40)} == set(POD_IPS)
    assert {fetch(node.name, "127.0.0.1", 30080) for _ in range(40)} == set(POD_IPS)
    # A port that is not a NodePort is not DNATed: nothing listens there.
    assert connect_errno(node.name, NODE_IP, 30099, timeout=1.0)[0] == errno.ECONNREFUSED


def test_client_ip_affinity_sticks_to_one_endpoint(node: Node, listeners: Listeners) -> None:
    sticky = dataclasses.replace(WEB, session_affinity_seconds=60)
    apply(node.name, [sticky], {WEB.service_port_name: web_endpoints()})
    assert len({fetch(node.name, "10.96.12.34", 80) for _ in range(30)}) == 1
    # Switching affinity off re-renders the chains: connections spread again.
    apply(node.name, [WEB], {WEB.service_port_name: web_endpoints()})
    assert "recent" not in kipt.save(node.name)
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS)


def test_partial_syncs_in_the_kernel(node: Node, listeners: Listeners) -> None:
    ruleset = ipt.IptablesRuleSet(kipt.NetnsIptables(node.name), CONFIG)
    eps = {WEB.service_port_name: tuple(web_endpoints()),
           API.service_port_name: (Endpoint(IPv4Address("10.244.1.2"), 8080),)}
    state = ProxyState.of([WEB, API], eps)
    assert ruleset.sync(state, full=True, changed=frozenset()).full
    api_chains = {c for c in kipt.chains_in(kipt.save(node.name))["nat"]
                  if c in (service_chain("default/api", "tcp"),
                           endpoint_chain("default/api", "tcp", "10.244.1.2:8080"))}
    assert len(api_chains) == 2

    # Drop one web endpoint: only web's chains are in the payload; api's are untouched.
    smaller = ProxyState.of([WEB, API], {**eps, WEB.service_port_name: tuple(web_endpoints()[:2])})
    result = ruleset.sync(smaller, full=False, changed=changed_services(state, smaller))
    assert not result.full and result.changed == {"default/web"} and result.objects_deleted == 1
    assert not any(f":{c} " in result.payload for c in api_chains)
    saved = kipt.save(node.name)
    gone = endpoint_chain("default/web:http", "tcp", f"{POD_IPS[2]}:8080")
    assert gone not in kipt.chains_in(saved)["nat"] and api_chains <= kipt.chains_in(saved)["nat"]
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(40)} == set(POD_IPS[:2])
    assert fetch(node.name, "10.96.12.35", 443) == "10.244.1.2"

    # The kernel now holds exactly what a full sync of the new state renders.
    full = ipt.render([WEB, API], smaller.endpoints, CONFIG)
    assert_kernel_agrees(saved, full)
    assert_jumps_exactly_once(saved)


# -- the fast paths: inventory, streamed chunked full syncs, rule edits ------------------------------

def many_services(count: int) -> ProxyState:
    """``count`` ClusterIP services (10.96.20.x / 10.96.21.x), two endpoints each; web is among them."""
    ports = [WEB]
    endpoints: dict[str, tuple[Endpoint, ...]] = {WEB.service_port_name: tuple(web_endpoints())}
    for i in range(count - 1):
        sp = ServicePort("bulk", f"s{i:03d}", "", Protocol.TCP, IPv4Address(f"10.96.{20 + i // 250}.{i % 250 + 1}"),
                         80)
        ports.append(sp)
        endpoints[sp.service_port_name] = (Endpoint(IPv4Address(f"10.245.{i // 100}.{2 * (i % 100) + 1}"), 8080),
                                           Endpoint(IPv4Address(f"10.245.{i // 100}.{2 * (i % 100) + 2}"), 8080))
    return ProxyState.of(ports, endpoints)


def test_inventory_reads_what_a_full_save_reads(node: Node) -> None:
    backend = kipt.NetnsIptables(node.name)
    assert kipt.variant(node.name) in ("nf_tables", "legacy")
    empty = backend.inventory(ipt.builtin_chains(CONFIG))
    assert not ipt.chains_in(empty).get("nat")  # a fresh namespace: nothing yet
    state = many_services(30)
    ipt.IptablesRuleSet(backend, CONFIG).sync(state, full=True, changed=frozenset())
    saved, inventory = kipt.save(node.name), backend.inventory(ipt.builtin_chains(CONFIG))
    for table in ("filter", "nat"):
        # iptables-save also prints built-in chains the kernel does not have yet; ours match exactly.
        ours = {c for c in ipt.chains_in(saved)[table] if c.startswith("KUBE-")}
        assert ours and {c for c in ipt.chains_in(inventory)[table] if c.startswith("KUBE-")} == ours
    for table in ("filter", "nat"):
        assert ipt.missing_jumps_by_table(inventory, ipt.jump_rules(CONFIG)).get(table) is None
    # Remove one jump behind kube-proxy's back: the inventory sees it missing, as a save would.
    kipt.restore(node.name, '*nat\n-D PREROUTING -m comment --comment "kubernetes service portals" '
                            "-j KUBE-SERVICES\nCOMMIT\n")
    inventory = backend.inventory(ipt.builtin_chains(CONFIG))
    assert ipt.missing_jumps_by_table(inventory, ipt.jump_rules(CONFIG)) == ipt.missing_jumps_by_table(
        kipt.save(node.name), ipt.jump_rules(CONFIG))


def test_streamed_chunked_full_sync_and_rule_edits_in_the_kernel(node: Node, listeners: Listeners) -> None:
    backend = kipt.NetnsIptables(node.name)
    ruleset = ipt.IptablesRuleSet(backend, CONFIG, chunk_services=10, edit_min_rules=0, chunk_above=0)
    state = many_services(40)
    result = ruleset.sync(state, full=True, changed=frozenset())
    assert result.payload.count("COMMIT") > 4  # streamed as several nat chunks, then filter and nat
    saved = kipt.save(node.name)
    assert_kernel_agrees(saved, ipt.render(state.service_ports, state.endpoints, CONFIG))
    assert_jumps_exactly_once(saved)
    assert {fetch(node.name, "10.96.12.34", 80) for _ in range(30)} == set(POD_IPS)

    # web loses its endpoints, then gets one back: KUBE-SERVICES is edited rule by rule, never rewritten.
    empty = ProxyState.of(state.service_ports, {**state.endpoints, WEB.service_port_name: ()})
    result = ruleset.sync(empty, full=False, changed=changed_services(state, empty))
    nat_section = result.payload.split("*nat\n", 1)[1]
    assert any(ln.startswith("-D KUBE-SERVICES ") for ln in nat_section.splitlines())
    assert ":KUBE-SERVICES " not in nat_section
    assert connect_errno(node.name, "10.96.12.34", 80, timeout=2.0)[0] == errno.ECONNREFUSED
    back = ProxyState.of(state.service_ports, {**state.endpoints,
                                               WEB.service_port_name: (Endpoint(IPv4Address(POD_IPS[1]), 8080),)})
    result = ruleset.sync(back, full=False, changed=changed_services(empty, back))
    assert any(ln.startswith("-I KUBE-SERVICES ") for ln in result.payload.splitlines())
    assert fetch(node.name, "10.96.12.34", 80) == POD_IPS[1]
    saved = kipt.save(node.name)
    assert_kernel_agrees(saved, ipt.render(back.service_ports, back.endpoints, CONFIG))
    full_rules = ipt.render(back.service_ports, back.endpoints, CONFIG).rules()
    assert ipt.rules_by_chain(saved)[("nat", "KUBE-SERVICES")] == full_rules[("nat", "KUBE-SERVICES")]


def test_streamed_restore_reports_errors_and_an_abort_commits_nothing(node: Node) -> None:
    stream = kipt.RestoreStream(node.name)
    stream.write("*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\nCOMMIT\n")
    stream.write("*nat\n-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SVC-BBBBBBBBBBBBBBBB\nCOMMIT\n")
    # iptables-nft names the COMMIT of the section it could not commit (the jump target is missing).
    with pytest.raises(KernelError, match=r"at line 6 'COMMIT'.*KUBE-SVC-BBBBBBBBBBBBBBBB"):
        stream.close()
    # The first section committed, the second did not.
    assert "KUBE-SVC-AAAAAAAAAAAAAAAA" in kipt.chains_in(kipt.save(node.name))["nat"]
    assert "KUBE-SVC-BBBBBBBBBBBBBBBB" not in kipt.save(node.name)
    aborted = kipt.RestoreStream(node.name)
    aborted.write("*nat\n:KUBE-SVC-CCCCCCCCCCCCCCCC - [0:0]\n")  # no COMMIT: never applied
    aborted.abort()
    assert "KUBE-SVC-CCCCCCCCCCCCCCCC" not in kipt.save(node.name)
