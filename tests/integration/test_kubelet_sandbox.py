"""Kubelet kernel edges for real (root): pause process and UTS namespace, the pod's /etc files
through ``ip netns exec``, hostNetwork naming, and hostPort rules read back from the kernel.

Each test works in throwaway namespaces ``nk-t<random>-...`` and a throwaway state
directory; finalizers stop every process and delete every namespace and file.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.cluster.state import StateDir
from netk8s.kernel import iptables as kipt
from netk8s.kernel import netns, procs
from netk8s.kubelet import podfiles
from netk8s.kubelet.hostport import (
    HostportManager,
    PodPortMappings,
    PortMapping,
    Protocol,
    render,
)
from netk8s.kubelet.runtime import ProcessRuntime
from netk8s.kubelet.sandbox import (
    SandboxRuntime,
    enter_argv,
    pause_record,
    pod_enter_argv,
)
from netk8s.proxy.iptables import rules_by_chain


@dataclass
class Env:
    prefix: str
    state: StateDir
    sandboxes: SandboxRuntime
    made: list[str] = field(default_factory=list)

    def make(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.made.append(name)
        netns.create(name)
        return name


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    prefix = f"nk-t{secrets.token_hex(3)}"
    state = StateDir(prefix[3:], tmp_path)
    state.path.mkdir(parents=True)
    e = Env(prefix, state, SandboxRuntime(ProcessRuntime(state), state))
    try:
        yield e
    finally:
        for pid, started, _ in state.pids():
            procs.terminate(pid, started, grace=0.5)
        for name in e.made + netns.list_named(prefix):
            netns.delete(name)
            podfiles.remove_pod_files(name)


def test_pause_holds_the_hostname_for_every_process_of_the_pod(env: Env) -> None:
    state, sandboxes = env.state, env.sandboxes
    ns = env.make("default-web-1")
    pause = sandboxes.start_pause(netns.path_of(ns), "web-0", pause_record(ns))
    assert sandboxes.alive(pause)
    assert os.stat(f"/proc/{pause.pid}/ns/net").st_ino == os.stat(netns.path_of(ns)).st_ino
    assert os.readlink(f"/proc/{pause.pid}/ns/uts") != os.readlink("/proc/self/ns/uts")
    # The pod's files, bind-mounted by `ip netns exec`.
    identity = podfiles.PodIdentity("web-0", "web.default.svc.cluster.local")
    podfiles.write_pod_files(ns, {"hosts": podfiles.render_hosts(["10.244.9.9"], identity),
                                  "resolv.conf": "nameserver 10.96.0.10\n", "hostname": "web-0\n"})
    out = subprocess.run([*enter_argv(ns, pause.pid), "sh", "-c", "hostname; cat /etc/hosts /etc/resolv.conf"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("web-0\n# Kubernetes-managed hosts file.\n")
    assert "10.244.9.9\tweb-0.web.default.svc.cluster.local\tweb-0\n" in out.stdout
    assert out.stdout.endswith("nameserver 10.96.0.10\n")
    # `netk8s exec` finds the pause process from the records alone.
    assert pod_enter_argv(state, ns) == enter_argv(ns, pause.pid)
    # A container started by the runtime lands in the same UTS and network namespaces.
    log = state.path / "c.log"
    proc = sandboxes.runtime.start(ns, ["sh", "-c", "hostname; readlink /proc/self/ns/net; sleep 30"], {}, log,
                                   "container test", uts_pid=pause.pid)
    try:
        assert _wait_lines(log, 2) == ["web-0", os.readlink(f"/proc/{pause.pid}/ns/net")]
    finally:
        sandboxes.runtime.stop(proc, 0.5)
    sandboxes.stop_pause(pause)
    assert not procs.is_running(pause.pid, pause.started)
    assert pod_enter_argv(state, ns) == enter_argv(ns, None)


def test_host_network_pod_gets_a_name_for_the_nodes_namespace(env: Env) -> None:
    sandboxes = env.sandboxes
    node = env.make("node")
    alias = f"{env.prefix}-default-hn-2"
    pause = sandboxes.start_pause(netns.path_of(node), "worker", pause_record(alias))
    sandboxes.name_host_network(alias, pause)
    assert os.stat(netns.path_of(alias)).st_ino == os.stat(netns.path_of(node)).st_ino
    netns.delete(alias)  # removes only the name: the node's namespace stays
    assert netns.exists(node) and not netns.exists(alias)


def _wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines[:count]
        time.sleep(0.02)
    raise AssertionError(f"{path}: {path.read_text() if path.exists() else '(missing)'}")


def test_hostport_rules_read_back_exactly_as_rendered(env: Env) -> None:
    node = env.make("node")
    manager = HostportManager("netk8s", lambda text: kipt.restore(node, text), lambda: kipt.save(node, "nat"))
    web = PodPortMappings("aaaa", IPv4Interface("10.244.1.5/24"),
                          (PortMapping(8080, 80), PortMapping(5353, 53, Protocol.UDP, IPv4Address("172.18.0.3"))))
    dns = PodPortMappings("bbbb", IPv4Interface("10.244.1.6/24"), (PortMapping(9090, 9090),))
    manager.add("default/web", web)
    manager.add("default/dns", dns)
    saved = rules_by_chain(kipt.save(node, "nat"))
    rendered = rules_by_chain(render("netk8s", [web, dns]))
    for chain, rules in rendered.items():
        assert saved[chain] == rules, chain
    assert saved[("nat", "PREROUTING")] == ["-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"]
    assert saved[("nat", "POSTROUTING")][0].endswith("-j CNI-HOSTPORT-MASQ")
    manager.remove("default/web")
    manager.add("default/web2", web)  # same ports again after removal: no duplicate built-in jumps
    after = kipt.save(node, "nat")
    assert after.count("-j CNI-HOSTPORT-DNAT\n") == 2  # PREROUTING and OUTPUT, once each
    assert after.count("-A CNI-HOSTPORT-DNAT ") == 3  # web: tcp and udp; dns: tcp
    manager.remove("default/web2")
    manager.remove("default/dns")
    final = kipt.save(node, "nat")
    assert "CNI-DN-" not in final
    assert rules_by_chain(final)[("nat", "CNI-HOSTPORT-DNAT")] == []
