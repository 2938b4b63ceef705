"""Pod network set-up speed: netk8s-cni against the reference bridge + host-local plugins, in one run.

Three node namespaces get the same kind of network (cni0, gateway, hairpin,
host-local, the kubelet's conflist): one served by the reference Go plugins in
/usr/lib/cni, one by netk8s-cni in-process, one by the ``netk8s-cni``
executable. Each pod is set up the way the kubelet does it: create the pod
namespace, disable IPv6 in it, CNI ADD through :class:`CniInvoker`
(executables run as ``nsenter --net=<node> -- <plugin>``). The three series
are interleaved pod by pod, so load on the machine hits them alike.

Targets (issue 4):

1. in-process set-up (netns create + ADD) p50 <= the reference plugin's exec ADD p50;
2. the ``netk8s-cni`` executable's ADD p50 <= 3x the reference's;
3. a burst of 100 pods on one node (the kubelet's 4 workers, in-process) set up in < 2 s.

Prints per-pod p50/p99 of each series, the ratios and PASS/FAIL per target;
exits 1 on a miss. Bytecode of the package is compiled first (an installed
package has it; without it every executable run compiles its imports).
Everything made here is named ``nk-b<random>-...`` and removed at the end,
also on failure or Ctrl-C; it all lives in namespaces this bench creates.

    sudo .venv/bin/python bench/bench_cni.py [--pods 50] [--burst 100]
"""

from __future__ import annotations

import argparse
import compileall
import functools
import ipaddress
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import netk8s
from netk8s.cni.invoker import Attachment, CniInvoker, node_conflist
from netk8s.errors import KernelError
from netk8s.kernel import netns

REFERENCE_BIN = Path("/usr/lib/cni")
VENV_BIN = Path(sys.executable).parent
KUBELET_WORKERS = 4  # netk8s.kubelet.Kubelet.workers
WARMUP = 3
EXE_RATIO = 3.0
BURST_LIMIT = 2.0
NETWORK = "nk-bench"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


class Scratch:
    """What the bench creates: namespaces ``nk-b<random>-<suffix>`` and a temp dir; ``close`` removes them."""

    def __init__(self) -> None:
        self.prefix = f"nk-b{secrets.token_hex(3)}"
        self.names: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="netk8s-bench-cni-"))

    def namespace(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.names.append(name)  # recorded before creation, so a half-made one is removed too
        netns.create(name)
        return name

    def close(self) -> None:
        # A node namespace takes its bridge and host veths with it; a pod namespace its eth0.
        for name in reversed(self.names):
            try:
                netns.delete(name)
            except KernelError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Series:
    """One way of attaching pods, on its own node namespace, pod CIDR and lease directory."""

    label: str
    tag: str  # pod namespaces are nk-b<random>-<tag><n>
    invoker: CniInvoker
    netns_ms: list[float] = field(default_factory=list)
    add_ms: list[float] = field(default_factory=list)
    setup_ms: list[float] = field(default_factory=list)
    last_pod: str = ""
    last_ip: str = ""


def attachment(ns_name: str, uid: str) -> Attachment:
    """What the kubelet passes (netk8s.kubelet.Kubelet._attachment)."""
    return Attachment(container_id=uid, netns=netns.path_of(ns_name), ifname="eth0", args=(
        ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", ns_name),
        ("K8S_POD_INFRA_CONTAINER_ID", uid), ("K8S_POD_UID", uid)))


def kubelet_pod_setup(scratch: Scratch, invoker: CniInvoker, suffix: str) -> tuple[float, float, dict[str, Any]]:
    """netns create + IPv6 off + ADD, as netk8s.kubelet does; returns (netns s, ADD s, result)."""
    t0 = time.perf_counter()
    name = scratch.namespace(suffix)
    netns.write_sysctl(name, "net.ipv6.conf.all.disable_ipv6", 1)
    netns.write_sysctl(name, "net.ipv6.conf.default.disable_ipv6", 1)
    t1 = time.perf_counter()
    result = invoker.add(attachment(name, secrets.token_hex(16)))
    return t1 - t0, time.perf_counter() - t1, result


def make_invoker(scratch: Scratch, suffix: str, third_octet: int, plugin_type: str, bin_dir: Path,
                 in_process: bool) -> CniInvoker:
    node = scratch.namespace(suffix)
    cidr = ipaddress.IPv4Network(f"10.244.{third_octet}.0/24")
    conf = node_conflist(NETWORK, cidr, scratch.tmp / suffix, plugin_type=plugin_type)
    return CniInvoker(conf, [str(bin_dir)], node, in_process=in_process)


def run_series(scratch: Scratch, series: list[Series], pods: int) -> None:
    for i in range(WARMUP + pods):
        # Rotate the order so no series always runs right after another one.
        for k in range(len(series)):
            s = series[(i + k) % len(series)]
            suffix = f"{s.tag}{i}"
            ns_s, add_s, result = kubelet_pod_setup(scratch, s.invoker, suffix)
            s.last_pod, s.last_ip = f"{scratch.prefix}-{suffix}", result["ips"][0]["address"]
            if i >= WARMUP:
                s.netns_ms.append(ns_s * 1e3)
                s.add_ms.append(add_s * 1e3)
                s.setup_ms.append((ns_s + add_s) * 1e3)


def burst(scratch: Scratch, suffix: str, third_octet: int, plugin_type: str, bin_dir: Path, in_process: bool,
          count: int) -> float:
    """Wall time to set up ``count`` pods on a fresh node with the kubelet's worker count."""
    invoker = make_invoker(scratch, suffix, third_octet, plugin_type, bin_dir, in_process)
    jobs: list[Callable[[], tuple[float, float, dict[str, Any]]]] = [
        functools.partial(kubelet_pod_setup, scratch, invoker, f"{suffix}{n}") for n in range(count)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=KUBELET_WORKERS) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(job) for job in jobs]]
    elapsed = time.perf_counter() - t0
    addresses = {r[2]["ips"][0]["address"] for r in results}
    if len(addresses) != count:
        raise SystemExit(f"burst {suffix}: {count} ADDs gave only {len(addresses)} distinct addresses")
    ports = netns.run(invoker.host_netns, ["ip", "-o", "link", "show", "master", "cni0"]).stdout.splitlines()
    if len(ports) != count:
        raise SystemExit(f"burst {suffix}: cni0 has {len(ports)} ports after {count} ADDs")
    return elapsed


def check_datapath(series: list[Series]) -> None:
    """The last pod of each series reaches its gateway: the numbers are for working pods."""
    for s in series:
        gateway = str(ipaddress.IPv4Interface(s.last_ip).network.network_address + 1)
        ping = netns.run(s.last_pod, ["ping", "-c1", "-W2", gateway], check=False, timeout=10)
        if ping.returncode != 0:
            raise SystemExit(f"{s.label}: pod {s.last_pod} cannot reach its gateway {gateway}")


def compile_bytecode() -> None:
    package = Path(netk8s.__file__).parent
    compileall.compile_dir(str(package), quiet=1)


def report(series: list[Series], bursts: dict[str, float], burst_count: int, pods: int) -> bool:
    ref, inproc, exe = series
    print(f"netk8s-cni vs the reference bridge + host-local plugins ({REFERENCE_BIN}), {pods} pods per series "
          f"after {WARMUP} warm-up pods, interleaved")
    print(f"{'per pod, ms':34} {'netns p50':>9} {'ADD p50':>8} {'ADD p99':>8} {'set-up p50':>10} {'set-up p99':>10}")
    for s in series:
        print(f"{s.label:34} {statistics.median(s.netns_ms):9.2f} {statistics.median(s.add_ms):8.2f} "
              f"{percentile(s.add_ms, 0.99):8.2f} {statistics.median(s.setup_ms):10.2f} "
              f"{percentile(s.setup_ms, 0.99):10.2f}")
    ref_add = statistics.median(ref.add_ms)
    inproc_ratio = statistics.median(inproc.setup_ms) / ref_add
    exe_ratio = statistics.median(exe.add_ms) / ref_add
    print(f"burst of {burst_count} pods on one node, {KUBELET_WORKERS} workers: "
          + ", ".join(f"{label} {secs:.2f} s" for label, secs in bursts.items()))
    print(f"ratio in-process set-up p50 / reference exec ADD p50: {inproc_ratio:.2f}x")
    print(f"ratio executable ADD p50 / reference exec ADD p50:    {exe_ratio:.2f}x")
    burst_s = bursts[inproc.label]
    checks = [
        (f"in-process set-up (netns + ADD) p50 <= reference exec ADD p50 ({inproc_ratio:.2f}x)", inproc_ratio <= 1.0),
        (f"netk8s-cni executable ADD p50 <= {EXE_RATIO:.0f}x reference exec ADD p50 ({exe_ratio:.2f}x)",
         exe_ratio <= EXE_RATIO),
        (f"burst of {burst_count} pods on one node < {BURST_LIMIT:.0f} s ({burst_s:.2f} s)", burst_s < BURST_LIMIT),
    ]
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    return all(ok for _, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50, help="measured pods per series (default 50, at most 240)")
    parser.add_argument("--burst", type=int, default=100, help="pods in the burst (default 100, at most 250)")
    args = parser.parse_args(argv)
    if not 1 <= args.pods <= 240 or not 1 <= args.burst <= 250:
        parser.error("--pods must be 1-240 and --burst 1-250 (one /24 per node)")
    if not (REFERENCE_BIN / "bridge").exists() or not (REFERENCE_BIN / "host-local").exists():
        print(f"error: the reference plugins are not installed in {REFERENCE_BIN} (Debian package "
              "containernetworking-plugins)", file=sys.stderr)
        return 1
    if not (VENV_BIN / "netk8s-cni").exists():
        print(f"error: {VENV_BIN / 'netk8s-cni'} is missing; install netk8s (make setup)", file=sys.stderr)
        return 1

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # runs the cleanup below

    signal.signal(signal.SIGTERM, terminate)
    compile_bytecode()
    scratch = Scratch()
    try:
        series = [
            Series("reference bridge (exec)", "r",
                   make_invoker(scratch, "rnode", 1, "bridge", REFERENCE_BIN, False)),
            Series("netk8s-cni in-process", "i", make_invoker(scratch, "inode", 2, "netk8s-cni", VENV_BIN, True)),
            Series("netk8s-cni executable", "e", make_invoker(scratch, "enode", 3, "netk8s-cni", VENV_BIN, False)),
        ]
        run_series(scratch, series, args.pods)
        check_datapath(series)
        bursts = {
            "netk8s-cni in-process": burst(scratch, "ib", 4, "netk8s-cni", VENV_BIN, True, args.burst),
            "reference bridge (exec)": burst(scratch, "rb", 5, "bridge", REFERENCE_BIN, False, args.burst),
        }
        ok = report(series, bursts, args.burst, args.pods)
    finally:
        scratch.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
