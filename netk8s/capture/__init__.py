"""Packet captures in emulated namespaces: running them, reading them, asserting on them.

``Capture`` (``session``) runs tcpdump in one namespace and hands back lines,
pcap bytes and ``PacketRecord``s; ``read_pcap`` and ``select`` (``packets``)
read and filter any pcap. ``Cluster.capture`` and ``netk8s capture`` pick the
namespace from a pod, node, host, router or switch name.
"""

from netk8s.capture.packets import PacketRecord, read_pcap, select
from netk8s.capture.session import Capture

__all__ = ["Capture", "PacketRecord", "read_pcap", "select"]
