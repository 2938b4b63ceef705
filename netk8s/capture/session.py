"""A capture in one emulated namespace, as tests and the Python API use it.

``Capture`` runs tcpdump (``netk8s.kernel.tcpdump``) in a pod's, node's,
host's, router's or switch's namespace from ``start()`` (or entering a
``with`` block) to ``stop()``. Packets go to a pcap file (a temporary one,
read into memory and removed at the stop, unless ``pcap`` names a file to
keep). After the stop, ``lines`` are tcpdump's one-line summaries (read back
inside the namespace, so interface names are right), ``packets`` the parsed
``PacketRecord``s and ``select(...)`` picks some. While it runs,
``wait_for(...)`` polls the flushed file until a matching packet shows up.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from netk8s.capture.packets import PacketRecord, read_pcap, select
from netk8s.errors import NetK8sError
from netk8s.kernel.tcpdump import Tcpdump, summarize

log = logging.getLogger(__name__)

# The file name ends in .pcap: Debian's AppArmor profile for tcpdump lets it write only such files.
_TEMP_NAME = "capture.pcap"


class Capture:
    """tcpdump in ``netns_name`` writing a pcap; ``where`` names the target in messages."""

    def __init__(self, netns_name: str, bpf_filter: str = "", interface: str = "any", count: int = 0,
                 pcap: str | Path | None = None, where: str | None = None,
                 on_start: Callable[[int], None] | None = None, on_stop: Callable[[int], None] | None = None,
                 settle: float = 0.2) -> None:
        self.netns_name = netns_name
        self.where = where or netns_name
        self._keep = Path(pcap) if pcap is not None else None
        self._temp_dir: Path | None = None
        self._path: Path | None = None
        self._tcpdump_args = dict(interface=interface, bpf_filter=bpf_filter, count=count)
        self._tcpdump: Tcpdump | None = None
        self._on_start, self._on_stop = on_start, on_stop
        self._settle = settle  # seconds for in-flight packets to reach the capture before a stop
        self._data: bytes | None = None
        self._lines: list[str] | None = None
        self._packets: list[PacketRecord] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "Capture":
        if self._tcpdump is not None:
            raise NetK8sError(f"capture in {self.where} was already started")
        if self._keep is not None:
            self._keep.parent.mkdir(parents=True, exist_ok=True)
            self._path = self._keep.resolve()
        else:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="netk8s-capture-"))
            self._path = self._temp_dir / _TEMP_NAME
        self._tcpdump = Tcpdump(self.netns_name, pcap=self._path, where=self.where,
                                **self._tcpdump_args)  # type: ignore[arg-type]
        try:
            self._tcpdump.start()
        except BaseException:
            self._remove_temp()
            raise
        if self._on_start is not None and self._tcpdump.pid is not None:
            self._on_start(self._tcpdump.pid)
        return self

    def stop(self) -> "Capture":
        """End the capture (idempotent) and read what it caught."""
        if self._tcpdump is None or self._data is not None:
            return self
        if self._tcpdump.running():
            time.sleep(self._settle)
        pid = self._tcpdump.pid
        self._tcpdump.stop()
        if self._on_stop is not None and pid is not None:
            self._on_stop(pid)
        assert self._path is not None
        try:
            self._data = self._path.read_bytes() if self._path.exists() else b""
            self._lines = summarize(self.netns_name, self._path) if self._data else []
        finally:
            self._remove_temp()
        log.debug("capture in %s: %d packets", self.where, len(self._lines))
        return self

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until a ``count``-limited capture has its packets (tcpdump exits), then stop; False on timeout."""
        if self._tcpdump is None:
            raise NetK8sError(f"capture in {self.where} was not started")
        done = self._tcpdump.wait(timeout)
        if done:
            self.stop()
        return done

    def _remove_temp(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._tcpdump is not None and self._data is None

    @property
    def pcap(self) -> bytes:
        """The capture as pcap bytes (after the stop)."""
        self._require_stopped("pcap")
        assert self._data is not None
        return self._data

    @property
    def pcap_path(self) -> Path | None:
        """The kept pcap file, when ``pcap`` was given."""
        return self._path if self._keep is not None else None

    @property
    def lines(self) -> list[str]:
        """tcpdump's one-line summary of each packet (``-n``), after the stop."""
        self._require_stopped("lines")
        assert self._lines is not None
        return self._lines

    @property
    def packets(self) -> list[PacketRecord]:
        """Every packet as a ``PacketRecord``, after the stop."""
        if self._packets is None:
            self._packets = read_pcap(self.pcap)
        return self._packets

    def select(self, **criteria: Any) -> list[PacketRecord]:
        """The packets matching every criterion (see ``netk8s.capture.packets.select``)."""
        return select(self.packets, **criteria)

    def wait_for(self, timeout: float = 10.0, interval: float = 0.1, **criteria: Any) -> PacketRecord:
        """While the capture runs: the first packet matching ``criteria``, as soon as it is caught."""
        if not self.running:
            found = self.select(**criteria)
            if found:
                return found[0]
            raise NetK8sError(f"capture in {self.where}: no packet with {_describe(criteria)}")
        assert self._path is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = select(read_pcap(self._path.read_bytes()), **criteria)
            except (OSError, EOFError, ValueError):  # not written yet, or a packet half-way through
                found = []
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise NetK8sError(f"capture in {self.where}: no packet with {_describe(criteria)} "
                                  f"within {timeout:g}s")
            time.sleep(interval)

    def _require_stopped(self, what: str) -> None:
        if self._tcpdump is None:
            raise NetK8sError(f"capture in {self.where} was not started")
        if self._data is None:
            raise NetK8sError(f"capture in {self.where} is still running: stop it before reading its {what}")


def _describe(criteria: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in criteria.items()) or "any field"
