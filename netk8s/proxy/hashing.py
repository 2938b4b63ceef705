"""kube-proxy's chain names: hashes of the service port name, protocol and endpoint.

kube-proxy names per-service and per-endpoint chains after the first 16
characters of base32(sha256(...)) so names stay under iptables' 28-character
limit and are stable across restarts. netk8s reproduces the scheme exactly, so
a chain name seen in a node's ``iptables-save`` identifies the same service
port as it would on a real cluster.
"""

from __future__ import annotations

import base64
import hashlib

SERVICE_CHAIN_PREFIX = "KUBE-SVC-"
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"
_HASH_LENGTH = 16


def _hash16(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode("ascii")[:_HASH_LENGTH]


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """First 16 chars of base32(sha256(servicePortName + protocol)); protocol is lower case ("tcp")."""
    return _hash16(service_port_name + protocol)


def service_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVC-<hash>``: the chain that load-balances one service port."""
    return SERVICE_CHAIN_PREFIX + port_proto_hash(service_port_name, protocol)


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-<hash>``: the chain that DNATs to one endpoint (``endpoint`` is ``"ip:port"``)."""
    return ENDPOINT_CHAIN_PREFIX + _hash16(service_port_name + protocol + endpoint)
