"""The emulated underlay, built with Mininet from a ``Topology``.

Nodes, external hosts and switches are Mininet nodes, each in its own network
namespace, named ``nk-<cluster>-<name>`` under /run/netns. Switches are
Mininet ``LinuxBridge``s running *inside* their own namespace (no controller),
so no frame of the emulated network ever crosses a root-namespace bridge: the
machine's firewall, br_netfilter settings and Docker's ``FORWARD DROP`` cannot
affect it. Links are veth pairs (``TCLink`` with htb when a bandwidth is set).

Everything created is recorded in the cluster's ``StateDir`` before (namespaces)
or right after (PIDs) it exists, for crash-safe teardown.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from netk8s.cluster.naming import node_netns
from netk8s.cluster.state import StateDir
from netk8s.errors import KernelError, MissingKernelFeature, UserError
from netk8s.kernel import netns
from netk8s.kernel.procs import start_time
from netk8s.topology import Topology

log = logging.getLogger(__name__)

REQUIRED_COMMANDS = {
    "mnexec": "Debian package mininet",
    "brctl": "Debian package bridge-utils",
    "ifconfig": "Debian package net-tools",
    "ip": "Debian package iproute2",
    "tc": "Debian package iproute2",
    "nsenter": "Debian package util-linux",
    "iptables-restore": "Debian package iptables",
}


def preflight() -> None:
    """Fail early, naming the package, when a tool the emulator drives is missing."""
    missing = [f"{cmd} ({pkg})" for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None]
    if missing:
        raise UserError(f"missing commands: {', '.join(missing)}; run `make setup` (scripts/setup) first")


class EmulatedNetwork:
    def __init__(self, topology: Topology, state: StateDir) -> None:
        self.topology = topology
        self.state = state
        self.cluster = topology.name
        self._nodes: dict[str, Any] = {}  # name -> mininet Node
        self._links: list[Any] = []

    def netns(self, name: str) -> str:
        return node_netns(self.cluster, name)

    # -- build -------------------------------------------------------------------------------

    def build(self) -> None:
        preflight()
        if self.topology.routers:
            raise UserError("routers: routed topologies are not emulated yet; use switches only")
        # Import here: Mininet is only needed (and importable) on the emulating machine.
        from mininet.link import Link, TCLink
        from mininet.log import setLogLevel
        from mininet.node import Host
        from mininet.nodelib import LinuxBridge

        setLogLevel("critical")  # Mininet prints tc warnings as errors; we check tc state ourselves.
        for spec in list(self.topology.nodes) + list(self.topology.hosts):
            self._add(Host(spec.name, inNamespace=True), spec.name)
        for index, sw in enumerate(self.topology.switches, start=1):
            self._add(LinuxBridge(sw.name, inNamespace=True, dpid=f"{index:016x}"), sw.name, switch=True)
        for link in self.topology.links:
            a, b = self._nodes[link.a.name], self._nodes[link.b.name]
            if link.bandwidth_mbit:
                created = TCLink(a, b, intfName1=link.a.ifname, intfName2=link.b.ifname, bw=link.bandwidth_mbit)
                self._check_shaping(link.a.name, link.a.ifname)
            else:
                created = Link(a, b, intfName1=link.a.ifname, intfName2=link.b.ifname)
            self._links.append(created)
            for end in (link.a, link.b):
                if end.address is not None:
                    self._nodes[end.name].intf(end.ifname).setIP(str(end.address.ip), end.address.network.prefixlen)
        for sw in self.topology.switches:
            self._nodes[sw.name].start([])
        for spec in self.topology.nodes:
            ns = self.netns(spec.name)
            netns.write_sysctl(ns, "net.ipv4.ip_forward", 1)
            # Pod traffic bridged on cni0 must traverse the node's iptables (kube-proxy needs it).
            netns.write_sysctl(ns, "net.bridge.bridge-nf-call-iptables", 1)
        log.info("emulated network %s: %d nodes, %d hosts, %d switches, %d links", self.cluster,
                 len(self.topology.nodes), len(self.topology.hosts), len(self.topology.switches),
                 len(self._links))

    def _add(self, node: Any, name: str, switch: bool = False) -> None:
        self._nodes[name] = node
        self.state.record_pid(node.pid, start_time(node.pid), f"mininet shell of {name}")
        ns = self.netns(name)
        self.state.record_netns(ns)
        netns.attach(ns, node.pid)
        # IPv6 off: keeps captures to the IPv4 traffic Kubernetes networking is about
        # (no router solicitations or MLD reports on every link).
        netns.write_sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        netns.write_sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
        with netns.iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        if switch:
            # Frames switched here are plain L2: keep them out of this namespace's netfilter.
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
                netns.write_sysctl(ns, f"net.bridge.{key}", 0)

    def _check_shaping(self, node: str, ifname: str) -> None:
        out = netns.run(self.netns(node), ["tc", "qdisc", "show", "dev", ifname], check=False).stdout
        if "htb" not in out and "tbf" not in out:
            raise MissingKernelFeature(
                f"links: bandwidth on {node}:{ifname} needs the htb or tbf qdisc, which this kernel lacks")

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Terminate the Mininet node shells; namespaces go with the records-based teardown."""
        for name, node in self._nodes.items():
            try:
                node.terminate()
            except Exception as exc:  # keep stopping the rest
                log.warning("stopping Mininet node %s: %s", name, exc)
            self.state.forget_pid(node.pid)
        self._nodes.clear()

    def require(self, name: str) -> Any:
        try:
            return self._nodes[name]
        except KeyError:
            raise KernelError(f"no emulated node or host named {name}") from None
