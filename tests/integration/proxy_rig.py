"""The kube-proxy integration tests' rig: a throwaway node namespace, TCP listeners on pod IPs, and
connection helpers run from inside the namespace (fixtures ``node`` and ``listeners`` in conftest.py).

The node namespace is ``nk-t<random>-node``: a veth pair with both ends inside it (this kernel
has no dummy driver; never an end in the root namespace) holds the pod IPs, with a default route
through it, inside the namespace only.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterator

from netk8s.kernel import netns
from netk8s.proxy.model import Protocol, ProxyConfig, ServicePort

CONFIG = ProxyConfig("node-1", IPv4Address("172.18.0.2"), IPv4Network("10.244.0.0/16"))
POD_IPS = ("10.244.1.1", "10.244.1.2", "10.244.1.3")
WEB = ServicePort("default", "web", "http", Protocol.TCP, IPv4Address("10.96.12.34"), 80)
API = ServicePort("default", "api", "", Protocol.TCP, IPv4Address("10.96.12.35"), 443)
EMPTY = ServicePort("default", "empty", "", Protocol.TCP, IPv4Address("10.96.7.7"), 8080)


@dataclass(frozen=True)
class Node:
    name: str
    prefix: str


def node_namespace() -> Iterator[Node]:
    """Create the node namespace, yield it, delete it (the body of the ``node`` fixture)."""
    prefix = f"nk-t{secrets.token_hex(3)}"
    name = f"{prefix}-node"
    netns.create(name)
    try:
        dev, peer = f"{prefix}a", f"{prefix}b"
        netns.run(name, ["ip", "link", "add", dev, "type", "veth", "peer", "name", peer])
        for ip in POD_IPS:
            netns.run(name, ["ip", "addr", "add", f"{ip}/24", "dev", dev])
        for link in (dev, peer):
            netns.run(name, ["ip", "link", "set", link, "up"])
        netns.run(name, ["ip", "route", "add", "default", "dev", dev])
        yield Node(name, prefix)
    finally:
        netns.delete(name)


class Listeners:
    """TCP servers on each pod IP inside the namespace; each answers with its own address."""

    def __init__(self, ns: str, ips: tuple[str, ...], port: int) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        for ip in ips:
            sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(64)
            sock.settimeout(0.1)
            self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, ip), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, ip: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:  # socket.timeout included
                continue
            with conn:
                conn.sendall(ip.encode())

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        for sock in self._socks:
            sock.close()


def fetch(ns: str, ip: str, port: int, timeout: float = 2.0) -> str:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        return sock.recv(64).decode()


def connect_errno(ns: str, ip: str, port: int, timeout: float) -> tuple[int | None, float]:
    """(errno, or None for a timeout; seconds taken) of one TCP connect from inside the namespace."""
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        start = time.monotonic()
        try:
            code: int | None = sock.connect_ex((ip, port))
        except socket.timeout:
            code = None
        return code, time.monotonic() - start


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
