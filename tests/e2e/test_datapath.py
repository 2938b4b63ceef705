"""The pod data path on the wire: host-gw and VXLAN, on one switch and across a leaf-spine fabric,
seen with tcpdump inside switch and router namespaces; link loss measured with ping; a delay the
kernel cannot emulate refused at `up`.

Each capture is ``cluster.capture`` on one switch or router port with ``count=N``, read once N
packets arrived (or after a timeout).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.capture import Capture
from netk8s.cluster.api import Cluster
from netk8s.cluster.state import StateDir
from netk8s.kernel.links import read_kernel_config
from netk8s.testing.helpers import namespaces_of, run_cli, wait_for
from netk8s.testing.plugin import unique_cluster_name
from netk8s.topology import default_topology, load_file, to_dict

REPO = Path(__file__).resolve().parents[2]
LEAF_SPINE = REPO / "topologies" / "leaf-spine.yaml"


def captured_text(cap: Capture, timeout: float = 20) -> str:
    """The lines of a ``count``-limited capture once its packets arrived (or after ``timeout``)."""
    if not cap.wait(timeout):
        cap.stop()
    return "\n".join(cap.lines)


def pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "echo", "image": "netk8s/echo"}]}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}


def start(topology: dict | Path | None, pods: dict[str, str], prefix: str) -> Cluster:
    """A cluster with one echo pod per (name -> node), a Service per pod; pods Running."""
    cluster = Cluster.up(topology=topology, name=unique_cluster_name(prefix))
    try:
        cluster.apply([pod(name, node) for name, node in pods.items()] + [service(n) for n in pods])
        for name in pods:
            cluster.wait_ready("pod", name, timeout=60)
    except BaseException:
        cluster.down()
        raise
    return cluster


def pod_ip(cluster: Cluster, name: str) -> str:
    return cluster.get("pod", name)["status"]["podIP"]


def ping_ok(cluster: Cluster, src: str, dst: str, *extra: str) -> str:
    """Ping from pod ``src`` until it answers (routes may still be converging); the last output."""
    def attempt() -> str | None:
        out = cluster.exec(src, ["ping", "-c", "1", "-W", "1", *extra, dst], timeout=10)
        return out.stdout if out.returncode == 0 else None
    return wait_for(attempt, timeout=20, interval=0.2, what=f"{src} to answer pings to {dst}")


def curl_json(cluster: Cluster, src: str, url: str) -> dict:
    def attempt() -> dict | None:
        out = cluster.exec(src, ["curl", "-s", "-m", "3", url], timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None
    return wait_for(attempt, timeout=20, interval=0.2, what=f"{url} to answer {src}")


def ns_of(cluster: Cluster, name: str) -> str:
    return f"nk-{cluster.name}-{name}"


def switch_port(cluster: Cluster, member: str) -> tuple[str, str]:
    """(``switch/NAME``, switch port) of ``member``'s first switch link."""
    for link in cluster.topology.links:
        if link.switch is not None and member in (link.a.name, link.b.name):
            port = link.a if link.a.name == link.switch else link.b
            return f"switch/{link.switch}", port.ifname
    raise AssertionError(f"{member} has no switch link")


def run_in(netns_name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns_name, *argv], capture_output=True, text=True,
                          timeout=timeout)


# -- (a) default topology, host-gw ------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostgw() -> Iterator[Cluster]:
    cluster = start(None, {"a": "worker", "b": "worker2"}, "dh")
    try:
        yield cluster
    finally:
        cluster.down()


def test_hostgw_pod_packets_cross_the_switch_with_pod_addresses(hostgw: Cluster) -> None:
    a, b = pod_ip(hostgw, "a"), pod_ip(hostgw, "b")
    routes = hostgw.node("worker").exec(["ip", "route", "show", "proto", "77"], check=True).stdout
    assert "10.244.2.0/24 via 172.18.0.4 dev eth0" in routes  # worker2's pod CIDR via worker2
    ping_ok(hostgw, "a", b)
    switch, port = switch_port(hostgw, "worker")
    with hostgw.capture(switch, f"icmp and host {a}", interface=port, count=2) as cap:
        ping_ok(hostgw, "a", b)
        text = captured_text(cap)
    assert f"IP {a} > {b}: ICMP echo request" in text, text
    assert f"IP {b} > {a}: ICMP echo reply" in text, text
    assert "8472" not in text


# -- (b) default topology, VXLAN --------------------------------------------------------------------

@pytest.fixture(scope="module")
def vxlan() -> Iterator[Cluster]:
    topo = to_dict(default_topology("x"))
    topo["networking"]["mode"] = "vxlan"
    cluster = start(topo, {"a": "worker", "b": "worker2"}, "dv")
    try:
        yield cluster
    finally:
        cluster.down()


def test_vxlan_pod_packets_travel_inside_udp_8472(vxlan: Cluster) -> None:
    a, b = pod_ip(vxlan, "a"), pod_ip(vxlan, "b")
    ping_ok(vxlan, "a", b)
    switch, port = switch_port(vxlan, "worker")
    with vxlan.capture(switch, "udp port 8472", interface=port, count=2) as cap:
        ping_ok(vxlan, "a", b)
        text = captured_text(cap)
    # tcpdump decodes port 8472 as OTV (the same header as VXLAN) and prints the inner packet.
    assert re.search(r"IP 172\.18\.0\.3\.\d+ > 172\.18\.0\.4\.8472: .*instance 1", text), text
    assert re.search(r"IP 172\.18\.0\.4\.\d+ > 172\.18\.0\.3\.8472: .*instance 1", text), text
    assert f"IP {a} > {b}: ICMP echo request" in text, text
    assert f"IP {b} > {a}: ICMP echo reply" in text, text
    # The same from the parsed packets: VNI 1 between the VTEPs, the pods' ICMP inside.
    outer = cap.select(protocol="UDP", src="172.18.0.3", dst="172.18.0.4", dport=8472)
    assert outer and outer[0].vni == 1 and outer[0].inner is not None
    assert (str(outer[0].inner.src), str(outer[0].inner.dst), outer[0].inner.protocol, outer[0].inner.icmp_type) \
        == (a, b, "ICMP", 8)


def test_vxlan_nodes_publish_their_vteps_and_pods_get_the_overlay_mtu(vxlan: Cluster) -> None:
    for node in vxlan.list("nodes"):
        name, notes = node["metadata"]["name"], node["metadata"]["annotations"]
        link = vxlan.node(name).exec(["ip", "-d", "link", "show", "flannel.1"], check=True).stdout
        mac = re.search(r"link/ether (\S+)", link).group(1)  # type: ignore[union-attr]
        assert notes["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert json.loads(notes["flannel.alpha.coreos.com/backend-data"]) == {"VNI": 1, "VtepMAC": mac}
        assert notes["flannel.alpha.coreos.com/public-ip"] == str(vxlan.topology.primary_address(name))
    fdb = vxlan.node("worker").exec(["bridge", "fdb", "show", "dev", "flannel.1"], check=True).stdout
    assert "dst 172.18.0.4 self permanent" in fdb and "dst 172.18.0.2 self permanent" in fdb
    assert "mtu 1450" in vxlan.exec("a", ["ip", "link", "show", "eth0"], check=True).stdout


def test_vxlan_external_host_reaches_pods_through_the_control_plane(vxlan: Cluster) -> None:
    b = pod_ip(vxlan, "b")
    routes = vxlan.host("client").exec(["ip", "route", "show", "proto", "77"], check=True).stdout
    assert routes.strip() == "10.244.0.0/16 via 172.18.0.2 dev eth0"

    def attempt() -> dict | None:
        out = vxlan.host("client").exec(["curl", "-s", "-m", "3", f"http://{b}:8080/"], timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None
    seen = wait_for(attempt, timeout=20, interval=0.2, what="the client host to reach pod b")
    # flanneld's masquerade: the request entered the overlay at the control plane (VTEP 10.244.0.0).
    assert seen["pod"] == "b" and seen["client"].split(":")[0] == "10.244.0.0"


# -- (c) leaf-spine, host-gw and VXLAN ----------------------------------------------------------------

@pytest.fixture(scope="module", params=["host-gw", "vxlan"])
def fabric(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    topo = to_dict(load_file(LEAF_SPINE))
    topo["networking"]["mode"] = request.param
    cluster = start(topo, {"a": "worker", "b": "worker2"}, "ls")
    try:
        yield cluster
    finally:
        cluster.down()


def spine_port_towards(cluster: Cluster, router: str) -> str:
    for link in cluster.topology.links:
        if {link.a.name, link.b.name} == {"spine", router}:
            return link.a.ifname if link.a.name == "spine" else link.b.ifname
    raise AssertionError(f"no spine-{router} link")


def test_fabric_pod_to_pod_across_racks(fabric: Cluster) -> None:
    a, b = pod_ip(fabric, "a"), pod_ip(fabric, "b")
    mode = fabric.topology.networking_mode.value
    out = ping_ok(fabric, "a", b)
    with fabric.capture("router/spine", f"host {b} or udp port 8472", interface=spine_port_towards(fabric, "leaf2"),
                        count=2) as cap:
        ping_ok(fabric, "a", b)
        text = captured_text(cap)
    assert f"IP {a} > {b}: ICMP echo request" in text, text
    assert f"IP {b} > {a}: ICMP echo reply" in text, text
    if mode == "host-gw":
        # Plain routing: worker, leaf1, spine, leaf2 and worker2 each take one off the reply's TTL.
        assert "ttl=59" in out, out
        assert "8472" not in text
        hops = []
        for ttl in range(1, 6):
            res = fabric.exec("a", ["ping", "-c", "1", "-W", "1", "-t", str(ttl), b], timeout=10)
            found = re.search(r"From (\S+) icmp_seq=1 Time to live exceeded", res.stdout)
            hops.append(found.group(1) if found else None)
        assert hops == ["10.244.1.1", "172.18.1.1", "172.31.0.1", "172.31.0.6", "172.18.2.2"]
    else:
        # The overlay hides the fabric: only the two nodes route the inner packet.
        assert "ttl=62" in out, out
        assert re.search(r"IP 172\.18\.1\.3\.\d+ > 172\.18\.2\.2\.8472: ", text), text


def test_fabric_clusterip_service_answers_across_racks(fabric: Cluster) -> None:
    ip = fabric.get("service", "b")["spec"]["clusterIP"]
    seen = curl_json(fabric, "a", f"http://{ip}/")
    assert seen["pod"] == "b" and seen["node"] == "worker2"
    assert seen["client"].split(":")[0] == pod_ip(fabric, "a")  # no SNAT inside the pod network


def test_fabric_external_client_reaches_pods_in_host_gw(fabric: Cluster) -> None:
    spine_routes = run_in(ns_of(fabric, "spine"), "ip", "route", "show", "proto", "77").stdout
    if fabric.topology.networking_mode.value == "vxlan":
        assert spine_routes == ""  # routers carry only the underlay
        return
    assert "10.244.2.0/24 via 172.31.0.6 dev eth1" in spine_routes
    b = pod_ip(fabric, "b")

    def attempt() -> dict | None:
        out = fabric.host("client").exec(["curl", "-s", "-m", "3", f"http://{b}:8080/"], timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None
    seen = wait_for(attempt, timeout=20, interval=0.2, what="client to reach pod b across the fabric")
    assert seen["pod"] == "b" and seen["client"].split(":")[0] == "172.18.100.2"


# -- link loss and delay ------------------------------------------------------------------------------

LOSS = 10.0  # percent, each direction


def test_link_loss_shows_in_ping_statistics() -> None:
    topo = {"apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster",
            "nodes": [{"name": "control-plane", "role": "control-plane"}], "hosts": [{"name": "client"}],
            "links": [{"endpoints": ["control-plane", "s1"]}, {"endpoints": ["client", "s1"], "loss": f"{LOSS}%"}],
            "switches": [{"name": "s1", "subnet": "172.18.0.0/16"}]}
    with Cluster.up(topology=topo, name=unique_cluster_name("lo")) as cluster:
        client = cluster.host("client")
        wait_for(lambda: client.exec(["ping", "-c", "1", "-W", "1", "172.18.0.2"]).returncode == 0, timeout=20,
                 what="a first answer (ARP resolved)")
        out = client.exec(["ping", "-c", "200", "-i", "0.01", "-W", "1", "-q", "172.18.0.2"], timeout=60).stdout
        stats = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert stats is not None, out
        sent, received = int(stats.group(1)), int(stats.group(2))
        measured = 1 - received / sent
        # A ping is lost when its request or its reply is: 1 - (1 - p)^2 of them.
        expected = 1 - (1 - LOSS / 100) ** 2
        assert expected / 2 <= measured <= expected * 2, f"{measured:.1%} lost, expected about {expected:.1%}: {out}"
        # The switch's nft rules did the dropping, in both directions of the client's port.
        rules = run_in(ns_of(cluster, "s1"), "nft", "list", "table", "bridge", "nk-loss").stdout
        drops = [int(n) for n in re.findall(r"counter packets (\d+)", rules)]
        assert len(drops) == 2 and all(n > 0 for n in drops), rules


def test_up_with_a_delay_link_fails_without_netem(tmp_path: Path) -> None:
    name = unique_cluster_name("dl")
    topo = tmp_path / "delay.yaml"
    topo.write_text("apiVersion: netk8s.io/v1alpha1\nkind: Cluster\n"
                    "nodes: [{name: control-plane, role: control-plane}, {name: worker}]\nhosts: [{name: client}]\n"
                    "switches: [{name: s1, subnet: 172.18.0.0/16}]\n"
                    "links:\n  - endpoints: [control-plane, s1]\n  - endpoints: [worker, s1]\n"
                    "  - endpoints: [client, s1]\n    delay: 20ms\n")
    config = read_kernel_config()
    if config is not None and config.get("CONFIG_NET_SCH_NETEM") in ("y", "m"):
        # A kernel with netem: the delay is real, on both directions of the client's link.
        with Cluster.up(topology=topo, name=name) as cluster:
            out = cluster.host("client").exec(["ping", "-c", "3", "172.18.0.2"], timeout=30).stdout
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
            assert rtts and min(rtts) >= 40, out
        return
    try:
        up = run_cli("up", "-f", str(topo), "--name", name)
        assert up.code == 1, up.stdout + up.stderr
        assert up.stderr.count("\n") == 1
        assert ("links[2].delay: needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks; "
                "remove delay or use a kernel with netem") in up.stderr
        assert namespaces_of(name) == [] and not StateDir(name).path.exists()
    finally:
        if StateDir(name).path.exists():
            run_cli("down", "--name", name)
        Path(f"/tmp/netk8s-{name}-failed.log").unlink(missing_ok=True)
