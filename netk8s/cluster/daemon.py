"""The cluster daemon: one background process per running cluster.

Started by ``netk8s up`` (``python -m netk8s.cluster.daemon <state dir>``), it
runs the control plane (store, API server, controller manager, scheduler),
builds the emulated network, and runs each node's agents (kubelet, kube-proxy,
host-gw routing or the VXLAN overlay) and the external hosts' and routers' route
agents. It reports progress in ``cluster.json`` (phase Running or Failed with
the error) and, on SIGTERM or SIGINT, stops everything and removes every kernel
object it recorded.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from netk8s.api import meta
from netk8s.api.manifests import load as load_manifests
from netk8s.api.resources import NODES, PODS
from netk8s.apiserver.registry import Registry, RegistryConfig
from netk8s.apiserver.server import ApiServer, listen
from netk8s.client.apply import apply
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.cluster.etcd import EtcdServer
from netk8s.cluster.naming import node_netns
from netk8s.cluster.state import Phase, StateDir, write_kubeconfig
from netk8s.cluster.teardown import teardown
from netk8s.cni.hostgw import HostGwAgent
from netk8s.cni.vxlan import VxlanAgent, VxlanConfig, overlay_mtu, route_external_host
from netk8s.controllers.loadbalancer import LoadBalancerController
from netk8s.controllers.manager import ControllerManager
from netk8s.dns.server import DNS_NAMESPACE, DNS_SELECTOR, ClusterDns, bootstrap_objects
from netk8s.emulator.announce import LbAnnouncer
from netk8s.emulator.network import LINK_MTU, EmulatedNetwork
from netk8s.errors import NetK8sError
from netk8s.kernel.conntrack import ConntrackCleaner
from netk8s.kernel.nft import NetnsNft
from netk8s.kernel.procs import start_time
from netk8s.kubelet.kubelet import Kubelet, KubeletConfig
from netk8s.proxy.health import ProxyHealth, prepare_node
from netk8s.proxy.model import ProxyConfig
from netk8s.proxy.nftables import NftablesOptions, NftablesRuleSet
from netk8s.proxy.proxier import Proxier
from netk8s.scheduler.scheduler import Scheduler
from netk8s.store.cache import CachedStore
from netk8s.store.etcd import EtcdStore
from netk8s.store.sqlite import SQLiteStore
from netk8s.topology import NetworkingMode, ProxyMode, StoreKind, Topology, load_dict

log = logging.getLogger("netk8s.daemon")

NODE_READY_TIMEOUT = 90.0
DNS_READY_TIMEOUT = 30.0


class ClusterDaemon:
    def __init__(self, topology: Topology, state: StateDir) -> None:
        self.topology = topology
        self.state = state
        self.store: CachedStore | None = None
        self.etcd: EtcdServer | None = None
        self.apiserver: ApiServer | None = None
        self.network: EmulatedNetwork | None = None
        self.controller_manager: ControllerManager | None = None
        self.agents: list[Controller] = []
        self.kubelets: list[Kubelet] = []
        self.proxiers: dict[str, Proxier] = {}
        self.client: ApiClient | None = None

    def start(self) -> None:
        topo = self.topology
        if topo.store is StoreKind.ETCD:
            self.etcd = EtcdServer(self.state)
            endpoint = self.etcd.start()
            self.state.update(etcd_endpoint=endpoint)
            self.store = EtcdStore(endpoint)
        else:
            self.store = SQLiteStore(self.state.store_file)
        timings = topo.control_plane_spec
        registry = Registry(self.store, RegistryConfig(topo.service_subnet, topo.node_port_range,
                                                       default_toleration_seconds=round(timings.pod_eviction_timeout)))
        self.apiserver = ApiServer(registry, logs_dir=self.state.logs_dir)
        sock = listen()
        self.apiserver.start_in_thread(sock)
        port = sock.getsockname()[1]
        server = f"http://127.0.0.1:{port}"
        write_kubeconfig(self.state, server)
        self.state.update(api_port=port)
        log.info("API server listening on %s", server)
        self.client = ApiClient(server)

        self.network = EmulatedNetwork(topo, self.state)
        self.network.build()

        self.controller_manager = ControllerManager(self.client, topo.pod_subnet, timings)
        self.controller_manager.start()
        self._run(Scheduler(self.client))
        # Pod networking: host-gw routes (nodes, external hosts, routers) or the VXLAN overlay (nodes;
        # external hosts route the pod subnet via a nearby node; routers carry only the underlay).
        vxlan = topo.networking_mode is NetworkingMode.VXLAN
        plan = self.network.plan  # which segments each member is on
        for node in topo.nodes:
            ns = node_netns(topo.name, node.name)
            node_ip = topo.primary_address(node.name)
            kubelet = Kubelet(self.client, KubeletConfig(topo.name, node, node_ip, ns, self.state,
                                                         cni_plugin=topo.cni_plugin.plugin_type,
                                                         mtu=overlay_mtu(LINK_MTU) if vxlan else LINK_MTU,
                                                         lease_duration=timings.node_monitor_grace_period,
                                                         cluster_dns=(topo.dns_service_ip(),)))
            self.kubelets.append(kubelet)
            self._run(kubelet)
            if vxlan:
                self._run(VxlanAgent(self.client, VxlanConfig.for_node(topo, node.name, ns)))
            else:
                self._run(HostGwAgent(self.client, ns, node.name, plan.connected(node.name)))
            self._start_proxy(node.name, node_ip, ns)
        for host in topo.hosts:
            ns = node_netns(topo.name, host.name)
            if vxlan:
                route_external_host(topo, host.name, ns)
            else:
                self._run(HostGwAgent(self.client, ns, None, plan.connected(host.name)))
        if not vxlan:
            for router in topo.routers:
                self._run(HostGwAgent(self.client, node_netns(topo.name, router.name), None,
                                      plan.connected(router.name), plan.router_routes.get(router.name)))
        pool = topo.lb_pool()
        if pool is not None:  # the emulated cloud: load balancer IPs, announced by a node like MetalLB L2
            self._run(LoadBalancerController(self.client, pool))
            self._run(LbAnnouncer(self.client, topo.name, topo))
        # Cluster DNS, as kubeadm installs it: coredns pods behind the kube-dns ClusterIP (.10).
        self._run(ClusterDns(self.client, topo.name))
        apply(self.client, load_manifests(bootstrap_objects(topo.dns_service_ip())))
        self._wait_nodes_ready()
        self._wait_dns_ready()
        for manifest in topo.manifests:  # absolute paths: the loader resolved them against the topology file
            for applied in apply(self.client, load_manifests(manifest)):
                log.info("manifest: %s", applied.describe())

    def _start_proxy(self, node_name: str, node_ip: ipaddress.IPv4Address, ns: str) -> None:
        """kube-proxy for one node: rules in the topology's mode, conntrack clean-up, health endpoints."""
        topo = self.topology
        config = ProxyConfig(node_name=node_name, node_ip=node_ip, cluster_cidr=topo.pod_subnet)
        prepare_node(ns, topo.proxy_mode)
        ruleset = None
        if topo.proxy_mode is ProxyMode.NFTABLES:
            ruleset = NftablesRuleSet(NetnsNft(ns), config, NftablesOptions(service_cidrs=(topo.service_subnet,)))
        health = ProxyHealth(self.client, node_name, ns, topo.proxy_mode, lambda: proxier.last_sync_time)
        proxier = Proxier(self.client, config, ns, ruleset=ruleset,
                          after_sync=(ConntrackCleaner(ns).after_sync, health.after_sync))
        self.proxiers[node_name] = proxier
        self._run(health)
        self._run(proxier)

    def _run(self, component: Controller) -> None:
        self.agents.append(component)
        component.start()

    def _wait_nodes_ready(self) -> None:
        assert self.client is not None
        wanted = {n.name for n in self.topology.nodes}
        deadline = time.monotonic() + NODE_READY_TIMEOUT
        while True:
            nodes = self.client.list(NODES)["items"]
            ready = {meta.name_of(n) for n in nodes if meta.node_is_ready(n)}
            if wanted <= ready:
                log.info("all %d nodes are Ready", len(wanted))
                return
            if time.monotonic() > deadline:
                raise NetK8sError(f"nodes not Ready after {NODE_READY_TIMEOUT:.0f}s: "
                                  f"{', '.join(sorted(wanted - ready))}; see {self.state.log_file}")
            time.sleep(0.1)

    def _wait_dns_ready(self) -> None:
        """Until a coredns pod is Running (its server is then up or about to be); a warning, not a failure,
        after DNS_READY_TIMEOUT."""
        assert self.client is not None
        deadline = time.monotonic() + DNS_READY_TIMEOUT
        while time.monotonic() < deadline:
            pods = self.client.list(PODS, DNS_NAMESPACE, DNS_SELECTOR)
            if any(meta.condition_true(p, "Ready") for p in pods["items"]):
                log.info("cluster DNS is ready")
                return
            time.sleep(0.1)
        log.warning("no coredns pod Ready after %.0fs: pods' DNS lookups fail until one is", DNS_READY_TIMEOUT)

    def stop(self) -> None:
        for kubelet in self.kubelets:
            try:
                kubelet.shutdown_pods(grace=2.0)
            except Exception:
                log.exception("stopping pods on %s failed", kubelet.node_name)
        for agent in self.agents:
            agent.stop()
        if self.controller_manager is not None:
            self.controller_manager.stop()
        for agent in self.agents:
            agent.join(timeout=2)
        if self.network is not None:
            self.network.stop()
        if self.apiserver is not None:
            self.apiserver.stop()
        if self.store is not None:
            self.store.close()
        if self.etcd is not None:
            self.etcd.stop()


def _configure_logging(state: StateDir) -> None:
    handler = logging.FileHandler(state.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(os.environ.get("NETK8S_LOG_LEVEL", "INFO"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m netk8s.cluster.daemon <state dir>", file=sys.stderr)
        return 2
    path = Path(argv[0])
    state = StateDir(path.name, path.parent)
    _configure_logging(state)
    state.update(daemon_pid=os.getpid(), daemon_start_time=start_time(os.getpid()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    record = state.read()
    daemon = ClusterDaemon(load_dict(record.topology), state)
    try:
        daemon.start()
    except Exception as exc:
        message = str(exc) if isinstance(exc, NetK8sError) else f"{type(exc).__name__}: {exc}"
        log.exception("cluster start failed: %s", message)
        state.update(phase=Phase.FAILED, error=message)
        daemon.stop()
        teardown(state, exclude_pids={os.getpid()})
        return 1
    state.update(phase=Phase.RUNNING)
    log.info("cluster %s is running", state.name)
    while not stop.wait(1.0):
        pass
    log.info("stopping cluster %s", state.name)
    state.update(phase=Phase.STOPPING)
    daemon.stop()
    teardown(state, exclude_pids={os.getpid()})
    log.info("cluster %s stopped", state.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
