"""Worker process entry point: `python -m control.workers ROLE --name N [--fd F ...]
[--group I/N]` (the worker's place in its port group).

The supervisor starts every worker this way and writes the validated configuration (the raw
TOML mapping, as JSON) to its standard input: only the supervisor reads the config file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from control.config import ConfigError, parse_config

PARENT_CHECK_S = 0.5


def _die_with_parent() -> None:
    """Exit when the supervisor is gone, so no orphan keeps a port or a stream.

    (PR_SET_PDEATHSIG would fire when the supervisor's *thread* that spawned us exits, and
    trio spawns processes from short-lived worker threads.)
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def setup_logging(level: str, name: str) -> None:
    # journald adds timestamps; the worker name tells the lines of several workers apart.
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format=f"{name} %(levelname)s %(name)s: %(message)s")


def _group(text: str) -> tuple[int, int]:
    index, _, size = text.partition("/")
    return int(index), int(size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtmpmate-worker")
    parser.add_argument("role", choices=["broker", "ingest", "egress", "dvr"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--fd", type=int, action="append", default=[])
    parser.add_argument("--group", type=_group, default=(0, 1))
    args = parser.parse_args(argv)
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the supervisor alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = parse_config(json.load(sys.stdin), source="<supervisor>")
    except (ConfigError, ValueError) as exc:
        sys.exit(f"{args.name}: bad configuration from the supervisor: {exc}")
    setup_logging(cfg.server.log_level, args.name)
    if args.role == "broker":
        from broker.proxy import run_proxy
        from broker.zsock import bus_endpoints

        frontend, backend = bus_endpoints(cfg.server.run_dir)
        run_proxy([frontend] + [cfg.bus.frontend_tcp] * bool(cfg.bus.frontend_tcp),
                  [backend] + [cfg.bus.backend_tcp] * bool(cfg.bus.backend_tcp),
                  hwm=cfg.bus.hwm)
    elif args.role == "ingest":
        from ingest.worker import run_ingest_worker

        run_ingest_worker(cfg, args.name, args.fd[0], args.fd[1])
    elif args.role == "dvr":
        from egress.dvr_worker import run_dvr_worker

        run_dvr_worker(cfg, args.name)
    else:
        from egress.worker import run_egress_worker

        run_egress_worker(cfg, args.name, args.fd[0], group=args.group)


if __name__ == "__main__":
    main()
