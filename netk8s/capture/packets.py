"""Reading captures: packets as plain records, and picking out the ones a test asserts on.

``read_pcap`` turns pcap data into ``PacketRecord``s with scapy: IPv4
addresses, protocol, ports, TCP flags written as tcpdump writes them (``S``,
``S.``, ``.``, ``P.``, ``F.``, ``R``), ICMP type and code, the payload, the
direction a cooked (``-i any``) capture records (``In``, ``Out``, ...) and, for
VXLAN (UDP 8472, the Linux and flannel port, or 4789), the VNI and the inner
packet. ``select`` filters records by those fields. Pure: no namespace, no root.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Iterable

# Linux packet types of cooked captures, as tcpdump prints them.
_DIRECTIONS = {0: "In", 1: "B", 2: "M", 3: "P", 4: "Out"}
# tcpdump's order and letters for TCP flags ("." is ACK).
_TCP_FLAGS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), (".", 0x10), ("U", 0x20), ("E", 0x40),
              ("W", 0x80))
_IP_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True)
class PacketRecord:
    """One captured frame, reduced to what network tests look at."""

    time: float
    length: int  # bytes on the wire (the frame as captured, without the cooked header)
    protocol: str  # TCP, UDP, ICMP, SCTP, ARP, or IPv4-<number> / the frame's type for anything else
    src: IPv4Address | None = None  # IP source (ARP: sender protocol address)
    dst: IPv4Address | None = None
    sport: int | None = None
    dport: int | None = None
    flags: str | None = None  # TCP only, tcpdump's letters
    icmp_type: int | None = None
    icmp_code: int | None = None
    arp_op: int | None = None  # 1 request (who-has), 2 reply (is-at)
    direction: str | None = None  # cooked captures: In, Out, B(roadcast), M(ulticast), P (to another host)
    ifindex: int | None = None  # cooked v2 captures: the interface, by index in the captured namespace
    ttl: int | None = None
    payload: bytes = b""  # the transport payload (TCP/UDP/SCTP data, ICMP data)
    vni: int | None = None  # VXLAN: the network identifier, and the packet it carries
    inner: "PacketRecord | None" = None

    def __str__(self) -> str:
        where = f"{self.src}" + (f":{self.sport}" if self.sport is not None else "")
        to = f"{self.dst}" + (f":{self.dport}" if self.dport is not None else "")
        extra = f" [{self.flags}]" if self.flags is not None else ""
        if self.inner is not None:
            extra += f" vni {self.vni}: {self.inner}"
        return f"{self.protocol} {where} > {to}{extra}"


def _record(layer: Any, time: float, length: int, direction: str | None, ifindex: int | None) -> PacketRecord:
    """A record for ``layer``: an IP, ARP or other network-layer scapy packet."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP
    from scapy.layers.sctp import SCTP
    from scapy.layers.vxlan import VXLAN

    base: dict[str, Any] = {"time": time, "length": length, "direction": direction, "ifindex": ifindex}
    if isinstance(layer, ARP):
        return PacketRecord(protocol="ARP", src=_ip(layer.psrc), dst=_ip(layer.pdst), arp_op=int(layer.op), **base)
    if not isinstance(layer, IP):
        return PacketRecord(protocol=type(layer).__name__ if layer is not None else "unknown", **base)
    fields: dict[str, Any] = {"src": _ip(layer.src), "dst": _ip(layer.dst), "ttl": int(layer.ttl),
                              "protocol": _IP_PROTOCOLS.get(int(layer.proto), f"IPv4-{int(layer.proto)}")}
    transport = layer.payload
    if isinstance(transport, (TCP, UDP, SCTP)):
        fields.update(sport=int(transport.sport), dport=int(transport.dport))
    if isinstance(transport, TCP):
        bits = int(transport.flags)
        fields.update(flags="".join(letter for letter, bit in _TCP_FLAGS if bits & bit), payload=bytes(transport.payload))
    elif isinstance(transport, UDP):
        vxlan = transport.getlayer(VXLAN)
        if vxlan is not None:
            inner = vxlan.payload
            inner_l3 = inner.payload if inner is not None and hasattr(inner, "payload") else None
            fields.update(vni=int(vxlan.vni) if vxlan.vni is not None else None,
                          inner=_record(inner_l3, time, len(inner), None, None) if inner_l3 is not None else None)
        else:
            fields.update(payload=bytes(transport.payload))
    elif isinstance(transport, ICMP):
        fields.update(icmp_type=int(transport.type), icmp_code=int(transport.code), payload=bytes(transport.payload))
    elif isinstance(transport, SCTP):
        fields.update(payload=bytes(transport.payload))
    return PacketRecord(**fields, **base)


def _ip(value: Any) -> IPv4Address | None:
    try:
        return IPv4Address(str(value))
    except ValueError:
        return None


def read_pcap(source: bytes | str | Path) -> list[PacketRecord]:
    """The frames of a pcap (its bytes or its path) as records, in capture order."""
    # Every layer module is imported before the first frame is dissected: importing one binds its
    # layers to the others (IP to Ether, VXLAN to UDP); a frame read earlier stays undissected.
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.sctp  # noqa: F401
    import scapy.layers.vxlan  # noqa: F401
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
    from scapy.utils import PcapReader

    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    records: list[PacketRecord] = []
    with stream:
        if isinstance(source, bytes) and not source:
            return records
        for frame in PcapReader(stream):
            direction = ifindex = None
            if isinstance(frame, (CookedLinux, CookedLinuxV2)):
                direction = _DIRECTIONS.get(int(frame.pkttype))
                ifindex = int(frame.ifindex) if isinstance(frame, CookedLinuxV2) else None
                network, length = frame.payload, len(frame.payload)
            elif isinstance(frame, Ether):
                network, length = frame.payload, len(frame)
            else:
                network, length = frame, len(frame)
            records.append(_record(network, float(frame.time), length, direction, ifindex))
    return records


def _matches(record: PacketRecord, criteria: dict[str, Any]) -> bool:
    for name, wanted in criteria.items():
        value = getattr(record, name)
        if name in ("src", "dst"):
            value = str(value) if value is not None else None
            wanted = str(wanted)
        elif name == "protocol":
            wanted = str(wanted).upper()
        if value != wanted:
            return False
    return True


def select(records: Iterable[PacketRecord], **criteria: Any) -> list[PacketRecord]:
    """The records whose fields equal every given criterion (``src="10.244.1.2", dport=8080, flags="S"``).

    Addresses compare as strings, so ``IPv4Address`` and ``str`` both work; ``protocol`` ignores case.
    ``inner=...`` is not a criterion: select on ``record.inner`` yourself.
    """
    known = set(PacketRecord.__dataclass_fields__) - {"inner"}
    unknown = sorted(set(criteria) - known)
    if unknown:
        raise TypeError(f"select: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return [record for record in records if _matches(record, criteria)]
