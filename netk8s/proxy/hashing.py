"""kube-proxy's chain names: hashes of the service port name, protocol and endpoint.

kube-proxy names per-service and per-endpoint chains after the first 16
characters of base32(sha256(...)) so names stay under iptables' 28-character
limit and are stable across restarts. netk8s reproduces the scheme exactly, so
a chain name seen in a node's ``iptables-save`` identifies the same service
port as it would on a real cluster.
"""

from __future__ import annotations

import base64
import functools
import hashlib

SERVICE_CHAIN_PREFIX = "KUBE-SVC-"
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"


def _hash16(text: str) -> str:
    """The first 16 characters of base32(sha256(text)).

    base32 encodes each 5 bytes into 8 characters independently, so those are
    the characters of the digest's first 10 bytes; encoding only those is ~3x
    cheaper (base64.b32encode is pure Python), which matters when a first sync
    names 30,000 chains.
    """
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode("ascii")


# Chain names are hashes of stable inputs, needed again at every sync: cache them (bounded).
@functools.lru_cache(maxsize=1 << 16)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """First 16 chars of base32(sha256(servicePortName + protocol)); protocol is lower case ("tcp")."""
    return _hash16(service_port_name + protocol)


def service_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVC-<hash>``: the chain that load-balances one service port (Cluster traffic policy)."""
    return SERVICE_CHAIN_PREFIX + port_proto_hash(service_port_name, protocol)


@functools.lru_cache(maxsize=1 << 18)
def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-<hash>``: the chain that DNATs to one endpoint (``endpoint`` is ``"ip:port"``)."""
    return ENDPOINT_CHAIN_PREFIX + _hash16(service_port_name + protocol + endpoint)
