"""The cluster DNS agent: serves the zone inside every kube-dns pod's network namespace.

Like the kube-proxy health servers, the sockets are made in the pod's
namespace (``netns.socket_in``) by the daemon, which stays in the root
namespace and reads the API like any agent; no process is started. UDP
answers stay within 512 bytes (TC set when cut); TCP takes length-prefixed
queries, several per connection.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from ipaddress import IPv4Address

from netk8s.api import meta
from netk8s.api.resources import ENDPOINTSLICES, PODS, SERVICES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.cluster.naming import pod_netns
from netk8s.dns.records import DEFAULT_ZONE, Zone
from netk8s.dns.wire import CLASS_IN, UDP_LIMIT, MalformedQuery, Rcode, build_response, error_response, parse_query
from netk8s.errors import KernelError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

DNS_PORT = 53
DNS_NAMESPACE = "kube-system"
DNS_LABELS = {"k8s-app": "kube-dns"}
DNS_SELECTOR = ",".join(f"{key}={value}" for key, value in DNS_LABELS.items())
_TCP_IDLE = 10.0  # seconds a TCP client may stay silent


def respond(zone: Zone, message: bytes, limit: int | None) -> bytes | None:
    """The answer to one DNS message (None when it is not even a DNS header)."""
    try:
        query = parse_query(message)
    except MalformedQuery:
        return error_response(message, Rcode.FORMERR)
    if query.question.rclass != CLASS_IN:
        return build_response(query, Rcode.NOTIMP)
    rcode, answers, additional = zone.answer(query.question)
    return build_response(query, rcode, answers, additional, limit=limit)


def bootstrap_objects(dns_ip: IPv4Address, replicas: int = 2) -> list[dict]:
    """The ``coredns`` Deployment and ``kube-dns`` Service a kubeadm cluster has, for the daemon to create."""
    labels = dict(DNS_LABELS)
    container = {"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3",
                 "ports": [{"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                           {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"}]}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": DNS_NAMESPACE, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container],
                                       "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                                       {"key": "node-role.kubernetes.io/control-plane",
                                                        "effect": "NoSchedule"}]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": DNS_NAMESPACE,
                     "labels": dict(labels, **{"kubernetes.io/name": "CoreDNS"})},
        "spec": {"selector": labels, "clusterIP": str(dns_ip),
                 "ports": [{"name": "dns", "port": DNS_PORT, "protocol": "UDP", "targetPort": DNS_PORT},
                           {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP", "targetPort": DNS_PORT}]}}
    return [deployment, service]


class _PodServer:
    """UDP and TCP port 53 in one pod's namespace, served from threads."""

    def __init__(self, netns_name: str, dns: "ClusterDns") -> None:
        self.netns_name = netns_name
        self._dns = dns
        self._stop = threading.Event()
        self._udp = netns.socket_in(netns_name, socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp = netns.socket_in(netns_name, socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._udp.bind(("0.0.0.0", DNS_PORT))
            self._tcp.bind(("0.0.0.0", DNS_PORT))
            self._tcp.listen(64)
        except OSError as exc:
            self.close()
            raise KernelError(f"DNS: cannot listen on port {DNS_PORT} in {netns_name}: {exc}") from None
        self._udp.settimeout(0.5)
        self._tcp.settimeout(0.5)
        for target, name in ((self._serve_udp, "udp"), (self._serve_tcp, "tcp")):
            threading.Thread(target=target, daemon=True, name=f"dns-{name}-{netns_name}").start()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                message, client = self._udp.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = respond(self._dns.zone(), message, UDP_LIMIT)
            if reply is not None:
                try:
                    self._udp.sendto(reply, client)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(_TCP_IDLE)
        with conn:
            while not self._stop.is_set():
                try:
                    header = _read_exactly(conn, 2)
                    if header is None:
                        return
                    message = _read_exactly(conn, struct.unpack("!H", header)[0])
                    if message is None:
                        return
                    reply = respond(self._dns.zone(), message, None)
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        for sock in (self._udp, self._tcp):
            try:
                sock.close()
            except OSError:
                pass


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class ClusterDns(Controller):
    """Keeps the zone current and a DNS server in each running kube-dns pod."""

    name = "cluster-dns"

    def __init__(self, client: ApiClient, cluster: str, zone: str = DEFAULT_ZONE) -> None:
        super().__init__(client)
        self.cluster = cluster
        self.zone_name = zone
        self._zone = Zone(zone)
        self._dirty = True
        self._lock = threading.Lock()
        self._servers: dict[str, _PodServer] = {}  # pod key -> server

    def setup(self) -> None:
        self.services = self.informer(SERVICES)
        self.slices = self.informer(ENDPOINTSLICES)
        self.pods = self.informer(PODS, namespace=DNS_NAMESPACE, label_selector=DNS_SELECTOR)
        self.services.add_handler(self._changed)
        self.slices.add_handler(self._changed)
        self.pods.add_handler(self._on_pod)

    def _changed(self, event: str, old: dict | None, new: dict | None) -> None:
        with self._lock:
            self._dirty = True

    def zone(self) -> Zone:
        """The zone as the API says now (rebuilt on the first query after a change)."""
        with self._lock:
            if self._dirty:
                self._zone = Zone.build(self.services.list(), self.slices.list(), self.zone_name)
                self._dirty = False
            return self._zone

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        if obj is not None:
            self.queue.add(meta.key_of(obj))

    def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        serving = pod is not None and (pod.get("status") or {}).get("phase") == "Running" \
            and (pod.get("status") or {}).get("podIP") and not meta.is_terminating(pod)
        if not serving:
            server = self._servers.pop(key, None)
            if server is not None:
                server.close()
                log.info("DNS: stopped serving in %s", key)
            return
        assert pod is not None
        name = pod_netns(self.cluster, pod)
        current = self._servers.get(key)
        if current is not None and current.netns_name == name:
            return
        if current is not None:
            current.close()
        if not netns.exists(name):
            raise KernelError(f"DNS: namespace {name} of pod {key} does not exist yet")  # retried with back-off
        self._servers[key] = _PodServer(name, self)
        log.info("DNS: serving %s in %s", self.zone_name, key)

    def stop(self) -> None:
        super().stop()
        for server in self._servers.values():
            server.close()
        self._servers.clear()
