"""Pure routing and link-impairment planning: router static routes, default gateways, router pod
routes in host-gw mode, loss rule rendering and the kernel-feature check (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from netk8s.cluster.state import StateDir
from netk8s.cni.hostgw import desired_routes
from netk8s.emulator import network as emnet
from netk8s.emulator.network import EmulatedNetwork, link_features, loss_tables
from netk8s.emulator.routing import plan_routes, segments_of
from netk8s.errors import MissingKernelFeature
from netk8s.kernel.links import (
    LinkFeature,
    LossFamily,
    LossRule,
    config_verdict,
    loss_threshold,
    parse_kernel_config,
    render_loss_table,
)
from netk8s.topology import load_dict, load_file

REPO = Path(__file__).resolve().parents[2]
IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network


def leaf_spine() -> Any:
    return load_file(REPO / "topologies" / "leaf-spine.yaml")


def cluster(routers: list[str], switches: list[dict], links: list[Any], nodes: list[str] | None = None,
            hosts: list[str] | None = None) -> Any:
    node_names = nodes or ["cp"]
    return load_dict({
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster",
        "nodes": [{"name": node_names[0], "role": "control-plane"}] + [{"name": n} for n in node_names[1:]],
        "hosts": [{"name": h} for h in hosts or []],
        "switches": switches, "routers": [{"name": r} for r in routers],
        "links": [link if isinstance(link, dict) else {"endpoints": link} for link in links],
    })


def node_obj(name: str, ip: str, cidr: str | None) -> dict:
    spec = {"podCIDR": cidr} if cidr else {}
    return {"metadata": {"name": name}, "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


# -- router graph -----------------------------------------------------------------------------------

def test_leaf_spine_router_routes_and_default_gateways() -> None:
    plan = plan_routes(leaf_spine())
    assert plan.router_routes == {
        "leaf1": {NET("172.18.2.0/24"): IP("172.31.0.1"), NET("172.18.100.0/24"): IP("172.31.0.1"),
                  NET("172.31.0.4/30"): IP("172.31.0.1")},
        "leaf2": {NET("172.18.1.0/24"): IP("172.31.0.5"), NET("172.18.100.0/24"): IP("172.31.0.5"),
                  NET("172.31.0.0/30"): IP("172.31.0.5")},
        "spine": {NET("172.18.1.0/24"): IP("172.31.0.2"), NET("172.18.2.0/24"): IP("172.31.0.6")},
    }
    assert plan.default_gateways == {
        "control-plane": IP("172.18.1.1"), "worker": IP("172.18.1.1"),
        "worker2": IP("172.18.2.1"), "worker3": IP("172.18.2.1"),
        "client": IP("172.18.100.1"), "client2": IP("172.18.100.1"),
    }
    assert plan.connected("spine") == [NET("172.18.100.0/24"), NET("172.31.0.0/30"), NET("172.31.0.4/30")]
    assert plan.next_hop("leaf1", IP("172.18.1.3")) == IP("172.18.1.3")  # attached: the address itself
    assert plan.next_hop("leaf1", IP("172.18.2.2")) == IP("172.31.0.1")
    assert plan.next_hop("leaf1", IP("192.0.2.1")) is None


def test_segments_list_switches_then_point_to_point_links() -> None:
    segs = segments_of(leaf_spine())
    assert [(s.name, str(s.network)) for s in segs] == [
        ("rack1", "172.18.1.0/24"), ("rack2", "172.18.2.0/24"), ("ext", "172.18.100.0/24"),
        ("p2p 172.31.0.0/30", "172.31.0.0/30"), ("p2p 172.31.0.4/30", "172.31.0.4/30")]
    assert dict(segs[0].addresses) == {"control-plane": IP("172.18.1.2"), "worker": IP("172.18.1.3"),
                                       "leaf1": IP("172.18.1.1")}


def _square(router_order: list[str]) -> Any:
    # r1 reaches the far segment (behind r4) through r2 or r3: two equally short paths.
    links = [["cp", "s1"], ["r1", "s1"], ["r1", "r2"], ["r1", "r3"], ["r2", "r4"], ["r3", "r4"], ["r4", "s2"],
             ["w", "s2"]]
    return cluster(router_order, [{"name": "s1", "subnet": "10.1.0.0/24"}, {"name": "s2", "subnet": "10.2.0.0/24"}],
                   links, nodes=["cp", "w"])


def test_equal_cost_paths_break_ties_by_router_name_whatever_the_listing_order() -> None:
    first = plan_routes(_square(["r1", "r2", "r3", "r4"]))
    second = plan_routes(_square(["r4", "r3", "r2", "r1"]))
    via_r2 = first.router_routes["r1"][NET("10.2.0.0/24")]
    # r1-r2 is the first point-to-point link: r1 = 172.31.0.1, r2 = 172.31.0.2.
    assert via_r2 == IP("172.31.0.2")
    assert second.router_routes["r1"][NET("10.2.0.0/24")] == via_r2
    assert first.router_routes == second.router_routes
    # The return path from r4 is also deterministic: via r2 (r2-r4 is link 4, its /30 is 172.31.0.8/30).
    assert first.router_routes["r4"][NET("10.1.0.0/24")] == IP("172.31.0.9")


def test_routers_sharing_a_switch_are_adjacent_and_unrouted_switches_stay_unreachable() -> None:
    topo = cluster(["ra", "rb"], [{"name": "s1", "subnet": "10.1.0.0/24"}, {"name": "core", "subnet": "10.9.0.0/24"},
                                  {"name": "s2", "subnet": "10.2.0.0/24"}, {"name": "iso", "subnet": "10.3.0.0/24"}],
                   [["cp", "s1"], ["w", "s2"], ["h", "iso"], ["ra", "s1"], ["ra", "core"], ["rb", "core"],
                    ["rb", "s2"]], nodes=["cp", "w"], hosts=["h"])
    plan = plan_routes(topo)
    # ra is the .1 gateway of core; rb takes core's next free address.
    assert plan.router_routes["ra"] == {NET("10.2.0.0/24"): IP("10.9.0.2")}
    assert plan.router_routes["rb"] == {NET("10.1.0.0/24"): IP("10.9.0.1")}
    assert plan.default_gateways == {"cp": IP("10.1.0.1"), "w": IP("10.2.0.1")}  # h's switch has no router


def test_node_linked_straight_to_a_router_uses_it_as_default_gateway() -> None:
    topo = cluster(["r1"], [{"name": "s1", "subnet": "10.1.0.0/24"}], [["cp", "s1"], ["w", "r1"], ["r1", "s1"]],
                   nodes=["cp", "w"])
    plan = plan_routes(topo)
    assert plan.default_gateways == {"cp": IP("10.1.0.1"), "w": IP("172.31.0.2")}
    assert plan.router_routes == {"r1": {}}


def test_no_routers_no_routes() -> None:
    plan = plan_routes(load_dict({"apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster",
                                  "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w"}]}))
    assert plan.router_routes == {} and plan.default_gateways == {}


# -- host-gw routes on routers ---------------------------------------------------------------------

def test_router_pod_routes_go_via_the_node_or_the_next_router() -> None:
    topo = leaf_spine()
    plan = plan_routes(topo)
    nodes = [node_obj("control-plane", "172.18.1.2", "10.244.0.0/24"),
             node_obj("worker", "172.18.1.3", "10.244.1.0/24"),
             node_obj("worker2", "172.18.2.2", "10.244.2.0/24"), node_obj("worker3", "172.18.2.3", None)]
    leaf1 = desired_routes(nodes, None, plan.connected("leaf1"), plan.router_routes["leaf1"])
    assert leaf1 == {NET("10.244.0.0/24"): IP("172.18.1.2"), NET("10.244.1.0/24"): IP("172.18.1.3"),
                     NET("10.244.2.0/24"): IP("172.31.0.1")}
    spine = desired_routes(nodes, None, plan.connected("spine"), plan.router_routes["spine"])
    assert spine == {NET("10.244.0.0/24"): IP("172.31.0.2"), NET("10.244.1.0/24"): IP("172.31.0.2"),
                     NET("10.244.2.0/24"): IP("172.31.0.6")}
    # A node keeps only its rack neighbours (L2 adjacency); the rest goes to its default gateway.
    worker = desired_routes(nodes, "worker", plan.connected("worker"))
    assert worker == {NET("10.244.0.0/24"): IP("172.18.1.2")}


# -- loss rules -------------------------------------------------------------------------------------

def test_loss_threshold_is_in_hundredths_of_a_percent() -> None:
    assert loss_threshold(10) == 1000
    assert loss_threshold(0.5) == 50
    assert loss_threshold(99.99) == 9999
    assert loss_threshold(0.001) == 1  # never rounds down to "no loss"


def test_bridge_loss_table_drops_on_both_directions_of_the_port() -> None:
    text = render_loss_table(LossFamily.BRIDGE, [LossRule("s1-p4", 10.0, "links[3]")])
    assert text.splitlines() == [
        "table bridge nk-loss {}",
        "delete table bridge nk-loss",
        "table bridge nk-loss {",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        '\t\tiifname "s1-p4" numgen random mod 10000 < 1000 counter drop comment "links[3] loss 10%"',
        '\t\toifname "s1-p4" numgen random mod 10000 < 1000 counter drop comment "links[3] loss 10%"',
        "\t}",
        "}",
    ]


def test_inet_loss_table_drops_in_prerouting_and_postrouting() -> None:
    text = render_loss_table(LossFamily.INET, [LossRule("eth1", 2.5, "links[6]"), LossRule("eth2", 1, "links[7]")])
    lines = text.splitlines()
    pre, post = lines.index("\tchain prerouting {"), lines.index("\tchain postrouting {")
    assert lines[pre + 1] == "\t\ttype filter hook prerouting priority raw; policy accept;"
    assert lines[pre + 2:pre + 4] == [
        '\t\tiifname "eth1" numgen random mod 10000 < 250 counter drop comment "links[6] loss 2.5%"',
        '\t\tiifname "eth2" numgen random mod 10000 < 100 counter drop comment "links[7] loss 1%"']
    assert lines[post + 2:post + 4] == [
        '\t\toifname "eth1" numgen random mod 10000 < 250 counter drop comment "links[6] loss 2.5%"',
        '\t\toifname "eth2" numgen random mod 10000 < 100 counter drop comment "links[7] loss 1%"']


def test_loss_tables_go_to_the_switch_or_the_router_of_each_link() -> None:
    topo = cluster(["r1", "r2"], [{"name": "s1", "subnet": "10.1.0.0/24"}, {"name": "s2", "subnet": "10.2.0.0/24"}],
                   [["cp", "s1"], {"endpoints": ["s1", "w"], "loss": "5%"}, ["r1", "s1"],
                    {"endpoints": ["r2", "r1"], "loss": 1.5}, ["r2", "s2"], {"endpoints": ["h", "s2"], "loss": 0.5}],
                   nodes=["cp", "w"], hosts=["h"])
    tables = loss_tables(topo)
    assert tables == {
        "s1": (LossFamily.BRIDGE, [LossRule("s1-p2", 5.0, "links[1]")]),
        "r2": (LossFamily.INET, [LossRule("eth0", 1.5, "links[3]")]),  # the first router end of the link
        "s2": (LossFamily.BRIDGE, [LossRule("s2-p2", 0.5, "links[5]")]),
    }
    assert link_features(topo) == {LinkFeature.NFT_BRIDGE_LOSS: 1, LinkFeature.NFT_INET_LOSS: 3}


# -- kernel features --------------------------------------------------------------------------------

CONFIG_TEXT = """\
CONFIG_NF_TABLES=y
CONFIG_NF_TABLES_INET=y
CONFIG_NF_TABLES_BRIDGE=m
CONFIG_NFT_NUMGEN=y
# CONFIG_NET_SCH_NETEM is not set
"""


def test_kernel_config_verdicts() -> None:
    config = parse_kernel_config(CONFIG_TEXT)
    assert config == {"CONFIG_NF_TABLES": "y", "CONFIG_NF_TABLES_INET": "y", "CONFIG_NF_TABLES_BRIDGE": "m",
                      "CONFIG_NFT_NUMGEN": "y"}
    assert config_verdict(config, LinkFeature.NETEM) is False
    assert config_verdict(config, LinkFeature.NFT_INET_LOSS) is True
    assert config_verdict(config, LinkFeature.NFT_BRIDGE_LOSS) is None  # a module: probe it


def _delay_topology() -> Any:
    return load_dict({
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "name": "dly",
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w"}], "hosts": [{"name": "client"}],
        "links": [{"endpoints": ["cp", "s1"]}, {"endpoints": ["w", "s1"], "loss": "1%"},
                  {"endpoints": ["client", "s1"], "delay": "20ms"}],
        "switches": [{"name": "s1", "subnet": "172.18.0.0/16"}],
    })


def test_delay_without_netem_fails_naming_the_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = parse_kernel_config(CONFIG_TEXT + "CONFIG_NF_TABLES_BRIDGE=y\n")
    monkeypatch.setattr(emnet, "read_kernel_config", lambda: config)
    net = EmulatedNetwork(_delay_topology(), StateDir("dly", tmp_path))
    with pytest.raises(MissingKernelFeature) as info:
        net.check_link_features()
    assert str(info.value) == ("links[2].delay: needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel "
                               "lacks; remove delay or use a kernel with netem")


def test_loss_without_nftables_fails_naming_the_first_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(emnet, "read_kernel_config", lambda: {"CONFIG_NET_SCH_NETEM": "y"})
    net = EmulatedNetwork(_delay_topology(), StateDir("dly", tmp_path))
    with pytest.raises(MissingKernelFeature, match=r"^links\[1\]\.loss: needs nftables with numgen in the bridge "
                                                   r"family .*; remove loss or use a kernel with them$"):
        net.check_link_features()


def test_modules_are_probed_in_a_recorded_scratch_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = {"CONFIG_NET_SCH_NETEM": "m", "CONFIG_NF_TABLES": "y", "CONFIG_NF_TABLES_BRIDGE": "y",
              "CONFIG_NFT_NUMGEN": "y"}
    monkeypatch.setattr(emnet, "read_kernel_config", lambda: config)
    state = StateDir("dly", tmp_path)
    events: list[str] = []
    monkeypatch.setattr(emnet.netns, "create", lambda name: events.append(f"create {name} "
                                                                          f"recorded={name in state.netns_names()}"))
    monkeypatch.setattr(emnet.netns, "delete", lambda name: events.append(f"delete {name}"))
    monkeypatch.setattr(emnet, "probe_feature", lambda ns, f: events.append(f"probe {f.value} in {ns}") or True)
    EmulatedNetwork(_delay_topology(), state).check_link_features()
    assert events == ["create nk-dly--probe recorded=True", "probe netem in nk-dly--probe", "delete nk-dly--probe"]
    assert state.netns_names() == []
