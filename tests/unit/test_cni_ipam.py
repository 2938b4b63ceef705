"""host-local IPAM: round-robin, reuse, exhaustion, release, gc, ranges, on-disk format, concurrency."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from netk8s.cni import plugin
from netk8s.cni.ipam import HostLocalIpam
from netk8s.cni.types import CNIError, ErrorCode, IpamRange, make_range

REFERENCE_HOST_LOCAL = Path("/usr/lib/cni/host-local")


def rng(subnet: str, start: str | None = None, end: str | None = None, gateway: str | None = None) -> IpamRange:
    return make_range(ipaddress.ip_network(subnet), ipaddress.ip_address(start) if start else None,
                      ipaddress.ip_address(end) if end else None, ipaddress.ip_address(gateway) if gateway else None)


def ips(allocs: list[Any]) -> list[str]:
    return [str(a.address) for a in allocs]


def test_round_robin_skips_gateway_and_continues_after_last(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    assert ips(ipam.allocate("a", "eth0")) == ["10.1.0.2/24"]  # .1 is the default gateway
    assert ips(ipam.allocate("b", "eth0")) == ["10.1.0.3/24"]
    assert ipam.release("a", "eth0") == [ipaddress.ip_address("10.1.0.2")]
    # round robin: the freed .2 is not reused before the range wrapped
    assert ips(ipam.allocate("c", "eth0")) == ["10.1.0.4/24"]
    assert (tmp_path / "net" / "last_reserved_ip.0").read_text() == "10.1.0.4"
    alloc = ipam.allocate("d", "eth0")[0]
    assert str(alloc.gateway) == "10.1.0.1" and alloc.new


def test_last_reserved_is_rewritten_in_place_without_leftovers(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    last = tmp_path / "net" / "last_reserved_ip.0"
    ipam.allocate("a", "eth0")
    inode = last.stat().st_ino
    last.write_text("10.1.0.254")  # longer than what comes next: the wrap must not leave its tail behind
    assert ips(ipam.allocate("b", "eth0")) == ["10.1.0.3/24"]
    assert last.read_text() == "10.1.0.3" and last.stat().st_ino == inode
    assert sorted(os.listdir(tmp_path / "net")) == ["10.1.0.2", "10.1.0.3", "last_reserved_ip.0", "lock"]


def test_leases_of_one_container(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    for cid in ("a", "b", "a"):
        ipam.allocate(cid, f"eth{len(ipam.leases())}")
    assert [(str(le.ip), le.ifname) for le in ipam.leases("a")] == [("10.1.0.2", "eth0"), ("10.1.0.4", "eth2")]
    assert ipam.leases("nobody") == []
    (tmp_path / "net" / "10.1.0.9.tmp").write_text("a\r\neth9")  # not an address: ignored
    assert len(ipam.leases("a")) == 2


def test_wraps_around_the_range(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24", "10.1.0.10", "10.1.0.12")]])
    assert [ips(ipam.allocate(c, "eth0"))[0] for c in ("a", "b", "c")] == ["10.1.0.10/24", "10.1.0.11/24",
                                                                         "10.1.0.12/24"]
    ipam.release("b", "eth0")
    assert ips(ipam.allocate("d", "eth0")) == ["10.1.0.11/24"]  # the only free one, found after wrapping


def test_same_container_and_ifname_gets_the_same_address(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    first = ipam.allocate("a", "eth0")[0]
    again = ipam.allocate("a", "eth0")[0]
    assert again.address == first.address and not again.new
    other_if = ipam.allocate("a", "net1")[0]
    assert other_if.address != first.address
    assert ipam.get("a", "eth0")[0].address == first.address
    assert ipam.get("zzz", "eth0") == []


def test_exhaustion_message(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24", "10.1.0.10", "10.1.0.11")]])
    ipam.allocate("a", "eth0")
    ipam.allocate("b", "eth0")
    with pytest.raises(CNIError) as info:
        ipam.allocate("c", "eth0")
    assert info.value.code == ErrorCode.INTERNAL
    assert info.value.msg == "no IP addresses available in range set: 10.1.0.10-10.1.0.11"


def test_network_broadcast_and_gateway_never_handed_out(tmp_path: Path) -> None:
    # /30: .0 network, .1 gateway, .2 usable, .3 broadcast
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/30")]])
    assert ips(ipam.allocate("a", "eth0")) == ["10.1.0.2/30"]
    with pytest.raises(CNIError, match="10.1.0.1-10.1.0.2"):
        ipam.allocate("b", "eth0")
    # a gateway inside rangeStart..rangeEnd is skipped as well
    mid = HostLocalIpam("mid", tmp_path, [[rng("10.2.0.0/24", "10.2.0.10", "10.2.0.12", gateway="10.2.0.11")]])
    assert [ips(mid.allocate(c, "eth0"))[0] for c in ("a", "b")] == ["10.2.0.10/24", "10.2.0.12/24"]
    with pytest.raises(CNIError, match="no IP addresses available"):
        mid.allocate("c", "eth0")


def test_range_start_and_end_honoured_across_ranges(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24", "10.1.0.100", "10.1.0.101"),
                                            rng("10.1.1.0/24", "10.1.1.50", "10.1.1.50")]])
    got = [ips(ipam.allocate(c, "eth0"))[0] for c in ("a", "b", "c")]
    assert got == ["10.1.0.100/24", "10.1.0.101/24", "10.1.1.50/24"]
    with pytest.raises(CNIError, match="range set: 10.1.0.100-10.1.0.101,10.1.1.50-10.1.1.50"):
        ipam.allocate("d", "eth0")


def test_lease_files_match_reference_format(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    ipam.allocate("ctr-1", "eth0")
    assert (tmp_path / "net" / "10.1.0.2").read_bytes() == b"ctr-1\r\neth0"
    # a lease written by someone else (reference plugin, or the legacy id-only form) is respected
    (tmp_path / "net" / "10.1.0.3").write_text("other\r\neth0\n")
    (tmp_path / "net" / "10.1.0.4").write_text("legacy")
    assert ips(ipam.allocate("ctr-2", "eth0")) == ["10.1.0.5/24"]
    assert ipam.release("legacy", "eth0") == [ipaddress.ip_address("10.1.0.4")]
    leases = {str(le.ip): (le.container_id, le.ifname) for le in ipam.leases()}
    assert leases == {"10.1.0.2": ("ctr-1", "eth0"), "10.1.0.3": ("other", "eth0"), "10.1.0.5": ("ctr-2", "eth0")}


def test_release_is_idempotent_and_targeted(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")], [rng("10.9.0.0/24")]])
    assert ips(ipam.allocate("a", "eth0")) == ["10.1.0.2/24", "10.9.0.2/24"]
    ipam.allocate("a", "net1")
    assert ipam.release("a", "eth0", only=[ipaddress.ip_address("10.9.0.2")]) == [ipaddress.ip_address("10.9.0.2")]
    assert sorted(map(str, ipam.release("a", "eth0"))) == ["10.1.0.2"]
    assert ipam.release("a", "eth0") == []
    assert [le.ifname for le in ipam.leases()] == ["net1", "net1"]
    assert HostLocalIpam("never-used", tmp_path, [[rng("10.1.0.0/24")]]).release("a", "eth0") == []


def test_second_range_set_exhausted_rolls_back_first(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")], [rng("10.9.0.0/24", "10.9.0.5", "10.9.0.5")]])
    ipam.allocate("a", "eth0")
    with pytest.raises(CNIError, match="10.9.0.5-10.9.0.5"):
        ipam.allocate("b", "eth0")
    assert [le.container_id for le in ipam.leases()] == ["a", "a"]


def test_gc_keeps_only_valid_attachments(tmp_path: Path) -> None:
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    for cid in ("a", "b", "c"):
        ipam.allocate(cid, "eth0")
    (tmp_path / "net" / "10.1.0.200").write_text("d")  # legacy id-only lease of a valid container
    gone = ipam.gc({("b", "eth0"), ("d", "eth0")})
    assert sorted(le.container_id for le in gone) == ["a", "c"]
    assert sorted(le.container_id for le in ipam.leases()) == ["b", "d"]
    assert ipam.gc(set()) and ipam.leases() == []


def test_candidate_order(tmp_path: Path) -> None:
    rs = [rng("10.1.0.0/24", "10.1.0.10", "10.1.0.11"), rng("10.1.1.0/24", "10.1.1.10", "10.1.1.10")]
    order = [str(ip) for _, ip in HostLocalIpam.candidates(rs, ipaddress.ip_address("10.1.0.11"))]
    assert order == ["10.1.1.10", "10.1.0.10", "10.1.0.11"]
    order = [str(ip) for _, ip in HostLocalIpam.candidates(rs, ipaddress.ip_address("192.0.2.1"))]
    assert order == ["10.1.0.10", "10.1.0.11", "10.1.1.10"]


def _allocate_many(data_dir: str, prefix: str, count: int, start: Any, out: Any) -> None:
    ipam = HostLocalIpam("race", data_dir, [[rng("10.5.0.0/24")]])
    start.wait(timeout=10)
    got = [str(ipam.allocate(f"{prefix}{i}", "eth0")[0].address.ip) for i in range(count)]
    out.put(got)


def test_concurrent_allocation_from_two_processes_is_distinct(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_allocate_many, args=(str(tmp_path), p, 60, start, out)) for p in ("x", "y")]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=20) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    every = results[0] + results[1]
    assert len(every) == 120 and len(set(every)) == 120
    assert len(os.listdir(tmp_path / "race")) == 120 + 2  # leases + lock + last_reserved_ip.0


def test_status_and_gc_commands(tmp_path: Path) -> None:
    body: dict[str, Any] = {"cniVersion": "1.1.0", "name": "net", "type": "netk8s-cni",
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]],
                                     "dataDir": str(tmp_path)}}
    assert plugin.execute({"CNI_COMMAND": "STATUS"}, json.dumps(body)) is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    blocked = {**body, "ipam": {**body["ipam"], "dataDir": str(blocker / "sub")}}
    with pytest.raises(CNIError) as info:
        plugin.execute({"CNI_COMMAND": "STATUS"}, json.dumps(blocked))
    assert info.value.code == ErrorCode.NOT_AVAILABLE == 50
    ipam = HostLocalIpam("net", tmp_path, [[rng("10.1.0.0/24")]])
    ipam.allocate("keep", "eth0")
    ipam.allocate("stale", "eth0")
    gc = {**body, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert plugin.execute({"CNI_COMMAND": "GC"}, json.dumps(gc)) is None
    assert [le.container_id for le in ipam.leases()] == ["keep"]


@pytest.mark.skipif(not REFERENCE_HOST_LOCAL.exists(), reason="reference host-local plugin not installed")
def test_shares_a_data_dir_with_reference_host_local(tmp_path: Path) -> None:
    ours = HostLocalIpam("shared", tmp_path, [[rng("10.7.0.0/24")]])
    ours.allocate("mine", "eth0")
    conf = {"cniVersion": "1.0.0", "name": "shared", "type": "host-local",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}]], "dataDir": str(tmp_path)}}
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "theirs",
           "CNI_NETNS": "/nonexistent", "CNI_IFNAME": "eth0", "CNI_PATH": str(REFERENCE_HOST_LOCAL.parent)}
    proc = subprocess.run([str(REFERENCE_HOST_LOCAL)], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stdout
    theirs = json.loads(proc.stdout)["ips"][0]["address"]
    assert theirs == "10.7.0.3/24"  # it saw our lease and our last_reserved_ip.0
    assert [str(a.address) for a in ours.get("theirs", "eth0")] == [theirs]  # we read its lease
    assert ips(ours.allocate("mine2", "eth0")) == ["10.7.0.4/24"]  # and its last_reserved_ip.0
