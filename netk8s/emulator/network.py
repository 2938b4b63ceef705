"""The emulated underlay, built with Mininet from a ``Topology``.

Nodes, external hosts, routers and switches are Mininet nodes, each in its own
network namespace, named ``nk-<cluster>-<name>`` under /run/netns. Switches are
Mininet ``LinuxBridge``s running *inside* their own namespace (no controller),
so no frame of the emulated network ever crosses a root-namespace bridge: the
machine's firewall, br_netfilter settings and Docker's ``FORWARD DROP`` cannot
affect it. Links are veth pairs (``TCLink`` with htb when a bandwidth is set,
with netem when a delay is set).

Routers are plain hosts with ``ip_forward=1``, an address on each link and a
static route (``proto static``) to every underlay segment they are not attached
to, as ``netk8s.emulator.routing`` plans them; nodes and hosts behind a router
get a default route via it. Link loss is an nftables table ``nk-loss`` in the
switch's namespace (switch links) or the router's (point-to-point links), see
``netk8s.kernel.links``. Links with a delay or loss the kernel cannot emulate
fail the build before anything is created.

Everything created is recorded in the cluster's ``StateDir`` before (namespaces)
or right after (PIDs) it exists, for crash-safe teardown.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from typing import Any

from netk8s.cluster.naming import node_netns
from netk8s.cluster.state import StateDir
from netk8s.emulator.routing import RoutingPlan, plan_routes
from netk8s.errors import KernelError, MissingKernelFeature, UserError
from netk8s.kernel import netns
from netk8s.kernel.links import (
    LinkFeature,
    LossFamily,
    LossRule,
    apply_loss_table,
    config_verdict,
    probe_feature,
    read_kernel_config,
)
from netk8s.kernel.procs import start_time
from netk8s.kernel.routes import Route, replace_routes
from netk8s.topology import LinkSpec, Topology

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


LINK_MTU = 1500  # Mininet's veth links keep the kernel's default MTU
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")

_FEATURE_MESSAGES = {
    LinkFeature.NETEM: "delay: needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks; "
                       "remove delay or use a kernel with netem",
    LinkFeature.NFT_BRIDGE_LOSS: "loss: needs nftables with numgen in the bridge family (CONFIG_NF_TABLES_BRIDGE, "
                                 "CONFIG_NFT_NUMGEN), which this kernel lacks; remove loss or use a kernel with them",
    LinkFeature.NFT_INET_LOSS: "loss: needs nftables with numgen in the inet family (CONFIG_NF_TABLES_INET, "
                               "CONFIG_NFT_NUMGEN), which this kernel lacks; remove loss or use a kernel with them",
}


def link_features(topology: Topology) -> dict[LinkFeature, int]:
    """Kernel features the topology's links need, each with the index of the first link needing it."""
    needs: dict[LinkFeature, int] = {}
    for index, link in enumerate(topology.links):
        if link.delay_ms:
            needs.setdefault(LinkFeature.NETEM, index)
        if link.loss_percent:
            needs.setdefault(LinkFeature.NFT_BRIDGE_LOSS if link.switch else LinkFeature.NFT_INET_LOSS, index)
    return needs


def loss_tables(topology: Topology) -> dict[str, tuple[LossFamily, list[LossRule]]]:
    """Per namespace owner (switch or router name): the family and rules of its ``nk-loss`` table."""
    routers = {r.name for r in topology.routers}
    tables: dict[str, tuple[LossFamily, list[LossRule]]] = {}
    for index, link in enumerate(topology.links):
        if not link.loss_percent:
            continue
        if link.switch is not None:
            owner = link.a if link.a.name == link.switch else link.b
            family = LossFamily.BRIDGE
        else:
            owner = link.a if link.a.name in routers else link.b
            family = LossFamily.INET
        rule = LossRule(owner.ifname, link.loss_percent, f"links[{index}]")
        tables.setdefault(owner.name, (family, []))[1].append(rule)
    return tables


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
        self.plan: RoutingPlan = plan_routes(topology)

    def netns(self, name: str) -> str:
        return node_netns(self.cluster, name)

    # -- build -------------------------------------------------------------------------------

    def build(self) -> None:
        preflight()
        self.check_link_features()
        # Import here: Mininet is only needed (and importable) on the emulating machine.
        from mininet.link import Link, TCLink
        from mininet.log import setLogLevel
        from mininet.node import Host
        from mininet.nodelib import LinuxBridge

        setLogLevel("critical")  # Mininet prints tc warnings as errors; we check tc state ourselves.
        for spec in list(self.topology.nodes) + list(self.topology.hosts) + list(self.topology.routers):
            self._add(Host(spec.name, inNamespace=True), spec.name)
        for index, sw in enumerate(self.topology.switches, start=1):
            self._add(LinuxBridge(sw.name, inNamespace=True, dpid=f"{index:016x}"), sw.name, switch=True)
        for link in self.topology.links:
            a, b = self._nodes[link.a.name], self._nodes[link.b.name]
            if link.bandwidth_mbit or link.delay_ms:
                created = TCLink(a, b, intfName1=link.a.ifname, intfName2=link.b.ifname, **self._shaping(link))
                self._check_shaping(link)
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
        for router in self.topology.routers:
            netns.write_sysctl(self.netns(router.name), "net.ipv4.ip_forward", 1)
        self._install_routes()
        for owner, (family, rules) in loss_tables(self.topology).items():
            apply_loss_table(self.netns(owner), family, rules)
        log.info("emulated network %s: %d nodes, %d hosts, %d routers, %d switches, %d links", self.cluster,
                 len(self.topology.nodes), len(self.topology.hosts), len(self.topology.routers),
                 len(self.topology.switches), len(self._links))

    def _install_routes(self) -> None:
        for router, table in self.plan.router_routes.items():
            replace_routes(self.netns(router), [Route(dst, via) for dst, via in table.items()])
        for name, gateway in self.plan.default_gateways.items():
            replace_routes(self.netns(name), [Route(DEFAULT_ROUTE, gateway)])

    # -- kernel features -----------------------------------------------------------------------

    def check_link_features(self) -> None:
        """Fail with ``MissingKernelFeature`` naming the first link whose delay or loss this kernel cannot do.

        Reads /proc/config.gz when present; features built as modules, or kernels that do
        not expose their config, are probed in a scratch namespace that is removed again.
        """
        needs = link_features(self.topology)
        if not needs:
            return
        if any(f is not LinkFeature.NETEM for f in needs) and shutil.which("nft") is None:
            raise UserError("links: loss needs the nft command (Debian package nftables); run `make setup` first")
        config = read_kernel_config()
        verdicts = {f: (config_verdict(config, f) if config is not None else None) for f in needs}
        unsure = [f for f, verdict in verdicts.items() if verdict is None]
        if unsure:
            scratch = f"nk-{self.cluster}--probe"  # "--": no node, host or pod namespace can be named so
            self.state.record_netns(scratch)
            try:
                netns.create(scratch)
                for feature in unsure:
                    verdicts[feature] = probe_feature(scratch, feature)
            finally:
                netns.delete(scratch)
                self.state.forget_netns(scratch)
        missing = sorted((index, feature) for feature, index in needs.items() if not verdicts[feature])
        if missing:
            index, feature = missing[0]
            raise MissingKernelFeature(f"links[{index}].{_FEATURE_MESSAGES[feature]}")

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

    @staticmethod
    def _shaping(link: LinkSpec) -> dict[str, Any]:
        """TCLink parameters: htb for bandwidth, netem for delay (each direction delayed by ``delay``)."""
        params: dict[str, Any] = {}
        if link.bandwidth_mbit:
            params["bw"] = link.bandwidth_mbit
        if link.delay_ms:
            params["delay"] = f"{link.delay_ms:g}ms"
        return params

    def _check_shaping(self, link: LinkSpec) -> None:
        # Mininet only logs tc failures: read the qdiscs back.
        end = link.a
        out = netns.run(self.netns(end.name), ["tc", "qdisc", "show", "dev", end.ifname], check=False).stdout
        if link.bandwidth_mbit and "htb" not in out and "tbf" not in out:
            raise MissingKernelFeature(
                f"links: bandwidth on {end.name}:{end.ifname} needs the htb or tbf qdisc, which this kernel lacks")
        if link.delay_ms and "netem" not in out:
            raise MissingKernelFeature(
                f"links: delay on {end.name}:{end.ifname} needs the netem qdisc, which this kernel lacks")

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
