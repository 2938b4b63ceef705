"""The ``netk8s-cni`` executable: CNI over environment variables, stdin and stdout.

A runtime starts it in the host (node) network namespace with ``CNI_*``
variables and the network configuration on stdin. Success: exit 0, the result
JSON (ADD, VERSION) or nothing on stdout. Failure: exit 1 and the CNI error
JSON ``{"cniVersion", "code", "msg", "details"}`` on stdout; never a traceback.
Logs go to stderr (``NETK8S_CNI_LOG=debug`` for more).

A run has a budget of a few tens of milliseconds, most of it Python's own
start-up, so this module and the plugin import as little as possible:
:mod:`logging` is loaded only when a record at the chosen level is emitted
(see :mod:`netk8s.cni.lazylog`). Started as the ``netk8s-cni`` executable,
:func:`main` ends the process itself once the answer is out, skipping the
interpreter's finalization (3-6 ms of module and object teardown that would
change nothing on disk or in the kernel).
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

from netk8s.cni import lazylog
from netk8s.cni.types import CNI_VERSION, CNIError, ErrorCode, peek_version

_FORMAT = "netk8s-cni: %(levelname)s %(message)s"
EXECUTABLE = "netk8s-cni"


def _read_stdin() -> bytes:
    """The configuration; nothing when stdin is missing or a terminal (VERSION needs none)."""
    stream = sys.stdin
    if stream is None or stream.closed:
        return b""
    try:
        if stream.isatty():
            return b""
        return stream.buffer.read()
    except (OSError, ValueError):
        return b""


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=4) + "\n")
    sys.stdout.flush()


def _configure_logging() -> None:
    level = lazylog.LEVELS.get(os.environ.get("NETK8S_CNI_LOG", "warning").upper(), lazylog.WARNING)

    def setup() -> None:
        import logging

        logging.basicConfig(stream=sys.stderr, level=level, format=_FORMAT)

    lazylog.configure(level, setup)


def _exit_now(status: int) -> NoReturn:
    """Flush what this run wrote and end the process without finalization.

    Safe here: stdout/stderr are flushed below, logging (if it was loaded) is
    shut down, and the plugin writes lease files with os.write and closes
    every descriptor it opens before returning.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    os._exit(status)


def main() -> int:
    """Answer one CNI call from ``os.environ`` and stdin; returns the exit status.

    As the ``netk8s-cni`` executable (the console script named so) it also sets
    up logging and does not return: see :func:`_exit_now`.
    """
    if os.path.basename(sys.argv[0]) == EXECUTABLE:
        _configure_logging()
        _exit_now(answer())
    return answer()


def answer() -> int:
    """The CNI call itself: the answer JSON on stdout, 0 on success, 1 with a CNI error object."""
    stdin = _read_stdin()
    version = peek_version(stdin) if stdin else CNI_VERSION
    try:
        from netk8s.cni import (
            plugin,  # imported late so a broken install still answers in CNI form
        )

        result = plugin.execute(os.environ, stdin)
    except CNIError as exc:
        _emit(exc.to_json(version))
        return 1
    except Exception as exc:  # noqa: BLE001 - the runtime must always get a CNI error object
        lazylog.get_logger("netk8s.cni").exception("unexpected failure")
        _emit(CNIError(ErrorCode.INTERNAL, f"netk8s-cni failed unexpectedly: {exc}").to_json(version))
        return 1
    if result is not None:
        _emit(result)
    return 0


if __name__ == "__main__":
    _configure_logging()
    _exit_now(answer())
