"""netk8s.cni.rtnl without a kernel: request encoding, reply decoding, answer collection."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from netk8s.cni import rtnl
from netk8s.errors import KernelError

HDR = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")


def attrs_of(data: bytes, offset: int = 0) -> dict[int, bytes]:
    return rtnl.parse_attrs(data, offset)


def u32(raw: bytes) -> int:
    return int(struct.unpack("=I", raw)[0])


def raw_attr_types(data: bytes, offset: int) -> list[int]:
    """Attribute types with their flag bits, in order (parse_attrs masks the flags off)."""
    out = []
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append(kind)
        offset += (length + 3) & ~3
    return out


# ----------------------------------------------------------------------------- encoding


def test_attributes_are_padded_to_four_bytes() -> None:
    assert rtnl.attr(3, b"lo\0") == struct.pack("=HH", 7, 3) + b"lo\0" + b"\0"
    assert rtnl.attr_u32(4, 1500) == struct.pack("=HHI", 8, 4, 1500)
    assert rtnl.attr_str(3, "eth0") == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0" * 3
    nested = rtnl.nested(18, rtnl.attr_str(1, "veth"))
    assert struct.unpack_from("=HH", nested) == (len(nested), 18 | rtnl.NLA_F_NESTED)


def test_encode_sets_length_request_flag_and_sequence() -> None:
    request = rtnl.get_link("eth0")
    wire = rtnl.encode(request, seq=42)
    length, mtype, flags, seq, pid = HDR.unpack_from(wire)
    assert (length, mtype, seq, pid) == (len(wire), rtnl.RTM_GETLINK, 42, 0)
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK
    family, _, index, _, _ = IFINFO.unpack_from(wire, HDR.size)
    assert (family, index) == (socket.AF_UNSPEC, 0)  # looked up by name, not index
    attrs = attrs_of(wire, HDR.size + IFINFO.size)
    assert attrs[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert u32(attrs[rtnl.IFLA_EXT_MASK]) == rtnl.RTEXT_FILTER_SKIP_STATS


def test_new_veth_creates_both_ends_in_one_request() -> None:
    request = rtnl.new_veth("veth0a1b2c3d", "eth0", 1400, peer_netns_fd=7, master=3)
    assert request.type == rtnl.RTM_NEWLINK
    assert request.flags == rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    _, _, index, flags, change = IFINFO.unpack_from(request.body)
    assert (index, flags, change) == (0, rtnl.IFF_UP, rtnl.IFF_UP)  # created up
    outer = attrs_of(request.body, IFINFO.size)
    assert outer[rtnl.IFLA_IFNAME] == b"veth0a1b2c3d\0"
    assert u32(outer[rtnl.IFLA_MTU]) == 1400 and u32(outer[rtnl.IFLA_MASTER]) == 3
    linkinfo = attrs_of(outer[rtnl.IFLA_LINKINFO])
    assert linkinfo[rtnl.IFLA_INFO_KIND] == b"veth\0"
    peer = attrs_of(linkinfo[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    peer_attrs = attrs_of(peer, IFINFO.size)  # the peer is an ifinfomsg of its own, then attributes
    assert peer_attrs[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert u32(peer_attrs[rtnl.IFLA_MTU]) == 1400 and u32(peer_attrs[rtnl.IFLA_NET_NS_FD]) == 7
    assert rtnl.IFLA_MASTER not in peer_attrs


def test_new_bridge_has_a_fixed_mac() -> None:
    request = rtnl.new_bridge("cni0", 1500, "02:00:00:aa:bb:cc")
    attrs = attrs_of(request.body, IFINFO.size)
    assert attrs[rtnl.IFLA_ADDRESS] == bytes([2, 0, 0, 0xAA, 0xBB, 0xCC])
    assert attrs_of(attrs[rtnl.IFLA_LINKINFO])[rtnl.IFLA_INFO_KIND] == b"bridge\0"


def test_hairpin_is_a_nested_bridge_port_attribute() -> None:
    request = rtnl.set_hairpin(9, "veth1")
    family, _, index, _, _ = IFINFO.unpack_from(request.body)
    assert (request.type, family, index) == (rtnl.RTM_SETLINK, socket.AF_BRIDGE, 9)
    # Without NLA_F_NESTED the bridge would read the payload as a bare port state.
    assert raw_attr_types(request.body, IFINFO.size) == [rtnl.IFLA_PROTINFO | rtnl.NLA_F_NESTED]
    protinfo = attrs_of(request.body, IFINFO.size)[rtnl.IFLA_PROTINFO]
    assert attrs_of(protinfo)[rtnl.IFLA_BRPORT_MODE] == b"\x01"


def test_new_addr_sets_local_address_and_broadcast() -> None:
    request = rtnl.new_addr(5, "10.244.1.7", 24, "10.244.1.255", "eth0")
    family, prefixlen, _, scope, index = IFADDR.unpack_from(request.body)
    assert (family, prefixlen, scope, index) == (socket.AF_INET, 24, rtnl.RT_SCOPE_UNIVERSE, 5)
    attrs = attrs_of(request.body, IFADDR.size)
    assert attrs[rtnl.IFA_LOCAL] == attrs[rtnl.IFA_ADDRESS] == socket.inet_aton("10.244.1.7")
    assert attrs[rtnl.IFA_BROADCAST] == socket.inet_aton("10.244.1.255")
    v6 = rtnl.new_addr(5, "fd00::7", 64, None, "eth0")
    assert IFADDR.unpack_from(v6.body)[0] == socket.AF_INET6 and rtnl.IFA_BROADCAST not in attrs_of(v6.body, 8)
    assert "10.244.1.7/24" in request.what and "eth0" in request.what


def test_new_route_scope_follows_the_gateway() -> None:
    default = rtnl.new_route("0.0.0.0", 0, "10.244.1.1", 5, "eth0")
    family, dst_len, _, _, table, proto, scope, rtype, _ = RTMSG.unpack_from(default.body)
    assert (family, dst_len, table, proto, scope, rtype) == (
        socket.AF_INET, 0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST)
    attrs = attrs_of(default.body, RTMSG.size)
    assert rtnl.RTA_DST not in attrs  # a default route carries no destination
    assert attrs[rtnl.RTA_GATEWAY] == socket.inet_aton("10.244.1.1") and u32(attrs[rtnl.RTA_OIF]) == 5
    onlink = rtnl.new_route("192.168.0.0", 16, None, 5, "eth0")
    assert RTMSG.unpack_from(onlink.body)[6] == rtnl.RT_SCOPE_LINK
    assert attrs_of(onlink.body, RTMSG.size)[rtnl.RTA_DST] == socket.inet_aton("192.168.0.0")
    assert onlink.what == "add route 192.168.0.0/16 dev eth0"


def test_macs() -> None:
    assert rtnl.mac_text(rtnl.mac_bytes("0a:1B:2c:3d:4e:5f")) == "0a:1b:2c:3d:4e:5f"
    for _ in range(50):
        first = rtnl.mac_bytes(rtnl.random_mac())[0]
        assert first & 0x01 == 0 and first & 0x02 == 0x02  # unicast, locally administered


# ----------------------------------------------------------------------------- decoding


def message(mtype: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    length = HDR.size + len(payload)
    return HDR.pack(length, mtype, flags, seq, 1234) + payload + b"\0" * (-length % 4)


def ack(seq: int, error: int = 0, ext_msg: str = "") -> bytes:
    flags = rtnl.NLM_F_CAPPED
    body = struct.pack("=i", -error) + HDR.pack(HDR.size, rtnl.RTM_NEWLINK, 0, seq, 0)
    if ext_msg:
        flags |= rtnl.NLM_F_ACK_TLVS
        body += rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, ext_msg)
    return message(rtnl.NLMSG_ERROR, seq, body, flags)


def link_payload(index: int, name: str, flags: int, mac: str, kind: str, master: int = 0,
                 operstate: int = rtnl.IF_OPER_UP) -> bytes:
    body = IFINFO.pack(socket.AF_UNSPEC, 1, index, flags, 0) + rtnl.attr_str(rtnl.IFLA_IFNAME, name)
    body += rtnl.attr(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac)) + rtnl.attr_u32(rtnl.IFLA_MTU, 1500)
    body += rtnl.attr(rtnl.IFLA_OPERSTATE, bytes([operstate]))
    if master:
        body += rtnl.attr_u32(rtnl.IFLA_MASTER, master)
    return body + rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, kind))


def test_decode_link() -> None:
    link = rtnl.decode_link(link_payload(4, "veth1", rtnl.IFF_UP, "aa:bb:cc:dd:ee:ff", "veth", master=2))
    assert link == rtnl.Link(ifindex=4, name="veth1", flags=rtnl.IFF_UP, mac="aa:bb:cc:dd:ee:ff", mtu=1500, master=2,
                             kind="veth", operstate=rtnl.IF_OPER_UP)


def test_decode_addr_and_route() -> None:
    addr = IFADDR.pack(socket.AF_INET, 24, 0, 0, 3) + rtnl.attr(rtnl.IFA_ADDRESS, socket.inet_aton("10.0.0.1"))
    assert rtnl.decode_addr(addr) == rtnl.Address(ifindex=3, family=socket.AF_INET, address="10.0.0.1", prefixlen=24)
    route = RTMSG.pack(socket.AF_INET, 0, 0, 0, rtnl.RT_TABLE_MAIN, 3, 0, 1, 0)
    route += rtnl.attr(rtnl.RTA_GATEWAY, socket.inet_aton("10.0.0.1")) + rtnl.attr_u32(rtnl.RTA_OIF, 3)
    assert rtnl.decode_route(route) == rtnl.RouteEntry(family=socket.AF_INET, dst="0.0.0.0", dst_len=0,
                                                       gateway="10.0.0.1", table=254, oif=3)
    # a table id above 255 only shows in RTA_TABLE (rtm_table then says 252, "compat")
    local = RTMSG.pack(socket.AF_INET6, 64, 0, 0, 252, 2, 0, 1, 0) + rtnl.attr_u32(rtnl.RTA_TABLE, 1000)
    local += rtnl.attr(rtnl.RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00::"))
    assert rtnl.decode_route(local)[1:5] == ("fd00::", 64, None, 1000)


def test_collector_groups_answers_by_sequence_across_datagrams() -> None:
    dump_part1 = message(rtnl.RTM_NEWLINK, 7, link_payload(1, "lo", 9, "00:00:00:00:00:00", ""), rtnl.NLM_F_MULTI)
    dump_part2 = message(rtnl.RTM_NEWLINK, 7, link_payload(2, "eth0", 3, "02:00:00:00:00:01", "veth"),
                         rtnl.NLM_F_MULTI)
    done = message(rtnl.NLMSG_DONE, 7, struct.pack("=i", 0), rtnl.NLM_F_MULTI)
    stale = ack(3)  # an answer to an earlier, interrupted call
    collector = rtnl.Collector([5, 6, 7])
    collector.feed(stale + ack(5) + ack(6, errno.EEXIST, "File exists here") + dump_part1)
    assert not collector.complete
    collector.feed(dump_part2 + done)
    assert collector.complete
    assert collector.done[5] == rtnl.Reply((), 0, "")
    assert collector.done[6] == rtnl.Reply((), errno.EEXIST, "File exists here")
    names = [rtnl.decode_link(p).name for t, p in collector.done[7].messages]
    assert names == ["lo", "eth0"] and collector.done[7].error == 0
    assert 3 not in collector.done


def test_error_without_extended_ack_and_uncapped() -> None:
    request = HDR.pack(HDR.size + 4, rtnl.RTM_NEWADDR, 0, 9, 0) + b"abcd"
    payload = struct.pack("=i", -errno.ENODEV) + request + rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, "no such device")
    # uncapped: the TLVs come after the whole echoed request
    assert rtnl.parse_error(payload, rtnl.NLM_F_ACK_TLVS) == (errno.ENODEV, "no such device")
    assert rtnl.parse_error(payload, 0) == (errno.ENODEV, "")


def test_malformed_datagram_is_a_kernel_error() -> None:
    bad = HDR.pack(200, rtnl.NLMSG_ERROR, 0, 1, 0) + b"\0" * 8
    with pytest.raises(KernelError, match="malformed"):
        list(rtnl.parse_messages(bad))


def test_netlink_error_names_the_request_and_the_kernel_reason() -> None:
    exc = rtnl.NetlinkError(errno.ENETUNREACH, "add route 192.168.0.0/16 via 10.99.0.1 dev eth0",
                            "Nexthop has invalid gateway")
    assert str(exc) == ("cannot add route 192.168.0.0/16 via 10.99.0.1 dev eth0: Network is unreachable "
                        "(Nexthop has invalid gateway)")
    assert isinstance(exc, KernelError) and exc.code == errno.ENETUNREACH
