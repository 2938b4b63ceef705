"""netk8s-cni against the kernel: test node and pod namespaces, in-process and as an executable,
and side by side with the reference ``bridge`` + ``host-local`` plugins.

Every namespace is ``nk-t<random>-node`` / ``nk-t<random>-p<N>``, created with
netk8s.kernel.netns and deleted by finalizers; the plugin only ever runs with
the test node namespace entered (in-process) or via nsenter (executable), so
the bridge, veths, sysctls and iptables rules all live in test namespaces.

The conformance section at the end runs the same cases against netk8s-cni and
the reference plugins (/usr/lib/cni, Debian's containernetworking-plugins,
which ``make setup`` installs). Where the two legitimately differ, each case
asserts each plugin's own documented answer and says why.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from netk8s.cni import plugin as cni_plugin
from netk8s.cni.invoker import Attachment, CniFailure, CniInvoker, node_conflist
from netk8s.cni.types import PLUGIN_TYPE
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


def ping(ns: str, target: str, wait: int = 3) -> bool:
    # The reference plugin may return before a new bridge forwards (see the test below), so the
    # default allows an ARP retry (1 s); netk8s-cni is tested with wait=1 where it matters.
    return netns.run(ns, ["ping", "-c1", f"-W{wait}", target], check=False, timeout=10).returncode == 0


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


def test_executable_validates_the_whole_config_before_touching_the_kernel(tmp_path: Path, node: str,
                                                                         pods: Callable[[int], str]) -> None:
    # (The codes both plugins share are in the conformance section below.)
    p1 = pods(1)
    plugin = conflist(tmp_path)["plugins"][0]
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": p1, "CNI_IFNAME": "eth0"}
    for change in ({"bogus": 1}, {"mtu": 9}, {"hairpinMode": "yes"}):
        rc, out = run_exe(node, env, json.dumps({**plugin, "name": "nk-test-net", "cniVersion": "1.0.0", **change}))
        assert rc == 1 and out is not None and out["code"] == 7, (change, out)
        assert out["msg"].startswith(next(iter(change)) + ":"), out  # the message names the field
        assert set(out) == {"cniVersion", "code", "msg", "details"}
    # nothing was touched by the refused calls
    assert "cni0" not in netns.run(node, ["ip", "-o", "link"]).stdout
    assert leases(tmp_path) == {}

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


def test_next_add_repairs_the_bridge(tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    # Nothing about cni0 is cached between ADDs: whatever happened to it, the next ADD puts it right.
    inv = CniInvoker(conflist(tmp_path), [VENV_BIN], node)
    inv.add(Attachment("ctr1", pods(1)))
    netns.run(node, ["ip", "link", "del", "cni0"])
    p2 = pods(2)
    inv.add(Attachment("ctr2", p2))
    assert ping(p2, GATEWAY)
    netns.run(node, ["ip", "link", "set", "cni0", "down"])
    netns.run(node, ["ip", "addr", "flush", "dev", "cni0"])
    p3 = pods(3)
    result = inv.add(Attachment("ctr3", p3))
    assert "UP" in ip_json(node, "link", "show", "cni0")[0]["flags"]
    assert ping(p3, GATEWAY) and ping(p3, "10.244.77.3")
    assert result["interfaces"][0]["mac"] == ip_json(node, "link", "show", "cni0")[0]["address"]
    # a name that is taken by a device that is no bridge is a config error, and nothing is leased
    netns.run(node, ["ip", "link", "del", "cni0"])
    netns.run(node, ["ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer"])
    with pytest.raises(CniFailure) as info:
        inv.add(Attachment("ctr4", pods(4)))
    assert info.value.code == 7 and "cni0 exists and is a veth device" in info.value.msg
    assert "10.244.77.5" not in leases(tmp_path)


def test_first_pod_on_a_new_bridge_is_reachable_at_once(tmp_path: Path, make_ns: Callable[[str], str]) -> None:
    # The kernel applies carrier changes asynchronously, a new bridge's up to a second late; until
    # then the bridge drops what it sends (e.g. the gateway's ARP reply). ADD returns only when the
    # veth ends and the bridge are operationally up.
    for i in range(3):
        node = make_ns(f"fresh{i}")
        pod = make_ns(f"fresh{i}p")
        result = CniInvoker(conflist(tmp_path / str(i)), [VENV_BIN], node, in_process=bool(i % 2)).add(
            Attachment("ctr1", pod))
        host = result["interfaces"][1]["name"]
        assert [ip_json(node, "link", "show", dev)[0]["operstate"] for dev in ("cni0", host)] == ["UP", "UP"]
        assert ip_json(pod, "link", "show", "eth0")[0]["operstate"] == "UP"
        assert ping(pod, GATEWAY, wait=1)


def test_link_state_sync_reads_the_carrier(node: str) -> None:
    netns.run(node, ["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"])
    netns.run(node, ["ip", "link", "set", "va", "up"])
    with netns.entered(node):
        assert cni_plugin._sync_link_state("lo") is True
        assert cni_plugin._sync_link_state("va") is False  # its peer is down: no carrier
        netns.run(node, ["ip", "link", "set", "vb", "up"])
        assert cni_plugin._sync_link_state("va") is True  # and follows the peer
        assert cni_plugin._sync_link_state("nope0") is None  # no such device: reported, not raised


def test_host_veth_name_collision_draws_another_name(tmp_path: Path, node: str, pods: Callable[[int], str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    netns.run(node, ["ip", "link", "add", "vethdeadbeef", "type", "veth", "peer", "name", "otherpeer"])
    names = iter(["vethdeadbeef", "veth01020304"])
    monkeypatch.setattr(cni_plugin, "_host_veth_name", lambda: next(names))
    p1 = pods(1)
    result = CniInvoker(conflist(tmp_path), [VENV_BIN], node).add(Attachment("ctr1", p1))
    assert result["interfaces"][1]["name"] == "veth01020304"
    # the device that held the first name was left alone
    other = ip_json(node, "-d", "link", "show", "vethdeadbeef")[0]
    assert "master" not in other and "UP" not in other["flags"]
    assert ping(p1, GATEWAY)


# ----------------------------------------------------------------------------- conformance: ours and the reference


@dataclass(frozen=True)
class Impl:
    """One CNI implementation under test."""

    name: str
    plugin_type: str
    bin_dir: str
    in_process: bool = False

    @property
    def reference(self) -> bool:
        return self.plugin_type == "bridge"


OURS_IN_PROCESS = Impl("netk8s-cni-in-process", PLUGIN_TYPE, VENV_BIN, in_process=True)
OURS_EXEC = Impl("netk8s-cni-exec", PLUGIN_TYPE, VENV_BIN)
REFERENCE = Impl("reference-bridge", "bridge", REFERENCE_BIN)


def _available(impl: Impl) -> Impl:
    if impl.reference and not os.path.exists(f"{REFERENCE_BIN}/bridge"):
        pytest.skip("reference CNI plugins not installed in /usr/lib/cni (Debian package containernetworking-plugins)")
    return impl


@pytest.fixture(params=[OURS_IN_PROCESS, OURS_EXEC, REFERENCE], ids=lambda i: i.name)
def impl(request: pytest.FixtureRequest) -> Impl:
    """Every implementation, through the invoker (the kubelet's path)."""
    return _available(request.param)


@pytest.fixture(params=[OURS_EXEC, REFERENCE], ids=lambda i: i.name)
def executable(request: pytest.FixtureRequest) -> Impl:
    """The executables, driven directly (environment and stdin as a runtime sets them)."""
    return _available(request.param)


def invoker_for(impl: Impl, tmp_path: Path, node: str) -> CniInvoker:
    conf = node_conflist("nk-test-net", POD_CIDR, tmp_path / "ipam", plugin_type=impl.plugin_type)
    return CniInvoker(conf, [impl.bin_dir], node, in_process=impl.in_process)


def run_plugin(impl: Impl, node: str, env: dict[str, str], stdin: str) -> tuple[int, dict[str, Any] | None, str]:
    """(exit status, stdout JSON, stderr) of the plugin run in ``node`` with exactly ``env``."""
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_PATH": impl.bin_dir, **env}
    binary = os.path.join(impl.bin_dir, impl.plugin_type)
    proc = subprocess.run(netns.nsenter_argv(node, [binary]), input=stdin.encode(), env=full, capture_output=True,
                          timeout=60)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None), proc.stderr.decode()


def plugin_stdin(impl: Impl, tmp_path: Path, version: str = "1.0.0", **changes: Any) -> str:
    plugin = node_conflist("nk-test-net", POD_CIDR, tmp_path / "ipam", plugin_type=impl.plugin_type)["plugins"][0]
    return json.dumps({**plugin, "name": "nk-test-net", "cniVersion": version, **changes})


def assert_error(out: dict[str, Any] | None, impl: Impl, code: int) -> None:
    assert out is not None and out["code"] == code, (impl.name, out)
    assert out["msg"]
    # netk8s-cni always prints the spec's four keys; the reference (libcni 1.1) leaves cniVersion out
    # and details when empty.
    assert set(out) == {"cniVersion", "code", "msg", "details"} if not impl.reference else {"code", "msg"} <= set(out)


def test_add_result_and_kernel_state(impl: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    p1 = pods(1)
    result = invoker_for(impl, tmp_path, node).add(Attachment("ctr1", p1))
    assert shape(result) == {
        "cniVersion": "str",
        "interfaces": [{"name": "str", "mac": "str"}, {"name": "str", "mac": "str"},
                       {"name": "str", "mac": "str", "sandbox": "str"}],
        "ips": [{"interface": "int", "address": "str", "gateway": "str"}],
        "routes": [{"dst": "str", "gw": "str"}],
        "dns": {},
    }
    bridge, host, container = result["interfaces"]
    assert result["cniVersion"] == "1.0.0"
    assert (bridge["name"], container["name"], container["sandbox"]) == ("cni0", "eth0", p1)
    assert result["ips"] == [{"interface": 2, "address": "10.244.77.2/24", "gateway": GATEWAY}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    # the reported MACs are the kernel's; the lease file has host-local's format
    assert bridge["mac"] == ip_json(node, "link", "show", "cni0")[0]["address"]
    assert host["name"].startswith("veth") and host["mac"] == ip_json(node, "link", "show", host["name"])[0]["address"]
    assert container["mac"] == ip_json(p1, "link", "show", "eth0")[0]["address"]
    assert leases(tmp_path) == {"10.244.77.2": "ctr1\r\neth0"}
    # the kernel ends up alike: hairpin on, gateway on the bridge, default route, packets flow
    assert "hairpin on" in netns.run(node, ["bridge", "-d", "link", "show", "dev", host["name"]]).stdout
    assert [a["local"] for a in ip_json(node, "addr", "show", "cni0")[0]["addr_info"] if a["family"] == "inet"] == [
        GATEWAY]
    assert [(r["dst"], r["gateway"]) for r in ip_json(p1, "route", "show", "default")] == [("default", GATEWAY)]
    assert ping(p1, GATEWAY)


def test_add_twice_on_one_interface_fails(impl: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    inv = invoker_for(impl, tmp_path, node)
    p1 = pods(1)
    inv.add(Attachment("ctr1", p1))
    with pytest.raises(CniFailure) as info:
        inv.add(Attachment("ctr1", p1))
    # Both refuse with "container veth name provided (eth0) already exists". netk8s-cni calls it an
    # invalid configuration (7, as the spec's "invalid network config" for a taken CNI_IFNAME); the
    # reference bridge reports every set-up failure as the generic 999.
    assert info.value.code == (999 if impl.reference else 7)
    assert "eth0" in info.value.msg and "already exists" in info.value.msg
    # the first attachment is untouched: same single lease, still forwarding
    assert leases(tmp_path) == {"10.244.77.2": "ctr1\r\neth0"}
    assert ping(p1, GATEWAY)


def test_del_twice_succeeds(impl: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    inv = invoker_for(impl, tmp_path, node)
    p1 = pods(1)
    att = Attachment("ctr1", p1)
    result = inv.add(att)
    host = result["interfaces"][1]["name"]
    inv.delete(att, result)
    inv.delete(att, result)
    inv.delete(att)  # without prevResult
    inv.delete(Attachment("never-added", f"{p1}-gone"))  # an unknown container whose namespace is gone
    assert leases(tmp_path) == {}
    assert "eth0" not in netns.run(p1, ["ip", "-o", "link"]).stdout
    assert host not in netns.run(node, ["ip", "-o", "link"]).stdout


def test_check_detects_a_removed_address(impl: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    inv = invoker_for(impl, tmp_path, node)
    p1 = pods(1)
    att = Attachment("ctr1", p1)
    result = inv.add(att)
    inv.check(att, result)
    netns.run(p1, ["ip", "addr", "del", "10.244.77.2/24", "dev", "eth0"])
    with pytest.raises(CniFailure) as info:
        inv.check(att, result)
    # netk8s-cni: "CHECK: address 10.244.77.2/24 is missing on eth0 in ..."; the reference:
    # "Failed to match addr 10.244.77.2/24 on interface eth0". Both with the generic code.
    assert info.value.code == 999 and "10.244.77.2/24" in info.value.msg
    netns.run(p1, ["ip", "link", "del", "eth0"])
    with pytest.raises(CniFailure) as info:
        inv.check(att, result)
    assert info.value.code == 999 and "eth0" in info.value.msg


def test_version(executable: Impl, node: str) -> None:
    rc, out, _ = run_plugin(executable, node, {"CNI_COMMAND": "VERSION"}, "")
    assert rc == 0 and out is not None
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(out["supportedVersions"])
    # The reference plugins in Debian 12 (1.1.1) speak up to 1.0.0; netk8s-cni also 1.1.0 (GC, STATUS).
    if executable.reference:
        assert out["cniVersion"] == "1.0.0" and "1.1.0" not in out["supportedVersions"]
    else:
        assert out["cniVersion"] == "1.1.0" and out["supportedVersions"][-1] == "1.1.0"


def test_bad_environment_error_codes(executable: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    p1 = pods(1)
    good = plugin_stdin(executable, tmp_path)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": p1, "CNI_IFNAME": "eth0"}
    shared = [
        {k: v for k, v in env.items() if k != "CNI_CONTAINERID"},
        {k: v for k, v in env.items() if k != "CNI_NETNS"},
        {k: v for k, v in env.items() if k != "CNI_IFNAME"},
        {**env, "CNI_IFNAME": "bad name"},
        {**env, "CNI_IFNAME": "x" * 16},
        {**env, "CNI_CONTAINERID": "-bad"},
        {**env, "CNI_COMMAND": "FROB"},
    ]
    for case in shared:
        rc, out, _ = run_plugin(executable, node, case, good)
        assert rc == 1, case
        assert_error(out, executable, 4)
    # Where they differ. A missing or relative CNI_NETNS path: netk8s-cni checks it before anything else
    # (3 "unknown container" for a missing namespace, 4 for a relative path); the reference finds out
    # when it opens the namespace, after creating cni0, and reports 999.
    for case, ours in (({**env, "CNI_NETNS": f"{p1}-missing"}, 3), ({**env, "CNI_NETNS": "relative"}, 4)):
        rc, out, _ = run_plugin(executable, node, case, good)
        assert rc == 1
        assert_error(out, executable, 999 if executable.reference else ours)
    # No CNI_COMMAND at all: the reference (libcni's skel) takes it as a person running the binary and
    # prints its version on stderr, exit 0; netk8s-cni answers with error 4.
    rc, out, err = run_plugin(executable, node, {k: v for k, v in env.items() if k != "CNI_COMMAND"}, good)
    if executable.reference:
        assert rc == 0 and out is None and "CNI protocol versions supported" in err
    else:
        assert rc == 1
        assert_error(out, executable, 4)
    assert leases(tmp_path) == {}
    assert "eth0" not in netns.run(p1, ["ip", "-o", "link"]).stdout


def test_bad_config_error_codes(executable: Impl, tmp_path: Path, node: str, pods: Callable[[int], str]) -> None:
    p1 = pods(1)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": p1, "CNI_IFNAME": "eth0"}
    cases = [
        (env, "{", 6),  # not JSON
        (env, plugin_stdin(executable, tmp_path, version="7.0.0"), 1),  # a version it does not speak
        ({**env, "CNI_COMMAND": "CHECK"}, plugin_stdin(executable, tmp_path, version="0.3.1"), 1),  # no CHECK in 0.3.1
    ]
    for case_env, stdin, code in cases:
        rc, out, _ = run_plugin(executable, node, case_env, stdin)
        assert rc == 1, stdin
        assert_error(out, executable, code)
    # A bridge name longer than 15 characters: netk8s-cni validates it (7, naming the field) before
    # touching the kernel; the reference passes it to the kernel, which refuses it (999, ERANGE).
    rc, out, _ = run_plugin(executable, node, env, plugin_stdin(executable, tmp_path, bridge="x" * 20))
    assert rc == 1
    assert_error(out, executable, 999 if executable.reference else 7)
    assert out is not None and ("numerical result out of range" in out["msg"] if executable.reference
                                else out["msg"].startswith("bridge:"))
    assert leases(tmp_path) == {}
    # No cniVersion: the reference takes the config as 0.1.0 and answers with a 0.1.0 result
    # ("ip4" instead of "ips"); netk8s-cni, which does not speak 0.1.0/0.2.0, requires the field (7).
    rc, out, _ = run_plugin(executable, node, env, json.dumps({k: v for k, v in json.loads(
        plugin_stdin(executable, tmp_path)).items() if k != "cniVersion"}))
    if executable.reference:
        assert rc == 0 and out is not None and out["ip4"]["ip"] == "10.244.77.2/24"
    else:
        assert rc == 1
        assert_error(out, executable, 7)
        assert out is not None and out["msg"].startswith("cniVersion:")
