"""kube-proxy's runtime pieces and load balancer announcements, for real in throwaway namespaces (root).

- the health, metrics and health-check-node-port servers answer inside a node namespace (curl run
  there), driven by an in-process API server;
- ``prepare_node`` sets route_localnet in the node only;
- a proxy ARP announcement makes a peer on the same segment reach a load balancer address (DNATed
  by a rule like kube-proxy's), and moving it updates the peer's ARP cache through gratuitous ARP;
- ``conntrack -D`` removes a UDP flow made through a DNAT rule, and only that one.

Every namespace is ``nk-t<random>-...`` and deleted in a finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pytest

from netk8s.api.network import Protocol
from netk8s.api.resources import ENDPOINTSLICES, SERVICES
from netk8s.client.rest import ApiClient
from netk8s.emulator.announce import announce, announced, withdraw
from netk8s.kernel import conntrack, netns
from netk8s.kernel.conntrack import ConntrackCleaner
from netk8s.proxy.conntrack import ConntrackFilter
from netk8s.proxy.health import HealthConfig, ProxyHealth, prepare_node
from netk8s.proxy.model import Endpoint, ProxyConfig, ServicePort
from netk8s.proxy.proxier import Proxier
from netk8s.testing.helpers import wait_for


@pytest.fixture
def prefix() -> str:
    return f"nk-t{secrets.token_hex(3)}"


@pytest.fixture
def namespaces(prefix: str) -> Iterator[Callable[[str], str]]:
    """Create ``<prefix>-<suffix>`` namespaces on demand; all deleted at the end."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{prefix}-{suffix}"
        made.append(name)
        netns.create(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            netns.delete(name)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: str


def curl(ns: str, url: str) -> HttpAnswer | None:
    """GET ``url`` from inside ``ns``; None when nothing answers."""
    out = netns.run(ns, ["curl", "-s", "-i", "-m", "3", url], check=False, timeout=10)
    if out.returncode != 0:
        return None
    head, _, body = out.stdout.partition("\n\n")  # text mode: CRLF came back as LF
    lines = head.split("\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return HttpAnswer(int(lines[0].split()[1]), headers, body)


# -- health servers ----------------------------------------------------------------------------------

def lb_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def endpoint_slice(node_name: str) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.7"], "nodeName": node_name, "conditions": {"ready": True}}]}


def test_health_servers_answer_inside_the_node_namespace(api: ApiClient, namespaces: Callable[[str], str]) -> None:
    node = namespaces("node")
    last = [time.time()]
    health = ProxyHealth(api, "worker", node, "iptables", lambda: last[0], HealthConfig(healthz_timeout=60))
    # The service health checks follow what this node's proxier installed (its after-sync hook).
    proxier = Proxier(api, ProxyConfig("worker", IPv4Address("172.18.0.3"), IPv4Network("10.244.0.0/16")), node,
                      after_sync=health.after_sync)
    health.start()
    proxier.start()
    try:
        assert health.wait_synced(5) and proxier.wait_synced(5)
        healthz = curl(node, "http://127.0.0.1:10256/healthz")
        assert healthz is not None and healthz.status == 200
        assert healthz.headers["Content-Type"] == "application/json"
        assert healthz.headers["X-Content-Type-Options"] == "nosniff"
        body = json.loads(healthz.body)
        assert body["nodeName"] == "worker" and body["nodeEligible"] is True and body["healthy"] is True
        livez = curl(node, "http://127.0.0.1:10256/livez")
        assert livez is not None and livez.status == 200
        mode = curl(node, "http://127.0.0.1:10249/proxyMode")
        assert mode is not None and (mode.status, mode.body) == (200, "iptables")
        metrics = curl(node, "http://127.0.0.1:10249/metrics")
        assert metrics is not None and 'kubeproxy_healthz_total{code="200"} 1' in metrics.body
        missing = curl(node, "http://127.0.0.1:10256/nope")
        assert missing is not None and missing.status == 404

        last[0] = time.time() - 300  # the proxier has not synced for 5 minutes
        stale = curl(node, "http://127.0.0.1:10256/healthz")
        assert stale is not None and stale.status == 503 and json.loads(stale.body)["healthy"] is False
        last[0] = time.time()

        # The health check node port of a Local LoadBalancer service.
        created = api.create(SERVICES, lb_service(), "default")
        port = created["spec"]["healthCheckNodePort"]
        api.create(ENDPOINTSLICES, endpoint_slice("worker"), "default")
        url = f"http://127.0.0.1:{port}/"

        def check(status: int) -> HttpAnswer | None:
            answer = curl(node, url)
            return answer if answer is not None and answer.status == status else None

        local = wait_for(lambda: check(200), timeout=10, what="the health check node port to answer 200")
        assert json.loads(local.body) == {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1,
                                          "serviceProxyHealthy": True}
        assert local.headers["X-Content-Type-Options"] == "nosniff"
        moved = api.get(ENDPOINTSLICES, "web-abc", "default")
        moved["endpoints"][0]["nodeName"] = "worker2"
        api.update(ENDPOINTSLICES, moved)
        elsewhere = wait_for(lambda: check(503), timeout=10, what="the health check to answer 503")
        assert json.loads(elsewhere.body)["localEndpoints"] == 0
        api.delete(SERVICES, "web", "default")
        wait_for(lambda: curl(node, url) is None, timeout=10, what="the health check port to close")
    finally:
        proxier.stop()
        proxier.join()
        health.stop()
        health.join()
    assert curl(node, "http://127.0.0.1:10256/healthz") is None  # servers gone with stop()


ROOT_ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")


def test_prepare_node_sets_route_localnet_in_the_node_only(namespaces: Callable[[str], str]) -> None:
    root_before = ROOT_ROUTE_LOCALNET.read_text()
    iptables_node, nft_node = namespaces("ipt"), namespaces("nft")
    assert prepare_node(iptables_node, "iptables") == {"net.ipv4.conf.all.route_localnet": "1"}
    assert prepare_node(nft_node, "nftables") == {}
    assert netns.read_sysctl(iptables_node, "net.ipv4.conf.all.route_localnet") == "1"
    assert netns.read_sysctl(nft_node, "net.ipv4.conf.all.route_localnet") == "0"
    assert ROOT_ROUTE_LOCALNET.read_text() == root_before  # the test runs in the root namespace


# -- proxy ARP announcements -----------------------------------------------------------------------------

LB_IP = IPv4Address("192.0.2.200")
SEGMENT = {"a": "192.0.2.2", "b": "192.0.2.3", "peer": "192.0.2.10"}


class Replier:
    """A TCP server on a node's own address that answers each connection with the node's name."""

    def __init__(self, ns: str, ip: str, port: int, reply: str) -> None:
        self.sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(reply,), daemon=True)
        self._thread.start()

    def _serve(self, reply: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(reply.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def fetch(ns: str, ip: IPv4Address, port: int) -> str | None:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(1.5)
        try:
            sock.connect((str(ip), port))
            return sock.recv(16).decode()
        except OSError:
            return None


def mac_of(ns: str, dev: str) -> str:
    return json.loads(netns.run(ns, ["ip", "-j", "link", "show", dev]).stdout)[0]["address"]


def neighbour_mac(ns: str, ip: IPv4Address) -> str | None:
    entries = json.loads(netns.run(ns, ["ip", "-j", "neigh", "show", str(ip)]).stdout or "[]")
    return entries[0].get("lladdr") if entries else None


@pytest.fixture
def segment(prefix: str, namespaces: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """Namespaces a, b (announcing nodes) and peer on one bridge in a switch namespace (nothing in root)."""
    switch = namespaces("sw")
    netns.run(switch, ["ip", "link", "add", "br0", "type", "bridge"])
    netns.run(switch, ["ip", "link", "set", "br0", "up"])
    made = {"sw": switch}
    repliers: list[Replier] = []
    for index, (name, ip) in enumerate(SEGMENT.items()):
        ns = namespaces(name)
        made[name] = ns
        port = f"p{index}"
        netns.run(switch, ["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
        netns.run(switch, ["ip", "link", "set", port, "master", "br0", "up"])
        netns.run(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        netns.run(ns, ["ip", "link", "set", "eth0", "up"])
        if name != "peer":
            netns.write_sysctl(ns, "net.ipv4.ip_forward", 1)  # emulated nodes forward; proxy ARP needs it
            # What kube-proxy does for a load balancer IP: DNAT it (here to the node itself).
            netns.run(ns, ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", str(LB_IP), "-p", "tcp",
                           "--dport", "80", "-j", "DNAT", "--to-destination", f"{ip}:8080"])
            repliers.append(Replier(ns, ip, 8080, name))
    try:
        yield made
    finally:
        for replier in repliers:
            replier.close()


def test_proxy_arp_announcement_reaches_the_peer_and_moves_with_gratuitous_arp(segment: dict[str, str]) -> None:
    a, b, peer = segment["a"], segment["b"], segment["peer"]
    assert fetch(peer, LB_IP, 80) is None  # nobody answers ARP for it yet

    announce(a, "eth0", LB_IP)
    assert announced(a) == {LB_IP}
    assert f"{LB_IP} dev eth0 proxy" in netns.run(a, ["ip", "neigh", "show", "proxy"]).stdout
    assert str(LB_IP) not in netns.run(a, ["ip", "-4", "addr", "show"]).stdout  # no address on the node
    assert wait_for(lambda: fetch(peer, LB_IP, 80), timeout=5, what="the peer to reach the LB IP via a") == "a"
    assert neighbour_mac(peer, LB_IP) == mac_of(a, "eth0")

    # Move: a stops answering, b announces and broadcasts gratuitous ARP; the peer's cache follows at once.
    withdraw(a, "eth0", LB_IP)
    assert announced(a) == set()
    assert netns.run(a, ["ip", "neigh", "show", "proxy"]).stdout.strip() == ""
    announce(b, "eth0", LB_IP)
    wait_for(lambda: neighbour_mac(peer, LB_IP) == mac_of(b, "eth0"), timeout=2,
             what="the gratuitous ARP to update the peer's neighbour entry")
    assert wait_for(lambda: fetch(peer, LB_IP, 80), timeout=5, what="the peer to reach the LB IP via b") == "b"

    withdraw(b, "eth0", LB_IP)
    withdraw(b, "eth0", LB_IP)  # idempotent
    assert announced(b) == set()


# -- conntrack ------------------------------------------------------------------------------------------

SERVICE_IP, ENDPOINT_IP, OTHER_IP = IPv4Address("198.51.100.10"), IPv4Address("192.0.2.5"), IPv4Address("192.0.2.6")


@dataclass(frozen=True)
class State:
    service_ports: Sequence[ServicePort] = ()
    endpoints: Mapping[str, Sequence[Endpoint]] = field(default_factory=dict)


def udp_flow(ns: str) -> None:
    """One datagram to SERVICE_IP:53, DNATed (nat OUTPUT) to ENDPOINT_IP:5353 where a socket receives it."""
    server = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    client = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((str(ENDPOINT_IP), 5353))
        server.settimeout(2)
        client.sendto(b"ping", (str(SERVICE_IP), 53))
        assert server.recvfrom(16)[0] == b"ping"


def udp_entries(ns: str) -> list[str]:
    return [line for line in conntrack.list_entries(ns, Protocol.UDP) if f"dst={SERVICE_IP}" in line]


def test_conntrack_delete_removes_the_stale_udp_flow(namespaces: Callable[[str], str]) -> None:
    ns = namespaces("ct")
    netns.run(ns, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
    for dev in ("veth0", "veth1"):
        netns.run(ns, ["ip", "link", "set", dev, "up"])
    for ip in (ENDPOINT_IP, OTHER_IP):
        netns.run(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "veth0"])
    netns.run(ns, ["ip", "route", "add", "default", "dev", "veth0"])
    netns.run(ns, ["iptables", "-t", "nat", "-A", "OUTPUT", "-d", str(SERVICE_IP), "-p", "udp", "--dport", "53",
                   "-j", "DNAT", "--to-destination", f"{ENDPOINT_IP}:5353"])
    udp_flow(ns)
    entries = udp_entries(ns)
    assert len(entries) == 1 and f"src={ENDPOINT_IP}" in entries[0]  # reply source: the endpoint

    # A filter for another endpoint leaves it alone.
    assert conntrack.delete_entries(ns, ConntrackFilter(Protocol.UDP, SERVICE_IP, 53, OTHER_IP)) == 0
    assert len(udp_entries(ns)) == 1

    # The endpoint goes away: the cleaner clears exactly the flows DNATed to it.
    dns = ServicePort("default", "dns", "", Protocol.UDP, SERVICE_IP, 53)
    old = State((dns,), {dns.service_port_name: [Endpoint(ENDPOINT_IP, 5353), Endpoint(OTHER_IP, 5353)]})
    new = State((dns,), {dns.service_port_name: [Endpoint(OTHER_IP, 5353)]})
    cleaner = ConntrackCleaner(ns)
    ran = cleaner.after_sync(old, new)
    assert [f.args() for f in ran] == [["-p", "udp", "--orig-dst", str(SERVICE_IP), "--orig-port-dst", "53",
                                        "--dst-nat", str(ENDPOINT_IP)]]
    assert cleaner.deleted_total == 1 and cleaner.failures == 0
    assert udp_entries(ns) == []
