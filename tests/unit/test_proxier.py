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

from netk8s.api.resources import by_plural
from netk8s.client.rest import ApiClient
from netk8s.errors import KernelError, ValidationError
from netk8s.proxy import iptables as ipt
from netk8s.proxy.backend import ProxyMode, ProxyState, RuleSet, changed_services
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import Endpoint, Protocol, ServicePort
from netk8s.proxy.proxier import Proxier
from netk8s.proxy.trace import IptablesTables, Verdict
from test_proxy_trace import CONFIG, LOCAL_ADDRESSES, OTHER_LOCAL_POD, _pkt, small_cluster_state


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


def test_endpoint_change_rewrites_only_that_service() -> None:
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    first = sync(ruleset, None, state)
    assert first.full and kernel.saves == 1
    web_chains = set(ipt.render(state.service_ports, state.endpoints, CONFIG).service_chains["default/web"])

    new = replace_endpoints(state, "default/web:http", [Endpoint(IPv4Address("10.244.1.5"), 8080, is_local=True),
                                                        Endpoint(IPv4Address("10.244.3.3"), 8080)])
    result = sync(ruleset, state, new)
    assert not result.full and result.changed == {"default/web"}
    assert kernel.saves == 1  # a partial sync does not read the kernel
    new_web = set(ipt.render(new.service_ports, new.endpoints, CONFIG).service_chains["default/web"])
    stale = web_chains - new_web
    assert len(stale) == 1 and stale.pop().startswith("KUBE-SEP-")
    # Declared: the top-level chains, web's chains, and web's stale endpoint chain (flushed, then -X).
    assert service_chains_in(result.payload) == new_web | (web_chains - new_web)
    assert result.objects_written == len(new_web) and result.objects_deleted == 1
    assert {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL",
            "KUBE-FORWARD", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} <= declared(result.payload)
    # Other services' chains are neither declared nor given rules; their top-level rules are all rewritten.
    others = set(ipt.render(new.service_ports, new.endpoints, CONFIG).service_chains["default/solo"])
    assert not any(re.match(rf"-A ({'|'.join(others)}) ", ln) for ln in result.payload.splitlines())
    assert "default/solo:http cluster IP" in result.payload
    assert "-I " not in result.payload
    # 16 services: the top-level rules are a third of the full payload; the rest is skipped.
    assert result.payload_bytes < first.payload_bytes / 2
    assert kernel.tables.save() == fresh_full(new)


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


@pytest.mark.parametrize("seed", range(5))
def test_random_partial_syncs_match_a_fresh_full_sync(seed: int) -> None:
    rng = random.Random(seed)
    kernel = FakeKernel()
    ruleset = IptablesRuleSet(kernel, CONFIG)
    state = small_cluster_state()
    sync(ruleset, None, state)
    for step in range(25):
        new = _random_change(rng, state)
        result = sync(ruleset, state, new)
        assert not result.full
        assert kernel.tables.save() == fresh_full(new), f"seed {seed} step {step}"
        state = new


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

    def hook(old: ProxyState | None, new: ProxyState) -> None:
        calls.append((old, new))
        if len(calls) == 2:
            raise RuntimeError("hook failure must not fail the sync")

    before = time.time()
    proxier, kernel = proxier_factory(api, sync_period=0, after_sync=hook)
    _wait(proxier)
    assert proxier.last_sync_time is not None and proxier.last_sync_time >= before
    assert calls == [(None, ProxyState((), {}))]
    api.create(SERVICES, web_service())
    _until(lambda: len(calls) == 2, "the hook after the second sync")
    _until(lambda: proxier.sync_count == 2, "the second sync to count")
    old, new = calls[1]
    assert old == ProxyState((), {}) and [p.name for p in new.service_ports] == ["web"]
    assert proxier.failed_sync_count == 0 and proxier.last_sync_error is None
