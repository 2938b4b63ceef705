"""The emulated underlay built from a topology: named namespaces, switches inside their
own namespaces, addressed links, bandwidth shaping, and a records-based teardown."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.cluster.state import ClusterRecord, StateDir
from netk8s.cluster.teardown import teardown
from netk8s.emulator.network import EmulatedNetwork
from netk8s.kernel import netns
from netk8s.testing.helpers import namespaces_of
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import load_dict


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
