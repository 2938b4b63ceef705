"""Partial and full syncs of the iptables mode, against a strict in-memory kernel (no root).

``FakeKernel`` applies restore payloads with ``iptables-restore --noflush``
semantics and refuses what the kernel refuses (jumps to missing chains,
deleting referenced chains), so a partial sync that forgot a chain or deleted
one too early fails here as it would on a node. The central property: after
any sequence of partial syncs the tables equal those of one full sync of the
final state on a fresh node.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from ipaddress import IPv4Address
from typing import Callable

import pytest
from test_proxy_trace import CONFIG, LOCAL_ADDRESSES, OTHER_LOCAL_POD, _pkt, small_cluster_state

from netk8s.api.resources import by_plural
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError, ValidationError
from netk8s.proxy import iptables as ipt
from netk8s.proxy.backend import ProxyMode, ProxyState, RuleSet, changed_services
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import Endpoint, Protocol, ServicePort
from netk8s.proxy.proxier import Proxier
from netk8s.proxy.trace import IptablesTables, Verdict


class FakeKernel:
    """A node's iptables in memory; ``fail`` makes the next restores fail like a refused payload."""

    def __init__(self) -> None:
        self.tables = IptablesTables()
        self.payloads: list[str] = []
        self.saves = 0
        self.fail = 0

    def save(self) -> str:
        self.saves += 1
        return self.tables.save()

    def restore(self, text: str) -> None:
        self.payloads.append(text)
        if self.fail:
            self.fail -= 1
            raise KernelError("iptables-restore in fake failed: injected")
        try:
            self.tables.restore(text)
        except ValidationError as exc:
            raise KernelError(f"iptables-restore in fake failed: {exc}") from exc


def fresh_full(state: ProxyState) -> str:
    kernel = FakeKernel()
    IptablesRuleSet(kernel, CONFIG).sync(state, full=True, changed=frozenset())
    return kernel.tables.save()


def declared(payload: str) -> set[str]:
    return {line[1:].split(" ", 1)[0] for line in payload.splitlines() if line.startswith(":")}


def service_chains_in(payload: str) -> set[str]:
    return {c for c in declared(payload) if ipt.is_service_chain(c)}


def replace_endpoints(state: ProxyState, spn: str, endpoints: list[Endpoint]) -> ProxyState:
    eps = dict(state.endpoints)
    eps[spn] = tuple(endpoints)
    return ProxyState(state.service_ports, eps)


def replace_port(state: ProxyState, name: str, **changes: object) -> ProxyState:
    ports = tuple(dataclasses.replace(p, **changes) if p.name == name else p for p in state.service_ports)
    return ProxyState(ports, state.endpoints)


def sync(ruleset: IptablesRuleSet, old: ProxyState | None, new: ProxyState, full: bool = False) -> ipt.SyncResult:
    return ruleset.sync(new, full=full or old is None, changed=changed_services(old, new))


def test_ruleset_implements_the_backend_protocol() -> None:
    ruleset = IptablesRuleSet(FakeKernel(), CONFIG)
    assert isinstance(ruleset, RuleSet) and ruleset.mode is ProxyMode.IPTABLES


def test_changed_services_compares_per_service() -> None:
    state = small_cluster_state()
    assert changed_services(state, state) == frozenset()
    moved = replace_endpoints(state, "default/web:http", [Endpoint(IPv4Address("10.244.1.40"), 8080)])
    assert changed_services(state, moved) == {"default/web"}
    fewer = ProxyState(tuple(p for p in state.service_ports if p.name != "solo"), state.endpoints)
    assert changed_services(state, fewer) == {"default/solo"}
    assert changed_services(None, state) == {f"{p.namespace}/{p.name}" for p in state.service_ports}


def test_endpoint_change_rewrites_only_what_changed() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    first = sync(ruleset, None, state)
    assert first.full and kernel.saves == 1
    before = ipt.render(state.service_ports, state.endpoints, CONFIG)
    web_chains = set(before.service_chains["default/web"])

    new = replace_endpoints(state, "default/web:http", [Endpoint(IPv4Address("10.244.1.5"), 8080, is_local=True),
                                                        Endpoint(IPv4Address("10.244.3.3"), 8080)])
    result = sync(ruleset, state, new)
    assert not result.full and result.changed == {"default/web"}
    assert kernel.saves == 1  # a partial sync does not read the kernel
    after = ipt.render(new.service_ports, new.endpoints, CONFIG)
    new_web = set(after.service_chains["default/web"])
    stale = web_chains - new_web
    assert len(stale) == 1 and next(iter(stale)).startswith("KUBE-SEP-")
    # Declared: web's chains whose rules changed (not the endpoint chain that stayed the same) and the
    # stale endpoint chain (flushed, then -X).
    old_rules, new_rules = before.rules(), after.rules()
    rewritten = {c for c in new_web if old_rules.get(("nat", c)) != new_rules[("nat", c)]}
    assert rewritten and rewritten < new_web
    assert service_chains_in(result.payload) == rewritten | stale
    assert result.objects_written == len(rewritten) and result.objects_deleted == 1
    # web's lines in the top-level chains did not change: none of them is declared, edited or rewritten.
    assert not declared(result.payload) & {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES",
                                           "KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-POSTROUTING",
                                           "KUBE-MARK-MASQ"}
    assert "*filter" not in result.payload and "-A KUBE-SERVICES " not in result.payload
    assert not any(ln.startswith(("-I ", "-D ")) for ln in result.payload.splitlines())
    # Other services' chains are neither declared nor given rules.
    others = set(after.service_chains["default/solo"])
    assert not any(re.match(rf"-A ({'|'.join(others)}) ", ln) for ln in result.payload.splitlines())
    assert result.payload_bytes < first.payload_bytes / 10
    assert kernel.tables.save() == fresh_full(new)
    # Nothing changed at all: nothing to write.
    again = ruleset.sync(new, full=False, changed=frozenset({"default/web"}))
    assert again.payload == "" and len(kernel.payloads) == 2


def test_top_level_chains_are_edited_rule_by_rule() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG, edit_min_rules=0)
    state = small_cluster_state()
    sync(ruleset, None, state)
    # web loses its endpoints: its KUBE-SERVICES jump (nat) becomes a REJECT (filter).
    empty = replace_endpoints(state, "default/web:http", [])
    result = sync(ruleset, state, empty)
    lines = result.payload.splitlines()
    web_jump = next(ln for ln in ipt.render(state.service_ports, state.endpoints, CONFIG).text.splitlines()
                    if ln.startswith("-A KUBE-SERVICES") and "default/web:http cluster IP" in ln)
    assert "-D " + web_jump[3:] in lines
    assert not declared(result.payload) & {"KUBE-SERVICES", "KUBE-NODEPORTS"}
    filter_section = result.payload.split("COMMIT\n")[0]
    added = [ln for ln in filter_section.splitlines() if ln.startswith(("-I KUBE-SERVICES ", "-A KUBE-SERVICES "))]
    assert len(added) == 1 and "default/web:http has no endpoints" in added[0]
    assert kernel.tables.save() == fresh_full(empty)
    # Back again: the jump is inserted at the position a full sync gives it (the rules stay in order).
    result = sync(ruleset, empty, state)
    assert any(ln.startswith("-I KUBE-SERVICES ") and "default/web:http cluster IP" in ln
               for ln in result.payload.splitlines())
    assert kernel.tables.save() == fresh_full(state)


def test_rule_edits_fall_back_to_a_rewrite_on_duplicate_rules() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG, edit_min_rules=0)
    state = small_cluster_state()
    sync(ruleset, None, state)
    # Two identical external IP rules: deleting one by spec would be ambiguous.
    twice = replace_port(state, "web", external_ips=(IPv4Address("192.0.2.9"), IPv4Address("192.0.2.9")))
    sync(ruleset, state, twice)
    assert kernel.tables.save() == fresh_full(twice)
    once = replace_port(twice, "web", external_ips=(IPv4Address("192.0.2.9"),))
    result = sync(ruleset, twice, once)
    assert ":KUBE-SERVICES - [0:0]" in result.payload.splitlines() and "-D KUBE-SERVICES" not in result.payload
    assert kernel.tables.save() == fresh_full(once)


def test_big_syncs_are_chunked_and_every_commit_is_consistent() -> None:
    kernel = FakeKernel()  # strict: each COMMIT must leave no jump to a missing chain
    ruleset = IptablesRuleSet(kernel, CONFIG, chunk_services=3, chunk_above=0)
    state = small_cluster_state()
    result = sync(ruleset, None, state)
    services = len({(p.namespace, p.name) for p in state.service_ports})
    sections = [s for s in result.payload.split("COMMIT\n") if s.strip()]
    chunks = 1 + -(-(services - 1) // 3)  # a first chunk of one service (3 // 5, at least 1), then 3 each
    assert [s.split("\n", 1)[0] for s in sections] == ["*nat"] * chunks + ["*filter", "*nat"]
    # Service chains come first (with KUBE-MARK-MASQ, which they jump to); the top-level chains last.
    assert ":KUBE-MARK-MASQ - [0:0]" in sections[0] and ":KUBE-SERVICES - [0:0]" not in sections[0]
    assert all(len({c for c in service_chains_in(s)}) for s in sections[:chunks])
    assert ":KUBE-SERVICES - [0:0]" in sections[-1] and not service_chains_in(sections[-1])
    assert kernel.tables.save() == fresh_full(state)
    # A later full sync over the same tables (stale chains included) converges to the same.
    gone = ProxyState(tuple(p for p in state.service_ports if p.name != "lb"), state.endpoints)
    result = ruleset.sync(gone, full=True, changed=frozenset())
    assert result.objects_deleted and all(f"-X {c}" in sections_last(result.payload)
                                          for c in result_stale(result))
    assert kernel.tables.save() == fresh_full(gone)


def test_syncs_up_to_chunk_above_services_are_one_transaction() -> None:
    state = small_cluster_state()
    services = len({(p.namespace, p.name) for p in state.service_ports})
    for chunk_above, chunked in ((services, False), (services - 1, True)):
        ruleset = IptablesRuleSet(FakeKernel(), CONFIG, chunk_services=3, chunk_above=chunk_above)
        commits = sync(ruleset, None, state).payload.count("COMMIT\n")
        assert (commits > 2) is chunked, (chunk_above, commits)  # unchunked: one filter, one nat section


def sections_last(payload: str) -> str:
    return [s for s in payload.split("COMMIT\n") if s.strip()][-1]


def result_stale(result: ipt.SyncResult) -> list[str]:
    return [ln[3:] for ln in result.payload.splitlines() if ln.startswith("-X ")]


def test_declarations_come_in_descending_name_order() -> None:
    result = ipt.render(small_cluster_state().service_ports, small_cluster_state().endpoints, CONFIG)
    for section in result.text.split("COMMIT\n"):
        names = [ln[1:].split(" ", 1)[0] for ln in section.splitlines() if ln.startswith(":")]
        assert names == sorted(names, reverse=True)


def test_full_sync_reads_the_inventory_when_the_backend_has_one() -> None:
    class InventoryKernel(FakeKernel):
        def __init__(self) -> None:
            super().__init__()
            self.inventories: list[tuple[tuple[str, str], ...]] = []

        def inventory(self, builtin: tuple[tuple[str, str], ...]) -> str:
            self.inventories.append(tuple(builtin))
            dump = self.tables.save()
            chains = ipt.chains_in(dump)
            rules = ipt.rules_by_chain(dump)
            return ipt.inventory_dump(chains, {t: [ln for (tt, c), lns in rules.items() if tt == t
                                                   and (t, c) in builtin for ln in lns] for t in chains})

    kernel = InventoryKernel()
    kernel.tables.restore("*nat\n:KUBE-SVC-STALESTALESTALE1 - [0:0]\nCOMMIT\n")
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    result = sync(ruleset, None, state)
    assert kernel.saves == 0 and kernel.inventories == [ipt.builtin_chains(CONFIG)]
    assert result.objects_deleted == 1 and "-I PREROUTING 1 " in result.payload
    assert kernel.tables.save() == fresh_full(state)  # the stale chain is gone too
    # The jumps are there now: a second full sync adds none.
    assert "-I " not in ruleset.sync(state, full=True, changed=frozenset()).payload


def test_inventory_dump_reads_like_a_save_dump() -> None:
    nft_json = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, '
                '{"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 1}}, '
                '{"chain": {"family": "ip", "table": "nat", "name": "KUBE-SVC-AAAAAAAAAAAAAAAA", "handle": 2}}, '
                '{"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 3}}, '
                '{"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 4}}]}')
    chains = ipt.nft_chain_names(nft_json)
    assert chains == {"filter": {"INPUT"}, "nat": {"PREROUTING", "KUBE-SVC-AAAAAAAAAAAAAAAA"}}
    dump = ipt.inventory_dump(chains, {"nat": ["-P PREROUTING ACCEPT",
                                               '-A PREROUTING -m comment --comment "kubernetes service portals" '
                                               "-j KUBE-SERVICES"]})
    assert ipt.chains_in(dump) == chains
    missing = ipt.missing_jumps_by_table(dump, ipt.jump_rules(CONFIG))
    assert not any("PREROUTING" in ln for ln in missing["nat"]) and any("OUTPUT" in ln for ln in missing["nat"])
    with pytest.raises(ValueError, match="unreadable JSON"):
        ipt.nft_chain_names("{not json")


def test_service_deletion_and_affinity_toggle_by_partial_syncs() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    sync(ruleset, None, state)
    lb_chains = set(ipt.render(state.service_ports, state.endpoints, CONFIG).service_chains["default/lb"])
    assert {c.split("-")[1] for c in lb_chains} == {"EXT", "FW", "SVC", "SEP"}

    gone = ProxyState(tuple(p for p in state.service_ports if p.name != "lb"), state.endpoints)
    result = sync(ruleset, state, gone)
    assert not result.full and result.objects_deleted == len(lb_chains)
    assert all(f"-X {c}" in result.payload for c in lb_chains)
    assert not lb_chains & ipt.chains_in(kernel.tables.save())["nat"]
    assert kernel.tables.save() == fresh_full(gone)

    sticky = replace_port(gone, "web", session_affinity_seconds=30)
    sync(ruleset, gone, sticky)
    assert "--rcheck --seconds 30 --reap" in kernel.tables.save()
    assert kernel.tables.save() == fresh_full(sticky)
    plain = replace_port(sticky, "web", session_affinity_seconds=None)
    result = sync(ruleset, sticky, plain)
    assert result.changed == {"default/web"}
    web_lines = [ln for ln in kernel.tables.save().splitlines() if '"default/web:http' in ln]
    assert web_lines and not any("-m recent" in ln for ln in web_lines)
    assert kernel.tables.save() == fresh_full(plain)


def test_failed_restore_forces_a_full_sync() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    sync(ruleset, None, state)
    new = replace_endpoints(state, "default/web:http", [])
    kernel.fail = 1
    with pytest.raises(KernelError):
        sync(ruleset, state, new)
    # Asked for a partial sync, the ruleset does a full one: it no longer trusts its bookkeeping.
    result = ruleset.sync(new, full=False, changed=frozenset({"default/web"}))
    assert result.full and kernel.saves == 2
    assert kernel.tables.save() == fresh_full(new)


def test_full_sync_removes_stale_chains_left_by_someone_else() -> None:
    kernel = FakeKernel()
    kernel.tables.restore("*nat\n:KUBE-SVC-STALESTALESTALE1 - [0:0]\n:KUBE-SEP-STALESTALESTALE2 - [0:0]\n"
                          "-A KUBE-SVC-STALESTALESTALE1 -j KUBE-SEP-STALESTALESTALE2\n:OTHER - [0:0]\nCOMMIT\n")
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    result = sync(ruleset, None, state)
    assert result.objects_deleted == 2
    nat = ipt.chains_in(kernel.tables.save())["nat"]
    assert "OTHER" in nat and not {"KUBE-SVC-STALESTALESTALE1", "KUBE-SEP-STALESTALESTALE2"} & nat


def _random_change(rng: random.Random, state: ProxyState) -> ProxyState:
    ports = list(state.service_ports)
    eps = dict(state.endpoints)
    choice = rng.randrange(6)
    sp = rng.choice(ports) if ports else None
    if choice == 0 or sp is None:
        n = rng.randrange(1000)
        ports.append(ServicePort("rand", f"s{n}", "", rng.choice(list(Protocol)), IPv4Address(f"10.96.9.{n % 250}"),
                                 80 + n, node_port=30000 + n if rng.random() < 0.5 else None,
                                 external_policy_local=rng.random() < 0.5))
    elif choice == 1:
        ports.remove(sp)
    elif choice == 2:
        count = rng.randrange(4)
        eps[sp.service_port_name] = tuple(
            Endpoint(IPv4Address(f"10.244.{rng.choice([1, 2])}.{rng.randrange(2, 250)}"), 8080,
                     ready=rng.random() < 0.8, serving=True, terminating=rng.random() < 0.3,
                     is_local=rng.random() < 0.5) for _ in range(count))
    elif choice == 3:
        ports[ports.index(sp)] = dataclasses.replace(
            sp, session_affinity_seconds=None if sp.session_affinity_seconds else 100)
    elif choice == 4:
        ports[ports.index(sp)] = dataclasses.replace(sp, internal_policy_local=not sp.internal_policy_local)
    else:
        ports[ports.index(sp)] = dataclasses.replace(sp, external_policy_local=not sp.external_policy_local)
    return ProxyState.of(ports, eps)


@pytest.mark.parametrize("edit_min_rules", [0, ipt.EDIT_MIN_RULES])
@pytest.mark.parametrize("seed", range(5))
def test_random_partial_syncs_match_a_fresh_full_sync(seed: int, edit_min_rules: int) -> None:
    rng = random.Random(seed)
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG, edit_min_rules=edit_min_rules, chunk_services=4,
                              chunk_above=0)
    state = small_cluster_state()
    sync(ruleset, None, state)
    for step in range(25):
        new = _random_change(rng, state)
        result = sync(ruleset, state, new)
        assert not result.full
        assert kernel.tables.save() == fresh_full(new), f"seed {seed} step {step}"
        state = new
    # A periodic full sync over what the partial syncs left writes the same tables again.
    ruleset.sync(state, full=True, changed=frozenset())
    assert kernel.tables.save() == fresh_full(state)


# -- the Proxier loop against an in-process API server -----------------------------------------

SERVICES = by_plural("", "services")
SLICES = by_plural("discovery.k8s.io", "endpointslices")


def web_service(affinity: bool = False) -> dict:
    spec: dict = {"clusterIP": "10.96.12.34", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec}


def web_slice(ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"} for ip in ips]}


def other_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "default"},
            "spec": {"clusterIP": "10.96.12.35", "ports": [{"port": 443, "protocol": "TCP"}]}}


@pytest.fixture
def proxier_factory(api_factory: Callable[..., ApiClient]):  # type: ignore[no-untyped-def]
    started: list[Proxier] = []

    def start(api: ApiClient, **kwargs: object) -> tuple[Proxier, FakeKernel]:
        kernel = FakeKernel()
        proxier = Proxier(api, CONFIG, "nk-unit-node", backend=kernel, min_sync_interval=0.01,
                          **kwargs)  # type: ignore[arg-type]
        proxier.start()
        started.append(proxier)
        return proxier, kernel

    try:
        yield start
    finally:
        for proxier in started:
            proxier.stop()
            proxier.join(5)


def _wait(proxier: Proxier) -> None:
    assert proxier.wait_for_sync(10), proxier.last_sync_error


def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    # wait_for_sync only covers events already delivered: after an API write, wait for its effect.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_proxier_does_full_then_partial_syncs(api_factory: Callable[..., ApiClient],
                                              proxier_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory()
    api.create(SERVICES, other_service())
    proxier, kernel = proxier_factory(api, sync_period=0)
    _wait(proxier)
    assert proxier.full_sync_count == 1 and proxier.partial_sync_count == 0
    full_bytes = proxier.last_payload_bytes

    api.create(SERVICES, web_service())
    api.create(SLICES, web_slice(["10.244.1.2", "10.244.1.3"]))
    _until(lambda: "10.244.1.3:8080" in kernel.tables.save(), "web's endpoints")
    assert proxier.full_sync_count == 1 and proxier.partial_sync_count >= 1
    assert proxier.last_result is not None and proxier.last_result.changed == {"default/web"}
    assert "default/web:http -> 10.244.1.3:8080" in kernel.tables.save()
    trace = proxier.ruleset.trace(_pkt(OTHER_LOCAL_POD, "10.96.12.34", 80), set(LOCAL_ADDRESSES))
    assert trace.verdict is Verdict.ACCEPT and trace.endpoints == ("10.244.1.2:8080", "10.244.1.3:8080")

    api.update(SERVICES, {**api.get(SERVICES, "web", "default"), "spec": web_service(affinity=True)["spec"]})
    _until(lambda: "--rcheck --seconds 10800 --reap" in kernel.tables.save(), "affinity rules")
    assert proxier.last_payload_bytes < full_bytes * 2  # a partial payload: web's chains plus the top level

    # An event that changes nothing the proxy renders is skipped without touching the kernel.
    restores = len(kernel.payloads)
    labelled = api.get(SERVICES, "other", "default")
    labelled["metadata"]["labels"] = {"team": "x"}
    api.update(SERVICES, labelled)
    _until(lambda: proxier.skipped_sync_count >= 1, "a skipped sync")
    assert len(kernel.payloads) == restores

    api.delete(SERVICES, "web", "default")
    _until(lambda: "default/web" not in kernel.tables.save(), "web's rules to go")
    saved = kernel.tables.save()
    assert "default/web" not in saved and "default/other has no endpoints" in saved
    assert proxier.failed_sync_count == 0 and proxier.full_sync_count == 1


def test_proxier_builds_its_state_incrementally(api_factory: Callable[..., ApiClient],
                                                proxier_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory()
    seen: list[tuple[ProxyState, frozenset[str]]] = []
    proxier, kernel = proxier_factory(api, sync_period=0)
    real_sync = proxier.ruleset.sync

    def recording_sync(state: ProxyState, full: bool, changed: frozenset[str]) -> ipt.SyncResult:
        seen.append((state, changed))
        return real_sync(state, full, changed)

    proxier.ruleset.sync = recording_sync  # type: ignore[method-assign]
    _wait(proxier)
    api.create(SERVICES, web_service())
    api.create(SERVICES, other_service())
    api.create(SLICES, web_slice(["10.244.1.5", "10.244.2.7"]))
    _until(lambda: bool(seen) and len(seen[-1][0].endpoints.get("default/web:http", ())) == 2, "web's endpoints")
    # A second slice of web, then a slice relabelled from web to other, then web deleted.
    second = web_slice(["10.244.3.3"])
    second["metadata"]["name"] = "web-2"
    api.create(SLICES, second)
    _until(lambda: len(seen[-1][0].endpoints.get("default/web:http", ())) == 3, "the second slice")
    assert seen[-1][1] == {"default/web"}  # only web changed
    moved = api.get(SLICES, "web-2", "default")
    moved["metadata"]["labels"] = {"kubernetes.io/service-name": "other"}
    moved["ports"] = [{"port": 443, "protocol": "TCP"}]
    api.update(SLICES, moved)
    _until(lambda: "default/other" in seen[-1][0].endpoints, "the relabelled slice")
    assert seen[-1][1] == {"default/web", "default/other"}
    api.delete(SERVICES, "web", "default")
    _until(lambda: all(p.name != "web" for p in seen[-1][0].service_ports), "web's deletion")
    assert seen[-1][1] == {"default/web"}
    # Every state the ruleset got equals a rebuild of the informers' objects at that moment.
    assert proxier.wait_for_sync(10)
    assert seen[-1][0] == proxier.current_state()
    assert kernel.tables.save() == fresh_full(proxier.current_state())


def test_proxier_full_sync_after_failure_and_on_request(api_factory: Callable[..., ApiClient],
                                                        proxier_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory()
    api.create(SERVICES, web_service())
    proxier, kernel = proxier_factory(api, sync_period=0)
    _wait(proxier)
    kernel.fail = 1
    api.create(SLICES, web_slice(["10.244.1.2"]))
    _until(lambda: "10.244.1.2:8080" in kernel.tables.save(), "web's endpoint after a failed restore")
    assert proxier.failed_sync_count == 1 and proxier.last_sync_error is None
    assert proxier.full_sync_count == 2  # the retry after the failure was full
    assert "10.244.1.2:8080" in kernel.tables.save()

    # Someone flushes the node's nat table: a requested full sync repairs it, jumps included.
    kernel.tables.restore("*nat\n-F\nCOMMIT\n")
    proxier.request_full_sync()
    _wait(proxier)
    assert proxier.full_sync_count == 3
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in kernel.tables.save()


def test_proxier_periodic_full_sync(api_factory: Callable[..., ApiClient],
                                    proxier_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory()
    proxier, _ = proxier_factory(api, sync_period=0.2)
    _wait(proxier)
    _until(lambda: proxier.full_sync_count >= 3, "periodic full syncs")
    assert proxier.partial_sync_count == 0 and proxier.failed_sync_count == 0


def test_proxier_after_sync_hook_and_last_sync_time(api_factory: Callable[..., ApiClient],
                                                    proxier_factory) -> None:  # type: ignore[no-untyped-def]
    api = api_factory()
    calls: list[tuple[ProxyState | None, ProxyState]] = []

    def hook(old: ProxyState | None, new: ProxyState, changed: frozenset[str]) -> None:
        calls.append((old, new))
        if len(calls) == 2:
            raise RuntimeError("hook failure must not fail the sync")

    later: list[frozenset[str]] = []  # a second hook runs even when the first one fails

    before = time.time()
    proxier, kernel = proxier_factory(api, sync_period=0,
                                      after_sync=[hook, lambda old, new, changed: later.append(changed)])
    _wait(proxier)
    assert proxier.last_sync_time is not None and proxier.last_sync_time >= before
    assert calls == [(None, ProxyState((), {}))]
    api.create(SERVICES, web_service())
    _until(lambda: len(calls) == 2, "the hook after the second sync")
    _until(lambda: proxier.sync_count == 2, "the second sync to count")
    old, new = calls[1]
    assert old == ProxyState((), {}) and [p.name for p in new.service_ports] == ["web"]
    assert later == [frozenset(), frozenset({"default/web"})]
    assert proxier.failed_sync_count == 0 and proxier.last_sync_error is None
