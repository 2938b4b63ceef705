"""The emulated underlay built from a topology: named namespaces, switches inside their
own namespaces, addressed links, bandwidth shaping, and a records-based teardown; routed
topologies (router forwarding, static routes, default gateways), nftables link loss, and the
host-gw and VXLAN route agents against an in-process API server."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.api.resources import NODES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.cluster.state import ClusterRecord, StateDir
from netk8s.cluster.teardown import teardown
from netk8s.cni.hostgw import HostGwAgent
from netk8s.cni.vxlan import VxlanAgent, VxlanConfig, vtep_mac
from netk8s.emulator.network import EmulatedNetwork
from netk8s.kernel import netns
from netk8s.testing.helpers import namespaces_of, wait_for
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import load_dict

NET = ipaddress.IPv4Network


def topology(name: str) -> dict:
    return {
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "name": name,
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w1"}],
        "hosts": [{"name": "ext"}],
        "switches": [{"name": "s1", "subnet": "172.18.0.0/16"}],
        "links": [{"endpoints": ["cp", "s1"]}, {"endpoints": ["w1", "s1"], "bandwidth": 50},
                  {"endpoints": ["ext", "s1"]}],
    }


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[EmulatedNetwork, StateDir]]:
    name = unique_cluster_name("em")
    topo = load_dict(topology(name))
    state = StateDir(name, tmp_path)
    state.create(ClusterRecord(name=name))
    net = EmulatedNetwork(topo, state)
    try:
        net.build()
        yield net, state
    finally:
        net.stop()
        teardown(state)


def ns_run(ns: str, *argv: str) -> str:
    return netns.run(ns, list(argv)).stdout


def test_namespaces_addresses_and_switch_placement(network) -> None:
    net, state = network
    c = net.cluster
    assert sorted(namespaces_of(c)) == sorted(f"nk-{c}-{n}" for n in ("cp", "w1", "ext", "s1"))
    assert sorted(state.netns_names()) == sorted(namespaces_of(c))
    assert "inet 172.18.0.2/16" in ns_run(f"nk-{c}-cp", "ip", "-4", "addr", "show", "dev", "eth0")
    assert "inet 172.18.0.3/16" in ns_run(f"nk-{c}-w1", "ip", "-4", "addr", "show", "dev", "eth0")
    # The switch is a bridge inside its own namespace, with one port per link.
    ports = ns_run(f"nk-{c}-s1", "bridge", "link")
    assert all(f"s1-p{i}" in ports and "master s1" in ports for i in (1, 2, 3))
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "s1" not in [line.split(":")[1].strip() for line in root_links.splitlines()]
    # Nodes forward and pass bridged traffic through iptables; the switch does not.
    assert netns.read_sysctl(f"nk-{c}-w1", "net.ipv4.ip_forward") == "1"
    assert netns.read_sysctl(f"nk-{c}-w1", "net.bridge.bridge-nf-call-iptables") == "1"
    assert netns.read_sysctl(f"nk-{c}-s1", "net.bridge.bridge-nf-call-iptables") == "0"
    assert netns.read_sysctl(f"nk-{c}-ext", "net.ipv6.conf.all.disable_ipv6") == "1"


def test_nodes_and_hosts_reach_each_other(network) -> None:
    net, _ = network
    out = netns.run(f"nk-{net.cluster}-ext", ["ping", "-c", "2", "-W", "2", "172.18.0.3"], check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_link_bandwidth_is_shaped_with_htb(network) -> None:
    net, _ = network
    qdiscs = ns_run(f"nk-{net.cluster}-w1", "tc", "qdisc", "show", "dev", "eth0")
    classes = ns_run(f"nk-{net.cluster}-w1", "tc", "class", "show", "dev", "eth0")
    assert "htb" in qdiscs and "rate 50Mbit" in classes


def test_teardown_removes_every_recorded_namespace_and_shell(tmp_path: Path) -> None:
    name = unique_cluster_name("td")
    state = StateDir(name, tmp_path)
    state.create(ClusterRecord(name=name))
    net = EmulatedNetwork(load_dict(topology(name)), state)
    try:
        net.build()
        shells = state.pids()
        assert len(shells) == 4 and len(namespaces_of(name)) == 4
    finally:
        report = teardown(state)  # as after a crash: the Mininet objects are never stopped
    assert report.namespaces == 4 and report.processes == 4
    assert namespaces_of(name) == [] and state.pids() == [] and state.netns_names() == []
    from netk8s.kernel import procs
    assert not any(procs.is_running(pid, started) for pid, started, _ in shells)


# -- routed topologies, link loss, host-gw and VXLAN agents ------------------------------------------

@contextlib.contextmanager
def running(*agents: Controller) -> Iterator[None]:
    try:
        for agent in agents:
            agent.start()
        yield
    finally:
        for agent in agents:
            agent.stop()
        for agent in agents:
            agent.join(timeout=2)


def node_object(name: str, ip: str, cidr: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def routed_topology(name: str) -> dict:
    # cp, w2 and host ext on s1 (behind r1); w1 and host far on s2 (behind r2); r1 - r2 point to point.
    return {
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "name": name,
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w1"}, {"name": "w2"}],
        "hosts": [{"name": "ext"}, {"name": "far"}],
        "switches": [{"name": "s1", "subnet": "172.18.0.0/24"}, {"name": "s2", "subnet": "172.19.0.0/24"}],
        "routers": [{"name": "r1"}, {"name": "r2"}],
        "links": [{"endpoints": ["cp", "s1"]}, {"endpoints": ["w1", "s2"]}, {"endpoints": ["w2", "s1"]},
                  {"endpoints": ["ext", "s1"]}, {"endpoints": ["far", "s2"], "loss": "30%"},
                  {"endpoints": ["r1", "s1"]}, {"endpoints": ["r2", "s2"]},
                  {"endpoints": ["r1", "r2"], "loss": "0.5%"}],
    }


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedNetwork]:
    name = unique_cluster_name("rt")
    state = StateDir(name, tmp_path_factory.mktemp("routed"))
    state.create(ClusterRecord(name=name))
    net = EmulatedNetwork(load_dict(routed_topology(name)), state)
    try:
        net.build()
        yield net
    finally:
        net.stop()
        teardown(state)
    assert namespaces_of(name) == []


def test_routers_forward_with_static_routes_and_nodes_use_them_as_gateway(routed: EmulatedNetwork) -> None:
    c = routed.cluster
    assert netns.read_sysctl(f"nk-{c}-r1", "net.ipv4.ip_forward") == "1"
    assert "inet 172.18.0.1/24" in ns_run(f"nk-{c}-r1", "ip", "-4", "addr", "show", "dev", "eth0")
    assert "inet 172.31.0.1/30" in ns_run(f"nk-{c}-r1", "ip", "-4", "addr", "show", "dev", "eth1")
    assert ns_run(f"nk-{c}-r1", "ip", "route", "show", "proto", "static").splitlines() == [
        "172.19.0.0/24 via 172.31.0.2 dev eth1 "]
    assert ns_run(f"nk-{c}-r2", "ip", "route", "show", "proto", "static").splitlines() == [
        "172.18.0.0/24 via 172.31.0.1 dev eth1 "]
    for node, gateway in (("cp", "172.18.0.1"), ("w1", "172.19.0.1")):
        default = ns_run(f"nk-{c}-{node}", "ip", "route", "show", "default").strip()
        assert default == f"default via {gateway} dev eth0 proto static"
    # cp (172.18.0.2) to w1 (172.19.0.2) crosses both routers: TTL 64 - 2 on the reply.
    out = netns.run(f"nk-{c}-cp", ["ping", "-c", "3", "-i", "0.2", "-W", "2", "172.19.0.2"], check=False)
    assert out.returncode == 0 and "ttl=62" in out.stdout, out.stdout + out.stderr


def test_loss_rules_in_the_switch_and_router_namespaces(routed: EmulatedNetwork) -> None:
    c = routed.cluster
    bridge = ns_run(f"nk-{c}-s2", "nft", "list", "table", "bridge", "nk-loss")
    # far is the second link into s2 (port s2-p2); 30% = 3000 in 10000.
    assert 'iifname "s2-p2" numgen random mod 10000 < 3000 counter packets' in bridge
    assert 'oifname "s2-p2" numgen random mod 10000 < 3000 counter packets' in bridge
    inet = ns_run(f"nk-{c}-r1", "nft", "list", "table", "inet", "nk-loss")
    assert "hook prerouting" in inet and "hook postrouting" in inet
    assert 'iifname "eth1" numgen random mod 10000 < 50 counter packets' in inet
    assert 'oifname "eth1" numgen random mod 10000 < 50 counter packets' in inet
    assert netns.run(f"nk-{c}-r2", ["nft", "list", "table", "inet", "nk-loss"], check=False).returncode != 0
    # The switch drops for real: 100 pings through far's port lose some, and the counters show it.
    # Resolve the neighbour first: a burst of pings behind a lost ARP exchange would all fail together.
    for _ in range(30):
        if netns.run(f"nk-{c}-far", ["ping", "-c", "1", "-W", "1", "172.19.0.2"], check=False).returncode == 0:
            break
    out = netns.run(f"nk-{c}-far", ["ping", "-c", "100", "-i", "0.005", "-W", "1", "-q", "172.19.0.2"],
                    check=False, timeout=60)
    received = int(re.search(r"(\d+) received", out.stdout).group(1))  # type: ignore[union-attr]
    assert 0 < received < 100, out.stdout
    # (Not every lost ping is one counted drop: a dropped ARP frame can cost several pings.)
    drops = re.findall(r"counter packets (\d+)", ns_run(f"nk-{c}-s2", "nft", "list", "table", "bridge", "nk-loss"))
    assert len(drops) == 2 and all(int(d) > 0 for d in drops), drops


def test_host_gw_agents_on_routers_nodes_and_hosts(routed: EmulatedNetwork, api: ApiClient) -> None:
    c, plan = routed.cluster, routed.plan
    for obj in (node_object("cp", "172.18.0.2", "10.244.0.0/24"), node_object("w1", "172.19.0.2", "10.244.1.0/24"),
                node_object("w2", "172.18.0.3", "10.244.2.0/24")):
        api.create(NODES, obj)
    agents = [HostGwAgent(api, f"nk-{c}-{r}", None, plan.connected(r), plan.router_routes[r]) for r in ("r1", "r2")]
    agents.append(HostGwAgent(api, f"nk-{c}-cp", "cp", [NET("172.18.0.0/24")]))
    agents.append(HostGwAgent(api, f"nk-{c}-far", None, [NET("172.19.0.0/24")]))

    def routes(ns: str) -> list[str]:
        return ns_run(f"nk-{c}-{ns}", "ip", "route", "show", "proto", "77").splitlines()

    with running(*agents):
        wait_for(lambda: len(routes("r1")) == 3, timeout=10, what="r1 pod routes")
        assert routes("r1") == ["10.244.0.0/24 via 172.18.0.2 dev eth0 ", "10.244.1.0/24 via 172.31.0.2 dev eth1 ",
                                "10.244.2.0/24 via 172.18.0.3 dev eth0 "]
        wait_for(lambda: len(routes("r2")) == 3, timeout=10, what="r2 pod routes")
        assert routes("r2") == ["10.244.0.0/24 via 172.31.0.1 dev eth1 ", "10.244.1.0/24 via 172.19.0.2 dev eth0 ",
                                "10.244.2.0/24 via 172.31.0.1 dev eth1 "]
        # Nodes and hosts keep host-gw's L2 rule: only adjacent nodes, the rest via the default gateway.
        wait_for(lambda: routes("cp") == ["10.244.2.0/24 via 172.18.0.3 dev eth0 "], timeout=10, what="cp routes")
        wait_for(lambda: routes("far") == ["10.244.1.0/24 via 172.19.0.2 dev eth0 "], timeout=10, what="far routes")
        # A node that goes away takes its route off the routers.
        api.delete(NODES, "w1")
        wait_for(lambda: len(routes("r1")) == 2 and len(routes("r2")) == 2, timeout=10, what="w1 routes to go")
        assert all("10.244.1.0" not in line for line in routes("r1") + routes("r2"))


@pytest.fixture
def overlay(tmp_path: Path, api: ApiClient) -> Iterator[tuple[str, ApiClient]]:
    name = unique_cluster_name("vx")
    state = StateDir(name, tmp_path)
    state.create(ClusterRecord(name=name))
    net = EmulatedNetwork(load_dict(topology(name)), state)  # cp, w1 and ext on s1
    try:
        net.build()
        yield name, api
    finally:
        net.stop()
        teardown(state)


def test_vxlan_agents_build_the_overlay_and_remove_only_their_own_entries(overlay) -> None:
    c, api = overlay
    api.create(NODES, node_object("cp", "172.18.0.2", "10.244.0.0/24"))
    api.create(NODES, node_object("w1", "172.18.0.3", "10.244.1.0/24"))
    cluster_cidr = NET("10.244.0.0/16")
    agents = [VxlanAgent(api, VxlanConfig(n, f"nk-{c}-{n}", ipaddress.IPv4Address(ip), "eth0", cluster_cidr))
              for n, ip in (("cp", "172.18.0.2"), ("w1", "172.18.0.3"))]
    cp_ns, w1_ns = f"nk-{c}-cp", f"nk-{c}-w1"
    mac_w1 = vtep_mac("w1", ipaddress.IPv4Address("172.18.0.3"))
    with running(*agents):
        wait_for(lambda: "10.244.1.0/24" in ns_run(cp_ns, "ip", "route", "show", "proto", "77"), timeout=10,
                 what="cp's overlay route to w1")
        link = ns_run(cp_ns, "ip", "-d", "link", "show", "flannel.1")
        assert "mtu 1450" in link and "vxlan id 1 local 172.18.0.2 dev eth0" in link
        assert "dstport 8472" in link and "nolearning" in link
        assert "inet 10.244.0.0/32" in ns_run(cp_ns, "ip", "-4", "addr", "show", "dev", "flannel.1")
        assert ns_run(cp_ns, "ip", "route", "show", "proto", "77").splitlines() == [
            "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink "]
        assert ns_run(cp_ns, "ip", "neigh", "show", "dev", "flannel.1").splitlines() == [
            f"10.244.1.0 lladdr {mac_w1} PERMANENT proto 77 "]
        assert f"{mac_w1} dst 172.18.0.3 self permanent" in ns_run(cp_ns, "bridge", "fdb", "show", "dev", "flannel.1")
        assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in ns_run(
            cp_ns, "iptables-save", "-t", "nat")
        # Packets cross the overlay: cp reaches w1's VTEP address, encapsulated.
        out = netns.run(cp_ns, ["ping", "-c", "2", "-W", "2", "10.244.1.0"], check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        # Somebody else's entries on flannel.1 are left alone; ours follow the Nodes.
        netns.run(cp_ns, ["ip", "neigh", "add", "10.244.9.9", "lladdr", "0e:99:99:99:99:99", "dev", "flannel.1",
                          "nud", "permanent"])
        netns.run(cp_ns, ["bridge", "fdb", "append", "0e:99:99:99:99:99", "dst", "172.18.0.99", "dev", "flannel.1"])
        api.delete(NODES, "w1")
        wait_for(lambda: ns_run(cp_ns, "ip", "route", "show", "proto", "77") == "", timeout=10,
                 what="cp to drop w1's route")
        wait_for(lambda: mac_w1 not in ns_run(cp_ns, "bridge", "fdb", "show", "dev", "flannel.1"), timeout=10,
                 what="cp to drop w1's FDB entry")
        assert ns_run(cp_ns, "ip", "neigh", "show", "dev", "flannel.1").splitlines() == [
            "10.244.9.9 lladdr 0e:99:99:99:99:99 PERMANENT "]
        assert "0e:99:99:99:99:99 dst 172.18.0.99" in ns_run(cp_ns, "bridge", "fdb", "show", "dev", "flannel.1")
        assert "flannel.1" in ns_run(w1_ns, "ip", "link", "show")
