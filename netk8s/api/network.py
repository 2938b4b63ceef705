"""Networking value types shared by the kubelet, kube-proxy and the API layer."""

from __future__ import annotations

from enum import Enum


class Protocol(str, Enum):
    """A Service or container port protocol, as the API spells it."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def lowercase(self) -> str:
        """The spelling iptables and kube-proxy's hashes use ("tcp")."""
        return self.value.lower()
