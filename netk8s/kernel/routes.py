"""Routes netk8s installs inside a namespace, told apart by their routing protocol number.

Routes the pod-network agents keep in sync (host-gw routes, VXLAN overlay
routes) carry ``proto 77`` (``ip route`` prints ``proto 77``), so a sync can
replace and delete its own routes and never touches the kernel's or a user's.
One agent owns the proto-77 routes of a namespace. The underlay routes the
emulator computes from the topology (router static routes, default gateways)
carry ``proto static`` and are only ever added or replaced.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netk8s.errors import KernelError
from netk8s.kernel import netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

RTPROT_NETK8S = 77
RTPROT_STATIC = 4
RTNH_F_ONLINK = 4
_ESRCH = 3
_AF_INET = 2


@dataclass(frozen=True)
class Route:
    """One IPv4 route: ``dst [via gateway] [dev dev] [onlink]``."""

    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    dev: str | None = None
    onlink: bool = False

    def __str__(self) -> str:
        text = str(self.dst) if self.dst.prefixlen else "default"
        if self.gateway is not None:
            text += f" via {self.gateway}"
        if self.dev:
            text += f" dev {self.dev}"
        return text + (" onlink" if self.onlink else "")


def _route_args(ipr: "IPRoute", netns_name: str, route: Route, proto: int) -> dict:
    args: dict = {"dst": str(route.dst), "proto": proto}
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    if route.dev:
        args["oif"] = netns.link_index(ipr, netns_name, route.dev)
    if route.onlink:
        args["flags"] = RTNH_F_ONLINK
    return args


def _current(ipr: "IPRoute", proto: int) -> dict[ipaddress.IPv4Network, tuple[str | None, int | None, bool]]:
    """The namespace's main-table routes of ``proto``: dst -> (gateway, oif, onlink)."""
    current: dict[ipaddress.IPv4Network, tuple[str | None, int | None, bool]] = {}
    for msg in ipr.get_routes(family=_AF_INET, proto=proto, table=254):
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        current[ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}")] = (
            msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"), bool(msg["flags"] & RTNH_F_ONLINK))
    return current


def sync_route_set(netns_name: str, desired: Iterable[Route], proto: int = RTPROT_NETK8S) -> None:
    """Make the namespace's routes of ``proto`` exactly ``desired``: add, change, delete stale ones."""
    from pyroute2.netlink.exceptions import NetlinkError

    wanted = {r.dst: r for r in desired}
    with netns.iproute(netns_name) as ipr:
        current = _current(ipr, proto)
        for dst, route in wanted.items():
            args = _route_args(ipr, netns_name, route, proto)
            have = current.get(dst)
            gateway = str(route.gateway) if route.gateway is not None else None
            if have is not None and have[0] == gateway and have[2] == route.onlink and (
                    route.dev is None or have[1] == args.get("oif")):
                continue
            try:
                ipr.route("replace", **args)
            except NetlinkError as exc:
                raise KernelError(f"cannot add route {route} in {netns_name}: {exc}") from None
            log.debug("%s: route %s", netns_name, route)
        for dst in current:
            if dst in wanted:
                continue
            try:
                ipr.route("del", dst=str(dst), proto=proto)
            except NetlinkError as exc:
                if exc.code != _ESRCH:  # already gone
                    raise KernelError(f"cannot delete route {dst} in {netns_name}: {exc}") from None
            log.debug("%s: deleted route %s", netns_name, dst)


def sync_routes(netns_name: str, desired: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
    """Make the namespace's netk8s routes exactly ``desired`` (destination -> gateway)."""
    sync_route_set(netns_name, [Route(dst, gw) for dst, gw in desired.items()])


def replace_routes(netns_name: str, routes: Iterable[Route], proto: int = RTPROT_STATIC) -> None:
    """Add (or replace) ``routes`` in the namespace; other routes are left alone."""
    from pyroute2.netlink.exceptions import NetlinkError

    with netns.iproute(netns_name) as ipr:
        for route in routes:
            try:
                ipr.route("replace", **_route_args(ipr, netns_name, route, proto))
            except NetlinkError as exc:
                raise KernelError(f"cannot add route {route} in {netns_name}: {exc}") from None
            log.debug("%s: static route %s", netns_name, route)
