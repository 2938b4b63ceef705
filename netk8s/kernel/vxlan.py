"""The VXLAN overlay's kernel state in a node namespace, flannel style.

- the VTEP device (``flannel.1``: VNI 1, UDP 8472, local = node IP, no
  learning, MTU = underlay MTU - 50) with the node's pod-network address /32;
- permanent neighbour entries (peer VTEP address -> peer VTEP MAC), tagged
  ``proto 77`` so a sync finds its own and leaves anybody else's alone;
- FDB entries (peer VTEP MAC -> peer node IP). The kernel keeps no owner tag
  on VXLAN FDB entries, so an FDB entry is ours when one of our neighbour
  entries names its MAC: entries are added neighbour first, removed FDB first;
- flannel's ``FLANNEL-POSTRTG`` masquerade chain in the nat table, jumped to
  from POSTROUTING.

Overlay routes (``<peer podCIDR> via <peer .0> dev flannel.1 onlink``) go
through ``netk8s.kernel.routes``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netk8s.errors import KernelError
from netk8s.kernel import iptables, netns
from netk8s.kernel.routes import RTPROT_NETK8S, Route, sync_route_set

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
NUD_PERMANENT = 0x80
NTF_SELF = 0x02  # an FDB entry of the VXLAN device itself, not of a bridge it is enslaved to
_AF_INET = 2
_ENOENT = 2
MASQ_CHAIN = "FLANNEL-POSTRTG"
MASQ_COMMENT = "flanneld masq"


@dataclass(frozen=True)
class VtepDevice:
    name: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    underlay: str  # the interface holding ``local``
    mac: str  # the MAC to create the device with
    address: ipaddress.IPv4Interface  # <podCIDR network address>/32


def _matches(link: object, dev: VtepDevice, underlay_index: int) -> bool:
    info = link.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get_attr("IFLA_INFO_DATA")
    return (data.get_attr("IFLA_VXLAN_ID") == dev.vni and data.get_attr("IFLA_VXLAN_PORT") == dev.port
            and data.get_attr("IFLA_VXLAN_LOCAL") == str(dev.local)
            and data.get_attr("IFLA_VXLAN_LINK") == underlay_index
            and not data.get_attr("IFLA_VXLAN_LEARNING"))


def ensure_vtep(netns_name: str, dev: VtepDevice) -> str:
    """Create (or fix) the VTEP device, up, with exactly ``dev.address``; returns its MAC."""
    from pyroute2.netlink.exceptions import NetlinkError

    with netns.iproute(netns_name) as ipr:
        underlay = netns.find_link(ipr, dev.underlay)
        if underlay is None:
            raise KernelError(f"no underlay interface {dev.underlay} in {netns_name} for {dev.name}")
        underlay_mtu = int(ipr.get_links(underlay)[0].get_attr("IFLA_MTU"))
        index = netns.find_link(ipr, dev.name)
        if index is not None and not _matches(ipr.get_links(index)[0], dev, underlay):
            # Like flanneld: a device with other VXLAN parameters is replaced, not patched.
            log.info("%s: %s has other VXLAN parameters; recreating it", netns_name, dev.name)
            ipr.link("del", index=index)
            index = None
        try:
            if index is None:
                ipr.link("add", ifname=dev.name, kind="vxlan", vxlan_id=dev.vni, vxlan_port=dev.port,
                         vxlan_local=str(dev.local), vxlan_link=underlay, vxlan_learning=0,
                         address=dev.mac, mtu=underlay_mtu - VXLAN_OVERHEAD)
                index = netns.find_link(ipr, dev.name)
                assert index is not None
                log.info("%s: created %s (VNI %d, local %s, port %d)", netns_name, dev.name, dev.vni, dev.local,
                         dev.port)
            ipr.link("set", index=index, state="up")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(family=_AF_INET, index=index)}
            want = (str(dev.address.ip), dev.address.network.prefixlen)
            for address, prefixlen in have - {want}:
                ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
            if want not in have:
                ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
            return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
        except NetlinkError as exc:
            raise KernelError(f"cannot set up {dev.name} in {netns_name}: {exc}") from None


def _own_neighbours(ipr: "IPRoute", index: int) -> dict[ipaddress.IPv4Address, str]:
    out: dict[ipaddress.IPv4Address, str] = {}
    for msg in ipr.get_neighbours(family=_AF_INET, ifindex=index):
        if msg.get_attr("NDA_PROTOCOL") == RTPROT_NETK8S and msg.get_attr("NDA_LLADDR"):
            out[ipaddress.IPv4Address(msg.get_attr("NDA_DST"))] = str(msg.get_attr("NDA_LLADDR")).lower()
    return out


def _fdb(ipr: "IPRoute", index: int) -> list[tuple[str, ipaddress.IPv4Address]]:
    out = []
    for msg in ipr.fdb("dump", ifindex=index):
        mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
        if msg["ifindex"] == index and mac and dst:
            out.append((str(mac).lower(), ipaddress.IPv4Address(dst)))
    return out


def sync_overlay(netns_name: str, dev_name: str, routes: Sequence[Route],
                 neighbours: Mapping[ipaddress.IPv4Address, str], fdb: Mapping[str, ipaddress.IPv4Address]) -> None:
    """Make our routes, neighbour and FDB entries on the device exactly the desired ones."""
    from pyroute2.netlink.exceptions import NetlinkError

    with netns.iproute(netns_name) as ipr:
        index = netns.find_link(ipr, dev_name)
        if index is None:
            raise KernelError(f"no {dev_name} in {netns_name}")
        current_neigh = _own_neighbours(ipr, index)
        owned_macs = set(current_neigh.values())
        current_fdb = [(mac, dst) for mac, dst in _fdb(ipr, index) if mac in owned_macs]
        try:
            # Add: neighbour, FDB, then (below) the route, so a route never points at a half-built peer.
            for vtep_ip, mac in neighbours.items():
                if current_neigh.get(vtep_ip) != mac:
                    ipr.neigh("replace", dst=str(vtep_ip), lladdr=mac, ifindex=index, state=NUD_PERMANENT,
                              NDA_PROTOCOL=RTPROT_NETK8S)
            for mac, remote in fdb.items():
                if (mac, remote) not in current_fdb:
                    ipr.fdb("replace", ifindex=index, lladdr=mac, dst=str(remote), state=NUD_PERMANENT,
                            flags=NTF_SELF)
        except NetlinkError as exc:
            raise KernelError(f"cannot add overlay peer entries on {dev_name} in {netns_name}: {exc}") from None
    sync_route_set(netns_name, routes)
    with netns.iproute(netns_name) as ipr:
        # Remove stale: FDB before neighbour, so a leftover FDB entry is always still ours.
        for mac, remote in current_fdb:
            if fdb.get(mac) != remote:
                _ignore_missing(lambda: ipr.fdb("del", ifindex=index, lladdr=mac, dst=str(remote), flags=NTF_SELF),
                                f"FDB entry {mac} dst {remote}", netns_name)
        for vtep_ip in current_neigh:
            if vtep_ip not in neighbours:
                _ignore_missing(lambda: ipr.neigh("del", dst=str(vtep_ip), ifindex=index),
                                f"neighbour {vtep_ip}", netns_name)


def _ignore_missing(action: Callable[[], object], what: str, netns_name: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        action()
    except NetlinkError as exc:
        if exc.code != _ENOENT:
            raise KernelError(f"cannot delete {what} in {netns_name}: {exc}") from None


def ensure_masquerade(netns_name: str, rule_specs: Sequence[str]) -> None:
    """Make ``FLANNEL-POSTRTG`` hold exactly ``rule_specs`` and POSTROUTING jump to it (appended, once)."""
    saved = iptables.save(netns_name, "nat")
    jump = f'-A POSTROUTING -m comment --comment "{MASQ_COMMENT}" -j {MASQ_CHAIN}'
    has_jump = any(line.startswith("-A POSTROUTING ") and line.endswith(f"-j {MASQ_CHAIN}")
                   for line in saved.splitlines())
    lines = ["*nat", f":{MASQ_CHAIN} - [0:0]"] + [f"-A {MASQ_CHAIN} {spec}" for spec in rule_specs]
    if not has_jump:
        lines.append(jump)
    iptables.restore(netns_name, "\n".join(lines + ["COMMIT", ""]), noflush=True)
