"""kube-proxy benchmarks, each against a baseline or floor measured in the same run.

1. Full sync of 1,000 and 10,000 services x 2 endpoints (iptables mode: read
   the kernel, render, apply) vs a bare ``iptables-restore`` of the same text
   into an identical fresh namespace, run after run. Target: <= 1.2x (the
   median of the runs' ratios, 5 runs at each size: iptables-nft's own time
   for the same text varies by 20% from run to run on a 2-core machine).
2. A one-service change at 10,000 services (partial sync), both modes.
   Target: < 100 ms (median of 5 changes), growing with what changed, not
   with the total: the time spent outside the tool (our rendering and
   bookkeeping) must stay flat from 100 to 10,000 services, and 1, 10 and
   100 changed services must cost increasing amounts. Printed next to it:
   removing/adding a service, and the floor of the userspace tool + kernel at
   that size (the cheapest transaction that adds one rule; for nftables also
   the cheapest one nft must fetch its whole cache for), shown with a FAIL
   that the floor explains.
3. TCP connection set-up latency to a ClusterIP vs to the pod IP directly, at
   100 and 10,000 services, both modes: nftables stays flat (verdict maps),
   iptables grows with the number of services (a linear KUBE-SERVICES scan;
   the measured service is the last one in the chain).
4. Single-stream throughput (iperf3) pod -> ClusterIP vs pod -> pod IP on a real
   cluster (best of 3 interleaved 3 s runs each). Target: ratio >= 0.9.

Also printed (no target): full syncs at 10,000 services in both modes, and
the kernel's cost of anonymous sets that bounds an nftables full sync.

Run as root: ``sudo .venv/bin/python bench/bench_proxy.py`` (several minutes;
progress is printed). Everything runs in namespaces named nk-b<random>-...,
removed at the end. Exits 1 if a target is missed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Callable

from netk8s.api.network import Protocol
from netk8s.kernel import netns
from netk8s.kernel.iptables import NetnsIptables
from netk8s.kernel.nft import NetnsNft
from netk8s.proxy.backend import ProxyState, RuleSet, changed_services
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort
from netk8s.proxy.nftables import NftablesRuleSet

PREFIX = f"nk-b{secrets.token_hex(3)}"
NODE_IP = IPv4Address("172.18.0.2")
POD_IP = IPv4Address("10.244.1.2")
CLIENT_IP = IPv4Address("10.244.1.3")
GATEWAY_IP = IPv4Address("10.244.1.1")  # the node's pod gateway address (inside the node namespace)
CONFIG = ProxyConfig(node_name="bench", node_ip=NODE_IP, cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))
TARGET_MS = 100.0
created: list[str] = []
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


@dataclass
class Report:
    """PASS/FAIL lines, each optionally followed by the floor that explains it."""

    lines: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, label: str, ok: bool, floor: str = "") -> None:
        self.lines.append((label, ok, floor))

    def print(self) -> bool:
        print("\n== summary", flush=True)
        for label, ok, floor in self.lines:
            print(f"{'PASS' if ok else 'FAIL'}  {label}")
            if floor and not ok:
                print(f"      floor: {floor}")
        return all(ok for _, ok, _ in self.lines)


def make_ns(suffix: str) -> str:
    name = f"{PREFIX}-{suffix}"
    netns.create(name)
    created.append(name)
    return name


def drop_ns(name: str) -> None:
    netns.delete(name)
    created.remove(name)


def state(services: int, target_last: bool = True) -> ProxyState:
    """``services`` ClusterIP services with 2 endpoints each; the last one ("zz-target") DNATs to POD_IP:8080."""
    ports, endpoints = [], {}
    for i in range(services):
        name = "zz-target" if (target_last and i == services - 1) else f"svc-{i:05d}"
        sp = ServicePort(namespace="bench", name=name, port_name="http", protocol=Protocol.TCP,
                         cluster_ip=IPv4Address(int(IPv4Address("10.96.0.0")) + 10 + i), port=80)
        ports.append(sp)
        if name == "zz-target":
            eps = [Endpoint(POD_IP, 8080), Endpoint(POD_IP, 8080 + 1)]
        else:
            base = int(IPv4Address("10.245.0.0")) + 2 * i
            eps = [Endpoint(IPv4Address(base), 8080), Endpoint(IPv4Address(base + 1), 8080)]
        endpoints[sp.service_port_name] = eps
    return ProxyState.of(ports, endpoints)


def target_ip(services: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("10.96.0.0")) + 10 + services - 1)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- 1: iptables full sync vs bare iptables-restore ---------------------------------------------

def bench_full_sync(report: Report) -> None:
    say("== 1. iptables full sync vs bare iptables-restore of the same text (fresh namespaces; 5 runs at 1,000, "
        "5 at 10,000)")
    for count, runs in ((1_000, 5), (10_000, 5)):
        st = state(count)
        syncs, bares = [], []
        used: list[str] = []
        for run in range(runs):
            ns, bare_ns = make_ns(f"f{count}-{run}"), make_ns(f"r{count}-{run}")
            ruleset = IptablesRuleSet(NetnsIptables(ns), CONFIG)
            holder: list[str] = []
            syncs.append(timed(lambda: holder.append(ruleset.sync(st, True, frozenset()).payload)))
            text = holder[0]
            bares.append(timed(lambda: netns.run(bare_ns, ["iptables-restore", "--noflush"], input=text,
                                                 timeout=600)))
            say(f"  {count:6d} services, run {run + 1}: full sync {ms(syncs[-1])}, bare restore {ms(bares[-1])} "
                f"({len(text) / 1e6:.1f} MB, {text.count('COMMIT')} commits)")
            used += [ns, bare_ns]
        # Deleted only now: the kernel frees a deleted namespace's rules in the background, which would
        # slow down whichever measurement of the next run came first.
        for name in used:
            drop_ns(name)
        ratio = statistics.median(sync / bare for sync, bare in zip(syncs, bares))
        say(f"  {count:6d} services: median full sync {ms(statistics.median(syncs))}, "
            f"median bare restore {ms(statistics.median(bares))}, median ratio {ratio:.2f}x")
        report.check(f"iptables full sync at {count} services <= 1.2x bare iptables-restore ({ratio:.2f}x)",
                     ratio <= 1.2)


# -- node namespaces: a node with a pod and a client behind veths ---------------------------------

def wire_node(mode: str, count: int) -> tuple[str, str, str]:
    """A node namespace with a pod and a client namespace behind veths, routed like a node's pod bridge.

    Pod and client route everything via 10.244.1.1 (the node's pod gateway
    address, on its loopback), so packets to a ClusterIP reach the node and
    are DNATed in PREROUTING, as on a real node; the node needs no route for
    the service range.
    """
    node = make_ns(f"n{mode[0]}{count}")
    pod = make_ns(f"s{mode[0]}{count}")
    client = make_ns(f"c{mode[0]}{count}")
    netns.run(node, ["ip", "addr", "add", f"{GATEWAY_IP}/32", "dev", "lo"])
    for peer, ip in ((pod, POD_IP), (client, CLIENT_IP)):
        host_if = f"v{secrets.token_hex(3)}"
        netns.run(node, ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                         "netns", netns.path_of(peer)])
        netns.run(node, ["ip", "link", "set", host_if, "up"])
        netns.run(node, ["ip", "route", "add", f"{ip}/32", "dev", host_if])
        netns.run(peer, ["ip", "addr", "add", f"{ip}/32", "dev", "eth0"])
        netns.run(peer, ["ip", "link", "set", "eth0", "up"])
        netns.run(peer, ["ip", "route", "add", "default", "via", str(GATEWAY_IP), "dev", "eth0", "onlink"])
    netns.run(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    return node, pod, client


class TimedIptables(NetnsIptables):
    """The real backend, adding up the time spent in iptables-restore (the tool and the kernel)."""

    tool = 0.0

    def restore(self, text: str) -> None:
        t0 = time.perf_counter()
        try:
            super().restore(text)
        finally:
            self.tool += time.perf_counter() - t0


class TimedNft(NetnsNft):
    """The real backend, adding up the time spent in nft -f (the tool and the kernel)."""

    tool = 0.0

    def apply(self, script: str) -> None:
        t0 = time.perf_counter()
        try:
            super().apply(script)
        finally:
            self.tool += time.perf_counter() - t0


def make_ruleset(mode: str, node: str) -> tuple[RuleSet, TimedIptables | TimedNft]:
    if mode == "iptables":
        ipt_backend = TimedIptables(node)
        return IptablesRuleSet(ipt_backend, CONFIG), ipt_backend
    nft_backend = TimedNft(node)
    return NftablesRuleSet(nft_backend, CONFIG), nft_backend


# -- 3: connection set-up latency -------------------------------------------------------------

def serve(ns: str, port: int, stop: threading.Event) -> None:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(1024)
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
            conn.close()
        except socket.timeout:
            continue
    sock.close()


def connect_times(ns: str, ip: IPv4Address, port: int, n: int = 400) -> list[float]:
    out = []
    for _ in range(n):
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        t0 = time.perf_counter()
        sock.connect((str(ip), port))
        out.append(time.perf_counter() - t0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    return out


def measure_latency(pod: str, client: str, count: int) -> tuple[float, float]:
    stop = threading.Event()
    servers = [threading.Thread(target=serve, args=(pod, port, stop), daemon=True) for port in (8080, 8081)]
    for t in servers:
        t.start()
    try:
        time.sleep(0.2)
        connect_times(client, POD_IP, 8080, 50)  # warm up (ARP, caches)
        direct = statistics.median(connect_times(client, POD_IP, 8080))
        via = statistics.median(connect_times(client, target_ip(count), 80))
    finally:
        stop.set()
        for t in servers:
            t.join(timeout=2)
    return direct, via


# -- 2: partial syncs and the tool's floor ------------------------------------------------------------

def with_new_endpoints(st: ProxyState, first: int, count: int, tag: int) -> ProxyState:
    """``st`` with services ``first`` .. ``first+count-1`` moved to one new endpoint each."""
    endpoints = dict(st.endpoints)
    for i, sp in enumerate(st.service_ports[first:first + count]):
        endpoints[sp.service_port_name] = (Endpoint(IPv4Address(int(IPv4Address("10.250.0.0")) + 256 * tag + i),
                                                    8080),)
    return ProxyState(st.service_ports, endpoints)


def median_time(samples: list[float]) -> float:
    return statistics.median(samples)


def floor_iptables(node: str) -> float:
    """One new chain with one rule, restored into the node (the cheapest restore that adds a rule)."""
    add = "*nat\n:KUBE-SEP-NKBENCHFLOOR00001 - [0:0]\n-A KUBE-SEP-NKBENCHFLOOR00001 -j KUBE-MARK-MASQ\nCOMMIT\n"
    drop = "*nat\n:KUBE-SEP-NKBENCHFLOOR00001 - [0:0]\n-X KUBE-SEP-NKBENCHFLOOR00001\nCOMMIT\n"
    samples = []
    for _ in range(5):
        samples.append(timed(lambda: netns.run(node, ["iptables-restore", "--noflush"], input=add)))
        netns.run(node, ["iptables-restore", "--noflush"], input=drop)
    return median_time(samples)


def floor_nft(node: str) -> tuple[float, float]:
    """(cheapest transaction adding a rule, cheapest one nft fetches its whole cache for), medians of 5."""
    backend = NetnsNft(node)
    chain = "nk-bench-floor"
    add = (f"add chain ip kube-proxy {chain}\n"
           f"add chain ip kube-proxy {chain} {{ ip saddr 10.250.255.1 jump mark-for-masquerade ; }}\n")
    cleanup = f"flush chain ip kube-proxy {chain}\ndelete chain ip kube-proxy {chain}\n"
    element = ('add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; '
               "elements = { 10.250.255.2 } ; }\n")
    delete = "delete element ip kube-proxy cluster-ips { 10.250.255.2 }\n"
    rule, cache = [], []
    for _ in range(5):
        rule.append(timed(lambda: backend.apply(add)))
        backend.apply(cleanup)
        backend.apply(element)
        cache.append(timed(lambda: backend.apply(delete)))
    return median_time(rule), median_time(cache)


@dataclass
class PartialResult:
    one: float  # median of 5 one-service endpoint changes
    ours: float  # the part of ``one`` spent outside the tool (median of the same 5)
    ten: float
    hundred: float
    remove: float
    add: float
    floor: float
    cache_floor: float = 0.0


def bench_partial(mode: str, node: str, ruleset: RuleSet, backend: TimedIptables | TimedNft, st: ProxyState,
                  count: int) -> PartialResult:
    ones, ours = [], []
    current = st
    for trial in range(5):
        new = with_new_endpoints(current, trial * 7, 1, trial)
        changed = changed_services(current, new)
        backend.tool = 0.0
        ones.append(timed(lambda: ruleset.sync(new, False, changed)))
        ours.append(ones[-1] - backend.tool)
        current = new
    many = {}
    for n, first, tag in ((10, 40, 10), (100, 50, 20)):
        # At 100 services the last one is the latency target: at most 49 change there.
        new = with_new_endpoints(current, first, min(n, count - 1 - first), tag)
        changed = changed_services(current, new)
        many[n] = timed(lambda: ruleset.sync(new, False, changed))
        current = new
    gone = ProxyState(current.service_ports[1:], current.endpoints)
    changed = changed_services(current, gone)
    remove = timed(lambda: ruleset.sync(gone, False, changed))
    changed = changed_services(gone, current)
    add = timed(lambda: ruleset.sync(current, False, changed))
    if mode == "iptables":
        floor, cache_floor = floor_iptables(node), 0.0
    else:
        floor, cache_floor = floor_nft(node)
    return PartialResult(median_time(ones), median_time(ours), many[10], many[100], remove, add, floor, cache_floor)


# -- the per-mode run: full sync, latency, partial syncs at 100 and 10,000 services -------------------

def bench_mode(mode: str, report: Report, latency: dict[tuple[str, int], tuple[float, float]]) -> None:
    partial: dict[int, PartialResult] = {}
    for count in (100, 10_000):
        say(f"== {mode}: {count} services")
        node, pod, client = wire_node(mode, count)
        ruleset, backend = make_ruleset(mode, node)
        st = state(count)
        full = timed(lambda: ruleset.sync(st, True, frozenset()))
        say(f"  full sync: {ms(full)}")
        latency[mode, count] = measure_latency(pod, client, count)
        direct, via = latency[mode, count]
        say(f"  connect p50: pod IP {direct * 1e6:.0f} us, ClusterIP {via * 1e6:.0f} us ({via / direct:.2f}x)")
        resync = timed(lambda: ruleset.sync(st, True, frozenset()))
        say(f"  full resync over the installed rules: {ms(resync)}")
        partial[count] = result = bench_partial(mode, node, ruleset, backend, st, count)
        say(f"  partial syncs: 1 service changed {ms(result.one)} (median of 5; outside the tool {ms(result.ours)}), "
            f"10 changed {ms(result.ten)}, 100 changed {ms(result.hundred)}; remove a service {ms(result.remove)}, "
            f"add it back {ms(result.add)}")
        floor_text = (f"a restore of one new chain with one rule takes {ms(result.floor)}" if mode == "iptables" else
                      f"a transaction adding one rule takes {ms(result.floor)}; one that makes nft fetch its whole "
                      f"cache (e.g. deleting one element) {ms(result.cache_floor)}")
        say(f"  floor at {count} services: {floor_text}")
        for name in (node, pod, client):
            drop_ns(name)
    small, large = partial[100], partial[10_000]
    floor_explained = (
        f"at 10,000 services {('a restore of one new chain with one rule' if mode == 'iptables' else 'an nft -f adding one rule')} "
        f"takes {ms(large.floor)} (at 100: {ms(small.floor)}): nf_tables re-validates every chain reachable from "
        "the base chains at each commit that adds a rule"
        + ("" if mode == "iptables" else f"; a transaction that needs nft's full cache {ms(large.cache_floor)}"))
    report.check(f"{mode} one-service change at 10,000 services < {TARGET_MS:.0f} ms ({ms(large.one)}, median of 5)",
                 large.one * 1000 < TARGET_MS, floor_explained if large.floor * 1000 > TARGET_MS * 0.6 else "")
    report.check(f"{mode} one-service change: our part (outside the tool) does not grow with the total "
                 f"(100 services: {ms(small.ours)}, 10,000: {ms(large.ours)}; with the tool {ms(small.one)} -> "
                 f"{ms(large.one)}, floor {ms(small.floor)} -> {ms(large.floor)})",
                 large.ours <= max(3 * small.ours, 0.010))
    report.check(f"{mode} partial sync grows with what changed (1 / 10 / 100 services changed at 10,000: "
                 f"{ms(large.one)} / {ms(large.ten)} / {ms(large.hundred)})",
                 large.one <= large.ten * 1.2 and large.ten <= large.hundred * 1.2)


def bench_latency_summary(report: Report, latency: dict[tuple[str, int], tuple[float, float]]) -> None:
    say("== 3. TCP connect latency summary (p50, ClusterIP of the last service)")
    for mode in ("iptables", "nftables"):
        small, large = latency[mode, 100][1], latency[mode, 10_000][1]
        say(f"  {mode}: ClusterIP connect at 10,000 services / at 100 services: {large / small:.2f}x "
            f"({small * 1e6:.0f} us -> {large * 1e6:.0f} us)")
    growth = latency["nftables", 10_000][1] / latency["nftables", 100][1]
    report.check(f"nftables connect latency flat from 100 to 10,000 services ({growth:.2f}x <= 1.5x)", growth <= 1.5)
    growth = latency["iptables", 10_000][1] / latency["iptables", 100][1]
    report.check(f"iptables connect latency grows with the number of services (linear KUBE-SERVICES scan: "
                 f"{growth:.2f}x > 1.5x)", growth > 1.5)


# -- informational: the kernel's anonymous-set cost behind an nftables full sync -------------------

def bench_anonymous_sets() -> None:
    say("== kernel cost of anonymous sets (one nft -f transaction creating N chains, one rule each)")
    for count in (2_000, 4_000):
        row = []
        for kind in ("goto", "vmap"):
            lines = ["add table ip kube-proxy", "add chain ip kube-proxy target"]
            for i in range(count):
                lines.append(f"add chain ip kube-proxy c{i}")
                rule = "goto target" if kind == "goto" else "numgen random mod 1 vmap { 0 : goto target }"
                lines.append(f"add rule ip kube-proxy c{i} {rule}")
            ns = make_ns(f"a{kind[0]}{count}")
            row.append(timed(lambda: NetnsNft(ns).apply("\n".join(lines) + "\n")))
            drop_ns(ns)
        say(f"  {count} chains: plain goto rules {ms(row[0])}, anonymous vmap rules {ms(row[1])}")


# -- 4: throughput --------------------------------------------------------------------------------

def bench_throughput(report: Report) -> None:
    from netk8s.cluster.api import Cluster

    say("== 4. single-stream throughput (iperf3, 3 s): pod -> ClusterIP vs pod -> pod IP")
    with Cluster.up(name=f"b{secrets.token_hex(3)}") as cluster:
        cluster.apply([
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "iperf", "labels": {"app": "iperf"}},
             "spec": {"nodeName": "worker", "containers": [{"name": "s", "image": "busybox",
                                                           "command": ["iperf3", "-s"],
                                                           "ports": [{"containerPort": 5201}]}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iperf"},
             "spec": {"selector": {"app": "iperf"}, "ports": [{"port": 5201}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
             "spec": {"nodeName": "worker2", "containers": [{"name": "c", "image": "busybox",
                                                            "command": ["sleep", "infinity"]}]}},
        ])
        cluster.wait_ready("pod", "iperf", timeout=60)
        cluster.wait_ready("pod", "client", timeout=60)
        pod_ip = cluster.get("pod", "iperf")["status"]["podIP"]
        cluster_ip = cluster.get("service", "iperf")["spec"]["clusterIP"]
        time.sleep(1.0)

        def rate(ip: str) -> float:
            out = cluster.exec("client", ["iperf3", "-c", ip, "-t", "3", "-J"], timeout=60, check=True).stdout
            return json.loads(out)["end"]["sum_received"]["bits_per_second"]

        direct_runs, via_runs = [], []
        for _ in range(3):  # interleaved, so that drift on the machine affects both alike
            direct_runs.append(rate(pod_ip))
            via_runs.append(rate(cluster_ip))
        say("  runs (Gbit/s): pod IP " + ", ".join(f"{r / 1e9:.2f}" for r in direct_runs) + "; ClusterIP "
            + ", ".join(f"{r / 1e9:.2f}" for r in via_runs))
        direct, via = max(direct_runs), max(via_runs)
    ratio = via / direct
    say(f"  pod IP {direct / 1e9:6.2f} Gbit/s, ClusterIP {via / 1e9:6.2f} Gbit/s, ratio {ratio:.2f}")
    report.check(f"throughput to a ClusterIP >= 0.9x to the pod IP ({ratio:.2f}x)", ratio >= 0.9)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_proxy needs root (namespaces, iptables)", file=sys.stderr)
        return 2
    report = Report()
    latency: dict[tuple[str, int], tuple[float, float]] = {}
    try:
        bench_full_sync(report)
        for mode in ("iptables", "nftables"):
            bench_mode(mode, report, latency)
        bench_latency_summary(report, latency)
        bench_anonymous_sets()
        bench_throughput(report)
    finally:
        for name in list(created):
            netns.delete(name)
    return 0 if report.print() else 1


if __name__ == "__main__":
    raise SystemExit(main())
