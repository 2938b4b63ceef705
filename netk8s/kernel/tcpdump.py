"""tcpdump inside a network namespace: the process behind every capture.

``tcpdump_argv`` is pure. ``Tcpdump`` starts ``tcpdump`` in a namespace with
``nsenter --net`` (nsenter execs it, so the PID is tcpdump's own), waits until
tcpdump says it is listening (only then is the capture live), and stops it by
that PID. A filter or interface tcpdump refuses becomes a ``UserError`` naming
it. Kernel and libpcap quirks handled here:

- ``--immediate-mode``: with TPACKET_V3, libpcap hands packets over in blocks
  that a 1 s timer retires; without it a reader sees packets up to a second
  late and a stop loses the packets of the last block.
- ``-U`` with ``-w``: the pcap file is flushed after every packet, so it can
  be read while the capture runs.
- ``-Z root``: Debian's tcpdump otherwise drops to user ``tcpdump`` before it
  opens the ``-w`` file, and cannot write into root's directories.
- ``-i any`` records LINUX_SLL2 frames, which name the interface by ifindex:
  names are right only when the file is read back inside the same namespace
  (``summarize`` does that).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable

from netk8s.errors import KernelError, UserError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

SNAPLEN = 262144  # tcpdump's default: whole packets
_LISTENING = "listening on "


def tcpdump_argv(interface: str = "any", bpf_filter: str = "", count: int = 0, pcap: Path | None = None,
                 snaplen: int = SNAPLEN) -> list[str]:
    """tcpdump's arguments: numeric (``-n``), immediate, one line per packet or a flushed pcap file."""
    argv = ["tcpdump", "--immediate-mode", "-n", "-Z", "root", "-i", interface, "-s", str(snaplen)]
    argv += ["-U", "-w", str(pcap)] if pcap is not None else ["-l"]
    if count:
        argv += ["-c", str(count)]
    if bpf_filter.strip():
        argv.append(bpf_filter)
    return argv


def refusal(stderr: str, interface: str, bpf_filter: str, where: str) -> UserError | KernelError:
    """The error for a tcpdump that exited before listening, from what it printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    text = stderr.lower()
    if "syntax error" in text or "parse filter" in text or "expression rejects" in text:
        return UserError(f"capture filter {bpf_filter!r}: tcpdump cannot parse it ({last}); "
                         "use pcap-filter syntax, e.g. 'tcp port 80'")
    if "no such device" in text or "doesn't exist" in text or "that device" in text:
        return UserError(f"capture interface {interface!r}: no such interface in {where}; "
                         "use -i any or one listed by `ip link` there")
    return KernelError(f"tcpdump in {where} exited before capturing: {last}")


class Tcpdump:
    """One tcpdump process in namespace ``netns_name``: packet lines to ``on_line``, or a pcap file."""

    def __init__(self, netns_name: str, interface: str = "any", bpf_filter: str = "", count: int = 0,
                 pcap: Path | None = None, where: str | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.netns_name = netns_name
        self.interface = interface
        self.bpf_filter = bpf_filter
        self.argv = tcpdump_argv(interface, bpf_filter, count, pcap)
        self.where = where or netns_name
        self.on_line = on_line  # called with each packet line (text mode only), from a reader thread
        self.stderr_lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._listening = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if shutil.which("tcpdump") is None:
            raise UserError("capture needs tcpdump (Debian package tcpdump); run `make setup` first")
        if not netns.exists(self.netns_name):
            raise KernelError(f"{self.where}: its network namespace {self.netns_name} is gone")
        self._proc = subprocess.Popen(netns.nsenter_argv(self.netns_name, self.argv), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self._proc.stderr is not None
        # tcpdump prints "listening on ..." once its socket is bound; before that packets are missed. A thread
        # reads stderr (and keeps draining it); this waits, bounded, for that line or for tcpdump to exit.
        settled = threading.Event()
        self._listening = False
        self._readers = [threading.Thread(target=self._read_stderr, args=(self._proc.stderr, settled),
                                          daemon=True, name="tcpdump-stderr"),
                         threading.Thread(target=self._drain, args=(self._proc.stdout, self._packet_line),
                                          daemon=True, name="tcpdump-stdout")]
        for reader in self._readers:
            reader.start()
        if not settled.wait(timeout):
            self.stop()
            raise KernelError(f"tcpdump in {self.where} did not start listening within {timeout:g}s")
        if not self._listening:  # exited: a refused filter or interface, or no permission
            self._proc.wait()
            self._join_readers()
            raise refusal("".join(self.stderr_lines), self.interface, self.bpf_filter, self.where)
        log.debug("tcpdump %d listening in %s: %s", self._proc.pid, self.netns_name, " ".join(self.argv))

    def _packet_line(self, line: str) -> None:
        if self.on_line is not None and line.strip():
            self.on_line(line.rstrip("\n"))

    def _read_stderr(self, stream: object, settled: threading.Event) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stderr_lines.append(line)
            if not self._listening and (line.startswith(_LISTENING) or f": {_LISTENING}" in line):
                self._listening = True
                settled.set()
        settled.set()  # end of stream: tcpdump exited

    @staticmethod
    def _drain(stream: object, sink: Callable[[str], None]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink(line)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for tcpdump to end by itself (``-c`` reached); False on timeout."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._join_readers()
        return True

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM our tcpdump (it flushes and exits), SIGKILL after ``grace``; its exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._join_readers()
        return self._proc.returncode

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(2.0)

    def captured(self) -> int | None:
        """How many packets tcpdump reported capturing (its closing statistics), once stopped."""
        for line in self.stderr_lines:
            words = line.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] in ("packet", "packets") \
                    and words[2] == "captured":
                return int(words[0])
        return None


def summarize(netns_name: str, pcap: Path, timeout: float = 30.0) -> list[str]:
    """tcpdump's one-line summaries of a pcap file, read inside the namespace it was captured in (so
    ``-i any`` captures show the right interface names); read in the root namespace when it is gone."""
    argv = ["tcpdump", "-n", "-r", str(pcap)]
    try:
        if netns.exists(netns_name):
            result = netns.run(netns_name, argv, check=False, timeout=timeout)
        else:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelError(f"reading {pcap} took more than {timeout:g}s") from None
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()
        raise KernelError(f"tcpdump -r {pcap}: {detail[-1] if detail else result.returncode}")
    return [line for line in result.stdout.splitlines() if line.strip()]
