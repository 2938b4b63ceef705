"""``python -m netk8s.apiserver [--port P] [--store FILE]``: a standalone API server.

Serves the same API as a cluster's control plane, without nodes, controllers
or a network: for API experiments, client tests and the API benchmark. Prints
``listening on http://127.0.0.1:<port>`` once ready and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading

from netk8s.apiserver.registry import Registry
from netk8s.apiserver.server import ApiServer, listen
from netk8s.store.sqlite import SQLiteStore


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m netk8s.apiserver")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--store", default=":memory:", help="SQLite file (default: in memory)")
    args = parser.parse_args()
    store = SQLiteStore(args.store)
    server = ApiServer(Registry(store))
    sock = listen(port=args.port)
    server.start_in_thread(sock)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    stop.wait()
    server.stop()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
