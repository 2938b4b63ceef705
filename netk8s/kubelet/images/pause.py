"""The ``pause`` built-in image (``registry.k8s.io/pause``): a process that only waits.

Run as ``python -m netk8s.kubelet.images.pause``: it sleeps until SIGTERM or
SIGINT, then writes ``Shutting down, got signal: <name>`` to stderr and exits 0,
as the pause container does. The catalogue also uses it for a shell image run
with ``stdin: true`` and no command, whose shell would wait on stdin forever.

Pod processes start often, so this imports only the stdlib.
"""

from __future__ import annotations

import signal
import sys
from typing import Sequence

from netk8s.kubelet.images.serving import SignalWaiter, write_line


def main(argv: Sequence[str] | None = None) -> int:
    signals = SignalWaiter((signal.SIGTERM, signal.SIGINT))
    args = sys.argv[1:] if argv is None else list(argv)
    if args:
        write_line(f"pause: arguments ignored: {' '.join(args)}", sys.stderr)
    signum = signals.wait()
    write_line(f"Shutting down, got signal: {signal.strsignal(signum) or signum}", sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
