"""Pod and container status as the kubelet reports it (pure).

``ContainerRuntimeState`` is what the kubelet knows about one container across
its instances; ``container_status`` turns it into a ``containerStatuses`` (or
``initContainerStatuses``) entry: running with ``lastState`` from the previous
exit, waiting (``ContainerCreating``, ``PodInitializing``,
``CrashLoopBackOff``, ``CreateContainerConfigError``, ...) or terminated.
``pod_phase`` is pkg/kubelet ``getPhase`` and ``pod_conditions`` the status
manager's Initialized/ContainersReady/Ready/PodReadyToStartContainers
conditions, with the kubelet's reasons and messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netk8s.api import meta
from netk8s.kubelet.probes import ProbeKind, ProbeWorker

if TYPE_CHECKING:
    from netk8s.kubelet.runtime import RunningProcess

CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
RUN_CONTAINER_ERROR = "RunContainerError"
ERR_IMAGE_PULL = "ErrImagePull"


class ContainerType(str, Enum):
    INIT = "init"
    APP = "app"


@dataclass
class ContainerExit:
    """One finished container instance (``state.terminated``)."""

    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    container_id: str
    finished_mono: float = 0.0
    message: str = ""

    def to_api(self) -> dict:
        out: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                               "finishedAt": self.finished_at, "containerID": self.container_id}
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class KillRequest:
    """A container the kubelet must stop (failed liveness/startup probe)."""

    reason: ProbeKind
    message: str
    grace: float


@dataclass
class ContainerRuntimeState:
    spec: dict
    kind: ContainerType = ContainerType.APP
    process: "RunningProcess | None" = None
    container_id: str = ""
    restart_count: int = 0
    started_at: str = ""
    exits: list[ContainerExit] = field(default_factory=list)
    waiting_reason: str = ""
    waiting_message: str = ""
    restarting: bool = False  # exited and will be started again (shown as waiting)
    done: bool = False        # exited and will not be started again
    retry_at: float = 0.0     # monotonic time of the next start attempt (0: at the next sync)
    probes: dict[ProbeKind, ProbeWorker] = field(default_factory=dict)
    kill: KillRequest | None = None
    ever_started: bool = False
    backoff_ref: float | None = None  # finish time (monotonic) the crash-loop back-off is measured from
    cgroup_dir: Path | None = None
    oom_baseline: int = 0             # memory.events oom_kill when this instance started

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def last_exit(self) -> ContainerExit | None:
        return self.exits[-1] if self.exits else None

    @property
    def succeeded(self) -> bool:
        return not self.running and self.done and self.last_exit is not None and self.last_exit.exit_code == 0

    def record_exit(self, exit_: ContainerExit) -> None:
        self.exits = [*self.exits[-1:], exit_]

    @property
    def started(self) -> bool:
        """Running and past its startup probe (if any)."""
        if not self.running:
            return False
        startup = self.probes.get(ProbeKind.STARTUP)
        return startup is None or startup.result is True

    @property
    def ready(self) -> bool:
        if self.kind is ContainerType.INIT:
            return self.succeeded
        if not self.started:
            return False
        readiness = self.probes.get(ProbeKind.READINESS)
        return readiness is None or readiness.result is True


def container_status(state: ContainerRuntimeState, default_waiting: str) -> dict:
    status: dict[str, Any] = {"name": state.name, "image": state.spec.get("image", ""), "imageID": "",
                              "restartCount": state.restart_count, "ready": state.ready,
                              "started": state.started}
    last = state.last_exit
    if state.running:
        status["state"] = {"running": {"startedAt": state.started_at}}
        status["containerID"] = state.container_id
        if last is not None:
            status["lastState"] = {"terminated": last.to_api()}
    elif last is not None and not state.restarting:
        status["state"] = {"terminated": last.to_api()}
        status["containerID"] = last.container_id
        if len(state.exits) > 1:
            status["lastState"] = {"terminated": state.exits[-2].to_api()}
    else:
        waiting = {"reason": state.waiting_reason or default_waiting}
        if state.waiting_message:
            waiting["message"] = state.waiting_message
        status["state"] = {"waiting": waiting}
        if last is not None:
            status["lastState"] = {"terminated": last.to_api()}
            status["containerID"] = last.container_id
    if "lastState" not in status:
        status["lastState"] = {}
    return status


def _by_name(statuses: list[dict]) -> dict[str, dict]:
    return {str(s.get("name", "")): s for s in statuses}


def pod_phase(spec: dict, init_statuses: list[dict], statuses: list[dict]) -> str:
    """pkg/kubelet ``getPhase`` for a pod that is not being terminated."""
    policy = spec.get("restartPolicy") or "Always"
    init_by_name, by_name = _by_name(init_statuses), _by_name(statuses)
    pending_init = failed_init = 0
    for container in spec.get("initContainers") or []:
        cs = init_by_name.get(container.get("name", ""))
        state = (cs or {}).get("state") or {}
        if cs is None or "running" in state:
            pending_init += 1
        elif "terminated" in state:
            if int(state["terminated"].get("exitCode", 0)) != 0:
                failed_init += 1
        elif "waiting" in state:
            last = ((cs.get("lastState") or {}).get("terminated"))
            if last is not None:
                if int(last.get("exitCode", 0)) != 0:
                    failed_init += 1
            else:
                pending_init += 1
        else:
            pending_init += 1
    unknown = running = waiting = stopped = succeeded = 0
    containers = spec.get("containers") or []
    for container in containers:
        cs = by_name.get(container.get("name", ""))
        state = (cs or {}).get("state") or {}
        if cs is None:
            unknown += 1
        elif "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if int(state["terminated"].get("exitCode", 0)) == 0:
                succeeded += 1
        elif "waiting" in state:
            if (cs.get("lastState") or {}).get("terminated") is not None:
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    if failed_init > 0 and policy == "Never":
        return "Failed"
    if pending_init > 0 or waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running > 0:
        return "Pending"
    if stopped == len(containers) and unknown == 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"  # OnFailure: the failed ones restart
    return "Pending"


def _condition(cond_type: str, ok: bool, reason: str = "", message: str = "") -> dict:
    cond: dict[str, str] = {"type": cond_type, "status": "True" if ok else "False"}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _names(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"


def initialized_condition(spec: dict, init_statuses: list[dict], statuses: list[dict], phase: str) -> dict:
    init_specs = spec.get("initContainers") or []
    if not init_specs:
        return _condition("Initialized", True)
    by_name = _by_name(init_statuses)
    unknown, incomplete = [], []
    for container in init_specs:
        name = str(container.get("name", ""))
        cs = by_name.get(name)
        if cs is None:
            unknown.append(name)
            continue
        term = ((cs.get("state") or {}).get("terminated"))
        if term is None or int(term.get("exitCode", 0)) != 0:
            incomplete.append(name)
    if phase == "Succeeded" and not unknown:
        return _condition("Initialized", True, "PodCompleted")
    # Once a regular container has started the pod was initialized before.
    if any((s.get("state") or {}).get("running") or (s.get("state") or {}).get("terminated")
           or (s.get("lastState") or {}).get("terminated") for s in statuses):
        return _condition("Initialized", True)
    message = _status_message(unknown, "incomplete", incomplete)
    if message:
        return _condition("Initialized", False, "ContainersNotInitialized", message)
    return _condition("Initialized", True)


def _status_message(unknown: list[str], label: str, others: list[str]) -> str:
    """The kubelet's "containers with unknown status: [..], containers with <label> status: [..]"."""
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_names(unknown)}")
    if others:
        messages.append(f"containers with {label} status: {_names(others)}")
    return ", ".join(messages)


def containers_ready_condition(spec: dict, statuses: list[dict], phase: str, cond_type: str = "ContainersReady"
                               ) -> dict:
    by_name = _by_name(statuses)
    unknown, unready = [], []
    for container in spec.get("containers") or []:
        name = str(container.get("name", ""))
        cs = by_name.get(name)
        if cs is None:
            unknown.append(name)
        elif not cs.get("ready"):
            unready.append(name)
    if phase == "Succeeded" and not unknown:
        return _condition(cond_type, False, "PodCompleted")
    if phase == "Failed":
        return _condition(cond_type, False, "PodFailed")
    message = _status_message(unknown, "unready", unready)
    if message:
        return _condition(cond_type, False, "ContainersNotReady", message)
    return _condition(cond_type, True)


def pod_conditions(spec: dict, phase: str, init_statuses: list[dict], statuses: list[dict],
                   sandbox_ready: bool, previous: list[dict] | None) -> list[dict]:
    """The kubelet-owned conditions merged into ``previous`` (transition times kept when unchanged)."""
    conditions = list(previous or [])
    containers_ready = containers_ready_condition(spec, statuses, phase)
    wanted = [
        _condition("PodReadyToStartContainers", sandbox_ready),
        initialized_condition(spec, init_statuses, statuses, phase),
        containers_ready,
        dict(containers_ready, type="Ready"),  # the pod is Ready when its containers are (no readiness gates)
        _condition("PodScheduled", True),
    ]
    for cond in wanted:
        conditions = meta.set_condition(conditions, cond["type"], cond["status"], cond.get("reason", ""),
                                        cond.get("message", ""))
    return conditions
