"""A small rtnetlink client for netk8s-cni: the link, address and route requests the plugin makes.

Why not pyroute2 here: importing pyroute2 costs ~115 ms, five times the whole
budget of the ``netk8s-cni`` executable, and each of its requests carries a
lot of Python overhead. This module needs only ``_socket``, ``struct`` and
``os``, and lets the plugin send several requests in one ``send`` (the kernel
processes them in order and acks each one), so an ADD takes a handful of
round trips.

It uses the ``_socket`` C module, not ``socket``: ``import socket`` costs the
executable ~2.5 ms (it builds enum classes for every constant), ``_socket``
~0.25 ms, and this module needs neither the enums nor ``socket.socket``'s
Python-level extras.

The pure half (request builders, ``encode``, ``parse_messages``, the reply
decoders) takes and returns bytes and values and is unit-tested without root.
The kernel half is :class:`Rtnl`, one NETLINK_ROUTE socket; like every
netlink socket it stays bound to the network namespace of the thread that
opened it.

Only what the plugin needs is here: IPv4 and IPv6 addresses and routes in the
main table, bridge and veth links, bridge-port hairpin mode.
"""


import _socket
import errno
import os
import struct
from typing import Iterator, NamedTuple, Sequence

from netk8s.errors import KernelError

# --------------------------------------------------------------------------- constants (linux/netlink.h, rtnetlink.h)

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the original request's payload was left out
NLM_F_ACK_TLVS = 0x200  # in an ack: extended-ack attributes follow

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # the bridge port's hairpin flag
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` and the reference plugin use
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

IFF_UP = 0x1
IFF_PROMISC = 0x100
IF_OPER_UP = 6  # RFC 2863 operstate "up"

LOOPBACK_IFINDEX = 1  # the kernel gives lo index 1 in every namespace

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_RECV_SIZE = 1 << 16


class NetlinkError(KernelError):
    """The kernel refused a request; ``code`` is the positive errno, ``what`` names the request."""

    def __init__(self, code: int, what: str, detail: str = "") -> None:
        self.code = code
        self.what = what
        self.detail = detail
        reason = os.strerror(code) + (f" ({detail})" if detail else "")
        super().__init__(f"cannot {what}: {reason}")


# --------------------------------------------------------------------------- values


class Request(NamedTuple):
    """One netlink request before it gets a sequence number; ``what`` names it in errors."""

    type: int
    flags: int
    body: bytes
    what: str


class Reply(NamedTuple):
    """What the kernel answered one request: data messages (type, payload) and the errno (0 = ok)."""

    messages: tuple[tuple[int, bytes], ...]
    error: int = 0
    detail: str = ""


class Link(NamedTuple):
    ifindex: int
    name: str
    flags: int
    mac: str
    mtu: int
    master: int
    kind: str
    operstate: int = 0


class Address(NamedTuple):
    ifindex: int
    family: int
    address: str
    prefixlen: int


class RouteEntry(NamedTuple):
    family: int
    dst: str
    dst_len: int
    gateway: str | None
    table: int
    oif: int


# --------------------------------------------------------------------------- encoding (pure)


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def encode(request: Request, seq: int) -> bytes:
    """The request as it goes on the wire (port id 0: the kernel fills in ours)."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(request.body), request.type, request.flags | NLM_F_REQUEST,
                          seq, 0) + request.body


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel's eth_random_addr makes)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return mac_text(bytes(raw))


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = _socket.AF_UNSPEC) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


def get_link(name: str) -> Request:
    """RTM_GETLINK by name (the kernel looks the name up; no dump)."""
    body = _ifinfo() + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return Request(RTM_GETLINK, NLM_F_ACK, body, f"look up link {name}")


def new_bridge(name: str, mtu: int, mac: str) -> Request:
    """Create a bridge, up, with a fixed MAC (else it takes the lowest MAC of its ports and changes with them)."""
    body = (_ifinfo(flags=IFF_UP, change=IFF_UP) + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_MTU, mtu)
            + attr(IFLA_ADDRESS, mac_bytes(mac)) + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
    return Request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")


def new_veth(name: str, peer: str, mtu: int, peer_netns_fd: int, master: int) -> Request:
    """Create a veth pair in one request: this end up and enslaved to ``master``, the peer made directly
    inside the namespace ``peer_netns_fd`` (so it never appears in this one)."""
    peer_msg = (_ifinfo() + attr_str(IFLA_IFNAME, peer) + attr_u32(IFLA_MTU, mtu)
                + attr_u32(IFLA_NET_NS_FD, peer_netns_fd))
    linkinfo = nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                      nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer_msg)))
    body = (_ifinfo(flags=IFF_UP, change=IFF_UP) + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_MTU, mtu)
            + attr_u32(IFLA_MASTER, master) + linkinfo)
    return Request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"create veth pair {name}/{peer}")


def set_flags(index: int, flags: int, mask: int, what: str) -> Request:
    return Request(RTM_NEWLINK, NLM_F_ACK, _ifinfo(index, flags, mask), what)


def set_up(index: int, name: str) -> Request:
    return set_flags(index, IFF_UP, IFF_UP, f"set {name} up")


def set_hairpin(index: int, name: str, on: bool = True) -> Request:
    """Bridge-port hairpin mode (what `bridge link set dev X hairpin on` sends)."""
    # The bridge reads IFLA_PROTINFO as nested port attributes only with NLA_F_NESTED set;
    # without it the payload is taken as a bare STP port state.
    body = _ifinfo(index, family=_socket.AF_BRIDGE) + nested(IFLA_PROTINFO, attr(IFLA_BRPORT_MODE, bytes([int(on)])))
    return Request(RTM_SETLINK, NLM_F_ACK, body, f"set hairpin mode on {name}")


def del_link(index: int, name: str) -> Request:
    return Request(RTM_DELLINK, NLM_F_ACK, _ifinfo(index), f"delete link {name}")


def del_link_by_name(name: str) -> Request:
    return Request(RTM_DELLINK, NLM_F_ACK, _ifinfo() + attr_str(IFLA_IFNAME, name), f"delete link {name}")


def _family(address: str) -> int:
    return _socket.AF_INET6 if ":" in address else _socket.AF_INET


def new_addr(index: int, address: str, prefixlen: int, broadcast: str | None, ifname: str) -> Request:
    family = _family(address)
    raw = _socket.inet_pton(family, address)
    body = _IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index) + attr(IFA_LOCAL, raw) + attr(
        IFA_ADDRESS, raw)
    if broadcast is not None:
        body += attr(IFA_BROADCAST, _socket.inet_pton(family, broadcast))
    return Request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body,
                   f"add address {address}/{prefixlen} to {ifname}")


def new_route(dst: str, dst_len: int, gateway: str | None, oif: int, ifname: str) -> Request:
    """A main-table unicast route; scope link without a gateway, as `ip route add` does."""
    family = _family(dst)
    scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    body = _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    if dst_len:
        body += attr(RTA_DST, _socket.inet_pton(family, dst))
    if gateway is not None:
        body += attr(RTA_GATEWAY, _socket.inet_pton(family, gateway))
    body += attr_u32(RTA_OIF, oif)
    via = f" via {gateway}" if gateway is not None else ""
    return Request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body,
                   f"add route {dst}/{dst_len}{via} dev {ifname}")


def dump_addrs(family: int = _socket.AF_UNSPEC, index: int = 0) -> Request:
    """Addresses; with strict checking on, the kernel itself filters by ``index``."""
    return Request(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, index), "list addresses")


def dump_routes(family: int = _socket.AF_UNSPEC) -> Request:
    return Request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "list routes")


# --------------------------------------------------------------------------- decoding (pure)


def parse_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise KernelError(f"netlink: malformed message of length {length} at offset {offset}")
        yield mtype, flags, seq, data[offset + _NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attribute type (flags masked off) -> payload; the last one wins on repeats."""
    out: dict[int, bytes] = {}
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return out


def parse_error(payload: bytes, flags: int) -> tuple[int, str]:
    """(positive errno or 0, extended-ack message) of an NLMSG_ERROR payload."""
    code = -_I32.unpack_from(payload, 0)[0]
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        # The TLVs follow the echoed request: its header only when capped, else all of it.
        echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(payload, 4)[0]
        raw = parse_attrs(payload, 4 + ((echoed + 3) & ~3)).get(NLMSGERR_ATTR_MSG, b"")
        detail = raw.split(b"\0", 1)[0].decode(errors="replace")
    return code, detail


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def decode_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload, 0)
    attrs = parse_attrs(payload, _IFINFOMSG.size)
    kind = ""
    if IFLA_LINKINFO in attrs:
        kind = _cstr(parse_attrs(attrs[IFLA_LINKINFO]).get(IFLA_INFO_KIND, b""))
    return Link(ifindex=index, name=_cstr(attrs.get(IFLA_IFNAME, b"")), flags=flags,
                mac=mac_text(attrs.get(IFLA_ADDRESS, b"")),
                mtu=_U32.unpack(attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
                master=_U32.unpack(attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0, kind=kind,
                operstate=attrs[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in attrs else 0)


def decode_addr(payload: bytes) -> Address:
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload, 0)
    attrs = parse_attrs(payload, _IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS, b"")
    return Address(ifindex=index, family=family, address=_socket.inet_ntop(family, raw) if raw else "",
                   prefixlen=prefixlen)


def decode_route(payload: bytes) -> RouteEntry:
    family, dst_len, _src_len, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(payload, 0)
    attrs = parse_attrs(payload, _RTMSG.size)
    if RTA_TABLE in attrs:
        table = _U32.unpack(attrs[RTA_TABLE])[0]
    any_addr = "0.0.0.0" if family == _socket.AF_INET else "::"
    dst = _socket.inet_ntop(family, attrs[RTA_DST]) if RTA_DST in attrs else any_addr
    gateway = _socket.inet_ntop(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
    oif = _U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
    return RouteEntry(family=family, dst=dst, dst_len=dst_len, gateway=gateway, table=table, oif=oif)


class Collector:
    """Groups answers by sequence number across datagrams until every request has its final message."""

    def __init__(self, seqs: Sequence[int]) -> None:
        self._partial: dict[int, list[tuple[int, bytes]]] = {s: [] for s in seqs}
        self.done: dict[int, Reply] = {}

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self._partial)

    def feed(self, data: bytes) -> None:
        for mtype, flags, seq, payload in parse_messages(data):
            if seq not in self._partial or seq in self.done:
                continue  # e.g. a late answer to a request an interrupted call sent
            if mtype == NLMSG_ERROR:
                code, detail = parse_error(payload, flags)
                self.done[seq] = Reply(tuple(self._partial[seq]), code, detail)
            elif mtype == NLMSG_DONE:
                code = -_I32.unpack_from(payload, 0)[0] if len(payload) >= 4 else 0
                self.done[seq] = Reply(tuple(self._partial[seq]), code)
            elif mtype != NLMSG_NOOP:
                self._partial[seq].append((mtype, payload))


def collect(datagrams: Sequence[bytes], seqs: Sequence[int]) -> dict[int, Reply]:
    """The replies ``datagrams`` complete, by sequence number."""
    collector = Collector(seqs)
    for data in datagrams:
        collector.feed(data)
    return collector.done


# --------------------------------------------------------------------------- the socket (kernel)


class Rtnl:
    """One NETLINK_ROUTE socket in the calling thread's network namespace."""

    def __init__(self) -> None:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, _socket.NETLINK_ROUTE)
        try:
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:  # older kernels: plain errors, client-side filtering still applies
                    pass
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, requests: Sequence[Request], check: bool = True) -> list[Reply]:
        """Send the requests in one datagram and wait for every answer, in order.

        The kernel handles each request on its own (a failed one does not stop
        the rest). With ``check`` the first failure raises NetlinkError.
        """
        seqs: list[int] = []
        wire: list[bytes] = []
        for request in requests:
            self._seq += 1
            seqs.append(self._seq)
            wire.append(encode(request, self._seq))
        self._sock.send(b"".join(wire))
        collector = Collector(seqs)
        while not collector.complete:
            collector.feed(self._sock.recv(_RECV_SIZE))
        out = [collector.done[s] for s in seqs]
        if check:
            for request, reply in zip(requests, out):
                if reply.error:
                    raise NetlinkError(reply.error, request.what, reply.detail)
        return out

    def one(self, request: Request) -> Reply:
        return self.call([request])[0]

    # ------------------------------------------------------------------ lookups

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        reply = self.call([get_link(name)], check=False)[0]
        if reply.error == errno.ENODEV:
            return None
        if reply.error:
            raise NetlinkError(reply.error, f"look up link {name}", reply.detail)
        links = [decode_link(p) for t, p in reply.messages if t == RTM_NEWLINK]
        return links[0] if links else None

    def addresses(self, family: int = _socket.AF_UNSPEC, index: int = 0) -> list[Address]:
        found = [decode_addr(p) for t, p in self.one(dump_addrs(family, index)).messages if t == RTM_NEWADDR]
        return [a for a in found if not index or a.ifindex == index]

    def routes(self, family: int = _socket.AF_UNSPEC, table: int = RT_TABLE_MAIN) -> list[RouteEntry]:
        found = [decode_route(p) for t, p in self.one(dump_routes(family)).messages if t == RTM_NEWROUTE]
        return [r for r in found if r.table == table]
