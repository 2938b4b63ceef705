"""The netk8s-cni executable's start-up diet: what it imports, its lazy logging, its fast exit."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.cni import lazylog
from netk8s.cni import main as cni_main
from netk8s.cni.types import version_json

NK_CNI = str(Path(sys.executable).parent / "netk8s-cni")
# What a CNI call must not pay for (each costs the executable milliseconds of a ~35 ms run).
HEAVY = ("pyroute2", "logging", "subprocess", "dataclasses", "socket", "threading", "hashlib", "netk8s.cni.invoker",
         "inspect", "shlex")


@pytest.fixture(autouse=True)
def fresh_lazylog() -> Iterator[None]:
    lazylog.reset()
    yield
    lazylog.reset()


def test_executable_imports_stay_minimal() -> None:
    code = ("import sys; import netk8s.cni.main, netk8s.cni.plugin; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = set(out.split())
    assert {"netk8s.cni.plugin", "netk8s.cni.rtnl", "_socket"} <= loaded
    assert not [m for m in HEAVY if m in loaded], sorted(m for m in HEAVY if m in loaded)


def test_executable_answers_version_and_exits_cleanly() -> None:
    proc = subprocess.run([NK_CNI], env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout) == version_json()
    bad = subprocess.run([NK_CNI], env={"CNI_COMMAND": "ADD", "PATH": os.environ.get("PATH", "")},
                         input=b"{", capture_output=True, timeout=60)
    # the error JSON made it out before the process ended without finalization
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 4
    assert bad.stderr == b""


def test_main_called_as_the_executable_exits_at_once(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    exits: list[int] = []

    def fake_exit(status: int) -> None:
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(os, "_exit", fake_exit)
    shutdowns: list[int] = []
    monkeypatch.setattr(logging, "shutdown", lambda: shutdowns.append(1))  # keep pytest's handlers open
    monkeypatch.setattr(sys, "argv", ["/usr/libexec/cni/netk8s-cni"])
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(SystemExit):
        cni_main.main()
    assert exits == [0] and shutdowns == [1] and json.loads(capsys.readouterr().out) == version_json()
    # anywhere else (tests, embedding) main() returns
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert cni_main.main() == 0 and exits == [0]


def test_lazy_logger_hands_records_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    log = lazylog.get_logger("netk8s.cni.test")
    with caplog.at_level(logging.DEBUG, logger="netk8s.cni.test"):
        log.debug("lease %s", "10.0.0.2")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed %d", 1)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(10, "lease 10.0.0.2"), (40, "failed 1")]
    assert caplog.records[1].exc_info is not None
    # the record names the caller, not the wrapper
    assert caplog.records[0].funcName == "test_lazy_logger_hands_records_to_logging"


def test_configured_lazy_logger_drops_low_records_and_sets_up_once(caplog: pytest.LogCaptureFixture) -> None:
    setups: list[int] = []
    lazylog.configure(lazylog.WARNING, lambda: setups.append(1))
    log = lazylog.get_logger("netk8s.cni.test")
    with caplog.at_level(logging.DEBUG, logger="netk8s.cni.test"):
        log.debug("dropped")
        log.info("dropped too")
        assert setups == []  # nothing emitted yet: logging never needed
        log.warning("kept %s", 1)
        log.error("kept %s", 2)
    assert setups == [1]
    assert [r.getMessage() for r in caplog.records] == ["kept 1", "kept 2"]
