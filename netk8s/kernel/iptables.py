"""iptables backend: ``iptables-save``, ``iptables-restore`` and a cheap inventory inside a network namespace.

The only code that runs the iptables tools for kube-proxy. Everything goes
through ``netk8s.kernel.netns.run`` (``nsenter --net``), so the caller stays in
the root namespace and each call touches exactly one node namespace.

Kernel quirks worth knowing: a multi-table payload is committed table by table
(each ``COMMIT``), so a failure in the nat section leaves an already-committed
filter section in place; a full resync repairs it (the proxier forces one
after any failure). ``iptables-save`` prints matches in its own canonical
order (``-p`` first; ``recent`` as ``--rcheck --seconds N --reap --name X
--mask M --rsource``), which is why the renderer writes rules in that form.

iptables-nft (1.8.9) costs, measured at 10,000 services x 2 endpoints: a full
``iptables-save`` takes ~10 s (it files every rule under its chain with a
linear search over all chains), while ``nft -j list chains ip`` lists the
same chain names in ~0.2 s and ``iptables -t T -S CHAIN`` reads one chain in
~6 ms. ``inventory`` therefore builds what a full sync needs (every chain
name, the rules of the built-in chains) from those; with iptables-legacy it
falls back to ``iptables-save``, which is fast there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
from typing import Sequence

from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.proxy.iptables import chains_in, inventory_dump, nft_chain_names

__all__ = ["save", "restore", "RestoreStream", "chains_in", "variant", "inventory", "NetnsIptables"]

log = logging.getLogger(__name__)

_TIMEOUT = 600.0  # big restores take seconds to tens of seconds at 10,000 services
_QUICK_TIMEOUT = 60.0  # one chain, one listing of chain names
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


def _restore_argv(noflush: bool) -> list[str]:
    # -w: wait for the xtables lock (iptables-legacy shares one lock file across namespaces).
    return ["iptables-restore", "-w", "5"] + (["--noflush"] if noflush else [])


def _restore_error(netns_name: str, returncode: int, stderr: str, text: str) -> KernelError:
    stderr = stderr.strip()
    number, line = _failing_line(stderr, text)
    reason = "; ".join(ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Try `"))
    where = f" at line {number} {line!r}" if number is not None else ""
    return KernelError(f"iptables-restore in {netns_name} failed{where}: {reason or f'exit {returncode}'}")


def restore(netns_name: str, text: str, noflush: bool = True) -> None:
    """Apply ``text`` with one ``iptables-restore`` run; raise ``KernelError`` naming the failing line."""
    result = netns.run(netns_name, _restore_argv(noflush), input=text, check=False, timeout=_TIMEOUT)
    if result.returncode == 0:
        log.debug("iptables-restore in %s: applied %d lines", netns_name, text.count("\n"))
        return
    raise _restore_error(netns_name, result.returncode, result.stderr or result.stdout or "", text)


_F_SETPIPE_SZ = 1031  # fcntl: set a pipe's capacity (Linux)
_PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default


class RestoreStream:
    """One ``iptables-restore --noflush`` process fed section by section while the rest is rendered.

    iptables-restore reads its input line by line and commits each table
    section at its ``COMMIT``, so the kernel applies the first sections while
    later ones are still being rendered. The pipe is widened to 1 MiB so that
    ``write`` rarely waits for the restore to catch up (a writer thread was
    measurably slower: it competes for the GIL with the renderer). ``close``
    ends the input and raises ``KernelError`` like ``restore``; ``abort``
    kills the process, so a section not completely sent is never committed
    (earlier ones stay).
    """

    def __init__(self, netns_name: str) -> None:
        self.netns_name = netns_name
        self._sent: list[str] = []
        self._broken = False
        self._proc = subprocess.Popen(netns.nsenter_argv(netns_name, _restore_argv(True)), stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self._proc.stdin is not None
        try:
            fcntl.fcntl(self._proc.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means write() waits more often

    def write(self, text: str) -> None:
        self._sent.append(text)
        if self._broken:
            return
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._broken = True  # it stopped at an error: close() reports it

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stderr is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            returncode = self._proc.wait(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.abort()
            raise KernelError(f"iptables-restore in {self.netns_name} timed out after {_TIMEOUT}s") from None
        stderr = self._proc.stderr.read().decode(errors="replace")
        self._proc.stderr.close()
        text = "".join(self._sent)
        if returncode != 0:
            raise _restore_error(self.netns_name, returncode, stderr, text)
        log.debug("iptables-restore in %s: streamed %d lines", self.netns_name, text.count("\n"))

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


def variant(netns_name: str) -> str:
    """``"nf_tables"`` or ``"legacy"``: which iptables the ``iptables`` command is.

    Namespaces share the root's filesystem, so the binary tells without
    running anything: Debian's alternatives end at ``xtables-nft-multi`` or
    ``xtables-legacy-multi``; anything else is asked (``iptables -V``).
    """
    found = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    target = os.path.basename(os.path.realpath(found)) if found else ""
    if "nft" in target:
        return "nf_tables"
    if "legacy" in target:
        return "legacy"
    out = netns.run(netns_name, ["iptables", "-V"], timeout=_QUICK_TIMEOUT).stdout
    return "nf_tables" if "nf_tables" in out else "legacy"


def inventory(netns_name: str, builtin: Sequence[tuple[str, str]], kind: str | None = None) -> str:
    """Every chain of the filter and nat tables and the rules of the ``builtin`` chains, in save form.

    See ``netk8s.proxy.iptables.inventory_dump``. With iptables-nft the chain
    names come from ``nft`` (iptables-nft's tables are ordinary nft tables)
    and each built-in chain from ``iptables -S``; otherwise ``iptables-save``.
    ``kind``: the ``variant`` when already known.
    """
    if (kind or variant(netns_name)) != "nf_tables":
        return save(netns_name)
    listing = netns.run(netns_name, ["nft", "-j", "list", "chains", "ip"], check=False, timeout=_QUICK_TIMEOUT)
    if listing.returncode != 0:
        log.debug("nft -j list chains ip in %s failed (%s); reading iptables-save", netns_name,
                  listing.stderr.strip())
        return save(netns_name)
    try:
        chains = nft_chain_names(listing.stdout)
    except ValueError as exc:
        raise KernelError(f"nft -j list chains ip in {netns_name}: {exc}") from None
    rules: dict[str, list[str]] = {}
    for table, chain in builtin:
        if chain not in chains.get(table, ()):
            continue  # no such chain yet (a fresh namespace): no rules to read
        result = netns.run(netns_name, ["iptables", "-w", "5", "-t", table, "-S", chain], check=False,
                           timeout=_QUICK_TIMEOUT)
        if result.returncode != 0:
            raise KernelError(f"iptables -t {table} -S {chain} in {netns_name} failed: "
                              f"{(result.stderr or result.stdout).strip()}")
        rules.setdefault(table, []).extend(result.stdout.splitlines())
    return inventory_dump(chains, rules)


class NetnsIptables:
    """The iptables mode's kernel side (``netk8s.proxy.backend.RuleBackend``) bound to one node namespace.

    Also an ``InventoryBackend`` (full syncs read the cheap ``inventory``
    instead of a full ``iptables-save``) and a ``StreamingBackend`` (full
    syncs are applied while they render) of ``netk8s.proxy.iptables``.
    """

    def __init__(self, netns_name: str) -> None:
        self.netns_name = netns_name
        self._variant: str | None = None

    def restore_stream(self) -> RestoreStream:
        return RestoreStream(self.netns_name)

    def save(self) -> str:
        return save(self.netns_name)

    def restore(self, text: str) -> None:
        restore(self.netns_name, text, noflush=True)

    def inventory(self, builtin: Sequence[tuple[str, str]]) -> str:
        if self._variant is None:
            self._variant = variant(self.netns_name)
        return inventory(self.netns_name, builtin, self._variant)
