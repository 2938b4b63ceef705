"""Container statuses, pod phase (getPhase) and the kubelet's pod conditions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from netk8s.api import meta, printers
from netk8s.kubelet.podstatus import (
    ContainerExit,
    ContainerRuntimeState,
    ContainerType,
    container_status,
    pod_conditions,
    pod_phase,
)
from netk8s.kubelet.probes import ProbeKind, ProbeSpec, ProbeWorker


@dataclass
class FakeProcess:
    pid: int


def exit_(code: int, reason: str = "") -> ContainerExit:
    return ContainerExit(code, reason or ("Completed" if code == 0 else "Error"), "t0", "t1", "netk8s://1")


def running(name: str = "c", **kw: object) -> ContainerRuntimeState:
    s = ContainerRuntimeState({"name": name, "image": "img"}, process=FakeProcess(7),  # type: ignore[arg-type]
                              container_id="netk8s://7", started_at="t2", **kw)  # type: ignore[arg-type]
    return s


def test_running_container_with_a_previous_exit() -> None:
    s = running(restart_count=2)
    s.record_exit(exit_(3))
    cs = container_status(s, "ContainerCreating")
    assert cs["state"] == {"running": {"startedAt": "t2"}}
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert (cs["ready"], cs["started"], cs["restartCount"], cs["containerID"]) == (True, True, 2, "netk8s://7")


def test_readiness_and_startup_probes_gate_ready_and_started() -> None:
    readiness = ProbeWorker(ProbeSpec.from_api(ProbeKind.READINESS, {}))
    startup = ProbeWorker(ProbeSpec.from_api(ProbeKind.STARTUP, {}))
    s = running(probes={ProbeKind.READINESS: readiness, ProbeKind.STARTUP: startup})
    assert (s.started, s.ready) == (False, False)
    startup.result = True
    assert (s.started, s.ready) == (True, False)
    readiness.result = True
    assert s.ready


def test_waiting_states() -> None:
    fresh = ContainerRuntimeState({"name": "c"})
    assert container_status(fresh, "PodInitializing")["state"] == {"waiting": {"reason": "PodInitializing"}}
    looping = ContainerRuntimeState({"name": "c"}, restarting=True, waiting_reason="CrashLoopBackOff",
                                    waiting_message="back-off 10s ...", restart_count=1)
    looping.record_exit(exit_(1))
    cs = container_status(looping, "ContainerCreating")
    assert cs["state"]["waiting"] == {"reason": "CrashLoopBackOff", "message": "back-off 10s ..."}
    assert cs["lastState"]["terminated"]["exitCode"] == 1 and cs["ready"] is False


def test_terminated_container_keeps_the_exit_before_as_last_state() -> None:
    s = ContainerRuntimeState({"name": "c"}, done=True)
    s.record_exit(exit_(1))
    s.record_exit(exit_(0))
    s.record_exit(exit_(2))
    cs = container_status(s, "x")
    assert cs["state"]["terminated"]["exitCode"] == 2 and cs["lastState"]["terminated"]["exitCode"] == 0
    init = ContainerRuntimeState({"name": "i"}, kind=ContainerType.INIT, done=True)
    init.record_exit(exit_(0))
    assert container_status(init, "x")["ready"] is True


def status(name: str, state: dict, last: dict | None = None, ready: bool = False) -> dict:
    return {"name": name, "state": state, "lastState": {"terminated": last} if last else {}, "ready": ready}


RUN = {"running": {}}
OK = {"terminated": {"exitCode": 0}}
BAD = {"terminated": {"exitCode": 1}}
WAIT = {"waiting": {"reason": "ContainerCreating"}}
LOOP = {"waiting": {"reason": "CrashLoopBackOff"}}


def spec(policy: str = "Always", containers: tuple[str, ...] = ("a",), init: tuple[str, ...] = ()) -> dict:
    return {"restartPolicy": policy, "containers": [{"name": n} for n in containers],
            "initContainers": [{"name": n} for n in init]}


@pytest.mark.parametrize("policy,init,app,phase", [
    ("Always", [], [status("a", WAIT)], "Pending"),
    ("Always", [], [status("a", RUN)], "Running"),
    ("Always", [], [status("a", LOOP, {"exitCode": 1})], "Running"),
    ("Always", [], [status("a", OK)], "Running"),
    ("Never", [], [status("a", OK)], "Succeeded"),
    ("Never", [], [status("a", BAD)], "Failed"),
    ("OnFailure", [], [status("a", OK)], "Succeeded"),
    ("OnFailure", [], [status("a", LOOP, {"exitCode": 1})], "Running"),
    ("Always", [status("i", RUN)], [status("a", WAIT)], "Pending"),
    ("Never", [status("i", BAD)], [status("a", WAIT)], "Failed"),
    ("Always", [status("i", LOOP, {"exitCode": 1})], [status("a", WAIT)], "Pending"),
    ("Always", [status("i", OK)], [status("a", RUN)], "Running"),
    ("Always", [], [], "Pending"),
])
def test_pod_phase(policy: str, init: list[dict], app: list[dict], phase: str) -> None:
    assert pod_phase(spec(policy, init=tuple(s["name"] for s in init)), init, app) == phase


def test_conditions_while_initializing_and_running() -> None:
    sp = spec(containers=("a", "b"), init=("i1", "i2"))
    init = [status("i1", OK), status("i2", RUN)]
    app = [status("a", WAIT), status("b", WAIT)]
    conds = {c["type"]: c for c in pod_conditions(sp, "Pending", init, app, True, None)}
    assert (conds["Initialized"]["status"], conds["Initialized"]["reason"], conds["Initialized"]["message"]) == \
        ("False", "ContainersNotInitialized", "containers with incomplete status: [i2]")
    assert conds["Ready"]["message"] == "containers with unready status: [a b]"
    assert conds["PodReadyToStartContainers"]["status"] == "True"
    pod = {"spec": sp, "status": {"phase": "Pending", "conditions": list(conds.values()),
                                  "initContainerStatuses": init, "containerStatuses": app}}
    assert printers.pod_status_text(pod)[0] == "Init:1/2"
    init = [status("i1", OK), status("i2", OK)]
    app = [status("a", RUN, ready=True), status("b", RUN, ready=True)]
    previous = list(conds.values())
    conds = {c["type"]: c for c in pod_conditions(sp, "Running", init, app, True, previous)}
    assert conds["Initialized"] == {k: v for k, v in conds["Initialized"].items()
                                    if k not in ("reason", "message")}
    assert conds["Ready"]["status"] == "True" and "reason" not in conds["Ready"]


def test_conditions_of_finished_pods() -> None:
    sp = spec("Never")
    done = {c["type"]: c for c in pod_conditions(sp, "Succeeded", [], [status("a", OK)], True, None)}
    assert (done["Ready"]["status"], done["Ready"]["reason"]) == ("False", "PodCompleted")
    failed = {c["type"]: c for c in pod_conditions(sp, "Failed", [], [status("a", BAD)], True, None)}
    assert failed["ContainersReady"]["reason"] == "PodFailed"


def test_set_condition_replaces_reason_and_message_when_the_status_turns() -> None:
    pending = meta.set_condition([], "PodScheduled", "False", "Unschedulable", "0/3 nodes are available")
    bound = meta.set_condition(pending, "PodScheduled", "True")
    assert bound[0]["status"] == "True" and "reason" not in bound[0] and "message" not in bound[0]
    assert bound[0]["lastTransitionTime"]
