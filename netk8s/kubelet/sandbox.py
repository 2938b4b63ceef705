"""Pod sandboxes: the namespaces a pod's containers share, held by a "pause" process.

A pod sandbox is

- a named network namespace ``nk-<cluster>-<ns>-<pod>-<uid5>``: the pod's own
  (CNI ADD wires it), or, for a hostNetwork pod, a second name for the node's
  namespace (``ip netns attach``), so that ``ip netns exec`` still finds the
  pod's own ``/etc/netns/<name>/`` files;
- a UTS namespace carrying the pod's hostname, held by a pause process
  (``unshare --uts`` + ``hostname`` + ``sleep infinity``, recorded like every
  PID as ``sandbox <netns>``). Containers, exec probes and ``netk8s exec``
  enter it with ``nsenter --uts=/proc/<pause>/ns/uts`` before
  ``ip netns exec``, so every process of the pod sees the same hostname.

Kernel quirk: ``ip netns exec`` also unshares a mount namespace, remounts
/sys for the target namespace and bind-mounts each file of
``/etc/netns/<name>/`` over ``/etc/<file>`` (only when ``/etc/<file>``
exists), which is how hosts, resolv.conf and hostname reach the pod.
"""

from __future__ import annotations

import logging
import shutil
import time

from netk8s.cluster.state import StateDir
from netk8s.errors import KernelError
from netk8s.kernel import netns, procs
from netk8s.kubelet.runtime import ProcessRuntime, RunningProcess, enter_argv

log = logging.getLogger(__name__)

PAUSE_READY_TIMEOUT = 5.0
# Set the hostname inside the new UTS namespace, then become a process that only holds it.
_PAUSE_SCRIPT = 'hostname "$0" && exec sleep infinity'


def pause_record(netns_name: str) -> str:
    """How the pause process of a sandbox is named in the cluster's PID records."""
    return f"sandbox {netns_name}"


def pod_enter_argv(state: StateDir, netns_name: str) -> list[str]:
    """``enter_argv`` for a running pod found from the cluster's records (for ``netk8s exec``):
    without a live pause process the command still runs in the pod's network namespace."""
    wanted = pause_record(netns_name)
    for pid, started, what in state.pids():
        if what == wanted and procs.is_running(pid, started):
            return enter_argv(netns_name, pid)
    return enter_argv(netns_name, None)


class SandboxRuntime:
    """Starts and stops pause processes and names hostNetwork sandboxes."""

    def __init__(self, runtime: ProcessRuntime, state: StateDir) -> None:
        self.runtime = runtime
        self.state = state
        for tool in ("nsenter", "unshare", "hostname", "sleep"):
            if shutil.which(tool) is None:
                raise KernelError(f"the `{tool}` command is missing (util-linux, coreutils); run `make setup`")

    def start_pause(self, netns_path: str, hostname: str, record_as: str) -> RunningProcess:
        """A pause process in ``netns_path`` holding a new UTS namespace named ``hostname``."""
        argv = ["nsenter", f"--net={netns_path}", "--", "unshare", "--uts", "--",
                "sh", "-c", _PAUSE_SCRIPT, hostname]
        proc = self.runtime.start(None, argv, {}, None, record_as)
        deadline = time.monotonic() + PAUSE_READY_TIMEOUT
        # Ready once it has exec'd sleep: the hostname is set by then.
        while _comm(proc.pid) != "sleep":
            code = proc.poll()
            if code is not None:
                self.runtime.reap(proc)
                raise KernelError(f"the pause process for {record_as} exited with {code}")
            if time.monotonic() > deadline:
                self.runtime.stop(proc, 0)
                raise KernelError(f"the pause process for {record_as} did not start within "
                                  f"{PAUSE_READY_TIMEOUT:g}s")
            time.sleep(0.002)
        return proc

    def alive(self, proc: RunningProcess | None) -> bool:
        return proc is not None and proc.poll() is None and procs.is_running(proc.pid, proc.started)

    def stop_pause(self, proc: RunningProcess | None) -> None:
        if proc is not None:
            self.runtime.stop(proc, 0.5)

    @staticmethod
    def name_host_network(alias: str, pause: RunningProcess) -> None:
        """Give the node's namespace (where ``pause`` runs) the pod's name too."""
        if netns.exists(alias):
            netns.delete(alias)
        netns.attach(alias, pause.pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""

