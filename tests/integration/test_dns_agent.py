"""The cluster DNS agent in a real namespace: it opens UDP and TCP 53 in a running kube-dns pod's
namespace, answers from the API's Services, follows changes, and closes when the pod goes."""

from __future__ import annotations

import secrets
import socket
import struct
import time
from typing import Iterator

import pytest

from netk8s.api.resources import PODS, SERVICES
from netk8s.client.rest import ApiClient
from netk8s.cluster.naming import pod_netns
from netk8s.dns.server import DNS_LABELS, DNS_NAMESPACE, ClusterDns
from netk8s.dns.wire import Rcode, RecordType, build_query, parse_answers
from netk8s.kernel import netns
from netk8s.testing.helpers import wait_for

CLUSTER = f"t{secrets.token_hex(3)}"


def udp_ask(ns: str, name: str, rtype: RecordType = RecordType.A) -> tuple[int, list] | None:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(1)
        sock.sendto(build_query(name, rtype), ("127.0.0.1", 53))
        try:
            return parse_answers(sock.recv(4096))
        except OSError:
            return None


def tcp_ask(ns: str, names: list[str]) -> list[tuple[int, list]]:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", 53))
        out = []
        for name in names:  # several queries on one connection
            query = build_query(name, RecordType.A)
            sock.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", sock.recv(2))[0]
            data = b""
            while len(data) < size:
                data += sock.recv(size - len(data))
            out.append(parse_answers(data))
        return out


@pytest.fixture
def dns_pod(api: ApiClient) -> Iterator[tuple[ClusterDns, str]]:
    pod = api.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": "coredns-test", "labels": dict(DNS_LABELS)},
                            "spec": {"nodeName": "worker", "containers": [{"name": "c", "image": "registry.k8s.io/"
                                                                                                 "coredns/coredns"}]}},
                     DNS_NAMESPACE)
    ns = pod_netns(CLUSTER, pod)
    netns.create(ns)
    agent = ClusterDns(api, CLUSTER)
    agent.start()
    try:
        api.patch(PODS, "coredns-test", {"status": {"phase": "Running", "podIP": "10.244.0.2"}}, DNS_NAMESPACE,
                  subresource="status")
        yield agent, ns
    finally:
        agent.stop()
        agent.join()
        netns.delete(ns)


def test_the_agent_answers_in_the_pods_namespace_and_follows_the_api(api: ApiClient,
                                                                       dns_pod: tuple[ClusterDns, str]) -> None:
    agent, ns = dns_pod
    api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]}},
               "default")
    # The agent may answer before its informer has seen the new Service (NXDOMAIN): wait for the record.
    answer = wait_for(lambda: (got := udp_ask(ns, "web.default.svc.cluster.local")) and got[0] == Rcode.NOERROR
                      and got, timeout=10, what="a UDP answer with the Service's address")
    assert answer == (Rcode.NOERROR, [("web.default.svc.cluster.local", RecordType.A, bytes([10, 96, 0, 20]))])
    assert tcp_ask(ns, ["web.default.svc.cluster.local", "nope.default.svc.cluster.local"]) == [
        answer, (Rcode.NXDOMAIN, [])]
    api.delete(SERVICES, "web", "default")
    wait_for(lambda: (udp_ask(ns, "web.default.svc.cluster.local") or (None,))[0] == Rcode.NXDOMAIN, timeout=10,
             what="the deleted Service to disappear from DNS")
    # The pod goes: the agent closes its sockets (nothing answers any more).
    api.delete(PODS, "coredns-test", DNS_NAMESPACE, grace_period=0)
    deadline = time.monotonic() + 10
    while udp_ask(ns, "web.default.svc.cluster.local") is not None:
        assert time.monotonic() < deadline, "the DNS server kept answering after its pod was deleted"
        time.sleep(0.1)
