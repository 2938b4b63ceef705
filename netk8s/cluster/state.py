"""A cluster's state directory: what is running, and every kernel object and PID it made.

Layout under ``$NETK8S_STATE_ROOT`` (default ``/run/netk8s``; tmpfs, cleared on
reboot together with the namespaces it describes)::

    <name>/cluster.json     phase, daemon PID, API port, resolved topology
    <name>/kubeconfig       for kubectl and the Python client
    <name>/store.db         the SQLite object store
    <name>/daemon.log       the control plane and node agents' log
    <name>/records/netns/   one empty file per network namespace created
    <name>/records/pids/    one file per process started: "<starttime> <what>"
    <name>/logs/            container logs, <ns>_<pod>_<uid>/<container>/<n>.log
    <name>/cni/<node>/      CNI config and IPAM leases of each node

Namespaces are recorded *before* they are created and PIDs right after the
process starts, so teardown after a crash finds everything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from netk8s.api.validation import is_dns1123_label
from netk8s.errors import NotFoundError, UserError
from netk8s.topology.schema import MAX_CLUSTER_NAME

DEFAULT_STATE_ROOT = Path("/run/netk8s")


def state_root() -> Path:
    return Path(os.environ.get("NETK8S_STATE_ROOT") or DEFAULT_STATE_ROOT)


def check_cluster_name(name: str) -> str:
    """``name`` if it is a valid cluster name (a DNS-1123 label of at most ``MAX_CLUSTER_NAME`` characters)."""
    if not is_dns1123_label(name) or len(name) > MAX_CLUSTER_NAME:
        raise UserError(f"--name: invalid cluster name {name!r}: use lower-case letters, digits and '-', "
                        f"start and end with a letter or digit, at most {MAX_CLUSTER_NAME} characters")
    return name


class Phase(str, Enum):
    STARTING = "Starting"
    RUNNING = "Running"
    FAILED = "Failed"
    STOPPING = "Stopping"


@dataclass
class ClusterRecord:
    name: str
    phase: Phase = Phase.STARTING
    daemon_pid: int = 0
    daemon_start_time: int | None = None
    api_port: int = 0
    etcd_endpoint: str = ""  # the cluster's own etcd (store: etcd), for etcdctl
    created: str = ""
    error: str = ""
    topology: dict[str, Any] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClusterRecord":
        data = dict(data)
        data["phase"] = Phase(data.get("phase", Phase.STARTING.value))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class StateDir:
    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = name
        self.root = root or state_root()
        self.path = self.root / name

    # -- paths -------------------------------------------------------------------------

    @property
    def record_file(self) -> Path:
        return self.path / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    @property
    def store_file(self) -> Path:
        return self.path / "store.db"

    @property
    def etcd_dir(self) -> Path:
        return self.path / "etcd"

    @property
    def log_file(self) -> Path:
        return self.path / "daemon.log"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def cni_dir(self, node: str) -> Path:
        return self.path / "cni" / node

    @property
    def _netns_dir(self) -> Path:
        return self.path / "records" / "netns"

    @property
    def _pids_dir(self) -> Path:
        return self.path / "records" / "pids"

    # -- lifecycle -----------------------------------------------------------------------

    def exists(self) -> bool:
        return self.record_file.exists()

    def create(self, record: ClusterRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=False)
        os.chmod(self.path, 0o755)
        self._netns_dir.mkdir(parents=True)
        self._pids_dir.mkdir(parents=True)
        self.logs_dir.mkdir()
        self.write(record)

    def read(self) -> ClusterRecord:
        try:
            return ClusterRecord.from_json(json.loads(self.record_file.read_text()))
        except FileNotFoundError:
            raise NotFoundError(f'cluster "{self.name}" not found (no state in {self.path})') from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.record_file}: unreadable cluster state ({exc}); run "
                            f"`netk8s down --name {self.name}` to clean up") from None

    def write(self, record: ClusterRecord) -> None:
        _atomic_write(self.record_file, json.dumps(record.to_json(), indent=2))

    def update(self, **changes: Any) -> ClusterRecord:
        record = self.read()
        for key, value in changes.items():
            setattr(record, key, value)
        self.write(record)
        return record

    # -- resource records ------------------------------------------------------------------

    def record_netns(self, netns_name: str) -> None:
        self._netns_dir.mkdir(parents=True, exist_ok=True)
        (self._netns_dir / netns_name).touch()

    def forget_netns(self, netns_name: str) -> None:
        try:
            (self._netns_dir / netns_name).unlink()
        except FileNotFoundError:
            pass

    def netns_names(self) -> list[str]:
        try:
            return sorted(os.listdir(self._netns_dir))
        except FileNotFoundError:
            return []

    def record_pid(self, pid: int, started: int | None, what: str) -> None:
        self._pids_dir.mkdir(parents=True, exist_ok=True)
        (self._pids_dir / str(pid)).write_text(f"{started if started is not None else '-'} {what}\n")

    def forget_pid(self, pid: int) -> None:
        try:
            (self._pids_dir / str(pid)).unlink()
        except FileNotFoundError:
            pass

    def pids(self) -> list[tuple[int, int | None, str]]:
        out = []
        try:
            entries = os.listdir(self._pids_dir)
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                started_text, _, what = (self._pids_dir / entry).read_text().strip().partition(" ")
                out.append((int(entry), None if started_text == "-" else int(started_text), what))
            except (OSError, ValueError):
                continue
        return sorted(out)


def list_clusters(root: Path | None = None) -> list[str]:
    root = root or state_root()
    try:
        return sorted(d for d in os.listdir(root) if (root / d / "cluster.json").exists())
    except FileNotFoundError:
        return []


def write_kubeconfig(state: StateDir, server: str) -> None:
    import yaml

    context = f"netk8s-{state.name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
        "current-context": context,
        "preferences": {},
    }
    _atomic_write(state.kubeconfig, yaml.safe_dump(config, sort_keys=False))
    os.chmod(state.kubeconfig, 0o644)
