"""The kubelet of one emulated node.

Registers the Node (labels, taints, capacity, InternalIP), waits for the node
IPAM controller's pod CIDR, writes the node's CNI network config and reports
Ready; then, for every pod bound to the node (watched with a
``spec.nodeName`` field selector):

- admits it (hostPort conflicts reject it as the kubelet's NodePorts check
  does: phase Failed, reason ``NodePorts``);
- creates its sandbox (sandbox.py): network namespace + CNI ADD (or a name
  for the node's namespace with hostNetwork), a pause process holding the
  pod's UTS namespace and hostname, its hosts/resolv.conf/hostname files
  (podfiles.py) and its hostPort DNAT rules (hostport.py);
- runs init containers one by one to completion, then the app containers,
  as processes in the pod's namespaces and cgroups (runtime.py, cgroups.py),
  with the kubelet's environment (envvars.py);
- restarts exited containers per ``restartPolicy`` with the crash-loop
  back-off (restart.py), runs startup/liveness/readiness probes (probes.py)
  and kills containers whose liveness or startup probe fails;
- reports status (phase, conditions, containerStatuses and
  initContainerStatuses; podstatus.py) through the ``status`` subresource,
  and tears terminal pods' sandboxes down.

Deleted pods are stopped within their grace period and removed: processes
stopped, hostPorts removed, CNI DEL, namespace and files removed, pause
process stopped, cgroups removed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from netk8s.api import meta
from netk8s.api.resources import CONFIGMAPS, NODES, PODS, SECRETS, SERVICES
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, WARNING, EventRecorder
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.cluster.naming import (
    KUBELET_STOPPED_ANNOTATION,
    container_log_path,
    pod_netns,
)
from netk8s.cluster.state import StateDir
from netk8s.cni.invoker import Attachment, CniInvoker, load_conflist, node_conflist
from netk8s.errors import ApiError, NetK8sError
from netk8s.kernel import iptables, netns
from netk8s.kubelet import cgroups, podfiles
from netk8s.kubelet.envvars import (
    ContainerConfigError,
    PodRuntimeInfo,
    RefKind,
    container_env,
    expand_command,
)
from netk8s.kubelet.hostport import (
    HostportManager,
    PodPortMappings,
    pod_net_of,
    pod_port_mappings,
)
from netk8s.kubelet.images import ImageNotFound, PodContext, command_for
from netk8s.kubelet.lease import LeaseHeartbeat
from netk8s.kubelet.podstatus import (
    CONTAINER_CREATING,
    CRASH_LOOP_BACK_OFF,
    CREATE_CONTAINER_CONFIG_ERROR,
    ERR_IMAGE_PULL,
    POD_INITIALIZING,
    RUN_CONTAINER_ERROR,
    ContainerExit,
    ContainerRuntimeState,
    ContainerType,
    KillRequest,
    container_status,
    pod_conditions,
    pod_phase,
)
from netk8s.kubelet.probes import (
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    ProbeVerdict,
    ProbeWorker,
    run_probe,
)
from netk8s.kubelet.restart import (
    Backoff,
    RestartPolicy,
    backoff_event,
    backoff_message,
    exit_code_of,
    exit_reason,
    should_restart,
    should_restart_init,
)
from netk8s.kubelet.runtime import ProcessRuntime, RunningProcess
from netk8s.kubelet.sandbox import SandboxRuntime, enter_argv, pause_record
from netk8s.topology import NodeRole, NodeSpec

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.32.0-netk8s"
CNI_NETWORK_NAME = "netk8s"
MONITOR_PERIOD = 0.2
CONFIG_RETRY_SECONDS = 2.0
MIN_GRACE_SECONDS = 2.0  # the kubelet's minimumGracePeriodInSeconds for probe kills
PROBE_WORKERS = 8
DEFAULT_CLUSTER_DNS = ipaddress.IPv4Address("10.96.0.10")
NODE_PORTS_REASON = "NodePorts"
NODE_PORTS_MESSAGE = "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
DEFAULT_ALLOCATABLE = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}


def node_capacity(spec: NodeSpec) -> dict[str, str]:
    """The node's capacity (and allocatable): the defaults, overridden by the topology's ``capacity``."""
    return {**DEFAULT_ALLOCATABLE, **{k: str(v) for k, v in spec.capacity.items()}}


@dataclass
class KubeletConfig:
    cluster: str
    node: NodeSpec
    node_ip: ipaddress.IPv4Address
    netns: str
    state: StateDir
    cni_plugin: str = "netk8s-cni"
    cni_bin_dirs: tuple[str, ...] = ("/usr/lib/cni",)
    cni_in_process: bool = True
    mtu: int = 1500
    heartbeat_seconds: float = 10.0
    lease_duration: float = 40.0
    cluster_dns: tuple[ipaddress.IPv4Address, ...] = (DEFAULT_CLUSTER_DNS,)
    cluster_domain: str = "cluster.local"
    cgroup_root: Path = cgroups.CGROUP_ROOT
    etc_netns: Path = podfiles.ETC_NETNS


@dataclass
class PodSandbox:
    key: str
    uid: str
    name: str
    namespace: str
    netns: str  # the named namespace containers run in: the pod's own, or a name for the node's
    host_network: bool
    ip: str
    cni_result: dict | None
    restart_policy: RestartPolicy
    hostname: str
    termination_grace: float
    pause: RunningProcess | None = None
    init_containers: list[ContainerRuntimeState] = field(default_factory=list)
    containers: list[ContainerRuntimeState] = field(default_factory=list)
    start_time: str = field(default_factory=meta.now)
    hostports: bool = False
    initialized: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def states(self) -> list[ContainerRuntimeState]:
        return [*self.init_containers, *self.containers]

    @property
    def pause_pid(self) -> int | None:
        return self.pause.pid if self.pause is not None else None


class Kubelet(Controller):
    workers = 4

    def __init__(self, client: ApiClient, config: KubeletConfig) -> None:
        super().__init__(client)
        self.config = config
        self.name = f"kubelet-{config.node.name}"
        self.runtime = ProcessRuntime(config.state)
        self.sandboxes = SandboxRuntime(self.runtime, config.state)
        self.recorder = EventRecorder(client, "kubelet", config.node.name)
        self._sandboxes: dict[str, PodSandbox] = {}
        self._finished: set[str] = set()  # uids of pods whose terminal phase was reported and torn down
        self._lock = threading.RLock()
        self._cni: CniInvoker | None = None
        self._network_ready = threading.Event()
        self._paused = threading.Event()
        self.lease = LeaseHeartbeat(client, config.node.name, duration_seconds=max(round(config.lease_duration), 1))
        self._aux_threads: list[threading.Thread] = []
        self.backoff = Backoff()
        self.hostports = HostportManager(CNI_NETWORK_NAME, lambda text: iptables.restore(config.netns, text),
                                         lambda: iptables.save(config.netns, "nat"))
        self.cgroup_support = cgroups.detect(config.cgroup_root)
        self.cgroups = cgroups.CgroupManager(config.cluster, config.state, config.cgroup_root) \
            if self.cgroup_support.available else None
        if not self.cgroup_support.available:
            log.info("%s: memory/cpu limits are not enforced: %s", self.name, self.cgroup_support.reason)
        self._probe_pool = ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix=f"{self.name}-probe")

    # -- node --------------------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self.config.node.name

    def _node_object(self) -> dict:
        spec = self.config.node
        labels = {
            "kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        }
        if spec.role is NodeRole.CONTROL_PLANE:
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
        labels.update(spec.labels)
        capacity = node_capacity(spec)
        node_spec: dict = {}
        if spec.taints:
            node_spec["taints"] = [t.to_api() for t in spec.taints]
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels,
                         "annotations": {"netk8s.io/netns": self.config.netns}},
            "spec": node_spec,
            "status": {
                "capacity": capacity, "allocatable": dict(capacity),
                "addresses": [{"type": "InternalIP", "address": str(self.config.node_ip)},
                              {"type": "Hostname", "address": spec.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": meta.new_uid().replace("-", ""), "systemUUID": meta.new_uid(), "bootID": "",
                    "kernelVersion": platform.release(), "osImage": "netk8s emulated node",
                    "containerRuntimeVersion": "netk8s://0.1.0", "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": "amd64",
                },
                "conditions": self._conditions(False, "KubeletNotReady",
                                               "container runtime network not ready: NetworkReady=false "
                                               "reason:NetworkPluginNotReady message:no pod CIDR assigned yet"),
            },
        }

    @staticmethod
    def _conditions(ready: bool, reason: str, message: str, previous: list[dict] | None = None) -> list[dict]:
        conditions = previous or []
        for cond_type, cond_reason, cond_message in (
                ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available")):
            conditions = meta.set_condition(conditions, cond_type, "False", cond_reason, cond_message,
                                            heartbeat=True)
        return meta.set_condition(conditions, "Ready", "True" if ready else "False", reason, message, heartbeat=True)

    def register(self) -> None:
        node = self._node_object()
        try:
            self.client.create(NODES, node)
        except ApiError as exc:
            if exc.code != 409:
                raise
            current = self.client.get(NODES, self.node_name)
            merged = dict(current, metadata=dict(current["metadata"], labels=node["metadata"]["labels"]),
                          spec=dict(current.get("spec") or {}, **node["spec"]))
            self.client.update(NODES, merged)
            self.client.patch(NODES, self.node_name, {"status": node["status"]}, subresource="status")
        log.info("%s: registered node %s (%s)", self.name, self.node_name, self.config.node_ip)

    def _on_own_node(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is None:
            return
        self._follow_pause_annotation(new)
        if self._network_ready.is_set():
            return
        cidr = (new.get("spec") or {}).get("podCIDR")
        if cidr:
            self._setup_network(ipaddress.IPv4Network(cidr))

    def _follow_pause_annotation(self, node: dict) -> None:
        """``netk8s node stop`` sets KUBELET_STOPPED_ANNOTATION: behave like a kubelet that died or lost the
        control plane (no heartbeats, no pod syncs or status); containers keep running."""
        paused = ((node.get("metadata") or {}).get("annotations") or {}).get(KUBELET_STOPPED_ANNOTATION) == "true"
        if paused and not self._paused.is_set():
            log.info("%s: paused (node stop): no heartbeats, no pod syncs", self.name)
            self._paused.set()
            self.lease.pause()
        elif not paused and self._paused.is_set():
            log.info("%s: resumed (node start)", self.name)
            self._paused.clear()
            self.lease.resume()
            self._report_node_status()
            for pod in self.pods.list():
                self.queue.add(meta.key_of(pod))

    def _setup_network(self, pod_cidr: ipaddress.IPv4Network) -> None:
        cni_dir = self.config.state.cni_dir(self.node_name)
        conflist = node_conflist(CNI_NETWORK_NAME, pod_cidr, cni_dir / "networks", self.config.mtu,
                                 plugin_type=self.config.cni_plugin)
        cni_dir.mkdir(parents=True, exist_ok=True)
        # Like a kubelet with a CNI runtime: the node's network config is a file, read back from disk.
        conf_file = cni_dir / "10-netk8s.conflist"
        conf_file.write_text(json.dumps(conflist, indent=2))
        self._cni = CniInvoker(load_conflist(conf_file), list(self.config.cni_bin_dirs),
                               netns.path_of(self.config.netns),
                               in_process=self.config.cni_in_process)
        self._network_ready.set()
        self._report_node_status()
        log.info("%s: pod CIDR %s, network ready", self.name, pod_cidr)
        for pod in self.pods.list():
            self.queue.add(meta.key_of(pod))

    def _report_node_status(self) -> None:
        ready = self._network_ready.is_set()
        try:
            current = self.client.get(NODES, self.node_name)
        except ApiError as exc:
            if exc.code == 404:  # deleted: register again
                self.register()
                return
            raise
        conditions = self._conditions(
            ready, "KubeletReady" if ready else "KubeletNotReady",
            "kubelet is posting ready status" if ready else "container runtime network not ready",
            (current.get("status") or {}).get("conditions"))
        self.client.patch(NODES, self.node_name, {"status": {"conditions": conditions}}, subresource="status")

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            if self._paused.is_set():
                continue
            try:
                self._report_node_status()
            except NetK8sError as exc:
                log.warning("%s: node status update failed: %s", self.name, exc)

    # -- controller plumbing ----------------------------------------------------------------

    def setup(self) -> None:
        self.pods = self.informer(PODS, field_selector=f"spec.nodeName={self.node_name}")
        self.own_node = self.informer(NODES, field_selector=f"metadata.name={self.node_name}")
        self.services = self.informer(SERVICES)
        self.pods.add_handler(lambda e, o, n: self.queue.add(meta.key_of(n or o)))  # type: ignore[arg-type]
        self.own_node.add_handler(self._on_own_node)

    def start(self) -> None:
        self.register()
        self.lease.start()
        super().start()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._monitor_loop, "monitor")):
            t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            t.start()
            self._aux_threads.append(t)

    def stop(self) -> None:
        super().stop()
        self.lease.stop()
        for t in self._aux_threads:
            t.join(timeout=5)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self.recorder.stop()

    def shutdown_pods(self, grace: float = 2.0) -> None:
        """Stop every pod this kubelet runs (used on cluster teardown)."""
        with self._lock:
            keys = list(self._sandboxes)
        for key in keys:
            self._teardown(key, grace)
        if self.cgroups is not None:
            self.cgroups.remove_cluster_if_empty()

    # -- pod lifecycle ------------------------------------------------------------------------

    def sync(self, key: str) -> None:
        if self._paused.is_set():
            return  # a stopped kubelet does nothing; resuming re-queues every pod
        pod = self.pods.get(key)
        with self._lock:
            sandbox = self._sandboxes.get(key)
        if sandbox is not None and (pod is None or meta.uid_of(pod) != sandbox.uid):
            self._teardown(key, self._grace(pod))  # force-deleted: stop what is left
            sandbox = None
        if pod is None:
            return
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            self._terminate(pod, sandbox)
            return
        if sandbox is None:
            if meta.uid_of(pod) in self._finished or \
                    (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            if not self._network_ready.is_set():
                return  # re-queued when the network becomes ready
            if not self._admit(pod):
                return
            sandbox = self._create_sandbox(pod)
        with sandbox.lock:
            self._sync_containers(pod, sandbox)
            phase = self._report_pod_status(pod, sandbox)
        if phase in ("Succeeded", "Failed"):
            # A finished pod keeps its status (and podIP) but gives its sandbox back, as the kubelet does.
            self._finished.add(sandbox.uid)
            self._teardown(key, 0.0)

    @staticmethod
    def _grace(pod: dict | None) -> float:
        if pod is None:
            return 2.0
        md = pod.get("metadata") or {}
        seconds = md.get("deletionGracePeriodSeconds", (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        return float(seconds)

    def _terminate(self, pod: dict, sandbox: PodSandbox | None) -> None:
        """Graceful deletion: stop the containers within the grace period, then remove the pod
        from the API (grace 0, guarded by its uid), as the kubelet does."""
        if sandbox is not None:
            for state in sandbox.states:
                if state.process is not None:
                    self.recorder.event(pod, NORMAL, "Killing", f"Stopping container {state.name}")
            self._teardown(sandbox.key, self._grace(pod))
        self._finished.discard(meta.uid_of(pod))
        with ignore_not_found():
            try:
                self.client.delete(PODS, meta.name_of(pod), meta.namespace_of(pod), grace_period=0,
                                   preconditions={"uid": meta.uid_of(pod)})
            except ApiError as exc:
                if exc.code != 409:  # a newer pod of the same name: not ours to delete
                    raise

    # -- admission and sandbox -------------------------------------------------------------------

    def _admit(self, pod: dict) -> bool:
        """The kubelet's NodePorts admission check: a hostPort already used on this node rejects the pod."""
        conflicts = self.hostports.conflicts(meta.key_of(pod), pod_port_mappings(pod))
        if not conflicts:
            return True
        detail = ", ".join(f"{c.mapping.describe()} (used by {c.holder})" for c in conflicts)
        log.warning("%s: rejecting %s: host ports in use: %s", self.name, meta.key_of(pod), detail)
        self.recorder.event(pod, WARNING, NODE_PORTS_REASON, NODE_PORTS_MESSAGE)
        self._finished.add(meta.uid_of(pod))
        self._patch_pod_status(pod, {"phase": "Failed", "reason": NODE_PORTS_REASON,
                                     "message": f"Pod was rejected: {NODE_PORTS_MESSAGE}"})
        return False

    def _create_sandbox(self, pod: dict) -> PodSandbox:
        key = meta.key_of(pod)
        spec = pod.get("spec") or {}
        uid = meta.uid_of(pod)
        host_network = bool(spec.get("hostNetwork"))
        ns_name = pod_netns(self.config.cluster, pod)
        try:
            identity = podfiles.pod_identity(pod, self.config.cluster_domain)
            hostname = self.node_name if host_network else podfiles.kernel_hostname(pod, identity)
        except NetK8sError as exc:
            self.recorder.event(pod, WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            raise
        sandbox = PodSandbox(key, uid, meta.name_of(pod), meta.namespace_of(pod), ns_name, host_network,
                             str(self.config.node_ip) if host_network else "", None,
                             RestartPolicy.of(spec.get("restartPolicy")), hostname,
                             float(spec.get("terminationGracePeriodSeconds", 30)))
        self.config.state.record_netns(ns_name)  # before it exists, so a crash cannot lose it
        try:
            if host_network:
                sandbox.pause = self.sandboxes.start_pause(netns.path_of(self.config.netns), hostname,
                                                           pause_record(ns_name))
                self.sandboxes.name_host_network(ns_name, sandbox.pause)
            else:
                self._create_pod_network(pod, sandbox)
            self._write_pod_files(pod, sandbox, identity)
            mappings = pod_port_mappings(pod)
            if host_network:
                self.hostports.claim(key, mappings)
            elif mappings:
                self.hostports.add(key, PodPortMappings(uid.replace("-", ""), pod_net_of(sandbox.cni_result,
                                                                                         sandbox.ip),
                                                        tuple(mappings)))
                sandbox.hostports = True
        except NetK8sError as exc:
            log.warning("%s: sandbox for %s failed: %s", self.name, key, exc)
            self.recorder.event(pod, WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            self._destroy_sandbox(sandbox)
            self._patch_pod_status(pod, {"conditions": meta.set_condition(
                (pod.get("status") or {}).get("conditions") or [], "Ready", "False", "ContainersNotReady",
                f"failed to set up the pod sandbox: {exc}")})
            raise
        for container in spec.get("initContainers") or []:
            sandbox.init_containers.append(ContainerRuntimeState(container, ContainerType.INIT))
        for container in spec.get("containers") or []:
            probes = {kind: ProbeWorker(ProbeSpec.from_api(kind, container[kind.field]))
                      for kind in ProbeKind if isinstance(container.get(kind.field), dict)}
            sandbox.containers.append(ContainerRuntimeState(container, ContainerType.APP, probes=probes))
        sandbox.initialized = not sandbox.init_containers
        if cgroups.pod_has_limits(pod) and self.cgroups is None:
            self.recorder.event(pod, WARNING, "ResourceLimitsUnsupported",
                                f"memory/cpu limits are not enforced: {self.cgroup_support.reason}")
        with self._lock:
            self._sandboxes[key] = sandbox
        log.info("%s: pod %s sandbox %s ip %s hostname %s", self.name, key, ns_name, sandbox.ip, hostname)
        return sandbox

    def _create_pod_network(self, pod: dict, sandbox: PodSandbox) -> None:
        assert self._cni is not None
        ns_name = sandbox.netns
        if netns.exists(ns_name):  # left over from a crashed kubelet: start clean
            netns.delete(ns_name)
        netns.create(ns_name)
        netns.write_sysctl(ns_name, "net.ipv6.conf.all.disable_ipv6", 1)
        netns.write_sysctl(ns_name, "net.ipv6.conf.default.disable_ipv6", 1)
        sandbox.pause = self.sandboxes.start_pause(netns.path_of(ns_name), sandbox.hostname, pause_record(ns_name))
        attachment = self._attachment(pod, ns_name)
        try:
            result = self._cni.add(attachment)
        except NetK8sError as exc:
            log.warning("%s: CNI ADD for %s failed: %s", self.name, sandbox.key, exc)
            # The CNI spec has the runtime DEL after every failed ADD (frees a lease it may hold).
            try:
                self._cni.delete(attachment)
            except NetK8sError as del_exc:
                log.warning("%s: CNI DEL after the failed ADD for %s failed too: %s", self.name, sandbox.key,
                            del_exc)
            raise
        sandbox.cni_result = result
        sandbox.ip = str(ipaddress.IPv4Interface(result["ips"][0]["address"]).ip)

    def _write_pod_files(self, pod: dict, sandbox: PodSandbox, identity: podfiles.PodIdentity) -> None:
        spec = pod.get("spec") or {}
        aliases = [a for a in spec.get("hostAliases") or [] if isinstance(a, dict)]
        node_ns = self.config.netns
        if sandbox.host_network:
            hosts = podfiles.render_hosts_host_network(
                podfiles.node_file(node_ns, "hosts", self.config.etc_netns), aliases)
        else:
            hosts = podfiles.render_hosts([sandbox.ip], identity, aliases)
        dns = podfiles.pod_dns(pod, list(self.config.cluster_dns), self.config.cluster_domain,
                               podfiles.node_resolv_conf(node_ns, self.config.etc_netns))
        for warning in dns.warnings:
            self.recorder.event(pod, WARNING, "DNSConfigForming", warning)
        podfiles.write_pod_files(sandbox.netns, {
            "hosts": hosts, "resolv.conf": podfiles.render_resolv_conf(dns.config),
            "hostname": sandbox.hostname + "\n"}, self.config.etc_netns)

    def _attachment(self, pod: dict, ns_name: str) -> Attachment:
        uid = meta.uid_of(pod).replace("-", "")
        return Attachment(container_id=uid, netns=netns.path_of(ns_name), ifname="eth0", args=(
            ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", meta.namespace_of(pod)),
            ("K8S_POD_NAME", meta.name_of(pod)), ("K8S_POD_INFRA_CONTAINER_ID", uid),
            ("K8S_POD_UID", meta.uid_of(pod))))

    def _teardown(self, key: str, grace: float) -> None:
        with self._lock:
            sandbox = self._sandboxes.pop(key, None)
        if sandbox is None:
            return
        with sandbox.lock:
            for state in reversed(sandbox.states):
                if state.process is not None:
                    self.runtime.stop(state.process, grace)
                    state.process = None
            self._destroy_sandbox(sandbox)
        self.backoff.forget_prefix(f"{sandbox.uid}/")
        log.info("%s: pod %s stopped", self.name, key)

    def _destroy_sandbox(self, sandbox: PodSandbox) -> None:
        """Undo a sandbox (or what a failed creation made of it); every step tolerates a missing part."""
        self.hostports.remove(sandbox.key)
        if not sandbox.host_network and self._cni is not None and netns.exists(sandbox.netns):
            try:
                self._cni.delete(Attachment(container_id=sandbox.uid.replace("-", ""),
                                            netns=netns.path_of(sandbox.netns), ifname="eth0"),
                                 sandbox.cni_result)
            except NetK8sError as exc:
                log.warning("%s: CNI DEL for %s failed: %s", self.name, sandbox.key, exc)
        podfiles.remove_pod_files(sandbox.netns, self.config.etc_netns)
        deleted = True
        try:
            netns.delete(sandbox.netns)  # for hostNetwork only the pod's name for the node's namespace
        except NetK8sError as exc:
            deleted = False
            log.warning("%s: %s (left recorded: the cluster's teardown deletes it)", self.name, exc)
        self.sandboxes.stop_pause(sandbox.pause)
        sandbox.pause = None
        if deleted:  # forgotten only once gone, or nothing would ever remove it
            self.config.state.forget_netns(sandbox.netns)
        if self.cgroups is not None:
            self.cgroups.remove_pod(sandbox.uid)

    # -- containers ----------------------------------------------------------------------------

    def _sync_containers(self, pod: dict, sandbox: PodSandbox) -> None:
        """Carry out probe kills, then start what is due: init containers one at a time, in order,
        each to completion; app containers once all init containers succeeded."""
        for state in sandbox.states:
            if state.kill is not None:
                self._kill_for_probe(pod, sandbox, state)
        if not sandbox.initialized:
            for state in sandbox.init_containers:
                if state.succeeded:
                    continue
                if not state.running and not state.done:
                    self._maybe_start(pod, sandbox, state)
                break  # the next one waits for this one
            sandbox.initialized = all(s.succeeded for s in sandbox.init_containers)
        if sandbox.initialized:
            for state in sandbox.containers:
                if not state.running and not state.done:
                    self._maybe_start(pod, sandbox, state)

    def _backoff_key(self, sandbox: PodSandbox, state: ContainerRuntimeState) -> str:
        return f"{sandbox.uid}/{state.kind.value}/{state.name}"

    def _maybe_start(self, pod: dict, sandbox: PodSandbox, state: ContainerRuntimeState) -> None:
        now = time.monotonic()
        if now < state.retry_at:
            return
        ref = state.backoff_ref
        if ref is not None:
            key = self._backoff_key(sandbox, state)
            if self.backoff.in_backoff_since(key, ref):
                remaining = self.backoff.remaining(key, ref)
                state.restarting = True
                state.waiting_reason = CRASH_LOOP_BACK_OFF
                state.waiting_message = backoff_message(self.backoff.get(key), state.name, sandbox.name,
                                                        sandbox.namespace, sandbox.uid)
                state.retry_at = now + remaining
                self.queue.add_after(sandbox.key, remaining + 0.01)
                self.recorder.event(pod, WARNING, "BackOff", backoff_event(state.name, sandbox.name,
                                                                           sandbox.namespace, sandbox.uid))
                return
            self.backoff.next(key, ref)
        self._start_container(pod, sandbox, state)

    def _lookup(self, kind: RefKind, namespace: str, name: str) -> dict | None:
        resource = CONFIGMAPS if kind is RefKind.CONFIGMAP else SECRETS
        try:
            return self.client.get(resource, name, namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def _env_for(self, pod: dict, sandbox: PodSandbox, container: dict) -> dict[str, str]:
        info = PodRuntimeInfo(self.node_name, (sandbox.ip,), (str(self.config.node_ip),),
                              node_capacity(self.config.node))
        result = container_env(pod, container, info, self._lookup, self.services.list(),
                               base={"HOSTNAME": sandbox.hostname, "HOME": "/root"})
        for kind, source, keys in result.invalid_keys:
            self.recorder.event(pod, WARNING, "InvalidEnvironmentVariableNames",
                                f"Keys [{', '.join(keys)}] from the EnvFrom {kind.value.lower()} {source} were "
                                f"skipped since they are invalid environment variable names.")
        return result.env

    def _fail_start(self, pod: dict, state: ContainerRuntimeState, reason: str, message: str, event: str,
                    retry: float | None) -> None:
        if state.waiting_reason != reason or state.waiting_message != message:
            self.recorder.event(pod, WARNING, "Failed", event)
        state.restarting = bool(state.exits)
        state.waiting_reason, state.waiting_message = reason, message
        if retry is not None:
            state.retry_at = time.monotonic() + retry
            self.queue.add_after(meta.key_of(pod), retry + 0.01)

    def _start_container(self, pod: dict, sandbox: PodSandbox, state: ContainerRuntimeState) -> None:
        image = state.spec.get("image", "")
        try:
            env = self._env_for(pod, sandbox, state.spec)
        except ContainerConfigError as exc:
            self._fail_start(pod, state, CREATE_CONTAINER_CONFIG_ERROR, str(exc), f"Error: {exc}",
                             CONFIG_RETRY_SECONDS)
            return
        except NetK8sError as exc:  # an unusable env entry: the pod is invalid for the kubelet
            self._fail_start(pod, state, CREATE_CONTAINER_CONFIG_ERROR, str(exc), f"Error: {exc}", None)
            return
        ctx = PodContext(sandbox.name, sandbox.namespace, self.node_name, sandbox.ip)
        try:
            argv = command_for(expand_command(state.spec, env), ctx)
        except ImageNotFound as exc:
            self._fail_start(pod, state, ERR_IMAGE_PULL, str(exc), f'Failed to pull image "{image}": {exc}', None)
            return
        if not self.sandboxes.alive(sandbox.pause):
            self._replace_pause(pod, sandbox)
        cgroup_dir = self._prepare_cgroup(pod, sandbox, state)
        restart = state.restart_count + 1 if state.ever_started else 0
        try:
            process = self.runtime.start(
                sandbox.netns, argv, env, container_log_path(self.config.state.logs_dir, pod, state.name, restart),
                f"container {sandbox.key}/{state.name}", uts_pid=sandbox.pause_pid,
                cgroup_procs=cgroup_dir / "cgroup.procs" if cgroup_dir is not None else None)
        except NetK8sError as exc:
            self._fail_start(pod, state, RUN_CONTAINER_ERROR, str(exc), f"Error: {exc}", CONFIG_RETRY_SECONDS)
            return
        now = time.monotonic()
        state.process = process
        state.cgroup_dir = cgroup_dir
        state.oom_baseline = self.cgroups.oom_kills(cgroup_dir) if self.cgroups and cgroup_dir else 0
        state.restart_count = restart
        state.ever_started = True
        state.container_id = f"netk8s://{process.pid}"
        state.started_at = meta.now()
        state.waiting_reason = state.waiting_message = ""
        state.restarting = False
        state.retry_at = 0.0
        state.backoff_ref = None
        for worker in state.probes.values():
            worker.container_started(now)
        self.recorder.event(pod, NORMAL, "Pulled", f'Container image "{image}" already present on machine')
        self.recorder.event(pod, NORMAL, "Created", f"Created container {state.name}")
        self.recorder.event(pod, NORMAL, "Started", f"Started container {state.name}")

    def _replace_pause(self, pod: dict, sandbox: PodSandbox) -> None:
        """The pause process died (killed by hand?): give the pod a new one with the same hostname."""
        log.warning("%s: the pause process of %s is gone; starting a new one", self.name, sandbox.key)
        self.sandboxes.stop_pause(sandbox.pause)
        sandbox.pause = None
        try:
            sandbox.pause = self.sandboxes.start_pause(netns.path_of(sandbox.netns), sandbox.hostname,
                                                       pause_record(sandbox.netns))
        except NetK8sError as exc:
            log.warning("%s: %s", self.name, exc)
            self.recorder.event(pod, WARNING, "SandboxChanged", f"Pod sandbox changed: {exc}")

    def _prepare_cgroup(self, pod: dict, sandbox: PodSandbox, state: ContainerRuntimeState) -> Path | None:
        if self.cgroups is None:
            return None
        try:
            limits = cgroups.container_limits(state.spec)
            return self.cgroups.prepare(sandbox.uid, state.name, limits)
        except NetK8sError as exc:
            log.warning("%s: %s", self.name, exc)
            self.recorder.event(pod, WARNING, "ResourceLimitsUnsupported",
                                f"memory/cpu limits are not enforced: {exc}")
            return None

    def _kill_for_probe(self, pod: dict, sandbox: PodSandbox, state: ContainerRuntimeState) -> None:
        kill, state.kill = state.kill, None
        process = state.process
        if kill is None or process is None:
            return
        message = f"Container {state.name} failed {kill.reason.value.lower()} probe"
        if sandbox.restart_policy is not RestartPolicy.NEVER:
            message += ", will be restarted"
        self.recorder.event(pod, NORMAL, "Killing", message)
        log.info("%s: %s/%s: %s", self.name, sandbox.key, state.name, message)
        code = self.runtime.stop(process, kill.grace)
        self._on_exit(sandbox, state, process, code if code is not None else -9, probe_kill=True)

    def _on_exit(self, sandbox: PodSandbox, state: ContainerRuntimeState, process: RunningProcess,
                 returncode: int, probe_kill: bool = False) -> None:
        """Record a finished container instance and decide whether it runs again."""
        now = time.monotonic()
        code = exit_code_of(returncode)
        oom = False
        if self.cgroups is not None and state.cgroup_dir is not None:
            oom = self.cgroups.oom_kills(state.cgroup_dir) > state.oom_baseline
        previous = state.last_exit
        state.record_exit(ContainerExit(code, exit_reason(code, oom), state.started_at, meta.now(),
                                        state.container_id, finished_mono=now))
        state.process = None
        for worker in state.probes.values():
            worker.container_stopped()
        policy = sandbox.restart_policy
        if state.kind is ContainerType.INIT:
            state.done = code == 0 or not should_restart_init(policy, code)
        else:
            state.done = not should_restart(policy, code)
        # The kubelet's back-off looks at the newest *exited* instance when it restarts one: after a
        # probe kill that is the instance before (the killed one was still running then).
        if probe_kill:
            state.backoff_ref = previous.finished_mono if previous is not None else None
        else:
            state.backoff_ref = now
        state.retry_at = 0.0
        state.restarting = False
        state.waiting_reason = state.waiting_message = ""
        log.info("%s: container %s/%s exited with %d%s", self.name, sandbox.key, state.name, code,
                 " (OOMKilled)" if oom else "")

    # -- monitoring: exits, restarts, probes ------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(MONITOR_PERIOD):
            if self._paused.is_set():
                continue
            with self._lock:
                sandboxes = list(self._sandboxes.values())
            for sandbox in sandboxes:
                if not sandbox.lock.acquire(blocking=False):
                    continue  # a sync is working on it (maybe stopping a container): next round
                try:
                    if self._check_sandbox(sandbox):
                        self.queue.add(sandbox.key)
                except Exception:
                    log.exception("%s: monitoring %s failed", self.name, sandbox.key)
                finally:
                    sandbox.lock.release()
            self.backoff.gc()

    def _check_sandbox(self, sandbox: PodSandbox) -> bool:
        """Returns True when the pod needs a sync (an exit, a restart due)."""
        changed = False
        now = time.monotonic()
        for state in sandbox.states:
            proc = state.process
            if proc is not None:
                code = proc.poll()
                if code is not None:
                    self.runtime.reap(proc)
                    self._on_exit(sandbox, state, proc, code)
                    changed = True
                    continue
                for worker in state.probes.values():
                    if worker.due(now, state.started):
                        worker.in_flight = True
                        self._probe_pool.submit(self._run_probe, sandbox, state, worker, state.container_id)
            elif not state.done and state.retry_at and now >= state.retry_at:
                changed = True
        return changed

    def _run_probe(self, sandbox: PodSandbox, state: ContainerRuntimeState, worker: ProbeWorker,
                   container_id: str) -> None:
        try:
            result, message = run_probe(worker.spec, state.spec, sandbox.ip, self.config.netns,
                                        enter_argv(sandbox.netns, sandbox.pause_pid))
        except Exception as exc:  # a probe must never take the kubelet down
            result, message = ProbeResult.UNKNOWN, str(exc)
        with sandbox.lock:
            worker.in_flight = False
            if state.container_id != container_id or state.process is None:
                return  # that instance is gone: its result means nothing now
            verdict = worker.record(result, message, time.monotonic())
            pod = self.pods.get(sandbox.key)
            kind = worker.spec.kind.value
            if pod is not None:
                if result is ProbeResult.FAILURE:
                    self.recorder.event(pod, WARNING, "Unhealthy", f"{kind} probe failed: {message}")
                elif result is ProbeResult.WARNING:
                    self.recorder.event(pod, WARNING, "ProbeWarning", f"{kind} probe warning: {message}")
                elif result is ProbeResult.UNKNOWN:
                    self.recorder.event(pod, WARNING, "Unhealthy", f"{kind} probe errored: {message}")
            if verdict is ProbeVerdict.KILL:
                grace = worker.spec.termination_grace
                if grace is None:
                    grace = sandbox.termination_grace
                state.kill = KillRequest(worker.spec.kind, message, max(grace, MIN_GRACE_SECONDS))
            if verdict is not ProbeVerdict.NONE:
                log.info("%s: %s/%s %s probe -> %s", self.name, sandbox.key, state.name, kind.lower(),
                         "kill" if verdict is ProbeVerdict.KILL else worker.result)
                self.queue.add(sandbox.key)

    # -- status --------------------------------------------------------------------------------

    def _report_pod_status(self, pod: dict, sandbox: PodSandbox) -> str:
        spec = pod.get("spec") or {}
        default_waiting = CONTAINER_CREATING if sandbox.initialized else POD_INITIALIZING
        init_statuses = [container_status(s, POD_INITIALIZING) for s in sandbox.init_containers]
        statuses = [container_status(s, default_waiting) for s in sandbox.containers]
        phase = pod_phase(spec, init_statuses, statuses)
        current = pod.get("status") or {}
        status: dict = {
            "phase": phase,
            "conditions": pod_conditions(spec, phase, init_statuses, statuses, True, current.get("conditions")),
            "hostIP": str(self.config.node_ip), "hostIPs": [{"ip": str(self.config.node_ip)}],
            "podIP": sandbox.ip, "podIPs": [{"ip": sandbox.ip}],
            "startTime": current.get("startTime") or sandbox.start_time, "containerStatuses": statuses,
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        # Compare with what the API holds (not with what we last sent): status someone else
        # changed, such as the node lifecycle controller marking pods not ready, gets corrected.
        if _comparable(status) != _comparable({k: current.get(k) for k in status}):
            self._patch_pod_status(pod, status)
        return phase

    def _patch_pod_status(self, pod: dict, status: dict) -> None:
        with ignore_not_found():
            self.client.patch(PODS, meta.name_of(pod), {"status": status}, meta.namespace_of(pod),
                              subresource="status")


def _comparable(status: dict) -> dict:
    """A pod status without timestamps and fields the kubelet does not own, for change detection."""
    out = {k: v for k, v in status.items() if k not in ("conditions", "qosClass")}
    out["conditions"] = sorted(({k: v for k, v in c.items() if not k.endswith("Time")}
                                for c in status.get("conditions") or []), key=lambda c: c.get("type", ""))
    return out
