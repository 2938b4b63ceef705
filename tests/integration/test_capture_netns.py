"""Captures in a real namespace: tcpdump starts before the traffic, stops by its own PID, leaves no
file or process behind, and refuses bad filters and interfaces with errors naming them."""

from __future__ import annotations

import glob
import subprocess
import tempfile
from pathlib import Path

import pytest
from proxy_rig import Node

from netk8s.capture import Capture, read_pcap
from netk8s.errors import KernelError, NetK8sError, UserError
from netk8s.kernel import netns, procs


def ping(ns: str, address: str, count: int = 1) -> None:
    netns.run(ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", address])


def temp_dirs() -> set[str]:
    return set(glob.glob(str(Path(tempfile.gettempdir()) / "netk8s-capture-*")))


def test_capture_sees_the_traffic_and_cleans_up(node: Node) -> None:
    before = temp_dirs()
    started: list[int] = []
    stopped: list[int] = []
    with Capture(node.name, "icmp", where="node test", on_start=started.append, on_stop=stopped.append) as cap:
        assert cap.running and started and procs.is_running(started[0], None)
        ping(node.name, "10.244.1.2")
        request = cap.wait_for(icmp_type=8, timeout=5)  # seen while the capture still runs
        assert str(request.dst) == "10.244.1.2" and request.direction in ("In", "Out")
        with pytest.raises(NetK8sError, match="still running"):
            _ = cap.lines
    assert stopped == started and not procs.is_running(started[0], None)
    assert any("ICMP echo request" in line for line in cap.lines), cap.lines
    assert any(line.split()[1] == "lo" for line in cap.lines), cap.lines  # interface names from the namespace
    assert cap.select(icmp_type=0, src="10.244.1.2")  # the reply
    assert read_pcap(cap.pcap) == cap.packets
    assert temp_dirs() == before and cap.pcap_path is None


def test_count_limited_capture_ends_by_itself(node: Node) -> None:
    cap = Capture(node.name, "icmp", interface="lo", count=2).start()
    try:
        ping(node.name, "127.0.0.1")
        assert cap.wait(timeout=5)
        assert not cap.running and len(cap.lines) == 2
        assert [p.icmp_type for p in cap.packets] == [8, 0]
    finally:
        cap.stop()


def test_kept_pcap_file(node: Node, tmp_path: Path) -> None:
    target = tmp_path / "kept.pcap"
    with Capture(node.name, "icmp", pcap=target) as cap:
        ping(node.name, "10.244.1.3")
    assert cap.pcap_path == target and target.read_bytes() == cap.pcap
    assert len(read_pcap(target)) == 2
    assert subprocess.run(["tcpdump", "-r", str(target)], capture_output=True).returncode == 0


def test_refusals_name_the_filter_or_interface(node: Node) -> None:
    before = temp_dirs()
    with pytest.raises(UserError, match="capture filter 'tcp port': tcpdump cannot parse it"):
        Capture(node.name, "tcp port").start()
    with pytest.raises(UserError, match="capture interface 'eth9': no such interface in node x"):
        Capture(node.name, interface="eth9", where="node x").start()
    with pytest.raises(KernelError, match="namespace nk-gone-for-good is gone"):
        Capture("nk-gone-for-good").start()
    assert temp_dirs() == before


def test_wait_for_times_out_naming_what_it_waited_for(node: Node) -> None:
    with Capture(node.name, "udp") as cap:
        with pytest.raises(NetK8sError, match="no packet with dport=9 within 0.3s"):
            cap.wait_for(dport=9, timeout=0.3)
    assert cap.lines == [] and cap.packets == []
    with pytest.raises(NetK8sError, match="no packet with dport=9"):
        cap.wait_for(dport=9)
