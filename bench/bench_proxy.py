"""kube-proxy benchmarks, each against a baseline measured in the same run.

1. Full sync of 1,000 and 10,000 services x 2 endpoints (iptables mode: read
   iptables-save, render, one iptables-restore) vs a bare ``iptables-restore``
   of the same text into an identical fresh namespace. Target: <= 1.2x.
2. A one-service change at 10,000 services (partial sync), both modes.
   Target: < 100 ms, and growing with what changed, not with the total.
3. TCP connection set-up latency to a ClusterIP vs to the pod IP directly, at
   100 and 10,000 services, both modes: nftables stays flat (verdict maps),
   iptables grows with the number of services (a linear KUBE-SERVICES scan;
   the measured service is the last one in the chain).
4. Single-stream throughput (iperf3) pod -> ClusterIP vs pod -> pod IP on a real
   cluster. Target: ratio >= 0.9.

Everything runs in namespaces named nk-b<random>-..., removed at the end.
Exits 1 if a target is missed.
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
from ipaddress import IPv4Address

from netk8s.api.network import Protocol
from netk8s.kernel import netns
from netk8s.kernel.iptables import NetnsIptables
from netk8s.kernel.nft import NetnsNft
from netk8s.proxy.backend import ProxyState, changed_services
from netk8s.proxy.iptables import IptablesRuleSet
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort
from netk8s.proxy.nftables import NftablesRuleSet

PREFIX = f"nk-b{secrets.token_hex(3)}"
NODE_IP = IPv4Address("172.18.0.2")
POD_IP = IPv4Address("10.244.1.2")
CONFIG = ProxyConfig(node_name="bench", node_ip=NODE_IP, cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))
created: list[str] = []


def make_ns(suffix: str) -> str:
    name = f"{PREFIX}-{suffix}"
    netns.create(name)
    created.append(name)
    return name


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


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- 1 and 2: sync times ------------------------------------------------------------------------

def bench_sync(results: list[tuple[str, bool]]) -> None:
    print("== iptables full sync vs bare iptables-restore of the same text")
    for count in (1_000, 10_000):
        st = state(count)
        ns = make_ns(f"f{count}")
        ruleset = IptablesRuleSet(NetnsIptables(ns), CONFIG)
        t0 = time.perf_counter()
        text = ruleset.sync(st, True, frozenset()).payload
        sync_time = time.perf_counter() - t0
        bare_ns = make_ns(f"r{count}")
        bare = timed(lambda: netns.run(bare_ns, ["iptables-restore", "--noflush"], input=text, timeout=300))
        ratio = sync_time / bare
        print(f"  {count:6d} services: full sync {sync_time * 1000:8.0f} ms, bare restore {bare * 1000:8.0f} ms, "
              f"ratio {ratio:.2f}x")
        results.append((f"iptables full sync at {count} services <= 1.2x bare iptables-restore ({ratio:.2f}x)",
                        ratio <= 1.2))

    print("== one-service change at 10,000 services (partial sync)")
    for mode in ("iptables", "nftables"):
        for changed_count in (1, 10):
            st = state(10_000)
            ns = make_ns(f"p{mode[0]}{changed_count}")
            ruleset = (IptablesRuleSet(NetnsIptables(ns), CONFIG) if mode == "iptables"
                       else NftablesRuleSet(NetnsNft(ns), CONFIG))
            ruleset.sync(st, True, frozenset())
            # Change the endpoints of `changed_count` services.
            endpoints = dict(st.endpoints)
            for sp in st.service_ports[:changed_count]:
                endpoints[sp.service_port_name] = (Endpoint(IPv4Address("10.250.0.9"), 8080),)
            new = ProxyState(st.service_ports, endpoints)
            changed = changed_services(st, new)
            elapsed = timed(lambda: ruleset.sync(new, False, changed))
            print(f"  {mode:8s}: {changed_count:2d} changed service(s) at 10,000: {elapsed * 1000:6.1f} ms")
            if changed_count == 1:
                results.append((f"{mode} one-service change at 10,000 services < 100 ms ({elapsed * 1000:.0f} ms)",
                                elapsed < 0.1))


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


def bench_latency(results: list[tuple[str, bool]]) -> None:
    print("== TCP connect latency from a pod: ClusterIP (last service) vs pod IP, p50 in microseconds")
    rows = {}
    for mode in ("iptables", "nftables"):
        for count in (100, 10_000):
            node = make_ns(f"l{mode[0]}{count}")
            pod = make_ns(f"s{mode[0]}{count}")
            client = make_ns(f"c{mode[0]}{count}")
            for peer, ip in ((pod, POD_IP), (client, IPv4Address("10.244.1.3"))):
                host_if = f"v{secrets.token_hex(3)}"
                netns.run(node, ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                                 "netns", netns.path_of(peer)])
                netns.run(node, ["ip", "link", "set", host_if, "up"])
                netns.run(node, ["ip", "route", "add", f"{ip}/32", "dev", host_if])
                netns.run(peer, ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
                netns.run(peer, ["ip", "link", "set", "eth0", "up"])
                netns.run(peer, ["ip", "route", "add", "default", "dev", "eth0"])
                netns.run(node, ["sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1"])
            netns.run(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            ruleset = (IptablesRuleSet(NetnsIptables(node), CONFIG) if mode == "iptables"
                       else NftablesRuleSet(NetnsNft(node), CONFIG))
            ruleset.sync(state(count), True, frozenset())
            stop = threading.Event()
            servers = [threading.Thread(target=serve, args=(pod, port, stop), daemon=True) for port in (8080, 8081)]
            for t in servers:
                t.start()
            time.sleep(0.2)
            connect_times(client, POD_IP, 8080, 50)  # warm up (ARP, caches)
            direct = statistics.median(connect_times(client, POD_IP, 8080))
            via = statistics.median(connect_times(client, target_ip(count), 80))
            stop.set()
            rows[mode, count] = (direct, via)
            print(f"  {mode:8s} {count:6d} services: pod IP {direct * 1e6:7.0f} us, ClusterIP {via * 1e6:7.0f} us "
                  f"({via / direct:.2f}x)")
    for mode in ("iptables", "nftables"):
        small, large = rows[mode, 100][1], rows[mode, 10_000][1]
        print(f"  {mode}: ClusterIP connect at 10,000 services / at 100 services: {large / small:.2f}x")
    growth = rows["nftables", 10_000][1] / rows["nftables", 100][1]
    results.append((f"nftables connect latency flat from 100 to 10,000 services ({growth:.2f}x <= 1.5x)",
                    growth <= 1.5))


# -- 4: throughput --------------------------------------------------------------------------------

def bench_throughput(results: list[tuple[str, bool]]) -> None:
    from netk8s.cluster.api import Cluster

    print("== single-stream throughput (iperf3, 3 s): pod -> ClusterIP vs pod -> pod IP")
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

        direct = max(rate(pod_ip) for _ in range(2))
        via = max(rate(cluster_ip) for _ in range(2))
    ratio = via / direct
    print(f"  pod IP {direct / 1e9:6.2f} Gbit/s, ClusterIP {via / 1e9:6.2f} Gbit/s, ratio {ratio:.2f}")
    results.append((f"throughput to a ClusterIP >= 0.9x to the pod IP ({ratio:.2f}x)", ratio >= 0.9))


def main() -> int:
    if os.geteuid() != 0:
        print("bench_proxy needs root (namespaces, iptables)", file=sys.stderr)
        return 2
    results: list[tuple[str, bool]] = []
    try:
        bench_sync(results)
        bench_latency(results)
        bench_throughput(results)
    finally:
        for name in created:
            netns.delete(name)
    for label, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
