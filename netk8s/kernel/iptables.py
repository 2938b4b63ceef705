"""iptables backend: ``iptables-save`` and ``iptables-restore`` inside a network namespace.

The only code that runs the iptables tools for kube-proxy. Everything goes
through ``netk8s.kernel.netns.run`` (``nsenter --net``), so the caller stays in
the root namespace and each call touches exactly one node namespace.

Kernel quirks worth knowing: a multi-table payload is committed table by table
(each ``COMMIT``), so a failure in the nat section leaves an already-committed
filter section in place; a full resync repairs it (the proxier forces one
after any failure). ``iptables-save`` prints matches in its own canonical
order (``-p`` first; ``recent`` as ``--rcheck --seconds N --reap --name X
--mask M --rsource``), which is why the renderer writes rules in that form.
"""

from __future__ import annotations

import logging
import re

from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.proxy.iptables import chains_in

__all__ = ["save", "restore", "chains_in", "NetnsIptables"]

log = logging.getLogger(__name__)

_TIMEOUT = 600.0  # iptables-nft restores grow quadratically: 10,000 services take ~40 s
# iptables-nft: "Error occurred at line: 5"; iptables-legacy and nft parse errors: "line 7 failed".
_LINE_RE = re.compile(r"(?:at line:?\s*(\d+))|(?:line (\d+) failed)")


def save(netns_name: str, table: str | None = None) -> str:
    """``iptables-save`` in the namespace (all tables, or one)."""
    argv = ["iptables-save"] + (["-t", table] if table else [])
    return netns.run(netns_name, argv, timeout=_TIMEOUT).stdout


def _failing_line(stderr: str, text: str) -> tuple[int | None, str]:
    match = _LINE_RE.search(stderr)
    if not match:
        return None, ""
    number = int(match.group(1) or match.group(2))
    lines = text.splitlines()
    return number, lines[number - 1] if 0 < number <= len(lines) else ""


def restore(netns_name: str, text: str, noflush: bool = True) -> None:
    """Apply ``text`` with one ``iptables-restore`` run; raise ``KernelError`` naming the failing line."""
    # -w: wait for the xtables lock (iptables-legacy shares one lock file across namespaces).
    argv = ["iptables-restore", "-w", "5"] + (["--noflush"] if noflush else [])
    result = netns.run(netns_name, argv, input=text, check=False, timeout=_TIMEOUT)
    if result.returncode == 0:
        log.debug("iptables-restore in %s: applied %d lines", netns_name, text.count("\n"))
        return
    stderr = (result.stderr or result.stdout or "").strip()
    number, line = _failing_line(stderr, text)
    reason = "; ".join(ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Try `"))
    where = f" at line {number} {line!r}" if number is not None else ""
    raise KernelError(f"iptables-restore in {netns_name} failed{where}: {reason or f'exit {result.returncode}'}")


class NetnsIptables:
    """The iptables mode's kernel side (``netk8s.proxy.backend.RuleBackend``) bound to one node namespace."""

    def __init__(self, netns_name: str) -> None:
        self.netns_name = netns_name

    def save(self) -> str:
        return save(self.netns_name)

    def restore(self, text: str) -> None:
        restore(self.netns_name, text, noflush=True)
