"""cgroup v2 limits: values from container specs, detection, and the sub-tree on a fake hierarchy."""

from __future__ import annotations

from pathlib import Path

import pytest

from netk8s.cluster.state import StateDir
from netk8s.kubelet import cgroups
from netk8s.kubelet.cgroups import CgroupManager, ContainerLimits


def test_limits_from_a_container_spec() -> None:
    limits = cgroups.container_limits({"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}})
    assert limits == ContainerLimits(64 * 2**20, 50_000, cgroups.shares_to_weight(512))
    assert limits.files() == {"memory.max": str(64 * 2**20), "memory.swap.max": "0", "cpu.max": "50000 100000",
                              "cpu.weight": "20"}
    assert cgroups.container_limits({"resources": {"limits": {"cpu": "1m"}}}).cpu_quota_us == 1000  # 1 ms floor
    assert not cgroups.container_limits({"resources": {"requests": {"cpu": "1"}}}).limited
    assert cgroups.container_limits({}).files() == {}


def test_shares_and_weights_like_the_kubelet() -> None:
    assert cgroups.milli_cpu_to_shares(0) == 2 and cgroups.milli_cpu_to_shares(1000) == 1024
    assert cgroups.shares_to_weight(2) == 1 and cgroups.shares_to_weight(262144) == 10000
    assert cgroups.shares_to_weight(1024) == 39


def test_pod_has_limits() -> None:
    assert cgroups.pod_has_limits({"spec": {"containers": [{"resources": {"limits": {"memory": "1Gi"}}}]}})
    assert not cgroups.pod_has_limits({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}})


def fake_hierarchy(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_detect_explains_why_not(tmp_path: Path) -> None:
    assert "not a cgroup v2 hierarchy" in cgroups.detect(tmp_path / "v1").reason
    lacking = fake_hierarchy(tmp_path / "nomem", "cpu pids")
    assert cgroups.detect(lacking).reason.endswith("lacks the memory controller")
    assert cgroups.detect(fake_hierarchy(tmp_path / "ok")).available


class FakeKernel:
    """Makes mkdir'd directories look like cgroups (interface files appear)."""

    @staticmethod
    def populate(directory: Path) -> None:
        for name in ("cgroup.subtree_control", "cgroup.procs", "memory.max", "memory.swap.max", "cpu.max",
                     "cpu.weight"):
            if not (directory / name).exists():
                (directory / name).write_text("")


def test_manager_builds_records_and_removes_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_hierarchy(tmp_path / "cg")
    state = StateDir("demo", tmp_path / "state")
    state.path.mkdir(parents=True)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        if str(self).startswith(str(root)):
            FakeKernel.populate(self)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    manager = CgroupManager("demo", state, root)
    directory = manager.prepare("uid-1", "app", ContainerLimits(1024, 20_000, 10))
    assert directory == root / "netk8s-demo" / "poduid-1" / "app"
    assert (directory / "memory.max").read_text() == "1024"
    assert (directory / "cpu.max").read_text() == "20000 100000"
    for level in (root, root / "netk8s-demo", root / "netk8s-demo" / "poduid-1"):
        assert "+cpu" in (level / "cgroup.subtree_control").read_text()
    assert (state.path / "records" / "cgroups" / "netk8s-demo").read_text().strip() == str(root / "netk8s-demo")
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert manager.oom_kills(directory) == 1


def test_remove_recorded_touches_only_the_clusters_tree(tmp_path: Path) -> None:
    state = StateDir("demo", tmp_path / "state")
    records = state.path / "records" / "cgroups"
    records.mkdir(parents=True)
    mine = tmp_path / "cg" / "netk8s-demo"
    (mine / "poduid" / "app").mkdir(parents=True)
    other = tmp_path / "cg" / "system.slice"
    other.mkdir()
    (records / "netk8s-demo").write_text(f"{mine}\n")
    (records / "evil").write_text(f"{other}\n")
    assert cgroups.remove_recorded(state) == 1
    assert not mine.exists() and other.exists()
    assert sorted(p.name for p in records.iterdir()) == ["evil"]
