"""Container resource limits with cgroup v2, as the kubelet's cgroupfs driver lays them out.

Each cluster gets a sub-tree ``/sys/fs/cgroup/netk8s-<cluster>/pod<uid>/<container>``
with the memory and cpu controllers enabled down to the containers; a
container's cgroup gets ``memory.max`` from ``limits.memory`` (and
``memory.swap.max`` 0, so a limit means OOM, not swap), ``cpu.max`` from
``limits.cpu`` (quota per 100 ms period, at least 1 ms) and ``cpu.weight``
from ``requests.cpu`` (the kubelet's shares converted to a weight). The
container process joins its cgroup before it execs (see runtime.py), and an
exit by SIGKILL with a risen ``oom_kill`` count in ``memory.events`` is
reported as ``OOMKilled``.

Without a writable cgroup2 hierarchy with both controllers (cgroup v1 or
hybrid machines, unprivileged containers) ``detect`` says why and nothing is
enforced; the kubelet then warns once and records an event on pods with
limits. The tree is recorded under ``records/cgroups`` of the cluster's state
directory, and ``remove_recorded`` removes it after a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from netk8s.api import quantity
from netk8s.cluster.state import StateDir
from netk8s.errors import KernelError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory")
CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
MIN_SHARES = 2
MAX_SHARES = 262_144
RECORD_DIR = ("records", "cgroups")


@dataclass(frozen=True)
class ContainerLimits:
    memory_max: int | None = None   # bytes
    cpu_quota_us: int | None = None  # per CPU_PERIOD_US
    cpu_weight: int | None = None

    @property
    def limited(self) -> bool:
        return self.memory_max is not None or self.cpu_quota_us is not None

    def files(self) -> dict[str, str]:
        """cgroup interface files and the values to write."""
        out: dict[str, str] = {}
        if self.memory_max is not None:
            out["memory.max"] = str(self.memory_max)
            out["memory.swap.max"] = "0"
        if self.cpu_quota_us is not None:
            out["cpu.max"] = f"{self.cpu_quota_us} {CPU_PERIOD_US}"
        if self.cpu_weight is not None:
            out["cpu.weight"] = str(self.cpu_weight)
        return out


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares to v2 cpu.weight (the runc/kubelet conversion)."""
    return 1 + ((shares - MIN_SHARES) * 9999) // (MAX_SHARES - MIN_SHARES)


def milli_cpu_to_shares(milli: int) -> int:
    if milli == 0:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli * 1024 // 1000))


def milli_cpu_to_quota(milli: int) -> int:
    return max(MIN_QUOTA_US, milli * CPU_PERIOD_US // 1000)


def container_limits(container: dict) -> ContainerLimits:
    """Limits from a container spec (requests default to limits, as the API server defaults them)."""
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    name = container.get("name", "")
    memory = quantity.count(limits["memory"], f"spec.containers[{name}].resources.limits.memory") \
        if limits.get("memory") is not None else None
    cpu = quantity.milli_cpu(limits["cpu"], f"spec.containers[{name}].resources.limits.cpu") \
        if limits.get("cpu") is not None else None
    request = requests.get("cpu", limits.get("cpu"))
    weight = shares_to_weight(milli_cpu_to_shares(quantity.milli_cpu(
        request, f"spec.containers[{name}].resources.requests.cpu"))) if request is not None else None
    return ContainerLimits(memory, milli_cpu_to_quota(cpu) if cpu is not None else None, weight)


def pod_has_limits(pod: dict) -> bool:
    spec = pod.get("spec") or {}
    return any(((c.get("resources") or {}).get("limits") or {}).keys() & {"cpu", "memory"}
               for group in ("initContainers", "containers") for c in spec.get(group) or [])


@dataclass(frozen=True)
class Support:
    available: bool
    reason: str = ""


def detect(root: Path = CGROUP_ROOT) -> Support:
    """Whether limits can be enforced under ``root``; otherwise why not."""
    controllers_file = root / "cgroup.controllers"
    if not controllers_file.exists():
        return Support(False, f"{root} is not a cgroup v2 hierarchy (cgroup v1 or hybrid mode)")
    try:
        available = controllers_file.read_text().split()
    except OSError as exc:
        return Support(False, f"cannot read {controllers_file}: {exc.strerror}")
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        return Support(False, f"the cgroup v2 hierarchy at {root} lacks the {', '.join(missing)} controller"
                       + ("s" if len(missing) > 1 else ""))
    if not os.access(root, os.W_OK) or not os.access(root / "cgroup.subtree_control", os.W_OK):
        return Support(False, f"the cgroup v2 hierarchy at {root} is not writable")
    return Support(True)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise KernelError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _enable_controllers(directory: Path) -> None:
    control = directory / "cgroup.subtree_control"
    enabled = control.read_text().split() if control.exists() else []
    wanted = [c for c in CONTROLLERS if c not in enabled]
    if wanted:
        _write(control, " ".join(f"+{c}" for c in wanted))


def _remove_tree(directory: Path, attempts: int = 20) -> bool:
    """rmdir a cgroup and its children, deepest first; killing what still runs in it
    (``cgroup.kill``) — only ever called on netk8s's own cgroups."""
    if not directory.is_dir():
        return True
    for child in sorted((p for p in directory.iterdir() if p.is_dir()), reverse=True):
        _remove_tree(child, attempts)
    for attempt in range(attempts):
        try:
            directory.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", directory, exc.strerror)
                return False
            kill = directory / "cgroup.kill"
            if attempt == 0 and kill.exists():
                try:
                    kill.write_text("1")
                except OSError:
                    pass
            time.sleep(0.05)
    log.warning("cgroup %s is still busy; left in place", directory)
    return False


class CgroupManager:
    """The cluster's cgroup sub-tree: pod and container cgroups with their limits."""

    def __init__(self, cluster: str, state: StateDir, root: Path = CGROUP_ROOT) -> None:
        self.cluster = cluster
        self.state = state
        self.root = root
        self.cluster_dir = root / f"netk8s-{cluster}"
        self._ready = False

    def _record(self) -> None:
        record = self.state.path.joinpath(*RECORD_DIR)
        record.mkdir(parents=True, exist_ok=True)
        (record / self.cluster_dir.name).write_text(f"{self.cluster_dir}\n")

    def _ensure_cluster(self) -> None:
        if self._ready and self.cluster_dir.is_dir():
            return
        self._record()  # before creating it, so a crash right after still finds it
        _enable_controllers(self.root)
        self.cluster_dir.mkdir(exist_ok=True)
        _enable_controllers(self.cluster_dir)
        self._ready = True

    def pod_dir(self, uid: str) -> Path:
        return self.cluster_dir / f"pod{uid}"

    def container_dir(self, uid: str, container: str) -> Path:
        return self.pod_dir(uid) / container

    def prepare(self, uid: str, container: str, limits: ContainerLimits) -> Path:
        """Create (or reuse) the container's cgroup with its limits; returns its directory."""
        try:
            self._ensure_cluster()
            pod = self.pod_dir(uid)
            pod.mkdir(exist_ok=True)
            _enable_controllers(pod)
            directory = self.container_dir(uid, container)
            directory.mkdir(exist_ok=True)
            for name, value in limits.files().items():
                if (directory / name).exists():
                    _write(directory / name, value)
            return directory
        except OSError as exc:
            raise KernelError(f"cannot create the cgroup of {container} in pod {uid}: {exc.strerror}") from None

    @staticmethod
    def oom_kills(directory: Path) -> int:
        """The ``oom_kill`` count of ``memory.events`` (0 when unreadable)."""
        try:
            for line in (directory / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove_pod(self, uid: str) -> None:
        _remove_tree(self.pod_dir(uid))

    def remove_cluster_if_empty(self) -> None:
        """Remove the cluster's sub-tree once no pod cgroup is left (another node's kubelet may still use it)."""
        try:
            if self.cluster_dir.is_dir() and not any(p.is_dir() for p in self.cluster_dir.iterdir()):
                self.cluster_dir.rmdir()
                forget_record(self.state, self.cluster_dir.name)
        except OSError:
            pass


def forget_record(state: StateDir, name: str) -> None:
    try:
        state.path.joinpath(*RECORD_DIR, name).unlink()
    except FileNotFoundError:
        pass


def remove_recorded(state: StateDir) -> int:
    """Crash-safe teardown: remove every recorded cgroup tree of the cluster (after its processes
    were stopped). Only ``netk8s-<cluster>`` directories are ever touched. Returns how many."""
    record_dir = state.path.joinpath(*RECORD_DIR)
    removed = 0
    try:
        entries = sorted(os.listdir(record_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            path = Path((record_dir / entry).read_text().strip())
        except OSError:
            continue
        if path.name != f"netk8s-{state.name}" or entry != path.name:
            log.warning("ignoring cgroup record %s: %s is not this cluster's cgroup", entry, path)
            continue
        if _remove_tree(path):
            removed += 1
            forget_record(state, entry)
    return removed
