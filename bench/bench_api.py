"""API server latency and throughput, against a baseline measured in the same run.

Starts a standalone API server (``python -m netk8s.apiserver``, SQLite store on
tmpfs) in its own process, as in a cluster, and drives it from this process
with one keep-alive client:

- baseline: GET /healthz (the HTTP round trip floor of this server);
- create, get: p50/p99 latency of single-object requests; creates per second;
- list: latency of listing 10,000 pods;
- watch: time from sending a create to the watcher receiving its ADDED event.

Targets (issue 3): create p99 < 20 ms, watch delivery p99 < 10 ms, >= 500 creates/s.
Prints each measurement, its ratio to the baseline, and PASS/FAIL per target;
exits 1 if a target is missed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from netk8s.api.resources import PODS
from netk8s.client.rest import ApiClient

N_OBJECTS = 10_000
N_SAMPLES = 1_000


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "netk8s/echo", "ports": [{"containerPort": 8080}]}]}}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="netk8s-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    server = subprocess.Popen([sys.executable, "-m", "netk8s.apiserver", "--store", f"{tmp}/store.db"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        url = line.strip().rsplit(" ", 1)[-1]
        client = ApiClient(url)
        results: dict[str, list[float]] = {}

        results["baseline GET /healthz"] = timed(lambda i: client.get_text("/healthz"), N_SAMPLES)
        results["create pod"] = timed(lambda i: client.create(PODS, pod(f"c{i}"), "default"), N_SAMPLES)
        results["get pod"] = timed(lambda i: client.get(PODS, f"c{i}", "default"), N_SAMPLES)

        # Throughput: creates per second from one client, up to N_OBJECTS pods in all.
        t0 = time.perf_counter()
        for i in range(N_SAMPLES, N_OBJECTS):
            client.create(PODS, pod(f"c{i}"), "default")
        creates_per_second = (N_OBJECTS - N_SAMPLES) / (time.perf_counter() - t0)
        results[f"list {N_OBJECTS} pods"] = timed(lambda i: client.list(PODS, "default"), 10)

        # Watch delivery: a second connection waits for each object this client creates.
        arrivals: dict[str, float] = {}
        ready = threading.Event()
        stream = client.watch(PODS, "default", resource_version=client.list(PODS, "default", limit=1)
                              ["metadata"]["resourceVersion"])

        def watch() -> None:
            ready.set()
            for _, obj in stream:
                arrivals[obj["metadata"]["name"]] = time.perf_counter()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ready.wait()
        sent: dict[str, float] = {}
        for i in range(N_SAMPLES):
            name = f"w{i}"
            sent[name] = time.perf_counter()
            client.create(PODS, pod(name), "default")
            deadline = time.perf_counter() + 1.0
            while name not in arrivals and time.perf_counter() < deadline:
                time.sleep(0.0001)
        stream.close()
        results["watch delivery"] = [arrivals[n] - sent[n] for n in sent if n in arrivals]
        missing = N_SAMPLES - len(results["watch delivery"])

        base = statistics.median(results["baseline GET /healthz"])
        print(f"{'measurement':28} {'p50 ms':>9} {'p99 ms':>9} {'p50/baseline':>13}")
        for name, samples in results.items():
            p50, p99 = statistics.median(samples) * 1e3, percentile(samples, 0.99) * 1e3
            print(f"{name:28} {p50:9.2f} {p99:9.2f} {p50 / (base * 1e3):12.1f}x")
        print(f"creates per second (single client): {creates_per_second:.0f}")
        checks = [
            ("create p99 < 20 ms", percentile(results["create pod"], 0.99) < 0.020),
            ("watch delivery p99 < 10 ms", missing == 0 and percentile(results["watch delivery"], 0.99) < 0.010),
            (">= 500 creates/s", creates_per_second >= 500),
        ]
        for label, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {label}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
