"""VXLAN (flannel vxlan backend) desired state from Node objects, the Node annotations, the
masquerade rules, external-host routing, and the agent against a real API server with the kernel
calls replaced by a recorder (no root needed)."""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from netk8s.api.resources import NODES
from netk8s.client.rest import ApiClient
from netk8s.cni import vxlan
from netk8s.cni.vxlan import (
    BACKEND_DATA_ANNOTATION,
    BACKEND_TYPE_ANNOTATION,
    PUBLIC_IP_ANNOTATION,
    VtepPeer,
    VxlanAgent,
    VxlanConfig,
    desired_overlay,
    external_host_gateway,
    masquerade_rules,
    node_annotations,
    overlay_mtu,
    peer_of,
    peers,
    vtep_address,
    vtep_mac,
)
from netk8s.kernel.routes import Route
from netk8s.testing.helpers import wait_for
from netk8s.topology import load_dict, load_file

REPO = Path(__file__).resolve().parents[2]
IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network


def node(name: str, ip: str, cidr: str | None = None, mac: str | None = None, **annotations: str) -> dict:
    notes = dict(annotations)
    if mac is not None:
        notes.update(node_annotations(mac, IP(ip)))
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": notes},
            "spec": {"podCIDR": cidr} if cidr else {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


MAC1, MAC2, MAC3 = "0e:00:00:00:00:01", "0e:00:00:00:00:02", "0e:00:00:00:00:03"


# -- pure pieces ------------------------------------------------------------------------------------

def test_vtep_basics() -> None:
    assert overlay_mtu(1500) == 1450
    assert vtep_address(NET("10.244.3.0/24")) == ipaddress.IPv4Interface("10.244.3.0/32")
    mac = vtep_mac("worker", IP("172.18.0.3"))
    assert mac == vtep_mac("worker", IP("172.18.0.3")) != vtep_mac("worker2", IP("172.18.0.4"))
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len(mac.split(":")) == 6


def test_node_annotations_are_flannels() -> None:
    notes = node_annotations("0e:aa:bb:cc:dd:ee", IP("172.18.0.3"))
    assert notes == {
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}',
        "flannel.alpha.coreos.com/public-ip": "172.18.0.3",
    }


def test_peer_of_needs_a_pod_cidr_and_valid_vxlan_data() -> None:
    assert peer_of(node("w", "172.18.0.3", "10.244.1.0/24", "0E:00:00:00:00:01")) == VtepPeer(
        "w", NET("10.244.1.0/24"), MAC1, IP("172.18.0.3"))
    assert peer_of(node("w", "172.18.0.3", None, MAC1)) is None  # no pod CIDR yet
    assert peer_of(node("w", "172.18.0.3", "10.244.1.0/24")) is None  # not published yet
    bad = [
        {BACKEND_TYPE_ANNOTATION: "host-gw"},
        {BACKEND_DATA_ANNOTATION: "not json"},
        {BACKEND_DATA_ANNOTATION: '{"VNI":2,"VtepMAC":"0e:00:00:00:00:01"}'},
        {BACKEND_DATA_ANNOTATION: '{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}'},  # multicast
        {BACKEND_DATA_ANNOTATION: '{"VNI":1,"VtepMAC":"0e:00:00:00:01"}'},
        {PUBLIC_IP_ANNOTATION: "not-an-ip"},
    ]
    for override in bad:
        obj = node("w", "172.18.0.3", "10.244.1.0/24", MAC1)
        obj["metadata"]["annotations"].update(override)
        assert peer_of(obj) is None, override


def test_desired_overlay_from_nodes() -> None:
    nodes = [node("worker2", "172.18.0.4", "10.244.2.0/24", MAC2),
             node("cp", "172.18.0.2", "10.244.0.0/24", MAC1),
             node("worker", "172.18.0.3", "10.244.1.0/24", MAC3),
             node("worker3", "172.18.0.5", "10.244.3.0/24")]  # not published: left out until it is
    state = desired_overlay(peers(nodes, "worker"))
    assert state.routes == (Route(NET("10.244.0.0/24"), IP("10.244.0.0"), "flannel.1", onlink=True),
                            Route(NET("10.244.2.0/24"), IP("10.244.2.0"), "flannel.1", onlink=True))
    assert state.neighbours == {IP("10.244.0.0"): MAC1, IP("10.244.2.0"): MAC2}
    assert state.fdb == {MAC1: IP("172.18.0.2"), MAC2: IP("172.18.0.4")}


def test_a_mac_or_cidr_claimed_twice_goes_to_the_first_node_by_name() -> None:
    nodes = [node("b", "172.18.0.4", "10.244.2.0/24", MAC1), node("a", "172.18.0.3", "10.244.1.0/24", MAC1),
             node("c", "172.18.0.5", "10.244.1.0/24", MAC3)]
    assert [p.node for p in peers(nodes, "me")] == ["a"]


def test_masquerade_rules_follow_flanneld() -> None:
    assert masquerade_rules(NET("10.244.0.0/16"), NET("10.244.1.0/24")) == [
        '-m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
        '! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    ]


def test_external_host_gateway_prefers_an_adjacent_control_plane() -> None:
    default = load_file(REPO / "topologies" / "default.yaml")
    assert external_host_gateway(default, "client") == IP("172.18.0.2")  # control-plane
    # The control plane elsewhere: the first node on the host's segment.
    topo = load_dict({
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster",
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w1"}, {"name": "w2"}],
        "hosts": [{"name": "h"}],
        "switches": [{"name": "a", "subnet": "172.18.0.0/24"}, {"name": "b", "subnet": "172.19.0.0/24"}],
        "links": [{"endpoints": ["cp", "a"]}, {"endpoints": ["w2", "b"]}, {"endpoints": ["w1", "b"]},
                  {"endpoints": ["h", "b"]}, {"endpoints": ["w1", "a"]}],
    })
    # w1 (first in node order) by its address on switch b (172.19.0.2), not on switch a (172.18.0.3).
    assert external_host_gateway(topo, "h") == IP("172.19.0.2")
    leaf_spine = load_file(REPO / "topologies" / "leaf-spine.yaml")
    assert external_host_gateway(leaf_spine, "client") is None


def test_config_for_node_uses_its_first_interface() -> None:
    topo = load_file(REPO / "topologies" / "leaf-spine.yaml")
    cfg = VxlanConfig.for_node(topo, "worker2", "nk-x-worker2")
    assert cfg == VxlanConfig("worker2", "nk-x-worker2", IP("172.18.2.2"), "eth0", NET("10.244.0.0/16"))


# -- the agent, with a fake kernel -------------------------------------------------------------------

class FakeKernel:
    """Records what the agent asks of the kernel (per node namespace)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.devices: dict[str, Any] = {}
        self.overlay: dict[str, tuple] = {}
        self.masq: dict[str, list[str]] = {}
        monkeypatch.setattr(vxlan.kvxlan, "ensure_vtep", self.ensure_vtep)
        monkeypatch.setattr(vxlan.kvxlan, "sync_overlay", self.sync_overlay)
        monkeypatch.setattr(vxlan.kvxlan, "ensure_masquerade", self.ensure_masquerade)

    def ensure_vtep(self, netns_name: str, dev: Any) -> str:
        with self.lock:
            self.devices[netns_name] = dev
        return dev.mac

    def sync_overlay(self, netns_name: str, dev_name: str, routes: Any, neighbours: Any, fdb: Any) -> None:
        with self.lock:
            self.overlay[netns_name] = (dev_name, tuple(routes), dict(neighbours), dict(fdb))

    def ensure_masquerade(self, netns_name: str, rules: list[str]) -> None:
        with self.lock:
            self.masq[netns_name] = list(rules)


@pytest.fixture
def agents(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiClient, FakeKernel, list]]:
    kernel = FakeKernel(monkeypatch)
    started: list[VxlanAgent] = []
    try:
        yield api, kernel, started
    finally:
        for agent in started:
            agent.stop()
        for agent in started:
            agent.join(timeout=2)


def start_agent(api: ApiClient, started: list, name: str, ip: str) -> VxlanAgent:
    agent = VxlanAgent(api, VxlanConfig(name, f"nk-t-{name}", IP(ip), "eth0", NET("10.244.0.0/16")))
    agent.start()
    started.append(agent)
    return agent


def test_agents_publish_their_vtep_and_converge_on_each_other(agents) -> None:
    api, kernel, started = agents
    api.create(NODES, node("n1", "172.18.0.2", "10.244.0.0/24"))
    api.create(NODES, node("n2", "172.18.0.3"))  # no pod CIDR yet: n2 waits, as flanneld does
    start_agent(api, started, "n1", "172.18.0.2")
    start_agent(api, started, "n2", "172.18.0.3")

    wait_for(lambda: BACKEND_DATA_ANNOTATION in (api.get(NODES, "n1")["metadata"].get("annotations") or {}),
             timeout=10, what="n1 to publish its VTEP")
    published = api.get(NODES, "n1")["metadata"]["annotations"]
    mac1 = vtep_mac("n1", IP("172.18.0.2"))
    assert json.loads(published[BACKEND_DATA_ANNOTATION]) == {"VNI": 1, "VtepMAC": mac1}
    assert published[PUBLIC_IP_ANNOTATION] == "172.18.0.2"
    dev = kernel.devices["nk-t-n1"]
    assert (dev.name, dev.vni, dev.port, str(dev.local), dev.underlay, str(dev.address)) == (
        "flannel.1", 1, 8472, "172.18.0.2", "eth0", "10.244.0.0/32")
    assert kernel.masq["nk-t-n1"] == masquerade_rules(NET("10.244.0.0/16"), NET("10.244.0.0/24"))
    assert "nk-t-n2" not in kernel.devices

    # n2 gets its CIDR (as node IPAM would assign it): it comes up and both see each other.
    api.patch(NODES, "n2", {"spec": {"podCIDR": "10.244.1.0/24"}})
    mac2 = vtep_mac("n2", IP("172.18.0.3"))

    def converged() -> bool:
        with kernel.lock:
            n1, n2 = kernel.overlay.get("nk-t-n1"), kernel.overlay.get("nk-t-n2")
        return bool(n1 and n2 and n1[3] == {mac2: IP("172.18.0.3")} and n2[3] == {mac1: IP("172.18.0.2")})

    wait_for(converged, timeout=10, what="both agents to see each other")
    dev_name, routes, neighbours, _ = kernel.overlay["nk-t-n1"]
    assert dev_name == "flannel.1"
    assert routes == (Route(NET("10.244.1.0/24"), IP("10.244.1.0"), "flannel.1", onlink=True),)
    assert neighbours == {IP("10.244.1.0"): mac2}

    # A node leaving removes it from its peers' desired state.
    api.delete(NODES, "n2")
    wait_for(lambda: kernel.overlay["nk-t-n1"][1] == (), timeout=10, what="n1 to drop n2")
    assert kernel.overlay["nk-t-n1"][2:] == ({}, {})


def test_agent_restores_annotations_someone_removed(agents) -> None:
    api, kernel, started = agents
    api.create(NODES, node("n1", "172.18.0.2", "10.244.0.0/24"))
    start_agent(api, started, "n1", "172.18.0.2")
    wait_for(lambda: (api.get(NODES, "n1")["metadata"].get("annotations") or {}).get(BACKEND_TYPE_ANNOTATION),
             timeout=10, what="annotations")
    api.patch(NODES, "n1", {"metadata": {"annotations": {BACKEND_TYPE_ANNOTATION: None}}})
    wait_for(lambda: (api.get(NODES, "n1")["metadata"].get("annotations") or {}).get(BACKEND_TYPE_ANNOTATION)
             == "vxlan", timeout=10, what="annotations to come back")
