"""The cluster's DNS zone, as Kubernetes' DNS specification defines it. Pure.

``Zone.build(services, slices)`` indexes, for zone ``cluster.local``:

- ``<svc>.<ns>.svc.<zone>`` A: the cluster IP; for a headless Service the IPs
  of its ready endpoints; an ExternalName Service answers a CNAME.
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV for each named port: one
  record to the Service name (cluster IP), or one per ready endpoint of a
  headless Service (target ``<hostname or a-b-c-d>.<svc>.<ns>.svc.<zone>``,
  whose A record is in the additional section).
- ``<hostname>.<svc>.<ns>.svc.<zone>`` A for headless endpoints with a hostname.
- ``<a-b-c-d>.<ns>.pod.<zone>`` A: the address in the name (as CoreDNS's
  ``pods insecure`` answers it).
- PTR under ``in-addr.arpa`` for cluster IPs and named headless endpoints.

``Zone.answer(question)`` returns the response code and records: NXDOMAIN for
a name in the zone that does not exist, NOERROR without records (NODATA) for
an existing name asked for another type (AAAA, say), and SERVFAIL for names
outside the zone — the emulated network has no upstream resolver, so such a
lookup fails at once instead of timing out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Iterable

from netk8s.api import meta
from netk8s.dns.wire import Question, Rcode, Record, RecordType

DEFAULT_ZONE = "cluster.local"
TTL = 5  # CoreDNS's kubernetes plugin's default
_REVERSE = "in-addr.arpa"


def reverse_name(ip: IPv4Address) -> str:
    return ".".join(reversed(str(ip).split("."))) + "." + _REVERSE


def _dashed(ip: IPv4Address) -> str:
    return str(ip).replace(".", "-")


@dataclass
class Zone:
    zone: str = DEFAULT_ZONE
    records: dict[str, list[Record]] = field(default_factory=dict)  # name -> records of any type
    additional: dict[str, list[Record]] = field(default_factory=dict)  # name -> A records for SRV targets
    branches: set[str] = field(default_factory=set)  # names above records: they exist, without records

    def _add(self, name: str, rtype: RecordType, data: object) -> None:
        self.records.setdefault(name, []).append(Record(name, rtype, TTL, data))  # type: ignore[arg-type]

    @classmethod
    def build(cls, services: Iterable[dict], slices: Iterable[dict], zone: str = DEFAULT_ZONE) -> "Zone":
        out = cls(zone)
        ready: dict[str, list[tuple[IPv4Address, str | None]]] = {}  # "ns/svc" -> (ip, hostname)
        for eps in slices:
            if eps.get("addressType") != "IPv4":
                continue
            service = meta.labels_of(eps).get(meta.SERVICE_NAME_LABEL)
            if not service:
                continue
            for endpoint in eps.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
                    continue
                try:
                    ip = IPv4Address(endpoint["addresses"][0])
                except ValueError:
                    continue
                ready.setdefault(f"{meta.namespace_of(eps)}/{service}", []).append((ip, endpoint.get("hostname")))
        for svc in services:
            out._add_service(svc, sorted(set(ready.get(meta.key_of(svc), [])), key=lambda e: (e[0], e[1] or "")))
        for name in out.records:
            labels = name.split(".")
            out.branches.update(".".join(labels[i:]) for i in range(1, len(labels)))
        return out

    def _add_service(self, svc: dict, endpoints: list[tuple[IPv4Address, str | None]]) -> None:
        spec = svc.get("spec") or {}
        base = f"{meta.name_of(svc)}.{meta.namespace_of(svc)}.svc.{self.zone}"
        if spec.get("type") == "ExternalName":
            if spec.get("externalName"):
                self._add(base, RecordType.CNAME, str(spec["externalName"]).rstrip(".").lower())
            return
        cluster_ip = spec.get("clusterIP")
        headless = cluster_ip in (None, "", "None")
        targets: list[tuple[str, IPv4Address]] = []
        if headless:
            for ip, hostname in endpoints:
                target = f"{hostname or _dashed(ip)}.{base}"
                targets.append((target, ip))
                self._add(base, RecordType.A, ip)
                self._add(target, RecordType.A, ip)
                if hostname:
                    self._add(reverse_name(ip), RecordType.PTR, target)
        else:
            try:
                address = IPv4Address(str(cluster_ip))
            except ValueError:
                return
            self._add(base, RecordType.A, address)
            self._add(reverse_name(address), RecordType.PTR, base)
        for port in spec.get("ports") or []:
            if not port.get("name"):
                continue
            srv = f"_{port['name']}._{str(port.get('protocol') or 'TCP').lower()}.{base}"
            if not headless:
                self._add(srv, RecordType.SRV, (0, 100, int(port.get("port", 0)), base))
                self.additional.setdefault(srv, []).extend(r for r in self.records[base] if r.rtype is RecordType.A)
                continue
            for target, ip in targets:
                self._add(srv, RecordType.SRV, (0, 100, int(port.get("port", 0)), target))
                self.additional.setdefault(srv, []).append(Record(target, RecordType.A, TTL, ip))

    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone) or name.endswith("." + _REVERSE)

    def answer(self, question: Question) -> tuple[Rcode, list[Record], list[Record]]:
        """(response code, answers, additional records) for ``question``."""
        name = question.name.rstrip(".").lower()
        if not self.in_zone(name):
            return Rcode.SERVFAIL, [], []
        found = self.records.get(name)
        if found is None:
            pod = self._pod_record(name)
            if pod is None:
                return (Rcode.NOERROR if self._is_branch(name) else Rcode.NXDOMAIN), [], []
            found = [pod]
        if question.rtype == RecordType.ANY:
            return Rcode.NOERROR, list(found), list(self.additional.get(name, []))
        wanted = [r for r in found if r.rtype == question.rtype]
        if not wanted:
            cname = [r for r in found if r.rtype is RecordType.CNAME]
            return Rcode.NOERROR, cname, []
        return Rcode.NOERROR, wanted, list(self.additional.get(name, [])) if question.rtype == RecordType.SRV else []

    def _pod_record(self, name: str) -> Record | None:
        suffix = f".pod.{self.zone}"
        if not name.endswith(suffix):
            return None
        parts = name[:-len(suffix)].split(".")
        if len(parts) != 2:
            return None
        try:
            ip = IPv4Address(parts[0].replace("-", "."))
        except ValueError:
            return None
        return Record(name, RecordType.A, TTL, ip)

    def _is_branch(self, name: str) -> bool:
        """A name above existing records (``default.svc.cluster.local``): it exists, without records."""
        return name in self.branches or name == self.zone
