"""netk8s-cni against the kernel: test node and pod namespaces, in-process and as an executable.

Every namespace is ``nk-t<random>-node`` / ``nk-t<random>-p<N>``, created with
netk8s.kernel.netns and deleted by finalizers; the plugin only ever runs with
the test node namespace entered (in-process) or via nsenter (executable), so
the bridge, veths, sysctls and iptables rules all live in test namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from netk8s.cni.invoker import Attachment, CniFailure, CniInvoker, node_conflist
from netk8s.kernel import netns

NK_CNI = str(Path(sys.executable).parent / "netk8s-cni")
VENV_BIN = str(Path(NK_CNI).parent)
REFERENCE_BIN = "/usr/lib/cni"
POD_CIDR = ipaddress.IPv4Network("10.244.77.0/24")
GATEWAY = "10.244.77.1"


@pytest.fixture
def prefix() -> str:
    return f"nk-t{secrets.token_hex(3)}"


@pytest.fixture
def make_ns(prefix: str) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{prefix}-{suffix}"
        made.append(name)
        return netns.create(name)

    yield make
    for name in reversed(made):
        netns.delete(name)


@pytest.fixture
def node(make_ns: Callable[[str], str]) -> str:
    return make_ns("node")


@pytest.fixture
def pods(make_ns: Callable[[str], str]) -> Callable[[int], str]:
    return lambda n: make_ns(f"p{n}")


def conflist(tmp_path: Path, **plugin_changes: Any) -> dict[str, Any]:
    conf = node_conflist("nk-test-net", POD_CIDR, tmp_path / "ipam")
    conf["plugins"][0].update(plugin_changes)
    return conf


def leases(tmp_path: Path, network: str = "nk-test-net") -> dict[str, str]:
    d = tmp_path / "ipam" / network
    if not d.is_dir():
        return {}
    return {p.name: p.read_bytes().decode() for p in d.iterdir() if p.name[0].isdigit()}


def ip_json(ns: str, *argv: str) -> Any:
    return json.loads(netns.run(ns, ["ip", "-j", *argv]).stdout or "[]")


def ping(ns: str, target: str) -> bool:
    return netns.run(ns, ["ping", "-c1", "-W1", target], check=False, timeout=10).returncode == 0


def shape(value: Any) -> Any:
    """Keys and nesting of a JSON value, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def run_exe(node: str, env: dict[str, str], stdin: str) -> tuple[int, dict[str, Any] | None]:
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    proc = subprocess.run(netns.nsenter_argv(node, [NK_CNI]), input=stdin.encode(), env=full, capture_output=True,
                          timeout=60)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


# ----------------------------------------------------------------------------- ADD / datapath


def test_add_in_process_and_executable_wire_pods(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    conf = conflist(tmp_path, mtu=1400)
    p1, p2 = pods(1), pods(2)
    in_proc = CniInvoker(conf, [VENV_BIN], node, in_process=True)
    by_exec = CniInvoker(conf, [VENV_BIN], node, in_process=False)
    r1 = in_proc.add(Attachment("ctr1", p1, args=(("K8S_POD_NAME", "a"),)))
    r2 = by_exec.add(Attachment("ctr2", p2))

    # same result shape from both paths
    assert shape(r1) == shape(r2)
    assert r1["cniVersion"] == "1.0.0"
    assert [i["name"] for i in r1["interfaces"]][::2] == ["cni0", "eth0"]
    assert r1["interfaces"][2]["sandbox"] == p1 and "sandbox" not in r1["interfaces"][1]
    assert r1["ips"] == [{"interface": 2, "address": "10.244.77.2/24", "gateway": GATEWAY}]
    assert r2["ips"][0]["address"] == "10.244.77.3/24"
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    # the bridge MAC is pinned at creation, so enslaving more veths does not change it
    assert r1["interfaces"][0]["mac"] == r2["interfaces"][0]["mac"] == ip_json(node, "link", "show", "cni0")[0][
        "address"]
    assert leases(tmp_path) == {"10.244.77.2": "ctr1\r\neth0", "10.244.77.3": "ctr2\r\neth0"}

    # node side: veths enslaved to cni0 with hairpin on; bridge carries the gateway; forwarding on
    links = netns.run(node, ["bridge", "-d", "link", "show"]).stdout
    for result in (r1, r2):
        host = result["interfaces"][1]["name"]
        assert host.startswith("veth") and len(host) == 12
        block = links.split(f": {host}@")[1].split("\n", 2)
        assert "master cni0" in block[0] and "hairpin on" in block[1]
    bridge_addrs = [(a["local"], a["prefixlen"]) for a in ip_json(node, "addr", "show", "cni0")[0]["addr_info"]
                    if a["family"] == "inet"]
    assert bridge_addrs == [(GATEWAY, 24)]
    assert ip_json(node, "link", "show", "cni0")[0]["mtu"] == 1400
    assert netns.read_sysctl(node, "net.ipv4.ip_forward") == "1"

    # pod side: address, mtu, loopback up, default route via the gateway
    eth0 = ip_json(p1, "addr", "show", "eth0")[0]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [("10.244.77.2", 24)]
    assert eth0["mtu"] == 1400 and eth0["address"] == r1["interfaces"][2]["mac"]
    assert "UP" in ip_json(p1, "link", "show", "lo")[0]["flags"]
    routes = ip_json(p1, "route", "show", "default")
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in routes] == [("default", GATEWAY, "eth0")]

    # packets: pod -> gateway, pod -> pod
    assert ping(p1, GATEWAY)
    assert ping(p1, "10.244.77.3") and ping(p2, "10.244.77.2")

    # CHECK passes on a healthy attachment, both paths
    in_proc.check(Attachment("ctr1", p1), r1)
    by_exec.check(Attachment("ctr2", p2), r2)


def test_concurrent_in_process_adds_from_threads(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    # The kubelet attaches pods from several threads; setns is per thread, so they must not interfere.
    inv = CniInvoker(conflist(tmp_path), [VENV_BIN], node)
    namespaces = [pods(i) for i in range(1, 6)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(inv.add, Attachment(f"ctr{i}", ns)) for i, ns in enumerate(namespaces)]
        results = [f.result(timeout=60) for f in futures]
    addresses = {r["ips"][0]["address"] for r in results}
    assert len(addresses) == 5 and len(leases(tmp_path)) == 5
    assert len({r["interfaces"][1]["name"] for r in results}) == 5
    for ns in namespaces:
        assert ping(ns, GATEWAY)
    # the calling threads came back to the root namespace: no bridge appeared there
    assert "cni0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout


def test_add_twice_on_same_ifname_fails_and_keeps_the_first(tmp_path: Path, node: str,
                                                             pods: Callable[[int], str]) -> None:
    inv = CniInvoker(conflist(tmp_path), [VENV_BIN], node)
    p1 = pods(1)
    inv.add(Attachment("ctr1", p1))
    for invoker in (inv, CniInvoker(conflist(tmp_path), [VENV_BIN], node, in_process=False)):
        with pytest.raises(CniFailure) as info:
            invoker.add(Attachment("ctr1", p1))
        assert info.value.code == 7 and "eth0" in info.value.msg and "already exists" in info.value.msg
    assert leases(tmp_path) == {"10.244.77.2": "ctr1\r\neth0"}
    assert ping(p1, GATEWAY)


@pytest.mark.parametrize("in_process", [True, False])
def test_del_is_idempotent_and_frees_everything(tmp_path: Path, node: str, pods: Callable[[int], str],
                                                in_process: bool) -> None:
    inv = CniInvoker(conflist(tmp_path, ipMasq=True, promiscMode=True), [VENV_BIN], node, in_process=in_process)
    p1 = pods(1)
    att = Attachment("ctr1", p1)
    result = inv.add(att)
    assert "PROMISC" in ip_json(node, "link", "show", "cni0")[0]["flags"]
    host = result["interfaces"][1]["name"]
    nat = netns.run(node, ["iptables-save", "-t", "nat"]).stdout
    assert "-A POSTROUTING -s 10.244.77.2/32" in nat and "-j MASQUERADE" in nat
    root_nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=30)
    assert "10.244.77.2" not in root_nat.stdout  # nothing leaked into the root namespace
    inv.delete(att, result)
    inv.delete(att, result)
    inv.delete(att)  # without prevResult too
    assert leases(tmp_path) == {}
    assert "eth0" not in netns.run(p1, ["ip", "-o", "link"]).stdout
    assert host not in netns.run(node, ["ip", "-o", "link"]).stdout
    nat = netns.run(node, ["iptables-save", "-t", "nat"]).stdout
    assert "CNI-" not in nat and "MASQUERADE" not in nat


def test_del_after_pod_namespace_is_gone(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    inv = CniInvoker(conflist(tmp_path), [VENV_BIN], node, in_process=False)
    p1 = pods(1)
    result = inv.add(Attachment("ctr1", p1))
    assert leases(tmp_path)
    netns.delete(p1)
    inv.delete(Attachment("ctr1", p1), result)
    assert leases(tmp_path) == {}
    assert result["interfaces"][1]["name"] not in netns.run(node, ["ip", "-o", "link"]).stdout
    # the freed address is handed out again once the range wraps (a fresh container gets .3, as round robin)
    assert CniInvoker(conflist(tmp_path), [VENV_BIN], node).add(Attachment("ctr2", pods(2)))["ips"][0][
        "address"] == "10.244.77.3/24"


def test_check_reports_a_missing_address(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    inv = CniInvoker(conflist(tmp_path), [VENV_BIN], node)
    p1 = pods(1)
    att = Attachment("ctr1", p1)
    result = inv.add(att)
    inv.check(att, result)
    netns.run(p1, ["ip", "addr", "del", "10.244.77.2/24", "dev", "eth0"])
    with pytest.raises(CniFailure) as info:
        inv.check(att, result)
    assert "10.244.77.2/24" in info.value.msg and "missing" in info.value.msg
    netns.run(p1, ["ip", "link", "del", "eth0"])
    with pytest.raises(CniFailure, match="interface eth0 is missing"):
        CniInvoker(conflist(tmp_path), [VENV_BIN], node, in_process=False).check(att, result)


def test_failed_add_is_undone(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    p1 = pods(1)
    # fails after the veth exists: the route's gateway is not on-link
    conf = conflist(tmp_path)
    conf["plugins"][0]["ipam"]["routes"].append({"dst": "192.168.0.0/16", "gw": "10.99.0.1"})
    with pytest.raises(CniFailure, match="192.168.0.0/16"):
        CniInvoker(conf, [VENV_BIN], node).add(Attachment("ctr1", p1))
    assert leases(tmp_path) == {}
    assert "veth" not in netns.run(node, ["ip", "-o", "link"]).stdout
    assert "eth0" not in netns.run(p1, ["ip", "-o", "link"]).stdout
    # fails before the veth: cni0 already holds another address of the pod subnet
    netns.run(node, ["ip", "addr", "flush", "dev", "cni0"])
    netns.run(node, ["ip", "addr", "add", "10.244.77.9/24", "dev", "cni0"])
    with pytest.raises(CniFailure) as info:
        CniInvoker(conflist(tmp_path), [VENV_BIN], node, in_process=False).add(Attachment("ctr1", p1))
    assert info.value.code == 7 and "10.244.77.9/24" in info.value.msg
    assert leases(tmp_path) == {}


def test_gc_via_executable_releases_stale_leases_and_masq(tmp_path: Path, node: str,
                                                           pods: Callable[[int], str]) -> None:
    conf = conflist(tmp_path, ipMasq=True)
    inv = CniInvoker(conf, [VENV_BIN], node)
    inv.add(Attachment("keep", pods(1)))
    inv.add(Attachment("stale", pods(2)))
    gc = {**conf["plugins"][0], "name": conf["name"], "cniVersion": "1.1.0",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert run_exe(node, {"CNI_COMMAND": "GC"}, json.dumps(gc)) == (0, None)
    assert leases(tmp_path) == {"10.244.77.2": "keep\r\neth0"}
    nat = netns.run(node, ["iptables-save", "-t", "nat"]).stdout
    assert "-s 10.244.77.2/32" in nat and "-s 10.244.77.3/32" not in nat
    assert 'id: \\"stale\\"' not in nat and 'id: \\"keep\\"' in nat


# ----------------------------------------------------------------------------- CNI errors via the executable


def test_executable_error_codes(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    p1 = pods(1)
    plugin = conflist(tmp_path)["plugins"][0]
    good = json.dumps({**plugin, "name": "nk-test-net", "cniVersion": "1.0.0"})
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": p1, "CNI_IFNAME": "eth0"}

    cases = [
        ({k: v for k, v in env.items() if k != "CNI_CONTAINERID"}, good, 4),
        ({**env, "CNI_IFNAME": "bad name"}, good, 4),
        ({**env, "CNI_COMMAND": "FROB"}, good, 4),
        (env, "{", 6),
        (env, good.replace('"1.0.0"', '"7.0.0"'), 1),
        (env, json.dumps({**plugin, "name": "nk-test-net", "cniVersion": "1.0.0", "bogus": 1}), 7),
        (env, json.dumps({**plugin, "name": "nk-test-net", "cniVersion": "1.0.0", "mtu": 9}), 7),
        ({**env, "CNI_NETNS": f"/run/netns/{Path(p1).name}-missing"}, good, 3),
    ]
    for case_env, stdin, code in cases:
        rc, out = run_exe(node, case_env, stdin)
        assert rc != 0 and out is not None, (case_env, stdin)
        assert out["code"] == code, out
        assert set(out) == {"cniVersion", "code", "msg", "details"}
    # nothing was touched by the refused calls
    assert "cni0" not in netns.run(node, ["ip", "-o", "link"]).stdout
    assert leases(tmp_path) == {}

    rc, out = run_exe(node, {"CNI_COMMAND": "VERSION"}, "")
    assert rc == 0 and out is not None and "1.1.0" in out["supportedVersions"]
    status = json.dumps({**plugin, "name": "nk-test-net", "cniVersion": "1.1.0"})
    assert run_exe(node, {"CNI_COMMAND": "STATUS"}, status) == (0, None)

    # an error from the executable reaches the invoker as CniFailure naming type and code
    bad = conflist(tmp_path, bridge="x" * 20)
    with pytest.raises(CniFailure) as info:
        CniInvoker(bad, [VENV_BIN], node, in_process=False).add(Attachment("ctr1", p1))
    assert info.value.code == 7 and "netk8s-cni" in str(info.value) and "code 7" in str(info.value)
    with pytest.raises(CniFailure, match="no executable 'nope'"):
        CniInvoker({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nope"}]}, [str(tmp_path)],
                   node).add(Attachment("ctr1", p1))


# ----------------------------------------------------------------------------- reference plugin comparison


@pytest.mark.skipif(not os.path.exists(f"{REFERENCE_BIN}/bridge"), reason="reference CNI plugins not installed")
def test_reference_bridge_gives_the_same_result_shape(tmp_path: Path, make_ns: Callable[[str], str]) -> None:
    ours_node, ref_node = make_ns("node"), make_ns("rnode")
    ours_pod, ref_pod = make_ns("p1"), make_ns("p2")
    ours = CniInvoker(node_conflist("nk-test-net", POD_CIDR, tmp_path / "ours"), [VENV_BIN], ours_node)
    ref_conf = node_conflist("nk-test-net", POD_CIDR, tmp_path / "ref", plugin_type="bridge")
    ref = CniInvoker(ref_conf, [REFERENCE_BIN], ref_node)
    r_ours = ours.add(Attachment("ctr1", ours_pod))
    r_ref = ref.add(Attachment("ctr1", ref_pod))
    assert shape(r_ours) == shape(r_ref)
    for key in ("cniVersion", "ips", "routes", "dns"):
        assert r_ours[key] == r_ref[key], key
    assert [i["name"] for i in r_ours["interfaces"]][::2] == [i["name"] for i in r_ref["interfaces"]][::2]
    # the kernel ends up alike: same pod address and default route, hairpin on in both
    for pod in (ours_pod, ref_pod):
        assert ip_json(pod, "route", "show", "default")[0]["gateway"] == GATEWAY
        assert ping(pod, GATEWAY)
    for node_ns in (ours_node, ref_node):
        assert "hairpin on" in netns.run(node_ns, ["bridge", "-d", "link", "show"]).stdout
    # the reference DEL through the invoker frees its lease as well
    ref.delete(Attachment("ctr1", ref_pod), r_ref)
    assert not any(p.name[0].isdigit() for p in (tmp_path / "ref" / "nk-test-net").iterdir())
