"""A cluster's own etcd server, for clusters with ``store: etcd``.

The cluster daemon starts ``etcd`` (Debian's etcd-server package) as a single
member listening on two free ports of 127.0.0.1, with its data and log under
the cluster's state directory, records its PID with the cluster (so ``netk8s
down`` stops it even after a crash of the daemon) and waits for ``/health``.
``etcd_argv`` is pure.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from netk8s.cluster.state import StateDir
from netk8s.errors import NetK8sError, UserError
from netk8s.kernel import procs

log = logging.getLogger(__name__)

MEMBER = "netk8s"


def etcd_argv(data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return ["etcd", "--name", MEMBER, "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{MEMBER}={peer}", "--initial-cluster-state", "new",
            "--log-outputs", "stderr"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_etcd() -> None:
    if shutil.which("etcd") is None:
        raise UserError("store: etcd needs the etcd binary (Debian package etcd-server); run `make setup` first, "
                        "or use store: sqlite")


class EtcdServer:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None
        self._started: int | None = None

    @property
    def log_file(self) -> Path:
        return self.state.path / "etcd.log"

    def start(self, timeout: float = 30.0) -> str:
        """Start etcd and return its client URL once it is healthy."""
        require_etcd()
        client_port, peer_port = _free_port(), _free_port()
        self.state.etcd_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_out:
            self._proc = subprocess.Popen(etcd_argv(self.state.etcd_dir, client_port, peer_port),
                                          stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self._started = procs.start_time(self._proc.pid)
        self.state.record_pid(self._proc.pid, self._started, "etcd")
        self.endpoint = f"http://127.0.0.1:{client_port}"
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.stop()
                raise NetK8sError(f"etcd did not become healthy within {timeout:g}s: {tail[0][:300]} "
                                  f"(log: {self.log_file})")
            time.sleep(0.1)
        log.info("etcd %d serving on %s", self._proc.pid, self.endpoint)
        return self.endpoint

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as answer:
                return json.loads(answer.read()).get("health") == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        procs.terminate(self._proc.pid, self._started)
        self._proc.wait(5)
        self.state.forget_pid(self._proc.pid)
        self._proc = None
