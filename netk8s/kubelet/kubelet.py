"""The kubelet of one emulated node.

Registers the Node (labels, taints, capacity, InternalIP), waits for the node
IPAM controller's pod CIDR, writes the node's CNI network config and reports
Ready; then, for every pod bound to the node (watched with a
``spec.nodeName`` field selector) it creates the pod's network namespace
(``nk-<cluster>-<namespace>-<pod>-<uid5>``), calls CNI ADD, starts each
container as a process in that namespace, restarts exited containers per
``restartPolicy`` with back-off, runs readiness probes and reports pod status
(phase, podIP, conditions, containerStatuses) through the ``status``
subresource. Deleted pods are torn down: processes stopped, CNI DEL, namespace
removed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netk8s.api import meta
from netk8s.api.resources import NODES, PODS
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
from netk8s.kernel import netns
from netk8s.kubelet.images import ImageNotFound, PodContext, command_for
from netk8s.kubelet.lease import LeaseHeartbeat
from netk8s.kubelet.probes import ProbeResult, ProbeState, run_probe
from netk8s.kubelet.runtime import ProcessRuntime, RunningProcess
from netk8s.topology import NodeRole, NodeSpec

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.32.0-netk8s"
CNI_NETWORK_NAME = "netk8s"
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
MONITOR_PERIOD = 0.2


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


@dataclass
class ContainerRuntimeState:
    spec: dict
    process: RunningProcess | None = None
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    last_exit: dict | None = None  # {"exitCode", "reason", "startedAt", "finishedAt"}
    next_start: float = 0.0
    backoff: float = 0.0
    readiness: ProbeState | None = None
    started_at: str = ""
    finished: bool = False  # exited and will not be restarted

    @property
    def name(self) -> str:
        return self.spec.get("name", "")


@dataclass
class PodSandbox:
    key: str
    uid: str
    netns: str | None  # None for hostNetwork pods (they share the node's namespace)
    ip: str
    cni_result: dict | None
    restart_policy: str
    containers: list[ContainerRuntimeState] = field(default_factory=list)
    start_time: str = field(default_factory=meta.now)


class Kubelet(Controller):
    workers = 4

    def __init__(self, client: ApiClient, config: KubeletConfig) -> None:
        super().__init__(client)
        self.config = config
        self.name = f"kubelet-{config.node.name}"
        self.runtime = ProcessRuntime(config.state)
        self.recorder = EventRecorder(client, "kubelet", config.node.name)
        self._sandboxes: dict[str, PodSandbox] = {}
        self._lock = threading.RLock()
        self._cni: CniInvoker | None = None
        self._network_ready = threading.Event()
        self._paused = threading.Event()
        self.lease = LeaseHeartbeat(client, config.node.name, duration_seconds=max(round(config.lease_duration), 1))
        self._aux_threads: list[threading.Thread] = []

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
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        capacity.update({k: str(v) for k, v in spec.capacity.items()})
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
        self.recorder.stop()

    def shutdown_pods(self, grace: float = 2.0) -> None:
        """Stop every pod this kubelet runs (used on cluster teardown)."""
        with self._lock:
            keys = list(self._sandboxes)
        for key in keys:
            self._teardown(key, grace)

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
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and sandbox is None:
            return
        if sandbox is None:
            if not self._network_ready.is_set():
                return  # re-queued when the network becomes ready
            sandbox = self._create_sandbox(pod)
            if sandbox is None:
                return
        self._start_due_containers(pod, sandbox)
        self._report_pod_status(pod, sandbox)

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
            for state in sandbox.containers:
                if state.process is not None:
                    self.recorder.event(pod, NORMAL, "Killing", f"Stopping container {state.name}")
            self._teardown(sandbox.key, self._grace(pod))
        with ignore_not_found():
            try:
                self.client.delete(PODS, meta.name_of(pod), meta.namespace_of(pod), grace_period=0,
                                   preconditions={"uid": meta.uid_of(pod)})
            except ApiError as exc:
                if exc.code != 409:  # a newer pod of the same name: not ours to delete
                    raise

    def _create_sandbox(self, pod: dict) -> PodSandbox | None:
        key = meta.key_of(pod)
        spec = pod.get("spec") or {}
        uid = meta.uid_of(pod)
        if spec.get("hostNetwork"):
            sandbox = PodSandbox(key, uid, None, str(self.config.node_ip), None, spec.get("restartPolicy", "Always"))
        else:
            assert self._cni is not None
            ns_name = pod_netns(self.config.cluster, pod)
            self.config.state.record_netns(ns_name)
            if netns.exists(ns_name):  # left over from a crashed kubelet: start clean
                netns.delete(ns_name)
            netns.create(ns_name)
            netns.write_sysctl(ns_name, "net.ipv6.conf.all.disable_ipv6", 1)
            netns.write_sysctl(ns_name, "net.ipv6.conf.default.disable_ipv6", 1)
            attachment = self._attachment(pod, ns_name)
            try:
                result = self._cni.add(attachment)
            except NetK8sError as exc:
                log.warning("%s: CNI ADD for %s failed: %s", self.name, key, exc)
                # The CNI spec has the runtime DEL after every failed ADD (frees a lease it may hold).
                try:
                    self._cni.delete(attachment)
                except NetK8sError as del_exc:
                    log.warning("%s: CNI DEL after the failed ADD for %s failed too: %s", self.name, key, del_exc)
                netns.delete(ns_name)
                self.config.state.forget_netns(ns_name)
                self._patch_pod_status(pod, {"conditions": meta.set_condition(
                    (pod.get("status") or {}).get("conditions") or [], "Ready", "False", "ContainersNotReady",
                    f"failed to set up the pod network: {exc}")})
                raise
            ip = str(ipaddress.IPv4Interface(result["ips"][0]["address"]).ip)
            sandbox = PodSandbox(key, uid, ns_name, ip, result, spec.get("restartPolicy", "Always"))
        for container in spec.get("containers") or []:
            state = ContainerRuntimeState(container)
            if container.get("readinessProbe"):
                state.readiness = ProbeState(container["readinessProbe"], time.monotonic())
            sandbox.containers.append(state)
        with self._lock:
            self._sandboxes[key] = sandbox
        log.info("%s: pod %s sandbox %s ip %s", self.name, key, sandbox.netns or "(host network)", sandbox.ip)
        return sandbox

    def _attachment(self, pod: dict, ns_name: str) -> Attachment:
        uid = meta.uid_of(pod).replace("-", "")
        return Attachment(container_id=uid, netns=netns.path_of(ns_name), ifname="eth0", args=(
            ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", meta.namespace_of(pod)),
            ("K8S_POD_NAME", meta.name_of(pod)), ("K8S_POD_INFRA_CONTAINER_ID", uid),
            ("K8S_POD_UID", meta.uid_of(pod))))

    def _container_env(self, pod: dict, sandbox: PodSandbox, container: dict) -> dict[str, str]:
        env = {"HOSTNAME": meta.name_of(pod), "HOME": "/root"}
        field_values = {
            "metadata.name": meta.name_of(pod), "metadata.namespace": meta.namespace_of(pod),
            "metadata.uid": meta.uid_of(pod), "spec.nodeName": self.node_name,
            "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
            "status.podIP": sandbox.ip, "status.hostIP": str(self.config.node_ip),
        }
        for item in container.get("env") or []:
            name = item.get("name")
            if not name:
                continue
            if "value" in item:
                env[name] = str(item["value"])
            elif ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") in field_values:
                env[name] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def _log_path(self, pod: dict, container: str, restart: int) -> Path:
        return container_log_path(self.config.state.logs_dir, pod, container, restart)

    def _start_due_containers(self, pod: dict, sandbox: PodSandbox) -> None:
        now = time.monotonic()
        ctx = PodContext(meta.name_of(pod), meta.namespace_of(pod), self.node_name, sandbox.ip)
        for state in sandbox.containers:
            if state.process is not None or state.finished or now < state.next_start:
                continue
            image = state.spec.get("image", "")
            try:
                argv = command_for(state.spec, ctx)
            except ImageNotFound as exc:
                if state.waiting_reason != "ErrImagePull":
                    self.recorder.event(pod, WARNING, "Failed", f'Failed to pull image "{image}": {exc}')
                state.waiting_reason, state.waiting_message = "ErrImagePull", str(exc)
                continue
            restart = state.restart_count
            try:
                state.process = self.runtime.start(
                    sandbox.netns, argv, self._container_env(pod, sandbox, state.spec),
                    self._log_path(pod, state.name, restart), f"container {sandbox.key}/{state.name}")
            except NetK8sError as exc:
                state.waiting_reason, state.waiting_message = "RunContainerError", str(exc)
                continue
            state.started_at = meta.now()
            state.waiting_reason = state.waiting_message = ""
            self.recorder.event(pod, NORMAL, "Pulled", f'Container image "{image}" already present on machine')
            self.recorder.event(pod, NORMAL, "Created", f"Created container {state.name}")
            self.recorder.event(pod, NORMAL, "Started", f"Started container {state.name}")
            if state.readiness is not None:
                state.readiness = ProbeState(state.readiness.probe, time.monotonic())

    def _teardown(self, key: str, grace: float) -> None:
        with self._lock:
            sandbox = self._sandboxes.pop(key, None)
        if sandbox is None:
            return
        for state in sandbox.containers:
            if state.process is not None:
                self.runtime.stop(state.process, grace)
                state.process = None
        if sandbox.netns is not None:
            if self._cni is not None and netns.exists(sandbox.netns):
                try:
                    self._cni.delete(Attachment(container_id=sandbox.uid.replace("-", ""),
                                                netns=netns.path_of(sandbox.netns), ifname="eth0"),
                                     sandbox.cni_result)
                except NetK8sError as exc:
                    log.warning("%s: CNI DEL for %s failed: %s", self.name, key, exc)
            netns.delete(sandbox.netns)
            self.config.state.forget_netns(sandbox.netns)
        log.info("%s: pod %s stopped", self.name, key)

    # -- monitoring: exits, restarts, probes ------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(MONITOR_PERIOD):
            if self._paused.is_set():
                continue
            with self._lock:
                sandboxes = list(self._sandboxes.values())
            for sandbox in sandboxes:
                try:
                    if self._check_sandbox(sandbox):
                        self.queue.add(sandbox.key)
                except Exception:
                    log.exception("%s: monitoring %s failed", self.name, sandbox.key)

    def _check_sandbox(self, sandbox: PodSandbox) -> bool:
        """Returns True when the pod needs a sync (status change or a restart due)."""
        changed = False
        now = time.monotonic()
        for state in sandbox.containers:
            proc = state.process
            if proc is not None:
                code = proc.poll()
                if code is not None:
                    self.runtime.reap(proc)
                    state.process = None
                    state.last_exit = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                       "startedAt": state.started_at, "finishedAt": meta.now(),
                                       "containerID": f"netk8s://{proc.pid}"}
                    if state.readiness is not None:
                        state.readiness.result = False
                    policy = sandbox.restart_policy
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        state.backoff = BACKOFF_INITIAL if state.backoff == 0 else min(state.backoff * 2, BACKOFF_MAX)
                        # A container that ran for a while restarts at once, as the kubelet's back-off resets.
                        if time.time() - proc.started_at > 2 * BACKOFF_MAX:
                            state.backoff = 0.0
                        state.next_start = now + state.backoff
                        state.restart_count += 1
                        state.waiting_reason = "CrashLoopBackOff" if state.backoff else ""
                        if state.backoff and (pod := self.pods.get(sandbox.key)) is not None:
                            self.recorder.event(pod, WARNING, "BackOff",
                                                f"Back-off restarting failed container {state.name} in pod "
                                                f"{meta.name_of(pod)}_{meta.namespace_of(pod)}({meta.uid_of(pod)})")
                    else:
                        state.finished = True
                    changed = True
                    log.info("%s: container %s/%s exited with %d", self.name, sandbox.key, state.name, code)
                elif state.readiness is not None and state.readiness.due(now):
                    container_ready_before = state.readiness.result
                    result, message = run_probe(state.readiness.probe, state.spec, sandbox.ip, self.config.netns,
                                                sandbox.netns)
                    if result is ProbeResult.FAILURE and (pod := self.pods.get(sandbox.key)) is not None:
                        self.recorder.event(pod, WARNING, "Unhealthy", f"Readiness probe failed: {message}")
                    if state.readiness.record(result, message, time.monotonic()):
                        changed = True
                        log.info("%s: %s/%s readiness %s -> %s", self.name, sandbox.key, state.name,
                                 container_ready_before, state.readiness.result)
            elif not state.finished and state.next_start and now >= state.next_start:
                changed = True  # restart due: sync starts it
        return changed

    # -- status --------------------------------------------------------------------------------

    def _container_status(self, state: ContainerRuntimeState) -> dict:
        ready = state.process is not None and (state.readiness is None or state.readiness.result)
        status: dict = {"name": state.name, "image": state.spec.get("image", ""), "imageID": "",
                        "restartCount": state.restart_count, "ready": ready, "started": state.process is not None}
        if state.process is not None:
            status["state"] = {"running": {"startedAt": state.started_at}}
            status["containerID"] = f"netk8s://{state.process.pid}"
        elif state.finished and state.last_exit:
            status["state"] = {"terminated": dict(state.last_exit)}
        else:
            waiting = {"reason": state.waiting_reason or "ContainerCreating"}
            if state.waiting_message:
                waiting["message"] = state.waiting_message
            status["state"] = {"waiting": waiting}
        if state.last_exit and not state.finished:
            status["lastState"] = {"terminated": dict(state.last_exit)}
        return status

    def _report_pod_status(self, pod: dict, sandbox: PodSandbox) -> None:
        statuses = [self._container_status(s) for s in sandbox.containers]
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        running = any(s.process is not None for s in sandbox.containers)
        if all(s.finished for s in sandbox.containers):
            failed = any((s.last_exit or {}).get("exitCode", 0) != 0 for s in sandbox.containers)
            phase = "Failed" if failed else "Succeeded"
        elif running or any(s.restart_count for s in sandbox.containers):
            phase = "Running"
        else:
            phase = "Pending"
        conditions = (pod.get("status") or {}).get("conditions") or []
        not_ready = [s["name"] for s in statuses if not s["ready"]]
        message = "" if all_ready else f"containers with unready status: [{' '.join(not_ready)}]"
        reason = "" if all_ready else "ContainersNotReady"
        conditions = meta.set_condition(conditions, "PodReadyToStartContainers", "True")
        conditions = meta.set_condition(conditions, "Initialized", "True")
        conditions = meta.set_condition(conditions, "ContainersReady", "True" if all_ready else "False", reason,
                                        message)
        conditions = meta.set_condition(conditions, "Ready", "True" if all_ready else "False", reason, message)
        conditions = meta.set_condition(conditions, "PodScheduled", "True")
        if all_ready:
            conditions = [{k: v for k, v in c.items() if k not in ("reason", "message")}
                          if c["type"] in ("Ready", "ContainersReady") else c for c in conditions]
        status = {
            "phase": phase, "conditions": conditions, "hostIP": str(self.config.node_ip),
            "hostIPs": [{"ip": str(self.config.node_ip)}], "podIP": sandbox.ip, "podIPs": [{"ip": sandbox.ip}],
            "startTime": sandbox.start_time, "containerStatuses": statuses,
        }
        # Compare with what the API holds (not with what we last sent): status someone else
        # changed, such as the node lifecycle controller marking pods not ready, gets corrected.
        if _comparable(status) == _comparable((pod.get("status") or {})):
            return
        self._patch_pod_status(pod, status)

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
