"""DNS messages on the wire (RFC 1035): parse a query, build an answer. Pure, stdlib only.

Only what a cluster DNS server needs: one question per query, answers of type
A, SRV and PTR (no name compression on output, which every resolver accepts),
and the response codes NOERROR, SERVFAIL, NXDOMAIN, NOTIMP and REFUSED. An EDNS
OPT record in the query is ignored (answers stay within 512 bytes for UDP, and
are truncated with TC set when they do not fit).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address


class RecordType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


CLASS_IN = 1
UDP_LIMIT = 512
_HEADER = struct.Struct("!HHHHHH")


class MalformedQuery(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    name: str  # lower case, no trailing dot
    rtype: int
    rclass: int = CLASS_IN


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    question: Question

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & 0x0100)


@dataclass(frozen=True)
class Record:
    name: str
    rtype: RecordType
    ttl: int
    data: IPv4Address | str | tuple[int, int, int, str]  # A: address; PTR, CNAME: name; SRV: (prio, weight, port, target)


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    jumps = 0
    end = None
    while True:
        if offset >= len(message):
            raise MalformedQuery("name runs past the end of the message")
        length = message[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer
            if offset + 1 >= len(message) or jumps > 32:
                raise MalformedQuery("bad compression pointer")
            end = offset + 2 if end is None else end
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            jumps += 1
            continue
        if length & 0xC0:
            raise MalformedQuery("unknown label type")
        offset += 1
        if length == 0:
            break
        label = message[offset:offset + length]
        if len(label) != length:
            raise MalformedQuery("label runs past the end of the message")
        labels.append(label.decode("ascii", errors="replace").lower())
        offset += length
    return ".".join(labels), (end if end is not None else offset)


def parse_query(message: bytes) -> Query:
    """The first question of a DNS query (``MalformedQuery`` when it has none or is cut short)."""
    if len(message) < _HEADER.size:
        raise MalformedQuery("shorter than a DNS header")
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(message)
    if flags & 0x8000:
        raise MalformedQuery("a response, not a query")
    if qdcount < 1:
        raise MalformedQuery("no question")
    name, offset = _read_name(message, _HEADER.size)
    if offset + 4 > len(message):
        raise MalformedQuery("question cut short")
    rtype, rclass = struct.unpack_from("!HH", message, offset)
    return Query(ident, flags, Question(name, rtype, rclass))


def _name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii", errors="replace")[:63]
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _rdata(record: Record) -> bytes:
    if record.rtype is RecordType.A:
        assert isinstance(record.data, IPv4Address)
        return record.data.packed
    if record.rtype in (RecordType.PTR, RecordType.CNAME):
        assert isinstance(record.data, str)
        return _name(record.data)
    if record.rtype is RecordType.SRV:
        assert isinstance(record.data, tuple)
        priority, weight, port, target = record.data
        return struct.pack("!HHH", priority, weight, port) + _name(target)
    raise ValueError(f"cannot encode {record.rtype.name} records")


def _record(record: Record) -> bytes:
    data = _rdata(record)
    return _name(record.name) + struct.pack("!HHIH", record.rtype, CLASS_IN, record.ttl, len(data)) + data


def build_response(query: Query, rcode: Rcode, answers: list[Record] = (), additional: list[Record] = (),
                   authoritative: bool = True, limit: int | None = None) -> bytes:
    """The answer to ``query``. With ``limit`` (UDP: 512 bytes) records that do not fit are left out and
    TC is set when an answer had to go, so the client retries over TCP."""
    question = _name(query.question.name) + struct.pack("!HH", query.question.rtype, query.question.rclass)
    body_answers = [_record(r) for r in answers]
    body_additional = [_record(r) for r in additional]
    truncated = False
    if limit is not None:
        size = _HEADER.size + len(question)
        kept_answers: list[bytes] = []
        for encoded in body_answers:
            if size + len(encoded) > limit:
                truncated = True
                break
            kept_answers.append(encoded)
            size += len(encoded)
        kept_additional: list[bytes] = []
        for encoded in body_additional if not truncated else []:
            if size + len(encoded) > limit:
                break
            kept_additional.append(encoded)
            size += len(encoded)
        body_answers, body_additional = kept_answers, kept_additional
    flags = 0x8000 | (query.flags & 0x0100) | int(rcode)  # QR, RD copied
    if authoritative:
        flags |= 0x0400
    if truncated:
        flags |= 0x0200
    header = _HEADER.pack(query.id, flags, 1, len(body_answers), 0, len(body_additional))
    return header + question + b"".join(body_answers) + b"".join(body_additional)


def error_response(message: bytes, rcode: Rcode) -> bytes | None:
    """A bare answer with ``rcode`` for a message that could not be parsed (None: not even a header)."""
    if len(message) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", message)
    return _HEADER.pack(ident, 0x8000 | (flags & 0x0100) | int(rcode), 0, 0, 0, 0)


def build_query(name: str, rtype: RecordType, ident: int = 0x1234) -> bytes:
    """A recursive query for ``name`` (tests, and ``netk8s`` health checks)."""
    return _HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + _name(name) + struct.pack("!HH", rtype, CLASS_IN)


def parse_answers(message: bytes) -> tuple[int, list[tuple[str, int, bytes]]]:
    """(rcode, [(name, type, rdata)]) of a response's answer section (tests and checks)."""
    _, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    offset = _HEADER.size
    for _ in range(qdcount):
        _, offset = _read_name(message, offset)
        offset += 4
    answers = []
    for _ in range(ancount):
        name, offset = _read_name(message, offset)
        rtype, _, _, length = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        answers.append((name, rtype, message[offset:offset + length]))
        offset += length
    return flags & 0x000F, answers
