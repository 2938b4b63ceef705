"""netk8s.kernel.netns against the kernel: in-process create/delete, the ``ip netns`` fallback.

Namespaces are ``nk-t<random>-<n>`` and deleted by a finalizer even when a test fails.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import subprocess
import threading
from typing import Callable, Iterator

import pytest

from netk8s.errors import KernelError
from netk8s.kernel import netns


@pytest.fixture
def names() -> Iterator[Callable[[], str]]:
    prefix = f"nk-t{secrets.token_hex(3)}"
    made: list[str] = []

    def new() -> str:
        name = f"{prefix}-{len(made)}"
        made.append(name)
        return name

    yield new
    for name in made:
        netns.delete(name)


def inode(path: str) -> int:
    return os.stat(path).st_ino


def lo_flags(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", name, "ip", "-j", "link", "show", "lo"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return list(json.loads(out)[0]["flags"])


def mounted_at(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_create_names_a_new_namespace_with_loopback_up(names: Callable[[], str]) -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    name = names()
    path = netns.create(name)
    assert path == f"/run/netns/{name}" and mounted_at(path)
    assert inode(path) != inode("/proc/self/ns/net")  # a namespace of its own
    assert os.readlink("/proc/thread-self/ns/net") == own  # the caller never moved
    assert "UP" in lo_flags(name)  # iproute2 sees it by name
    assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    # /run/netns is a shared mount point, as `ip netns add` leaves it
    with open("/proc/self/mountinfo") as f:
        run_netns = [line for line in f if line.split()[4] == str(netns.NETNS_DIR)]
    assert run_netns and "shared:" in run_netns[-1]


def test_create_does_not_start_processes(names: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"create started a process: {args}")

    monkeypatch.setattr(subprocess, "run", no_processes)
    monkeypatch.setattr(subprocess, "Popen", no_processes)
    name = names()
    netns.create(name)
    monkeypatch.undo()
    assert "UP" in lo_flags(name)


def test_create_refuses_a_taken_name_and_keeps_the_namespace(names: Callable[[], str]) -> None:
    name = names()
    path = netns.create(name)
    before = inode(path)
    with pytest.raises(KernelError, match=f"cannot create network namespace {name}: .*already exists"):
        netns.create(name)
    assert inode(path) == before and "UP" in lo_flags(name)


def test_delete_unmounts_and_is_idempotent(names: Callable[[], str]) -> None:
    name = names()
    path = netns.create(name)
    assert netns.delete(name) is True
    assert not os.path.exists(path) and not mounted_at(path)
    assert netns.delete(name) is False
    # a stale file that is no mount (e.g. left by a crash between the two steps) goes too
    stale = names()
    open(netns.path_of(stale), "w").close()
    assert netns.delete(stale) is True and not os.path.exists(netns.path_of(stale))


def test_concurrent_creates_from_threads(names: Callable[[], str]) -> None:
    wanted = [names() for _ in range(12)]
    errors: list[BaseException] = []

    def make(name: str) -> None:
        try:
            netns.create(name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(n,)) for n in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len({inode(netns.path_of(n)) for n in wanted}) == len(wanted)
    assert all("UP" in lo_flags(n) for n in wanted[:3])


def test_falls_back_to_ip_netns_when_the_in_process_path_fails(names: Callable[[], str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str) -> str:
        raise PermissionError(errno.EPERM, "unshare refused")

    monkeypatch.setattr(netns, "_create_in_process", refuse)
    name = names()
    path = netns.create(name)
    assert mounted_at(path) and "UP" in lo_flags(name)

    def umount_refused(func: str, *args: object) -> None:
        raise PermissionError(errno.EPERM, f"{func} refused")

    monkeypatch.setattr(netns, "_libc_call", umount_refused)
    assert netns.delete(name) is True  # ip netns delete did it
    assert not os.path.exists(path)


def test_a_failure_inside_the_new_namespace_leaves_nothing_behind(names: Callable[[], str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_loopback() -> None:
        raise OSError(errno.EIO, "simulated")

    calls: list[str] = []
    monkeypatch.setattr(netns, "_loopback_up", broken_loopback)
    def fallback(name: str) -> str:
        calls.append(name)
        return netns.path_of(name)

    monkeypatch.setattr(netns, "_create_with_ip", fallback)
    name = names()
    netns.create(name)  # the in-process attempt failed, then the (stubbed) fallback ran
    assert calls == [name]
    assert not os.path.exists(netns.path_of(name))  # the half-made mount point was removed
