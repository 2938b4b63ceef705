"""Cluster DNS without a network: the wire format, the zone built from Services and EndpointSlices
(Kubernetes' DNS specification), and whole answers to raw queries."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from netk8s.dns.records import TTL, Zone, reverse_name
from netk8s.dns.server import bootstrap_objects, respond
from netk8s.dns.wire import (
    MalformedQuery,
    Question,
    Rcode,
    RecordType,
    build_query,
    build_response,
    parse_answers,
    parse_query,
)

ZONE = "cluster.local"


def service(name: str, cluster_ip: str, ports: list[dict] | None = None, namespace: str = "default",
            **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}],
                     **spec}}


def endpoint_slice(service_name: str, endpoints: list[tuple[str, bool, str | None]], namespace: str = "default") -> dict:
    return {"metadata": {"name": f"{service_name}-x", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           **({"hostname": hostname} if hostname else {})} for ip, ready, hostname in endpoints]}


@pytest.fixture
def zone() -> Zone:
    return Zone.build(
        [service("web", "10.96.0.20"),
         service("db", "None", [{"name": "pg", "port": 5432, "protocol": "TCP"}]),
         service("ext", "", type="ExternalName", externalName="example.org."),
         service("kube-dns", "10.96.0.10", [{"name": "dns", "port": 53, "protocol": "UDP"}], namespace="kube-system")],
        [endpoint_slice("db", [("10.244.1.5", True, "db-0"), ("10.244.2.6", True, None), ("10.244.2.7", False, None)]),
         endpoint_slice("web", [("10.244.1.9", True, None)])])


def ask(zone: Zone, name: str, rtype: RecordType = RecordType.A) -> tuple[Rcode, list]:
    rcode, answers, _ = zone.answer(Question(name, rtype))
    return rcode, [(r.rtype, r.data) for r in answers]


def test_service_names_answer_their_cluster_ip(zone: Zone) -> None:
    assert ask(zone, "web.default.svc.cluster.local") == (Rcode.NOERROR, [(RecordType.A, IPv4Address("10.96.0.20"))])
    assert ask(zone, "WEB.default.svc.cluster.local.")[0] is Rcode.NOERROR  # case and the root dot do not matter
    assert ask(zone, "web.default.svc.cluster.local", RecordType.AAAA) == (Rcode.NOERROR, [])  # NODATA
    assert ask(zone, "kube-dns.kube-system.svc.cluster.local")[1] == [(RecordType.A, IPv4Address("10.96.0.10"))]


def test_headless_services_answer_ready_endpoints_and_hostnames(zone: Zone) -> None:
    assert ask(zone, "db.default.svc.cluster.local") == (
        Rcode.NOERROR, [(RecordType.A, IPv4Address("10.244.1.5")), (RecordType.A, IPv4Address("10.244.2.6"))])
    assert ask(zone, "db-0.db.default.svc.cluster.local")[1] == [(RecordType.A, IPv4Address("10.244.1.5"))]
    assert ask(zone, "10-244-2-6.db.default.svc.cluster.local")[1] == [(RecordType.A, IPv4Address("10.244.2.6"))]
    rcode, answers, additional = zone.answer(Question("_pg._tcp.db.default.svc.cluster.local", RecordType.SRV))
    assert rcode is Rcode.NOERROR
    assert [r.data for r in answers] == [(0, 100, 5432, "db-0.db.default.svc.cluster.local"),
                                         (0, 100, 5432, "10-244-2-6.db.default.svc.cluster.local")]
    assert {(r.name, r.data) for r in additional} == {("db-0.db.default.svc.cluster.local", IPv4Address("10.244.1.5")),
                                                      ("10-244-2-6.db.default.svc.cluster.local",
                                                       IPv4Address("10.244.2.6"))}


def test_srv_ptr_pod_and_external_names(zone: Zone) -> None:
    rcode, answers, additional = zone.answer(Question("_http._tcp.web.default.svc.cluster.local", RecordType.SRV))
    assert [r.data for r in answers] == [(0, 100, 80, "web.default.svc.cluster.local")]
    assert [r.data for r in additional] == [IPv4Address("10.96.0.20")]
    assert ask(zone, reverse_name(IPv4Address("10.96.0.20")), RecordType.PTR)[1] == [
        (RecordType.PTR, "web.default.svc.cluster.local")]
    assert ask(zone, reverse_name(IPv4Address("10.244.1.5")), RecordType.PTR)[1] == [
        (RecordType.PTR, "db-0.db.default.svc.cluster.local")]
    assert ask(zone, "10-244-3-4.default.pod.cluster.local")[1] == [(RecordType.A, IPv4Address("10.244.3.4"))]
    assert ask(zone, "ext.default.svc.cluster.local")[1] == [(RecordType.CNAME, "example.org")]


def test_missing_names_and_names_outside_the_zone(zone: Zone) -> None:
    assert ask(zone, "nope.default.svc.cluster.local")[0] is Rcode.NXDOMAIN
    assert ask(zone, "web.default.svc.cluster.local.default.svc.cluster.local")[0] is Rcode.NXDOMAIN  # search path
    assert ask(zone, "default.svc.cluster.local")[0] is Rcode.NOERROR  # exists, with no records of its own
    assert ask(zone, "not-an-ip.default.pod.cluster.local")[0] is Rcode.NXDOMAIN
    assert ask(zone, "example.com")[0] is Rcode.SERVFAIL  # no upstream: fail at once, not after a timeout


def test_queries_round_trip_on_the_wire(zone: Zone) -> None:
    reply = respond(zone, build_query("web.default.svc.cluster.local", RecordType.A, ident=77), limit=512)
    assert reply is not None
    ident, flags = struct.unpack_from("!HH", reply)
    assert ident == 77 and flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD copied
    assert parse_answers(reply) == (0, [("web.default.svc.cluster.local", RecordType.A, bytes([10, 96, 0, 20]))])
    missing = respond(zone, build_query("x.default.svc.cluster.local", RecordType.A), limit=512)
    assert missing is not None and parse_answers(missing) == (Rcode.NXDOMAIN, [])
    assert respond(zone, b"\x00\x01", limit=512) is None  # not even a header
    garbage = respond(zone, struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x05ab", limit=512)
    assert garbage is not None and parse_answers(garbage)[0] == Rcode.FORMERR


def test_parse_query_follows_compression_pointers_and_rejects_responses() -> None:
    # A question whose name points back at itself after one label would loop: bounded and refused.
    looping = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x03abc\xc0\x0c" + struct.pack("!HH", 1, 1)
    with pytest.raises(MalformedQuery):
        parse_query(looping)
    with pytest.raises(MalformedQuery, match="a response"):
        parse_query(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0))
    query = parse_query(build_query("A.Example", RecordType.SRV))
    assert query.question == Question("a.example", RecordType.SRV) and query.recursion_desired


def test_udp_answers_that_do_not_fit_are_truncated() -> None:
    many = Zone.build([service("big", "None")],
                      [endpoint_slice("big", [(f"10.244.{i // 200}.{i % 200 + 1}", True, None) for i in range(100)])])
    query = parse_query(build_query("big.default.svc.cluster.local", RecordType.A))
    rcode, answers, _ = many.answer(query.question)
    udp = build_response(query, rcode, answers, limit=512)
    tcp = build_response(query, rcode, answers)
    assert len(udp) <= 512 and struct.unpack_from("!H", udp, 2)[0] & 0x0200  # TC: retry over TCP
    assert len(parse_answers(tcp)[1]) == 100 and not struct.unpack_from("!H", tcp, 2)[0] & 0x0200
    assert all(r.ttl == TTL for r in answers)


def test_bootstrap_objects_are_kubeadms_coredns_and_kube_dns() -> None:
    deployment, svc = bootstrap_objects(IPv4Address("10.96.0.10"))
    assert (deployment["kind"], deployment["metadata"]["namespace"], deployment["spec"]["replicas"]) == \
        ("Deployment", "kube-system", 2)
    assert svc["spec"]["clusterIP"] == "10.96.0.10" and svc["metadata"]["name"] == "kube-dns"
    assert [(p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [(53, "UDP"), (53, "TCP")]
    assert svc["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
