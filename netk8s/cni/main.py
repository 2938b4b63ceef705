"""The ``netk8s-cni`` executable: CNI over environment variables, stdin and stdout.

A runtime starts it in the host (node) network namespace with ``CNI_*``
variables and the network configuration on stdin. Success: exit 0, the result
JSON (ADD, VERSION) or nothing on stdout. Failure: exit 1 and the CNI error
JSON ``{"cniVersion", "code", "msg", "details"}`` on stdout; never a traceback.
Logs go to stderr (``NETK8S_CNI_LOG=debug`` for more).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from netk8s.cni.types import CNI_VERSION, CNIError, ErrorCode, peek_version


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


def main() -> int:
    level = os.environ.get("NETK8S_CNI_LOG", "warning").upper()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level, logging.WARNING),
                        format="netk8s-cni: %(levelname)s %(message)s")
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
        logging.getLogger("netk8s.cni").exception("unexpected failure")
        _emit(CNIError(ErrorCode.INTERNAL, f"netk8s-cni failed unexpectedly: {exc}").to_json(version))
        return 1
    if result is not None:
        _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
