"""Probe workers as state machines, and exec probes run for real (no namespaces needed)."""

from __future__ import annotations

from netk8s.kubelet.probes import (
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    ProbeVerdict,
    ProbeWorker,
    run_exec,
    run_probe,
)

S, F = ProbeResult.SUCCESS, ProbeResult.FAILURE


def worker(kind: ProbeKind, **probe: object) -> ProbeWorker:
    w = ProbeWorker(ProbeSpec.from_api(kind, {"exec": {"command": ["true"]}, **probe}))
    w.container_started(100.0)
    return w


def feed(w: ProbeWorker, results: list[ProbeResult]) -> list[ProbeVerdict]:
    now = 100.0
    out = []
    for result in results:
        now += w.spec.period
        out.append(w.record(result, "msg", now))
    return out


def test_defaults_follow_the_api() -> None:
    spec = ProbeSpec.from_api(ProbeKind.LIVENESS, {"httpGet": {"port": 80}, "successThreshold": 3})
    assert (spec.period, spec.timeout, spec.success_threshold, spec.failure_threshold, spec.initial_delay) == \
        (10.0, 1.0, 1, 3, 0.0)  # liveness success threshold is always 1
    assert ProbeSpec.from_api(ProbeKind.READINESS, {"successThreshold": 3}).success_threshold == 3
    assert ProbeSpec.from_api(ProbeKind.LIVENESS, {"terminationGracePeriodSeconds": 5}).termination_grace == 5


def test_initial_results() -> None:
    assert worker(ProbeKind.READINESS).result is False
    assert worker(ProbeKind.LIVENESS).result is True
    assert worker(ProbeKind.STARTUP).result is None


def test_readiness_needs_success_threshold_and_failure_threshold_in_a_row() -> None:
    w = worker(ProbeKind.READINESS, successThreshold=2, failureThreshold=2)
    assert feed(w, [S]) == [ProbeVerdict.NONE] and w.result is False
    assert feed(w, [S]) == [ProbeVerdict.CHANGED] and w.result is True
    assert feed(w, [F, S, F]) == [ProbeVerdict.NONE] * 3 and w.result is True  # never two in a row
    assert feed(w, [F]) == [ProbeVerdict.CHANGED] and w.result is False
    assert not w.on_hold  # readiness never kills


def test_liveness_failure_kills_and_holds_until_the_next_instance() -> None:
    w = worker(ProbeKind.LIVENESS, failureThreshold=3)
    assert feed(w, [F, F, F]) == [ProbeVerdict.NONE, ProbeVerdict.NONE, ProbeVerdict.KILL]
    assert w.on_hold and not w.due(10_000.0, True)
    w.container_started(10_000.0)
    assert w.result is True and w.due(10_000.0, True)


def test_unknown_results_are_thrown_away() -> None:
    w = worker(ProbeKind.LIVENESS, failureThreshold=2)
    assert feed(w, [F, ProbeResult.UNKNOWN, F]) == [ProbeVerdict.NONE, ProbeVerdict.NONE, ProbeVerdict.KILL]


def test_initial_delay_period_and_startup_gating() -> None:
    w = worker(ProbeKind.LIVENESS, initialDelaySeconds=5, periodSeconds=2)
    assert not w.due(104.9, True) and w.due(105.0, True)
    assert not w.due(105.0, False)  # the startup probe has not passed yet
    w.record(S, "", 105.0)
    assert not w.due(106.9, True) and w.due(107.0, True)
    startup = worker(ProbeKind.STARTUP)
    assert startup.due(100.0, False) and not startup.due(100.0, True)
    assert feed(startup, [S]) == [ProbeVerdict.CHANGED] and startup.result is True


def test_readiness_drops_when_the_container_stops() -> None:
    w = worker(ProbeKind.READINESS)
    feed(w, [S])
    w.container_stopped()
    assert w.result is False and not w.due(1e9, True)


def test_exec_probe_outcome_and_message() -> None:
    assert run_exec(["sh", "-c", "echo fine"], [], 5) == (S, "fine\n")
    assert run_exec(["sh", "-c", "echo broken >&2; exit 3"], [], 5) == (F, "broken\n")
    result, message = run_exec(["sleep", "5"], [], 0.2)
    assert result is F and message == "command 'sleep 5' timed out"
    assert run_exec(["/nonexistent/probe"], [], 1)[0] is ProbeResult.UNKNOWN
    spec = ProbeSpec.from_api(ProbeKind.LIVENESS, {"exec": {"command": ["sh", "-c", "exit 1"]}})
    assert run_probe(spec, {}, "10.0.0.1", "unused", ["env"])[0] is F  # the prefix runs the command


def test_grpc_probes_are_reported_unsupported_but_pass() -> None:
    spec = ProbeSpec.from_api(ProbeKind.READINESS, {"grpc": {"port": 9000}})
    result, message = run_probe(spec, {}, "10.0.0.1", "unused", [])
    assert result is ProbeResult.WARNING and "not supported" in message
    w = ProbeWorker(spec)
    w.container_started(0.0)
    assert w.record(result, message, 1.0) is ProbeVerdict.CHANGED and w.result is True


def test_named_port_that_does_not_exist_is_an_error() -> None:
    spec = ProbeSpec.from_api(ProbeKind.READINESS, {"tcpSocket": {"port": "web"}})
    assert run_probe(spec, {"ports": [{"name": "http", "containerPort": 80}]}, "10.0.0.1", "x", [])[0] \
        is ProbeResult.UNKNOWN
