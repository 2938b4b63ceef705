"""Network namespaces: create, name, enter, and run commands in them.

Namespaces netk8s makes are named under ``/run/netns`` (so ``ip netns exec``
works for users). Agents stay in the root namespace and act inside a node or
pod namespace by path: ``entered(path)`` switches only the calling thread
(``setns`` is per thread), ``iproute(path)`` opens a pyroute2 socket inside
the namespace without forking, ``run(name, argv)`` runs a command there via
``nsenter``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from netk8s.errors import KernelError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)


def path_of(name_or_path: str) -> str:
    """``/run/netns/<name>`` for a bare name; paths pass through."""
    return name_or_path if name_or_path.startswith("/") else str(NETNS_DIR / name_or_path)


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def list_named(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _ip(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)


def create(name: str) -> str:
    """Create a named namespace with loopback up; returns its path."""
    result = _ip(["netns", "add", name])
    if result.returncode != 0:
        raise KernelError(f"cannot create network namespace {name}: {result.stderr.strip()}")
    run(name, ["ip", "link", "set", "lo", "up"])
    return path_of(name)


def attach(name: str, pid: int) -> str:
    """Name the network namespace of process ``pid`` (``ip netns attach``)."""
    result = _ip(["netns", "attach", name, str(pid)])
    if result.returncode != 0:
        raise KernelError(f"cannot name the network namespace of pid {pid} as {name}: {result.stderr.strip()}")
    return path_of(name)


def delete(name: str) -> bool:
    """Remove a named namespace; returns False if it was already gone."""
    path = path_of(name)
    if not os.path.exists(path):
        return False
    result = _ip(["netns", "delete", os.path.basename(path)])
    if result.returncode != 0 and os.path.exists(path):
        raise KernelError(f"cannot delete network namespace {name}: {result.stderr.strip()}")
    return True


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace."""
    try:
        target = os.open(path_of(name_or_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelError(f"network namespace {name_or_path} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(name_or_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace (it stays bound to it)."""
    with entered(name_or_path):
        return socket.socket(family, kind, proto)


@contextlib.contextmanager
def iproute(name_or_path: str | None = None) -> Iterator["IPRoute"]:
    """A pyroute2 IPRoute bound to the namespace (root namespace when None)."""
    from pyroute2 import IPRoute

    if name_or_path is None:
        ipr = IPRoute()
    else:
        sock = socket_in(name_or_path, socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        ipr = IPRoute(fileno=sock.detach())
    try:
        yield ipr
    finally:
        ipr.close()


def write_sysctl(name_or_path: str, key: str, value: str | int) -> None:
    """Set a per-namespace sysctl (``net.ipv4.ip_forward`` style key)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name_or_path):
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise KernelError(f"sysctl {key} does not exist in this kernel") from None
            raise KernelError(f"cannot set {key}={value}: {exc.strerror}") from None


def read_sysctl(name_or_path: str, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name_or_path):
        with open(path) as f:
            return f.read().strip()


def nsenter_argv(name_or_path: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={path_of(name_or_path)}", "--", *argv]


def run(name_or_path: str, argv: Sequence[str], input: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command inside the namespace and wait for it."""
    try:
        result = subprocess.run(nsenter_argv(name_or_path, argv), input=input, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv)} in {name_or_path} timed out after {timeout}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise KernelError(f"{' '.join(argv)} in {name_or_path} failed: {detail[-1] if detail else result.returncode}")
    return result
