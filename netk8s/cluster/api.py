"""The Python API: ``from netk8s import Cluster``.

::

    with Cluster.up() as cluster:                 # default topology, or a path/dict/Topology
        cluster.apply("topologies/apps/echo.yaml")
        cluster.wait_ready("deployment", "echo")
        out = cluster.exec("client", ["curl", "-s", "http://10.96.0.20/"])
        cluster.node("worker").exec(["iptables-save", "-t", "nat"])

Every call goes through the cluster's API server (objects) or into the
cluster's own namespaces (exec); nothing touches the root namespace's network.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from netk8s.api import meta
from netk8s.api.manifests import load as load_manifests
from netk8s.api.network import Protocol
from netk8s.api.resources import NODES, PODS, resolve
from netk8s.client.apply import apply
from netk8s.client.rest import ApiClient
from netk8s.cluster import lifecycle
from netk8s.cluster.naming import KUBELET_STOPPED_ANNOTATION, node_netns, pod_netns
from netk8s.cluster.state import ClusterRecord, StateDir
from netk8s.errors import ApiError, NetK8sError, NotFoundError, UserError
from netk8s.kernel import iptables, nft
from netk8s.kernel.procs import start_time
from netk8s.kubelet.podfiles import pod_identity
from netk8s.kubelet.runtime import DEFAULT_PATH
from netk8s.kubelet.sandbox import pod_enter_argv
from netk8s.proxy.model import SERVICE_NAME_LABEL, build_endpoints, build_service_ports, categorize_endpoints
from netk8s.proxy.nftables_trace import trace_nftables
from netk8s.proxy.trace import Packet, TraceResult, trace_iptables
from netk8s.topology import ProxyMode, StoreKind, Topology, default_topology, load_dict, load_file

if TYPE_CHECKING:
    from netk8s.capture import Capture

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def resolve_topology(source: str | Path | Topology | dict | None, name: str | None = None,
                     store: str | None = None) -> Topology:
    """A topology from a file path, a parsed document, a ``Topology`` or None (the default), renamed
    and given another store (``sqlite`` or ``etcd``) if asked."""
    if source is None:
        topo = default_topology()
    elif isinstance(source, Topology):
        topo = source
    elif isinstance(source, dict):
        topo = load_dict(source)
    else:
        topo = load_file(source)
    if store is not None:
        try:
            topo = dataclasses.replace(topo, store=StoreKind(store))
        except ValueError:
            raise UserError(f"--store {store!r}: use sqlite or etcd") from None
    return topo.with_name(name) if name else topo


class Machine:
    """A node or external host: run commands in its network namespace."""

    def __init__(self, name: str, netns: str) -> None:
        self.name = name
        self.netns = netns

    def exec(self, argv: Sequence[str], timeout: float = 60, check: bool = False,
             input: str | None = None) -> subprocess.CompletedProcess:
        return run_in_netns(self.netns, argv, timeout=timeout, check=check, input=input)


def run_in_netns(netns: str, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60,
                 check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", netns], argv, netns, env, timeout, check, input)


def _run(prefix: list[str], argv: Sequence[str], where: str, env: dict[str, str] | None, timeout: float,
         check: bool, input: str | None) -> subprocess.CompletedProcess:
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and result.returncode != 0:
        raise NetK8sError(f"{' '.join(argv)} in {where} exited with {result.returncode}: "
                          f"{(result.stderr or result.stdout).strip()}")
    return result


class Cluster:
    def __init__(self, state: StateDir, record: ClusterRecord, topology: Topology | None = None) -> None:
        self.state = state
        self.record = record
        self.client = ApiClient(record.server)
        if topology is not None:
            self.__dict__["topology"] = topology  # what ``up`` was given: no need to parse the record again

    @functools.cached_property
    def topology(self) -> Topology:
        """The cluster's topology, parsed from its record when first needed (most commands never need it)."""
        return load_dict(self.record.topology, check_manifest_files=False)

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def up(cls, topology: str | Path | Topology | dict | None = None, name: str | None = None,
           timeout: float = lifecycle.UP_TIMEOUT, store: str | None = None) -> "Cluster":
        """Bring a cluster up (``store``: ``sqlite`` or ``etcd``, overriding the topology's) and attach to it."""
        topo = resolve_topology(topology, name, store)
        record = lifecycle.up(topo, timeout=timeout)
        return cls(StateDir(topo.name), record, topo)

    @classmethod
    def attach(cls, name: str | None = None) -> "Cluster":
        state = lifecycle.resolve_cluster(name)
        return cls(state, state.read())

    def down(self) -> None:
        if self.state.path.exists():
            lifecycle.down(self.name)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def kubeconfig(self) -> Path:
        return self.state.kubeconfig

    # -- objects -----------------------------------------------------------------------

    def apply(self, source: str | Path | dict | list, namespace: str | None = None) -> list[dict]:
        return [a.obj for a in apply(self.client, load_manifests(source), namespace)]

    def get(self, kind: str, name: str, namespace: str | None = "default") -> dict:
        resource = resolve(kind)
        return self.client.get(resource, name, namespace if resource.namespaced else None)

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        resource = resolve(kind)
        return self.client.list(resource, namespace if resource.namespaced else None, label_selector)["items"]

    def delete(self, kind: str, name: str, namespace: str | None = "default") -> None:
        resource = resolve(kind)
        self.client.delete(resource, name, namespace if resource.namespaced else None)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.1,
                 what: str = "condition") -> Any:
        try:
            return wait_for(predicate, timeout, interval, what)
        except TimeoutError as exc:
            raise NetK8sError(str(exc)) from None

    def wait_ready(self, kind: str = "deployment", name: str | None = None, namespace: str = "default",
                   timeout: float = 60) -> None:
        """Wait until a Deployment (all replicas available), a Pod or every Node is Ready."""
        resource = resolve(kind)

        def ready(obj: dict) -> bool:
            if resource.kind == "Deployment":
                spec, status = obj.get("spec") or {}, obj.get("status") or {}
                want = int(spec.get("replicas", 1))
                return (status.get("observedGeneration", 0) >= (obj.get("metadata") or {}).get("generation", 1)
                        and status.get("updatedReplicas", 0) == want and status.get("availableReplicas", 0) == want
                        and status.get("replicas", 0) == want)
            return meta.condition_true(obj, "Ready")

        def check() -> bool:
            if name:
                try:
                    return ready(self.get(kind, name, namespace))
                except ApiError as exc:
                    if exc.code == 404:
                        return False
                    raise
            items = self.list(kind, namespace if resource.namespaced else None)
            return bool(items) and all(ready(o) for o in items)

        self.wait_for(check, timeout, what=f"{resource.kind.lower()} {name or '(all)'} to be ready")

    def wait_service(self, name: str, namespace: str = "default", timeout: float = 60) -> None:
        """Wait until every node's kube-proxy has installed the Service's current endpoints.

        A Ready pod is not yet a reachable backend: each node's kube-proxy adds it on
        its own next sync. This traces a connection from each node to each port of the
        cluster IP through that node's live rules and waits until it is DNATed to
        exactly the endpoints kube-proxy selects from the EndpointSlices (ready ones,
        else serving and terminating ones; the node's own with internalTrafficPolicy
        Local). A Service kube-proxy does not program (headless, ExternalName) is done.
        """
        def programmed() -> bool:
            ports = build_service_ports([self.get("service", name, namespace)])
            slices = self.list("endpointslices", namespace, f"{SERVICE_NAME_LABEL}={name}")
            for spec in self.topology.nodes:
                if not ports:
                    break
                endpoints = build_endpoints(slices, spec.name)
                node_rules = self._rules_of(self.node(spec.name))  # read once per node, traced per port
                for port in ports:
                    chosen = categorize_endpoints(port, endpoints.get(port.service_port_name, ()))
                    want = {ep.address for ep in (chosen.local if port.internal_policy_local else chosen.cluster)}
                    packet = Packet(self.topology.primary_address(spec.name), port.protocol, port.cluster_ip,
                                    port.port, from_node=True)
                    if set(self._trace_with(node_rules, packet).endpoints) != want:
                        return False
            return True

        self.wait_for(programmed, timeout, interval=0.2,
                      what=f"every node's kube-proxy to install service {namespace}/{name}")

    # -- namespaces ----------------------------------------------------------------------

    def pod_netns(self, pod: str, namespace: str = "default") -> str:
        return pod_netns(self.name, self.get("pod", pod, namespace))

    def exec(self, pod: str, argv: Sequence[str], namespace: str = "default", timeout: float = 60,
             check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
        prefix, env = pod_exec_target(self.client, self.name, pod, namespace)
        return _run(prefix, argv, f"pod {namespace}/{pod}", env, timeout, check, input)

    def node(self, name: str) -> Machine:
        self.topology.node(name)  # raises NotFoundError naming the known nodes
        return Machine(name, node_netns(self.name, name))

    def netns_of(self, target: str, namespace: str = "default") -> tuple[str, str]:
        """The network namespace of ``target`` and how to name it in messages.

        ``target``: a pod name or ``pod/NAME`` (in ``namespace``), ``node/NAME``,
        ``host/NAME``, ``router/NAME`` or ``switch/NAME``.
        """
        kind, name = target.split("/", 1) if "/" in target else ("pod", target)
        machines = {"node": self.node, "host": self.host, "router": self.router, "switch": self.switch}
        if kind in machines and name:
            return machines[kind](name).netns, f"{kind}/{name}"
        if kind != "pod" or not name:
            raise UserError(f"target {target!r}: give a pod name, pod/NAME, node/NAME, host/NAME, router/NAME "
                            "or switch/NAME")
        pod = get_pod(self.client, name, namespace)
        status = pod.get("status") or {}
        if not status.get("podIP") and status.get("phase") != "Running":
            raise UserError(f'pod "{name}" has no network namespace yet (it is {status.get("phase", "Pending")}); '
                            "wait until it runs")
        return pod_netns(self.name, pod), f"pod {namespace}/{name}"

    def capture(self, target: str, bpf_filter: str = "", interface: str = "any", namespace: str = "default",
                count: int = 0, pcap: str | Path | None = None) -> Capture:
        """A packet capture in ``target``'s namespace (see ``netns_of``), started by ``with`` or ``start()``.

        ``bpf_filter`` is tcpdump's filter syntax; ``interface`` one of the
        target's interfaces or ``any``; ``count`` stops after that many
        packets; ``pcap`` keeps the capture in that file. tcpdump's PID is
        recorded with the cluster while it runs, so ``down`` stops it too.
        """
        from netk8s.capture import Capture  # tempfile and scapy only when capturing

        netns_name, where = self.netns_of(target, namespace)
        return Capture(netns_name, bpf_filter, interface, count, pcap, where,
                       on_start=lambda pid: self.track_process(pid, f"tcpdump in {where}"),
                       on_stop=self.state.forget_pid)

    def track_process(self, pid: int, what: str) -> None:
        """Record a process started for this cluster from outside its daemon, so ``down`` stops it
        if it still runs (``state.forget_pid`` when it ended)."""
        self.state.record_pid(pid, start_time(pid), what)

    # -- kube-proxy ------------------------------------------------------------------------

    def trace(self, destination: str, port: int, protocol: str = "TCP", source: str | None = None,
              node: str | None = None, namespace: str = "default") -> tuple[str, TraceResult]:
        """Follow the first packet of a connection through a node's live kube-proxy rules.

        ``source``: a pod name (in ``namespace``), ``node/<name>`` (sent by the node itself),
        ``host/<name>`` or an IP address. The node whose rules apply is the source pod's or
        node's; for other sources it is ``node``, or the node owning ``destination``.
        Returns (node name, result).
        """
        try:
            dst = ipaddress.IPv4Address(destination)
            proto = Protocol(protocol.upper())
        except ValueError:
            raise UserError(f"trace: {destination!r} is not an IPv4 address or {protocol!r} not TCP, UDP or "
                            "SCTP") from None
        if not 1 <= port <= 65535:
            raise UserError(f"trace: port {port} is not between 1 and 65535")
        from_node = False
        src_node = None
        if source is None:
            if node is None:
                raise UserError("trace: give --from SOURCE (a pod, node/NAME, host/NAME or an IP) or --node NODE")
            src, src_node, from_node = self.topology.primary_address(node), node, True
        elif source.startswith("node/"):
            src_node = source.split("/", 1)[1]
            self.topology.node(src_node)
            src, from_node = self.topology.primary_address(src_node), True
        elif source.startswith("host/"):
            host = self.host(source.split("/", 1)[1]).name
            src = self.topology.primary_address(host)
        else:
            try:
                src = ipaddress.IPv4Address(source)
            except ValueError:
                pod = self.get("pod", source, namespace)
                if not (pod.get("status") or {}).get("podIP"):
                    raise UserError(f'trace: pod "{source}" has no IP yet') from None
                src = ipaddress.IPv4Address(pod["status"]["podIP"])
                src_node = (pod.get("spec") or {}).get("nodeName")
        node_name = node or src_node or self._node_owning(dst)
        if node_name is None:
            raise UserError(f"trace: say on which node the packet arrives (--node NODE); {dst} is no node's address")
        packet = Packet(src, proto, dst, port, from_node=from_node)
        return node_name, self._trace_with(self._rules_of(self.node(node_name)), packet)

    def _rules_of(self, machine: Machine) -> tuple[str, set[ipaddress.IPv4Address]]:
        """A node's live kube-proxy rules (in the topology's mode) and its local addresses."""
        if self.topology.proxy_mode is ProxyMode.NFTABLES:
            # No table yet (before kube-proxy's first sync): no rules, so nothing is DNATed.
            rules = nft.list_json(machine.netns) or '{"nftables": []}'
        else:
            rules = iptables.save(machine.netns)
        return rules, self._local_addresses(machine)

    def _trace_with(self, node_rules: tuple[str, set[ipaddress.IPv4Address]], packet: Packet) -> TraceResult:
        rules, local = node_rules
        if self.topology.proxy_mode is ProxyMode.NFTABLES:
            return trace_nftables(rules, packet, local)
        return trace_iptables(rules, packet, local)

    def _node_owning(self, address: ipaddress.IPv4Address) -> str | None:
        for spec in self.topology.nodes:
            if any(e.address is not None and e.address.ip == address for e in self.topology.interfaces_of(spec.name)):
                return spec.name
        return None

    @staticmethod
    def _local_addresses(machine: Machine) -> set[ipaddress.IPv4Address]:
        out = json.loads(machine.exec(["ip", "-j", "-4", "addr", "show"], check=True).stdout or "[]")
        return {ipaddress.IPv4Address(a["local"]) for link in out for a in link.get("addr_info") or []
                if a.get("local")}

    def set_node_stopped(self, name: str, stopped: bool) -> None:
        """Stop (or restart) a node's kubelet reporting, as if it died: its Lease and status go
        stale, the node lifecycle controller marks it Unknown and evicts its pods."""
        self.topology.node(name)
        value = "true" if stopped else None
        self.client.patch(NODES, name, {"metadata": {"annotations": {KUBELET_STOPPED_ANNOTATION: value}}})

    def host(self, name: str) -> Machine:
        if name not in {h.name for h in self.topology.hosts}:
            known = ", ".join(h.name for h in self.topology.hosts) or "none"
            raise NotFoundError(f'host "{name}" not found in cluster {self.name}; external hosts: {known}')
        return Machine(name, node_netns(self.name, name))

    def router(self, name: str) -> Machine:
        if name not in {r.name for r in self.topology.routers}:
            known = ", ".join(r.name for r in self.topology.routers) or "none"
            raise NotFoundError(f'router "{name}" not found in cluster {self.name}; routers: {known}')
        return Machine(name, node_netns(self.name, name))

    def switch(self, name: str) -> Machine:
        """A switch's namespace (the bridge and its ports: capture here to see a segment's frames)."""
        if name not in {s.name for s in self.topology.switches}:
            known = ", ".join(s.name for s in self.topology.switches) or "none"
            raise NotFoundError(f'switch "{name}" not found in cluster {self.name}; switches: {known}')
        return Machine(name, node_netns(self.name, name))


def get_pod(client: ApiClient, name: str, namespace: str) -> dict:
    """The pod, or NotFoundError naming it and its namespace."""
    try:
        return client.get(PODS, name, namespace)
    except ApiError as exc:
        if exc.code == 404:
            raise NotFoundError(f'pods "{name}" not found in namespace "{namespace}"') from None
        raise


def pod_exec_target(client: ApiClient, cluster: str, pod_name: str, namespace: str) -> tuple[list[str], dict[str, str]]:
    """The argv prefix that enters a pod (its hostname and network namespace, like a container)
    and the environment a container of the pod sees."""
    pod = get_pod(client, pod_name, namespace)
    phase = (pod.get("status") or {}).get("phase", "Pending")
    if phase != "Running":
        raise UserError(f'cannot exec into pod "{pod_name}": it is {phase}, not Running')
    spec = pod.get("spec") or {}
    prefix = pod_enter_argv(StateDir(cluster), pod_netns(cluster, pod))
    hostname = spec.get("nodeName", "") if spec.get("hostNetwork") else pod_identity(pod, "cluster.local").hostname
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root", "TERM": "xterm"}
    containers = spec.get("containers") or []
    for item in (containers[0].get("env") or []) if containers else []:
        if item.get("name") and "value" in item:
            env[item["name"]] = str(item["value"])
    return prefix, env
