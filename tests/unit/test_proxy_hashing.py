"""kube-proxy chain naming: hashes must match kube-proxy's bit for bit."""

from __future__ import annotations

import re

from netk8s.proxy.hashing import endpoint_chain, port_proto_hash, service_chain
from netk8s.proxy.model import Protocol, service_port_name

_BASE32 = re.compile(r"^[A-Z2-7]{16}$")


def test_service_chain_matches_kube_proxy_example() -> None:
    assert service_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"


def test_hash_is_16_base32_chars_and_chain_names_fit_iptables() -> None:
    for spn in ("a/b", "kube-system/kube-dns:dns-tcp", "x" * 200 + "/y:z"):
        digest = port_proto_hash(spn, "udp")
        assert _BASE32.match(digest), digest
        assert len(service_chain(spn, "udp")) <= 28
        assert len(endpoint_chain(spn, "udp", "10.244.255.255:65535")) <= 28


def test_protocol_and_port_name_change_the_hash() -> None:
    spn = "default/web:http"
    assert service_chain(spn, "tcp") != service_chain(spn, "udp")
    assert service_chain(spn, "tcp") != service_chain("default/web:https", "tcp")
    # The protocol is hashed in lower case, as kube-proxy lowers v1.Protocol.
    assert service_chain(spn, Protocol.SCTP.lowercase) == service_chain(spn, "sctp")
    assert service_chain(spn, "TCP") != service_chain(spn, "tcp")


def test_endpoint_chain_hashes_name_protocol_and_endpoint_together() -> None:
    spn = "default/web:http"
    a = endpoint_chain(spn, "tcp", "10.244.1.5:8080")
    assert a.startswith("KUBE-SEP-") and _BASE32.match(a[len("KUBE-SEP-"):])
    assert a == endpoint_chain(spn, "tcp", "10.244.1.5:8080")
    assert a != endpoint_chain(spn, "tcp", "10.244.1.5:8081")
    assert a != endpoint_chain(spn, "udp", "10.244.1.5:8080")
    # Same concatenated input, same hash: the parts are joined with no separator.
    assert endpoint_chain("ns/a", "tcp", "1.2.3.4:5")[9:] == port_proto_hash("ns/atcp1.2.3.4:5", "")
    assert a[9:] != port_proto_hash(spn, "tcp")


def test_service_port_name_string() -> None:
    assert service_port_name("ns1", "svc1", "p80") == "ns1/svc1:p80"
    # kube-proxy's ServicePortName.String() leaves the colon out for an unnamed port.
    assert service_port_name("default", "web", "") == "default/web"
