"""Unit tests for netk8s.topology: schema, loader, defaults, addressing and validation messages."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from netk8s.errors import NotFoundError, ValidationError
from netk8s.topology import (
    CONTROL_PLANE_TAINT,
    CniPlugin,
    ControlPlaneSpec,
    Endpoint,
    NetworkingMode,
    NodeRole,
    ProxyMode,
    StoreKind,
    Taint,
    TaintEffect,
    Topology,
    default_topology,
    load_dict,
    load_file,
    load_text,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"

IP = ipaddress.IPv4Address
IFACE = ipaddress.IPv4Interface


def base(**extra: Any) -> dict[str, Any]:
    """A minimal valid cluster dict (control-plane + worker) with overrides."""
    data: dict[str, Any] = {
        "apiVersion": "netk8s.io/v1alpha1",
        "kind": "Cluster",
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w1"}],
    }
    data.update(extra)
    return data


def error_of(data: Any, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        load_dict(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def complex_dict(manifest_dir: Path) -> dict[str, Any]:
    (manifest_dir / "apps").mkdir(exist_ok=True)
    (manifest_dir / "apps" / "echo.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    return {
        "apiVersion": "netk8s.io/v1alpha1",
        "kind": "Cluster",
        "name": "lab",
        "podSubnet": "10.200.0.0/20",
        "serviceSubnet": "10.100.0.0/24",
        "nodePortRange": "31000-31999",
        "networking": {"mode": "vxlan"},
        "proxyMode": "nftables",
        "store": "etcd",
        "nodes": [
            {"name": "cp", "role": "control-plane", "labels": {"zone": "a"}},
            {"name": "w1", "labels": {"disk": "ssd", "example.com/tier": "db"},
             "taints": [{"key": "dedicated", "value": "db", "effect": "NoExecute"}],
             "capacity": {"cpu": 2, "memory": "4Gi"}},
            {"name": "w2", "ip": "172.18.0.9"},
            {"name": "cp2", "role": "control-plane", "taints": []},
        ],
        "hosts": [{"name": "client"}, {"name": "outside", "ip": "172.19.0.50"}],
        "switches": [{"name": "s1"}, {"name": "s2", "subnet": "172.19.0.0/24"}],
        "routers": [{"name": "r1"}, {"name": "r2"}],
        "links": [
            {"endpoints": ["cp", "s1"], "bandwidth": 100},
            {"endpoints": ["w1", "s1"], "bandwidth": 2.5},
            {"endpoints": ["s1", "w2"]},
            {"endpoints": ["w1", "s2"]},
            {"endpoints": ["cp2", "s1"]},
            {"endpoints": ["client", "s1"]},
            {"endpoints": ["outside", "s2"]},
            {"endpoints": ["r1", "s1"]},
            {"endpoints": ["r1", "s2"]},
            {"endpoints": ["r1", "r2"]},
            {"endpoints": ["w2", "r2"]},
        ],
        "manifests": ["apps/echo.yaml", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}],
    }


# ------------------------------------------------------------------- defaults

def test_default_yaml_is_exactly_default_topology() -> None:
    loaded = load_file(TOPOLOGIES / "default.yaml")
    assert loaded == default_topology()
    assert loaded.source == (TOPOLOGIES / "default.yaml")


def test_default_topology_contents() -> None:
    topo = default_topology()
    assert topo.name == "netk8s"
    assert [n.name for n in topo.nodes] == ["control-plane", "worker", "worker2"]
    assert [h.name for h in topo.hosts] == ["client"]
    assert topo.control_plane().name == "control-plane"
    assert topo.node("control-plane").taints == (CONTROL_PLANE_TAINT,)
    assert topo.node("worker").taints == ()
    assert topo.node("worker").capacity == {"cpu": "4", "memory": "8Gi", "pods": "110"}
    addresses = {name: topo.primary_address(name) for name in ("control-plane", "worker", "worker2", "client")}
    assert addresses == {"control-plane": IP("172.18.0.2"), "worker": IP("172.18.0.3"),
                         "worker2": IP("172.18.0.4"), "client": IP("172.18.0.5")}
    assert [link.b.ifname for link in topo.links] == ["s1-p1", "s1-p2", "s1-p3", "s1-p4"]
    assert all(link.switch == "s1" for link in topo.links)
    assert topo.dns_service_ip() == IP("10.96.0.10")
    assert topo.node_port_range == (30000, 32767)
    assert (topo.networking_mode, topo.proxy_mode, topo.store) == (
        NetworkingMode.HOST_GW, ProxyMode.IPTABLES, StoreKind.SQLITE)


def test_minimal_file_without_switches_equals_default() -> None:
    text = ("apiVersion: netk8s.io/v1alpha1\nkind: Cluster\n"
            "nodes: [{name: control-plane, role: control-plane}, {name: worker}, {name: worker2}]\n"
            "hosts: [{name: client}]\n")
    assert load_text(text) == default_topology()


def test_default_topology_name_override_is_validated() -> None:
    assert default_topology("demo").name == "demo"
    assert default_topology("demo").nodes == default_topology().nodes
    with pytest.raises(ValidationError, match=r'^name: invalid cluster name "Demo"'):
        default_topology("Demo")
    with pytest.raises(ValidationError, match=r"^name: cluster name .* is 21 characters long; use at most 20"):
        default_topology("a" * 21)


def test_two_node_yaml() -> None:
    topo = load_file(TOPOLOGIES / "two-node.yaml")
    assert topo.name == "two-node"
    assert [(n.name, n.role) for n in topo.nodes] == [("control-plane", NodeRole.CONTROL_PLANE),
                                                      ("worker", NodeRole.WORKER)]
    assert [h.name for h in topo.hosts] == ["client"]
    assert topo.primary_address("client") == IP("172.18.0.4")


# -------------------------------------------------------------- round trips

def test_to_dict_round_trip_default() -> None:
    topo = default_topology()
    data = to_dict(topo)
    assert load_dict(data) == topo
    assert load_text(yaml.safe_dump(data)) == topo


def test_to_dict_round_trip_complex(tmp_path: Path) -> None:
    topo = load_dict(complex_dict(tmp_path), base_dir=tmp_path)
    dumped = yaml.safe_dump(to_dict(topo), sort_keys=False)
    again = load_text(dumped, base_dir=Path("/nonexistent"))  # manifest paths are absolute by now
    assert again == topo
    assert to_dict(again) == to_dict(topo)
    # Equality is meaningful: a changed address is a different topology.
    changed = to_dict(topo)
    changed["nodes"][2]["ip"] = "172.18.0.10"
    assert load_dict(changed) != topo


def test_complex_topology_fields(tmp_path: Path) -> None:
    topo = load_dict(complex_dict(tmp_path), base_dir=tmp_path)
    assert (topo.name, str(topo.pod_subnet), str(topo.service_subnet)) == ("lab", "10.200.0.0/20", "10.100.0.0/24")
    assert topo.node_port_range == (31000, 31999)
    assert (topo.networking_mode, topo.proxy_mode, topo.store) == (
        NetworkingMode.VXLAN, ProxyMode.NFTABLES, StoreKind.ETCD)
    assert topo.dns_service_ip() == IP("10.100.0.10")
    w1 = topo.node("w1")
    assert w1.labels == {"disk": "ssd", "example.com/tier": "db"}
    assert w1.taints == (Taint("dedicated", "db", TaintEffect.NO_EXECUTE),)
    assert w1.capacity == {"cpu": "2", "memory": "4Gi", "pods": "110"}
    assert topo.node("cp").taints == (CONTROL_PLANE_TAINT,)
    assert topo.node("cp2").taints == ()
    assert [link.bandwidth_mbit for link in topo.links[:3]] == [100.0, 2.5, None]
    assert [n.name for n in topo.nodes if n.role is NodeRole.CONTROL_PLANE] == ["cp", "cp2"]
    assert topo.manifests == (tmp_path / "apps" / "echo.yaml",
                              {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})


# --------------------------------------------------------------- addressing

def test_addressing_and_interface_names(tmp_path: Path) -> None:
    topo = load_dict(complex_dict(tmp_path), base_dir=tmp_path)

    def ifaces(name: str) -> list[tuple[str, str]]:
        return [(e.ifname, str(e.address)) for e in topo.interfaces_of(name)]

    # s1: .1 reserved, w2 explicitly .9; nodes in file order, then hosts, take .2 upward.
    assert ifaces("cp") == [("eth0", "172.18.0.2/16")]
    assert ifaces("w1") == [("eth0", "172.18.0.3/16"), ("eth1", "172.19.0.2/24")]
    assert ifaces("w2") == [("eth0", "172.18.0.9/16"), ("eth1", "172.31.0.5/30")]
    assert ifaces("cp2") == [("eth0", "172.18.0.4/16")]
    assert ifaces("client") == [("eth0", "172.18.0.5/16")]
    assert ifaces("outside") == [("eth0", "172.19.0.50/24")]
    # Routers: the first router on a switch is its .1 gateway; router links get /30s.
    assert ifaces("r1") == [("eth0", "172.18.0.1/16"), ("eth1", "172.19.0.1/24"), ("eth2", "172.31.0.1/30")]
    assert ifaces("r2") == [("eth0", "172.31.0.2/30"), ("eth1", "172.31.0.6/30")]
    assert topo.primary_address("w2") == IP("172.18.0.9")
    # Switch-side ports, numbered per switch in link order, carry no address.
    ports = [(e.name, e.ifname) for link in topo.links for e in link.ends() if e.address is None]
    assert ports == [("s1", "s1-p1"), ("s1", "s1-p2"), ("s1", "s1-p3"), ("s2", "s2-p1"), ("s1", "s1-p4"),
                     ("s1", "s1-p5"), ("s2", "s2-p2"), ("s1", "s1-p6"), ("s2", "s2-p3")]
    assert topo.links[2].a == Endpoint("s1", "s1-p3", None)  # endpoint order is kept as written
    assert [link.switch for link in topo.links[-2:]] == [None, None]


def test_explicit_ip_is_reserved_before_auto_assignment() -> None:
    topo = load_dict(base(nodes=[{"name": "cp", "role": "control-plane"}, {"name": "w1", "ip": "172.18.0.2"},
                                 {"name": "w2"}], hosts=[{"name": "h", "ip": "172.18.0.4"}, {"name": "h2"}]))
    got = {n: str(topo.primary_address(n)) for n in ("cp", "w1", "w2", "h", "h2")}
    assert got == {"cp": "172.18.0.3", "w1": "172.18.0.2", "w2": "172.18.0.5", "h": "172.18.0.4",
                   "h2": "172.18.0.6"}


def test_single_explicit_switch_without_links_links_everything() -> None:
    topo = load_dict(base(switches=[{"name": "lan", "subnet": "192.168.50.0/24"}], hosts=[{"name": "c"}]))
    assert [(l.a.name, l.b.name, str(l.a.address)) for l in topo.links] == [
        ("cp", "lan", "192.168.50.2/24"), ("w1", "lan", "192.168.50.3/24"), ("c", "lan", "192.168.50.4/24")]


def test_topology_lookups_raise_not_found() -> None:
    topo = default_topology()
    with pytest.raises(NotFoundError, match='node "nope" not found in topology "netk8s"; its nodes are: '
                                            'control-plane, worker, worker2'):
        topo.node("nope")
    with pytest.raises(NotFoundError, match='no node, host or router named "s1"'):
        topo.interfaces_of("s1")
    with pytest.raises(NotFoundError):
        topo.primary_address("ghost")


# ------------------------------------------------------------------- taints

def test_taint_defaulting_absent_null_and_empty() -> None:
    absent = load_dict(base())
    assert absent.node("cp").taints == (CONTROL_PLANE_TAINT,)
    assert absent.node("w1").taints == ()
    null = load_dict(base(nodes=[{"name": "cp", "role": "control-plane", "taints": None}]))
    assert null.node("cp").taints == (CONTROL_PLANE_TAINT,)
    empty = load_dict(base(nodes=[{"name": "cp", "role": "control-plane", "taints": []}]))
    assert empty.node("cp").taints == ()
    custom = load_dict(base(nodes=[{"name": "cp", "role": "control-plane",
                                    "taints": [{"key": "a", "effect": "PreferNoSchedule"}]}]))
    assert custom.node("cp").taints == (Taint("a", "", TaintEffect.PREFER_NO_SCHEDULE),)


def test_taint_to_api() -> None:
    assert CONTROL_PLANE_TAINT.to_api() == {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    assert Taint("k", "v", TaintEffect.NO_EXECUTE).to_api() == {"key": "k", "value": "v", "effect": "NoExecute"}


# ---------------------------------------------------------------- manifests

def test_manifests_resolve_relative_to_topology_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "echo.yaml").write_text("kind: Namespace\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    file = tmp_path / "cluster.yaml"
    file.write_text(yaml.safe_dump(base(manifests=["apps/echo.yaml", "./apps/../apps/echo.yaml"])))
    topo = load_file(file)
    assert topo.manifests == (tmp_path / "apps" / "echo.yaml", tmp_path / "apps" / "echo.yaml")
    # Text input resolves against cwd unless base_dir is given.
    text = yaml.safe_dump(base(manifests=["apps/echo.yaml"]))
    with pytest.raises(ValidationError, match=r"^manifests\[0\]: file not found: " + re.escape(str(elsewhere / "apps"))):
        load_text(text)
    assert load_text(text, base_dir=tmp_path).manifests == (tmp_path / "apps" / "echo.yaml",)


def test_a_recorded_topology_reads_even_after_its_manifest_moved(tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text("kind: Namespace\n")
    recorded = to_dict(load_dict(base(manifests=[str(manifest)]), base_dir=tmp_path))
    manifest.unlink()  # moved after `netk8s up` applied it
    assert error_of(recorded, base_dir=tmp_path) == f"manifests[0]: file not found: {manifest}"
    assert load_dict(recorded, check_manifest_files=False).manifests == (manifest,)


def test_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    msg = error_of(base(manifests=["missing.yaml"]), base_dir=tmp_path)
    assert msg == f"manifests[0]: file not found: {tmp_path / 'missing.yaml'}"
    msg = error_of(base(manifests=["dir"]), base_dir=tmp_path)
    assert msg.startswith(f"manifests[0]: {tmp_path / 'dir'} is a directory")
    msg = error_of(base(manifests=[{"apiVersion": "v1", "metadata": {"name": "x"}}]), base_dir=tmp_path)
    assert msg.startswith("manifests[0].kind: required for an inline manifest")
    msg = error_of(base(manifests=[{"kind": "Namespace"}]), base_dir=tmp_path)
    assert msg.startswith("manifests[0].apiVersion: required for an inline manifest")
    assert error_of(base(manifests=[5])).startswith("manifests[0]: expected a file path or an inline object")


# ---------------------------------------------------------------- YAML input

def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("apiVersion: netk8s.io/v1alpha1\nkind: Cluster\nnodes:\n  - name: [cp\n    role: x\n")
    with pytest.raises(ValidationError) as info:
        load_file(file)
    assert str(info.value).startswith(f"{file}: invalid YAML at line 5, column ")
    with pytest.raises(ValidationError, match=r"^<string>: invalid YAML at line 2, column 5: mapping values are "
                                              r"not allowed here$"):
        load_text("a: b\nc: d: e\n")


def test_yaml_document_shape_errors() -> None:
    with pytest.raises(ValidationError, match=r"^t.yaml: empty topology"):
        load_text("# only a comment\n", source="t.yaml")
    with pytest.raises(ValidationError, match=r"^<string>: holds 2 YAML documents"):
        load_text("a: 1\n---\nb: 2\n")
    with pytest.raises(ValidationError, match=r"^<string>: expected a mapping .* got a list$"):
        load_text("- a\n- b\n")
    with pytest.raises(ValidationError, match=r'^<string>: invalid YAML at line 3, column 1: duplicate key "kind"'):
        load_text("apiVersion: netk8s.io/v1alpha1\nkind: Cluster\nkind: Cluster\n")
    # A trailing document separator is not a second document.
    assert load_text(yaml.safe_dump(base()) + "---\n").name == "netk8s"


def test_load_file_missing() -> None:
    with pytest.raises(NotFoundError, match=r"^topology file not found: /nonexistent/x.yaml$"):
        load_file("/nonexistent/x.yaml")


# --------------------------------------------------------------- validation

def _set(data: dict, dotted: str, value: Any) -> dict:
    data = copy.deepcopy(data)
    target: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value
    return data


TWO_SWITCHES = base(
    nodes=[{"name": "cp", "role": "control-plane"}, {"name": "w1"}],
    hosts=[{"name": "c"}],
    switches=[{"name": "s1"}, {"name": "s2", "subnet": "172.20.0.0/24"}],
    routers=[{"name": "r1"}],
    links=[{"endpoints": ["cp", "s1"]}, {"endpoints": ["w1", "s1"]}, {"endpoints": ["c", "s2"]},
           {"endpoints": ["r1", "s1"]}, {"endpoints": ["r1", "s2"]}],
)


@pytest.mark.parametrize(("data", "expected"), [
    # unknown fields, with and without a close suggestion
    (base(nodes=[{"name": "cp", "role": "control-plane"}, {"name": "w1", "lables": {}}]),
     'nodes[1].lables: unknown field; did you mean "labels"?'),
    (base(podSubnett="10.0.0.0/16"), 'podSubnett: unknown field; did you mean "podSubnet"?'),
    (base(networking={"mode": "vxlan", "mtu": 1400}), "networking.mtu: unknown field; allowed fields: mode, cni"),
    (_set(TWO_SWITCHES, "links.0.weight", 3), "links[0].weight: unknown field; allowed fields: endpoints, bandwidth, loss, delay"),
    (base(hosts=[{"name": "c", "role": "x"}]), "hosts[0].role: unknown field; allowed fields: name, ip"),
    # header
    (_set(base(), "apiVersion", "v1"), 'apiVersion: unsupported value "v1"; use netk8s.io/v1alpha1'),
    ({k: v for k, v in base().items() if k != "kind"}, "kind: required; set it to Cluster"),
    # wrong types
    (base(podSubnet="x"), 'podSubnet: expected a CIDR like 10.244.0.0/16, got "x"'),
    (base(serviceSubnet=12), "serviceSubnet: expected a CIDR like 10.96.0.0/16, got 12"),
    (base(podSubnet="10.244.1.0/16"), 'podSubnet: "10.244.1.0/16" has host bits set; did you mean 10.244.0.0/16?'),
    (base(podSubnet="fd00::/64"), 'podSubnet: only IPv4 is supported; expected a CIDR like 10.244.0.0/16, '
                                  'got "fd00::/64"'),
    (base(nodes="cp"), 'nodes: expected a list of nodes, got the string "cp"'),
    (base(nodes=["cp"]), 'nodes[0]: expected a node like {name: worker, role: worker}, got the string "cp"'),
    # enums
    (base(networking={"mode": "flat"}), 'networking.mode: unsupported value "flat"; use one of: host-gw, vxlan'),
    (base(proxyMode="ipvs"), 'proxyMode: unsupported value "ipvs"; use one of: iptables, nftables'),
    (base(store="redis"), 'store: unsupported value "redis"; use one of: sqlite, etcd'),
    (base(nodes=[{"name": "cp", "role": "master"}]),
     'nodes[0].role: unsupported value "master"; use one of: control-plane, worker'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "taints": [{"key": "a", "effect": "Never"}]}]),
     'nodes[0].taints[0].effect: unsupported value "Never"; use one of: NoSchedule, PreferNoSchedule, NoExecute'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "taints": [{"key": "a"}]}]),
     "nodes[0].taints[0].effect: required; use one of: NoSchedule, PreferNoSchedule, NoExecute"),
    # names
    (base(name="My_Cluster"), 'name: invalid cluster name "My_Cluster": use lowercase letters, digits and "-", '
                              'starting and ending with a letter or digit'),
    (base(nodes=[{"name": "cp", "role": "control-plane"}, {"name": "n" * 41}]),
     f'nodes[1].name: node name "{"n" * 41}" is 41 characters long; use at most 40'),
    (base(nodes=[{"role": "control-plane"}]), "nodes[0].name: required; give the node a name like worker1"),
    (_set(TWO_SWITCHES, "switches.1.name", "switch002"),
     'switches[1].name: switch name "switch002" is 9 characters long; use at most 8'),
    (base(nodes=[{"name": "cp", "role": "control-plane"}, {"name": "worker"}], hosts=[{"name": "worker"}]),
     'hosts[0].name: duplicate name "worker" (also nodes[1])'),
    (_set(TWO_SWITCHES, "routers.0.name", "c"), 'routers[0].name: duplicate name "c" (also hosts[0])'),
    (base(nodes=[{"name": "cp", "role": "control-plane"}, {"name": "s1"}]),
     'nodes[1].name: "s1" is the name of the implicit default switch; rename it or list switches explicitly'),
    # nodes
    ({k: v for k, v in base().items() if k != "nodes"}, "nodes: required; list at least one node, e.g. "
                                                        "[{name: control-plane, role: control-plane}]"),
    (base(nodes=[]), "nodes: at least one node is required"),
    (base(nodes=[{"name": "a"}, {"name": "b"}]),
     "nodes: no node has role: control-plane; give at least one node that role"),
    (base(nodes=[{"name": "cp", "role": "control-plane", "labels": {"disk": True}}]),
     "nodes[0].labels.disk: expected a string value, got true; quote it in YAML"),
    (base(nodes=[{"name": "cp", "role": "control-plane", "labels": {"bad key!": "x"}}]),
     "nodes[0].labels.bad key!: invalid label key \"bad key!\": use an optional DNS prefix and '/', then up to "
     "63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
    (base(nodes=[{"name": "cp", "role": "control-plane", "taints": [{"key": "a", "effect": "NoSchedule"},
                                                                    {"key": "a", "effect": "NoSchedule"}]}]),
     'nodes[0].taints[1]: duplicate taint "a" with effect NoSchedule (also nodes[0].taints[0])'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "taints": {"key": "a"}}]),
     "nodes[0].taints: expected a list of taints like [{key: k, value: v, effect: NoSchedule}], got a mapping"),
    # capacity
    (base(nodes=[{"name": "cp", "role": "control-plane", "capacity": {"cpu": 0.5}}]),
     'nodes[0].capacity.cpu: expected a quantity as a string or integer like "4" or 8Gi, got 0.5; quote it in YAML'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "capacity": {"pods": True}}]),
     'nodes[0].capacity.pods: expected a quantity as a string or integer like "4" or 8Gi, got true; quote it in '
     'YAML'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "capacity": {"memory": "lots"}}]),
     'nodes[0].capacity.memory: invalid quantity "lots"; use forms like 4, 500m, 8Gi'),
    # nodePortRange
    (base(nodePortRange="30000"), 'nodePortRange: expected "first-last" like 30000-32767, got "30000"'),
    (base(nodePortRange=30000), 'nodePortRange: expected "first-last" like 30000-32767, got 30000'),
    (base(nodePortRange="0-100"), 'nodePortRange: ports must be between 1 and 65535, got "0-100"'),
    (base(nodePortRange="30000-70000"), 'nodePortRange: ports must be between 1 and 65535, got "30000-70000"'),
    (base(nodePortRange="32767-30000"),
     "nodePortRange: first port 32767 is greater than last port 30000; write it as 30000-32767"),
    # subnets
    (base(serviceSubnet="10.244.128.0/20"),
     "serviceSubnet: 10.244.128.0/20 overlaps podSubnet 10.244.0.0/16; use non-overlapping ranges"),
    (base(switches=[{"name": "s1", "subnet": "10.96.0.0/24"}]),
     "switches[0].subnet: 10.96.0.0/24 overlaps serviceSubnet 10.96.0.0/16; use non-overlapping ranges"),
    (_set(TWO_SWITCHES, "switches.1.subnet", "172.18.5.0/24"),
     "switches[1].subnet: 172.18.5.0/24 overlaps switches[0].subnet 172.18.0.0/16; use non-overlapping ranges"),
    (base(podSubnet="10.244.0.0/25"),
     "podSubnet: 10.244.0.0/25 is smaller than the /24 each node gets; use a prefix of /24 or shorter"),
    (base(podSubnet="10.244.0.0/24"),
     "podSubnet: 10.244.0.0/24 holds 1 node /24s but the topology has 2 nodes; use a larger subnet"),
    (base(serviceSubnet="10.96.0.0/29"),
     "serviceSubnet: 10.96.0.0/29 is too small for cluster DNS at +10; use /28 or shorter"),
    (_set(TWO_SWITCHES, "switches.1.subnet", None),
     "switches[1].subnet: required for every switch but the first; give a CIDR like 172.19.0.0/16"),
    (base(switches=[{"name": "s1", "subnet": "172.18.0.0/31"}]),
     "switches[0].subnet: 172.18.0.0/31 is too small for a gateway and a host; use /30 or shorter"),
    (base(switches=[{"name": "s1", "subnet": "172.18.0.0/30"}]),
     'switches[0].subnet: no free address left in 172.18.0.0/30 for nodes[1] "w1"; use a larger subnet'),
    # explicit addresses
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "10.0.0.5"}]),
     'nodes[0].ip: 10.0.0.5 is outside subnet 172.18.0.0/16 of switch "s1", its first switch link; pick an '
     'address inside it'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.18.0.0"}]),
     'nodes[0].ip: 172.18.0.0 is the network address of switch "s1" (172.18.0.0/16); pick another address'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.18.255.255"}]),
     'nodes[0].ip: 172.18.255.255 is the broadcast address of switch "s1" (172.18.0.0/16); pick another address'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.18.0.1"}]),
     'nodes[0].ip: 172.18.0.1 is the gateway address reserved on switch "s1" (172.18.0.0/16); pick another '
     'address'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.18.0.7"}],
          hosts=[{"name": "c", "ip": "172.18.0.7"}]),
     "hosts[0].ip: duplicate address 172.18.0.7 (also nodes[0].ip)"),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.18.0.300"}]),
     'nodes[0].ip: expected an IPv4 address like 172.18.0.2, got "172.18.0.300"'),
    (base(nodes=[{"name": "cp", "role": "control-plane", "ip": "172.31.0.9"}], routers=[{"name": "r1"}],
          links=[{"endpoints": ["cp", "r1"]}]),
     'nodes[0].ip: node "cp" has no link to a switch, so it cannot take an ip; remove ip or link it to a switch'),
    # links
    (_set(TWO_SWITCHES, "links.2.endpoints", ["c", "s9"]),
     'links[2].endpoints[1]: unknown node, host, switch or router "s9"'),
    (_set(TWO_SWITCHES, "links.0.endpoints", ["cp"]),
     'links[0].endpoints: expected a list of exactly two names, got ["cp"]'),
    (_set(TWO_SWITCHES, "links.0", {"bandwidth": 10}),
     "links[0].endpoints: required; name the two ends, e.g. [worker, s1]"),
    (_set(TWO_SWITCHES, "links.0.endpoints", ["cp", "cp"]),
     'links[0].endpoints: both ends are "cp"; a link joins two different things'),
    (_set(TWO_SWITCHES, "links.0.endpoints", ["s1", "s2"]),
     'links[0].endpoints: cannot link switch "s1" to switch "s2"; join switch segments through a router'),
    (_set(TWO_SWITCHES, "links.0.endpoints", ["cp", "w1"]),
     'links[0].endpoints: node "cp" and node "w1" cannot be linked directly; link each to a switch, or put a '
     'router between them'),
    (_set(TWO_SWITCHES, "links.0.bandwidth", 0), "links[0].bandwidth: expected a number of Mbit/s greater than 0, "
                                                 "got 0"),
    (_set(TWO_SWITCHES, "links.0.bandwidth", "fast"),
     'links[0].bandwidth: expected a number of Mbit/s greater than 0, got "fast"'),
    (_set(TWO_SWITCHES, "links", TWO_SWITCHES["links"][1:]),
     'nodes[0]: node "cp" is not linked to anything; add a link from it to a switch'),
    ({k: v for k, v in TWO_SWITCHES.items() if k not in ("links", "routers")},
     "links: required when the topology has 2 switches; list which switch each node and host plugs into"),
    (base(routers=[{"name": "r1"}]),
     'links: required when the topology has routers (router "r1"); list the links explicitly'),
    (base(switches=[{"name": "s1", "subnet": "172.31.0.0/24"}], routers=[{"name": "r1"}, {"name": "r2"}],
          links=[{"endpoints": ["cp", "s1"]}, {"endpoints": ["w1", "s1"]}, {"endpoints": ["r1", "s1"]},
                 {"endpoints": ["r1", "r2"]}]),
     "switches[0].subnet: 172.31.0.0/24 overlaps 172.31.0.0/16, where router point-to-point links take their "
     "/30s; use another range"),
])
def test_validation_errors(data: dict, expected: str) -> None:
    assert error_of(data) == expected


def test_valid_base_variants_load() -> None:
    """The fixtures the error cases mutate are themselves valid (so each error comes from its mutation)."""
    assert load_dict(base()).node("w1").role is NodeRole.WORKER
    topo = load_dict(TWO_SWITCHES)
    assert topo.primary_address("r1") == IP("172.18.0.1")
    assert topo.interfaces_of("r1")[1].address == IFACE("172.20.0.1/24")
    assert topo.primary_address("c") == IP("172.20.0.2")


def test_with_name_keeps_everything_else() -> None:
    topo = load_dict(TWO_SWITCHES)
    renamed = topo.with_name("other")
    assert renamed.name == "other" and renamed.links == topo.links and renamed != topo
    assert isinstance(hash(renamed), int)  # frozen specs stay hashable despite dict fields
    assert isinstance(renamed, Topology)


def test_control_plane_timings_parse_and_round_trip() -> None:
    base = {"apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "nodes": [{"name": "cp", "role": "control-plane"}]}
    assert load_dict(base).control_plane_spec == ControlPlaneSpec(10.0, 30.0)
    topo = load_dict({**base, "controlPlane": {"nodeMonitorGracePeriod": "1.5m", "podEvictionTimeout": 45}})
    assert topo.control_plane_spec == ControlPlaneSpec(90.0, 45.0)
    assert load_dict(to_dict(topo)) == topo
    with pytest.raises(ValidationError, match=r"^controlPlane.nodeMonitorGracePeriod: expected a positive duration"):
        load_dict({**base, "controlPlane": {"nodeMonitorGracePeriod": "soon"}})
    with pytest.raises(ValidationError, match=r'^controlPlane.podEvictionTimout: unknown field; did you mean '
                                              r'"podEvictionTimeout"\?'):
        load_dict({**base, "controlPlane": {"podEvictionTimout": "5s"}})


def test_link_loss_delay_and_cni_plugin() -> None:
    base = {"apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "nodes": [{"name": "cp", "role": "control-plane"}],
            "switches": [{"name": "s1"}]}
    topo = load_dict({**base, "networking": {"cni": "bridge"},
                      "links": [{"endpoints": ["cp", "s1"], "loss": "2.5%", "delay": "15ms"}]})
    assert topo.cni_plugin is CniPlugin.BRIDGE and topo.cni_plugin.plugin_type == "bridge"
    assert (topo.links[0].loss_percent, topo.links[0].delay_ms) == (2.5, 15.0)
    assert load_dict(to_dict(topo)) == topo
    with pytest.raises(ValidationError, match=r"^links\[0\]\.loss: expected a loss percentage"):
        load_dict({**base, "links": [{"endpoints": ["cp", "s1"], "loss": "150%"}]})
    with pytest.raises(ValidationError, match=r'^networking\.cni: unsupported value "calico"; use one of: netk8s, '
                                              r'bridge'):
        load_dict({**base, "networking": {"cni": "calico"}, "links": [{"endpoints": ["cp", "s1"]}]})


def test_load_balancer_pool() -> None:
    assert default_topology().lb_pool() == (ipaddress.IPv4Address("172.18.255.200"),
                                           ipaddress.IPv4Address("172.18.255.250"))
    base = {"apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "nodes": [{"name": "cp", "role": "control-plane"}]}
    topo = load_dict({**base, "loadBalancerPool": "172.18.100.0/30"})
    assert topo.lb_pool() == (ipaddress.IPv4Address("172.18.100.1"), ipaddress.IPv4Address("172.18.100.2"))
    assert load_dict(to_dict(topo)) == topo
    with pytest.raises(ValidationError, match=r"^loadBalancerPool: expected a range like"):
        load_dict({**base, "loadBalancerPool": "lots"})
    with pytest.raises(ValidationError, match=r"^loadBalancerPool: the first address 10.0.0.9 is after the last"):
        load_dict({**base, "loadBalancerPool": "10.0.0.9-10.0.0.1"})
