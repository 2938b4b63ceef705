"""Capture reading and tcpdump handling that need no root: pcap records, selection, tcpdump's
arguments, its refusals and its statistics."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, CookedLinuxV2, Ether
from scapy.layers.sctp import SCTP
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from netk8s.capture import PacketRecord, read_pcap, select
from netk8s.errors import KernelError, UserError
from netk8s.kernel.tcpdump import Tcpdump, refusal, tcpdump_argv

POD, SVC, NODE1, NODE2 = "10.244.1.2", "10.96.0.20", "172.18.0.3", "172.18.0.4"


def ether_frames() -> list:
    frames = [
        Ether() / IP(src=POD, dst=SVC, ttl=64) / TCP(sport=40000, dport=80, flags="S"),
        Ether() / IP(src=SVC, dst=POD, ttl=63) / TCP(sport=80, dport=40000, flags="SA"),
        Ether() / IP(src=POD, dst=SVC) / TCP(sport=40000, dport=80, flags="PA") / b"GET / HTTP/1.1\r\n\r\n",
        Ether() / IP(src=POD, dst=SVC) / TCP(sport=40000, dport=80, flags="FPA"),
        Ether() / IP(src=POD, dst="10.96.0.10") / UDP(sport=5353, dport=53) / b"query",
        Ether() / IP(src=POD, dst="10.244.2.2") / ICMP(type=8, code=0) / b"ping",
        Ether() / ARP(op=1, psrc=NODE1, pdst=NODE2),
        Ether() / IP(src=POD, dst=SVC) / SCTP(sport=3000, dport=3001),
        Ether() / IP(src=NODE1, dst=NODE2) / UDP(sport=35000, dport=8472) / VXLAN(vni=1, flags=0x08)
        / Ether() / IP(src=POD, dst="10.244.2.2") / ICMP(type=0),
    ]
    for i, frame in enumerate(frames):
        frame.time = 1700000000 + i
    return frames


@pytest.fixture
def ether_pcap(tmp_path: Path) -> Path:
    path = tmp_path / "ether.pcap"
    wrpcap(str(path), ether_frames())
    return path


def test_records_carry_addresses_ports_flags_and_payloads(ether_pcap: Path) -> None:
    records = read_pcap(ether_pcap)
    assert len(records) == 9
    syn, syn_ack, push, fin, dns, ping, arp, sctp, vxlan = records
    assert (syn.protocol, syn.src, syn.dst, syn.sport, syn.dport, syn.flags, syn.ttl) == \
        ("TCP", IPv4Address(POD), IPv4Address(SVC), 40000, 80, "S", 64)
    assert (syn_ack.flags, syn_ack.ttl) == ("S.", 63)  # tcpdump's letters: "." is ACK
    assert (push.flags, push.payload) == ("P.", b"GET / HTTP/1.1\r\n\r\n")
    assert fin.flags == "FP."
    assert (dns.protocol, dns.dport, dns.payload, dns.flags) == ("UDP", 53, b"query", None)
    assert (ping.protocol, ping.icmp_type, ping.icmp_code, ping.payload) == ("ICMP", 8, 0, b"ping")
    assert (arp.protocol, str(arp.src), str(arp.dst), arp.arp_op) == ("ARP", NODE1, NODE2, 1)
    assert (sctp.protocol, sctp.sport, sctp.dport) == ("SCTP", 3000, 3001)
    assert syn.time == 1700000000 and vxlan.time == 1700000008
    assert syn.length == len(ether_frames()[0]) and syn.direction is None


def test_vxlan_records_carry_the_inner_packet(ether_pcap: Path) -> None:
    vxlan = read_pcap(ether_pcap)[-1]
    assert (vxlan.protocol, vxlan.dport, vxlan.vni) == ("UDP", 8472, 1)
    assert vxlan.inner is not None
    assert (vxlan.inner.protocol, str(vxlan.inner.src), vxlan.inner.icmp_type) == ("ICMP", POD, 0)
    assert str(vxlan) == f"UDP {NODE1}:35000 > {NODE2}:8472 vni 1: ICMP {POD} > 10.244.2.2"


def test_cooked_captures_record_direction_and_interface(tmp_path: Path) -> None:
    # What `tcpdump -i any` writes: Linux cooked v2 frames with a packet type and an ifindex.
    out = CookedLinuxV2(pkttype=4, ifindex=2, proto=0x0800) / IP(src=POD, dst=SVC) / TCP(dport=80, flags="S")
    back = CookedLinuxV2(pkttype=0, ifindex=2, proto=0x0800) / IP(src=SVC, dst=POD) / TCP(sport=80, flags="SA")
    path = tmp_path / "any.pcap"
    wrpcap(str(path), [out, back])
    sent, received = read_pcap(path.read_bytes())
    assert (sent.direction, sent.ifindex, sent.flags) == ("Out", 2, "S")
    assert (received.direction, received.flags) == ("In", "S.")
    assert sent.length == len(out.payload)  # the IP packet, not the cooked header


def test_select_by_fields(ether_pcap: Path) -> None:
    records = read_pcap(ether_pcap)
    assert [r.flags for r in select(records, src=POD, dst=IPv4Address(SVC), protocol="tcp")] == ["S", "P.", "FP."]
    assert select(records, flags="S.")[0].sport == 80
    assert [r.protocol for r in select(records, dport=53)] == ["UDP"]
    assert select(records, src="192.0.2.1") == []
    with pytest.raises(TypeError, match="unknown field 'port'"):
        select(records, port=80)


def test_reading_in_a_fresh_interpreter_dissects_the_first_frame(ether_pcap: Path) -> None:
    # Layer bindings appear as scapy modules are imported: the reader must load them all first.
    code = (f"from netk8s.capture import read_pcap\n"
            f"print([r.protocol for r in read_pcap({str(ether_pcap)!r})][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "TCP", out.stderr


def test_empty_capture_reads_as_no_records() -> None:
    assert read_pcap(b"") == []
    assert str(PacketRecord(time=0, length=0, protocol="ARP")) == "ARP None > None"


# -- tcpdump ------------------------------------------------------------------------------------------

def test_tcpdump_arguments() -> None:
    assert tcpdump_argv() == ["tcpdump", "--immediate-mode", "-n", "-Z", "root", "-i", "any", "-s", "262144", "-l"]
    assert tcpdump_argv("eth0", "tcp port 80", 4, Path("/tmp/x.pcap"))[5:] == [
        "-i", "eth0", "-s", "262144", "-U", "-w", "/tmp/x.pcap", "-c", "4", "tcp port 80"]
    assert tcpdump_argv(bpf_filter="  ")[-1] == "-l"  # a blank filter is no filter


@pytest.mark.parametrize("stderr,kind,needle", [
    ("tcpdump: can't parse filter expression: syntax error\n", UserError, "capture filter 'tcp port'"),
    ("tcpdump: eth9: No such device exists\n(SIOCGIFHWADDR: No such device)\n", UserError,
     "capture interface 'eth9': no such interface in pod default/a"),
    ("tcpdump: socket: Operation not permitted\n", KernelError, "exited before capturing: tcpdump: socket"),
    ("", KernelError, "no output"),
])
def test_tcpdump_refusals_name_what_was_wrong(stderr: str, kind: type, needle: str) -> None:
    error = refusal(stderr, "eth9", "tcp port", "pod default/a")
    assert type(error) is kind and needle in str(error)


def test_tcpdump_statistics() -> None:
    dump = Tcpdump("nk-unused", bpf_filter="icmp")
    assert dump.captured() is None and dump.pid is None and not dump.running()
    dump.stderr_lines = ["listening on any\n", "1 packet captured\n", "4 packets received by filter\n"]
    assert dump.captured() == 1
    dump.stderr_lines = ["12 packets captured\n"]
    assert dump.captured() == 12
