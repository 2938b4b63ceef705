"""Routes netk8s owns inside a namespace, told apart by their routing protocol number.

Every route netk8s installs carries ``proto 77`` ("netk8s" in ``ip route``
output is shown as ``proto 77``), so a sync can replace and delete its own
routes and never touches the kernel's or a user's.
"""

from __future__ import annotations

import ipaddress
import logging

from netk8s.errors import KernelError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

RTPROT_NETK8S = 77


def sync_routes(netns_name: str, desired: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
    """Make the namespace's netk8s routes exactly ``desired`` (destination -> gateway)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with netns.iproute(netns_name) as ipr:
        current: dict[ipaddress.IPv4Network, ipaddress.IPv4Address | None] = {}
        for route in ipr.get_routes(family=2, proto=RTPROT_NETK8S):
            dst = route.get_attr("RTA_DST")
            gw = route.get_attr("RTA_GATEWAY")
            if dst is None:
                continue
            current[ipaddress.IPv4Network(f"{dst}/{route['dst_len']}")] = ipaddress.IPv4Address(gw) if gw else None
        for dst, gw in desired.items():
            if current.get(dst) == gw:
                continue
            try:
                ipr.route("replace", dst=str(dst), gateway=str(gw), proto=RTPROT_NETK8S)
            except NetlinkError as exc:
                raise KernelError(f"cannot route {dst} via {gw} in {netns_name}: {exc}") from None
            log.debug("%s: route %s via %s", netns_name, dst, gw)
        for dst in current:
            if dst not in desired:
                try:
                    ipr.route("del", dst=str(dst), proto=RTPROT_NETK8S)
                except NetlinkError as exc:
                    if exc.code != 3:  # ESRCH: already gone
                        raise KernelError(f"cannot delete route {dst} in {netns_name}: {exc}") from None
