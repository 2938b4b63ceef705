"""The emulated cloud load balancer without root: the address pool, the controller against an
in-process API server (assignment, loadBalancerIP, exhaustion, release, rebuild on restart) and the
layer-2 announcement plan (which node answers ARP for which address), with a fake kernel."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterator

import pytest

from netk8s.api.resources import ENDPOINTSLICES, EVENTS, NODES, SERVICES
from netk8s.client.rest import ApiClient
from netk8s.controllers.loadbalancer import LoadBalancerController, LoadBalancerPool, PoolError
from netk8s.emulator.announce import (
    Announcement,
    LbAnnouncer,
    announcing_interfaces,
    gratuitous_arp_frames,
    plan_announcements,
)
from netk8s.testing.helpers import wait_for
from netk8s.topology import default_topology, load_dict

FIRST, SECOND, THIRD = IPv4Address("172.18.255.200"), IPv4Address("172.18.255.201"), IPv4Address("172.18.255.202")
POOL = (FIRST, SECOND)


# -- the pool ------------------------------------------------------------------------------------------

def test_pool_hands_out_lowest_first_and_honours_requests() -> None:
    pool = LoadBalancerPool(FIRST, THIRD)
    assert pool.assign("d/b", SECOND) == SECOND
    assert pool.allocate("d/a") == FIRST
    assert pool.allocate("d/a") == FIRST  # idempotent
    assert pool.allocate("d/c") == THIRD
    assert pool.free == 0
    with pytest.raises(PoolError, match="no IP addresses available in the load balancer pool "
                                        "172.18.255.200-172.18.255.202"):
        pool.allocate("d/d")
    with pytest.raises(PoolError, match='"172.18.255.201" is already in use by d/b'):
        pool.assign("d/d", SECOND)
    with pytest.raises(PoolError, match='"10.0.0.1" is not in the load balancer pool'):
        pool.assign("d/d", IPv4Address("10.0.0.1"))
    assert pool.release("d/b") == SECOND and pool.owner(SECOND) is None
    assert pool.allocate("d/d") == SECOND
    assert pool.assign("d/a", IPv4Address("172.18.255.200")) == FIRST  # re-assigning one's own address
    assert pool.release("d/none") is None


# -- the controller --------------------------------------------------------------------------------------

def lb(name: str, svc_type: str = "LoadBalancer", **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": svc_type, "ports": [{"port": 80, "protocol": "TCP"}], **spec}}


def ingress(api: ApiClient, name: str) -> list[dict]:
    return ((api.get(SERVICES, name, "default").get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def wait_ingress(api: ApiClient, name: str, ip: IPv4Address | None) -> None:
    want = [{"ip": str(ip), "ipMode": "VIP"}] if ip is not None else []
    wait_for(lambda: ingress(api, name) == want, timeout=5, what=f"service {name} ingress {want}")


def events(api: ApiClient, name: str, reason: str) -> list[dict]:
    items = api.list(EVENTS, "default", field_selector=f"involvedObject.name={name},reason={reason}")["items"]
    return items


def wait_event(api: ApiClient, name: str, reason: str) -> dict:
    return wait_for(lambda: (events(api, name, reason) or [None])[-1], timeout=5, what=f"{reason} event on {name}")


@pytest.fixture
def controller_factory(api: ApiClient) -> Iterator[Callable[[tuple[IPv4Address, IPv4Address]], LoadBalancerController]]:
    started: list[LoadBalancerController] = []

    def start(pool: tuple[IPv4Address, IPv4Address] = POOL) -> LoadBalancerController:
        ctrl = LoadBalancerController(api, pool)
        ctrl.start()
        started.append(ctrl)
        assert ctrl.wait_synced(5)
        return ctrl

    try:
        yield start
    finally:
        for ctrl in started:
            ctrl.stop()
            ctrl.join()


def test_assigns_lowest_free_address_with_vip_mode_and_event(api: ApiClient, controller_factory) -> None:
    controller_factory()
    api.create(SERVICES, lb("a"), "default")
    wait_ingress(api, "a", FIRST)
    api.create(SERVICES, lb("b"), "default")
    wait_ingress(api, "b", SECOND)
    event = wait_event(api, "a", "IPAllocated")
    assert event["type"] == "Normal" and event["message"] == 'Assigned IP ["172.18.255.200"]'
    # Not LoadBalancer, or another implementation's class: left alone.
    api.create(SERVICES, lb("plain", "ClusterIP"), "default")
    api.create(SERVICES, lb("other", loadBalancerClass="example.com/lb"), "default")
    api.create(SERVICES, lb("c"), "default")
    wait_event(api, "c", "AllocationFailed")
    assert ingress(api, "plain") == [] and ingress(api, "other") == []


def test_exhausted_pool_leaves_service_pending_until_an_address_is_released(api: ApiClient,
                                                                             controller_factory) -> None:
    controller_factory()
    for name in ("a", "b", "c"):
        api.create(SERVICES, lb(name), "default")
    wait_ingress(api, "a", FIRST)
    wait_ingress(api, "b", SECOND)
    failed = wait_event(api, "c", "AllocationFailed")
    assert failed["type"] == "Warning"
    assert failed["message"] == ('Failed to allocate IP for "default/c": no IP addresses available in the load '
                                 "balancer pool 172.18.255.200-172.18.255.201")
    assert ingress(api, "c") == []
    api.delete(SERVICES, "a", "default")
    wait_ingress(api, "c", FIRST)


def test_type_change_releases_and_clears_status(api: ApiClient, controller_factory) -> None:
    controller_factory()
    api.create(SERVICES, lb("a"), "default")
    wait_ingress(api, "a", FIRST)
    svc = api.get(SERVICES, "a", "default")
    svc["spec"]["type"] = "ClusterIP"
    for port in svc["spec"]["ports"]:
        port.pop("nodePort", None)
    api.update(SERVICES, svc)
    wait_ingress(api, "a", None)
    api.create(SERVICES, lb("b"), "default")
    wait_ingress(api, "b", FIRST)


def test_load_balancer_ip_is_honoured_when_in_pool_and_free(api: ApiClient, controller_factory) -> None:
    controller_factory()
    api.create(SERVICES, lb("want2", loadBalancerIP=str(SECOND)), "default")
    wait_ingress(api, "want2", SECOND)
    api.create(SERVICES, lb("taken", loadBalancerIP=str(SECOND)), "default")
    taken = wait_event(api, "taken", "AllocationFailed")
    assert taken["message"] == 'Failed to allocate IP for "default/taken": "172.18.255.201" is already in use by ' \
                               "default/want2"
    api.create(SERVICES, lb("outside", loadBalancerIP="10.9.9.9"), "default")
    outside = wait_event(api, "outside", "AllocationFailed")
    assert "is not in the load balancer pool 172.18.255.200-172.18.255.201" in outside["message"]
    assert ingress(api, "taken") == [] and ingress(api, "outside") == []
    # The taken one gets its address once the holder lets go of it.
    api.delete(SERVICES, "want2", "default")
    wait_ingress(api, "taken", SECOND)


def test_restarted_controller_keeps_existing_assignments(api: ApiClient, controller_factory) -> None:
    first = controller_factory((FIRST, THIRD))
    api.create(SERVICES, lb("a"), "default")
    api.create(SERVICES, lb("b"), "default")
    wait_ingress(api, "a", FIRST)
    wait_ingress(api, "b", SECOND)
    api.delete(SERVICES, "a", "default")
    first.stop()
    first.join()
    controller_factory((FIRST, THIRD))
    api.create(SERVICES, lb("c"), "default")
    api.create(SERVICES, lb("d"), "default")
    wait_for(lambda: {str(i["ip"]) for n in "cd" for i in ingress(api, n)} == {str(FIRST), str(THIRD)},
             timeout=5, what="c and d to get the two free addresses")
    assert ingress(api, "b") == [{"ip": str(SECOND), "ipMode": "VIP"}]


# -- announcements: the plan -------------------------------------------------------------------------------

INTERFACES = {"control-plane": "eth0", "worker": "eth0", "worker2": "eth0"}


def node(name: str, ready: bool = True, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def service(name: str, ip: IPv4Address | None, policy: str = "Cluster") -> dict:
    status = {"loadBalancer": {"ingress": [{"ip": str(ip), "ipMode": "VIP"}]}} if ip else {"loadBalancer": {}}
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": 80}]},
            "status": status}


def endpoint_slice(service_name: str, *nodes: str, ready: bool = True) -> dict:
    return {"metadata": {"name": f"{service_name}-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [f"10.244.{i}.2"], "nodeName": n, "conditions": {"ready": ready}}
                          for i, n in enumerate(nodes)]}


def test_default_topology_announces_from_eth0_of_every_node() -> None:
    topo = default_topology()
    pool = topo.lb_pool()
    assert pool == (IPv4Address("172.18.255.200"), IPv4Address("172.18.255.250"))
    assert announcing_interfaces(topo, pool) == INTERFACES


def test_only_nodes_on_the_pool_segment_can_announce() -> None:
    topo = load_dict({
        "apiVersion": "netk8s.io/v1alpha1", "kind": "Cluster", "name": "ls",
        "nodes": [{"name": "cp", "role": "control-plane"}, {"name": "w1"}, {"name": "w2"}],
        "switches": [{"name": "rack1", "subnet": "172.18.1.0/24"}, {"name": "rack2", "subnet": "172.18.2.0/24"}],
        "routers": [{"name": "r1"}],
        "links": [{"endpoints": ["cp", "rack1"]}, {"endpoints": ["w1", "rack1"]}, {"endpoints": ["w2", "rack2"]},
                  {"endpoints": ["r1", "rack1"]}, {"endpoints": ["r1", "rack2"]}],
    })
    pool = topo.lb_pool()
    assert pool is not None and pool[0] in IPv4Network("172.18.1.0/24")
    assert announcing_interfaces(topo, pool) == {"cp": "eth0", "w1": "eth0"}


def test_plan_picks_first_ready_eligible_node_by_name() -> None:
    nodes = [node("control-plane", **{"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
             node("worker"), node("worker2")]
    plan = plan_announcements([service("web", FIRST)], [endpoint_slice("web", "worker2")], nodes, INTERFACES, POOL)
    assert plan == {FIRST: Announcement(FIRST, "worker", "eth0", "default/web")}
    # worker NotReady: worker2 takes over.
    nodes[1] = node("worker", ready=False)
    plan = plan_announcements([service("web", FIRST)], [endpoint_slice("web", "worker2")], nodes, INTERFACES, POOL)
    assert plan[FIRST].node == "worker2"
    # Nobody left: not announced.
    nodes[2] = node("worker2", ready=False)
    assert plan_announcements([service("web", FIRST)], [endpoint_slice("web", "worker2")], nodes, INTERFACES,
                              POOL) == {}


def test_plan_local_policy_needs_a_local_ready_endpoint_and_skips_endpointless_services() -> None:
    nodes = [node("worker"), node("worker2")]
    services = [service("local", FIRST, "Local"), service("idle", SECOND), service("pending", None)]
    slices = [endpoint_slice("local", "worker2"), endpoint_slice("idle", "worker", ready=False)]
    plan = plan_announcements(services, slices, nodes, INTERFACES, POOL)
    assert plan == {FIRST: Announcement(FIRST, "worker2", "eth0", "default/local")}
    # An address outside the pool is not ours to announce.
    other = service("foreign", IPv4Address("192.0.2.9"))
    assert plan_announcements([other], [endpoint_slice("foreign", "worker")], nodes, INTERFACES, POOL) == {}


def test_gratuitous_arp_frames() -> None:
    mac = bytes.fromhex("020000000001")
    request, reply = gratuitous_arp_frames(mac, FIRST)
    for frame, op in ((request, 1), (reply, 2)):
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
        htype, ptype, hlen, plen, opcode, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
        assert (htype, ptype, hlen, plen, opcode) == (1, 0x0800, 6, 4, op)
        assert sha == mac and spa == tpa == FIRST.packed


# -- announcements: the controller with a fake kernel ----------------------------------------------------

class FakeKernel:
    def __init__(self, existing: dict[str, set[IPv4Address]] | None = None) -> None:
        self.state: dict[str, set[IPv4Address]] = {k: set(v) for k, v in (existing or {}).items()}
        self.log: list[tuple[str, str, IPv4Address]] = []

    def announced(self, netns_name: str) -> set[IPv4Address]:
        return set(self.state.get(netns_name, set()))

    def announce(self, netns_name: str, ifname: str, ip: IPv4Address) -> None:
        self.state.setdefault(netns_name, set()).add(ip)
        self.log.append(("announce", netns_name, ip))

    def withdraw(self, netns_name: str, ifname: str, ip: IPv4Address) -> None:
        self.state.get(netns_name, set()).discard(ip)
        self.log.append(("withdraw", netns_name, ip))


def set_ready(api: ApiClient, name: str, ready: bool) -> None:
    api.patch(NODES, name, {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
              subresource="status")


def test_announcer_follows_node_readiness_and_cleans_stale_entries(api: ApiClient) -> None:
    topo = default_topology("lbt")
    for name in ("control-plane", "worker", "worker2"):
        labels = {"node.kubernetes.io/exclude-from-external-load-balancers": ""} if name == "control-plane" else {}
        api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        set_ready(api, name, True)
    api.create(SERVICES, lb("web"), "default")
    api.patch(SERVICES, "web", {"status": {"loadBalancer": {"ingress": [{"ip": str(FIRST), "ipMode": "VIP"}]}}},
              "default", subresource="status")
    api.create(ENDPOINTSLICES, {**endpoint_slice("web", "worker2"), "apiVersion": "discovery.k8s.io/v1",
                                "kind": "EndpointSlice"}, "default")
    # A leftover announcement of an address nobody holds, and one outside the pool (not ours).
    kernel = FakeKernel({"nk-lbt-worker2": {SECOND, IPv4Address("172.18.0.77")}})
    announcer = LbAnnouncer(api, "lbt", topo, kernel)
    announcer.start()
    try:
        wait_for(lambda: kernel.state.get("nk-lbt-worker") == {FIRST}, timeout=5, what="worker to announce web")
        assert ("withdraw", "nk-lbt-worker2", SECOND) in kernel.log
        assert IPv4Address("172.18.0.77") in kernel.state["nk-lbt-worker2"]
        assert announcer.announcements()[FIRST].service == "default/web"
        event = wait_event(api, "web", "nodeAssigned")
        assert event["message"] == 'announcing from node "worker" with protocol "layer2"'
        set_ready(api, "worker", False)
        wait_for(lambda: kernel.state.get("nk-lbt-worker2", set()) >= {FIRST} and not kernel.state["nk-lbt-worker"],
                 timeout=5, what="the announcement to move to worker2")
        assert kernel.log.index(("withdraw", "nk-lbt-worker", FIRST)) < kernel.log.index(
            ("announce", "nk-lbt-worker2", FIRST))
        api.delete(SERVICES, "web", "default")
        wait_for(lambda: FIRST not in kernel.state["nk-lbt-worker2"], timeout=5, what="the withdrawal on delete")
    finally:
        announcer.stop()
        announcer.join()
