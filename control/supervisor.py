"""The supervisor: reads the config, binds the listening sockets once, runs and restarts workers.

It is the `rtmpmate` command. Workers inherit the bound sockets (so a restarted worker serves
the same port at once, and several workers share one port), receive the configuration on
stdin, and report streams and viewers on the bus, which the supervisor aggregates for
`rtmpmate-ctl status` on a local Unix socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq

from broker import wire
from broker.calls import BusCalls, CallTimeout
from broker.feed import ANNOUNCE_EXPIRY_S, StreamDirectory
from broker.handoff import create_table, read_open
from broker.zsock import BusPublisher, BusSubscriber, bus_endpoints
from control import ctlsock
from control.config import Config, ConfigError, Listen, load_raw, parse_config

logger = logging.getLogger("rtmpmate")

RESTART_DELAY_S = 0.1  # a crashed worker is back well within a second
MAX_RESTART_DELAY_S = 5.0  # ... unless it keeps crashing at start-up
STOP_GRACE_S = 4.0  # SIGTERM, then SIGKILL: every child is gone within 5 s
KICK_WINDOW_S = 1.0  # how long a kick waits for the workers' counts
RECORD_CALL_TIMEOUT_S = 6.0  # a record start may wait for the DVR worker to join a stream


def bind_tcp(listen: Listen, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, listen.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_group(listen: Listen, count: int) -> list[socket.socket]:
    """One listening socket per worker on the same port (SO_REUSEPORT).

    The kernel spreads new connections evenly over the sockets; with one shared accept queue,
    the worker that wakes first takes a whole burst of connections. SO_REUSEPORT would also
    let a second rtmpmate (or the other listener of this one, on the same address) share the
    port without a word, so the port is first bound alone to check that it is free.
    """
    if listen.port:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((listen.host, listen.port))  # EADDRINUSE if anyone listens there
    first = bind_tcp(listen, reuse_port=True)
    port = first.getsockname()[1]  # the one the OS chose, if listen.port is 0
    return [first] + [bind_tcp(Listen(listen.host, port), reuse_port=True)
                      for _ in range(count - 1)]


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) our state; a no-op when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            logger.warning("sd_notify failed: %s", exc)


@dataclass
class Listener:
    """One of a worker's listening sockets, and the address of its port's group."""

    listen: Listen
    sock: socket.socket = field(repr=False)


@dataclass
class Worker:
    role: str
    name: str
    listeners: list[Listener] = field(default_factory=list)  # inherited, in this order
    group: int = 1  # how many workers share each port
    index: int = 0  # this one's place in the group
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    process: trio.Process | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, cfg: Config, raw: dict[str, Any]) -> None:
        self.cfg = cfg
        self.raw_json = json.dumps(raw).encode()
        self.workers: list[Worker] = []
        self.directory = StreamDirectory()
        self.viewers: dict[str, tuple[float, dict[str, dict[str, int]]]] = {}
        self.stopping = False
        self.started = time.time()
        self.calls: BusCalls | None = None  # requests to workers over the bus

    def plan(self) -> None:
        cores = os.cpu_count() or 1
        srv = self.cfg.server
        self.workers.append(Worker("broker", "broker"))
        # Ingest workers serve RTMP and RTSP, egress workers HTTP; one port group each.
        for role, listens, count in (
                ("ingest", (self.cfg.rtmp.listen, self.cfg.rtsp.listen), srv.ingest_workers),
                ("egress", (self.cfg.http.listen,), srv.egress_workers)):
            groups = [bind_group(listen, count or cores) for listen in listens]
            bound = [Listen(listen.host, group[0].getsockname()[1])
                     for listen, group in zip(listens, groups, strict=True)]
            self.workers += [
                Worker(role, f"{role}-{i}",
                       [Listener(b, group[i]) for b, group in zip(bound, groups, strict=True)],
                       len(groups[0]), i)
                for i in range(len(groups[0]))]
            if role == "egress" and len(groups[0]) > 1:
                # The egress workers even out their connections (broker/handoff.py).
                create_table(self.cfg.server.run_dir, role, len(groups[0]))
        self.workers.append(Worker("dvr", "dvr"))  # recordings and HLS/DASH presentations

    async def run_worker(self, worker: Worker) -> None:
        delay = RESTART_DELAY_S
        while not self._stopping():
            worker.started = time.time()
            cmd = [sys.executable, "-m", "control.workers", worker.role, "--name", worker.name]
            fds = [listener.sock.fileno() for listener in worker.listeners]
            for fd in fds:
                cmd += ["--fd", str(fd)]
            if worker.group > 1:
                cmd += ["--group", f"{worker.index}/{worker.group}"]
            proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, pass_fds=fds)
            worker.process, worker.pid = proc, proc.pid
            assert proc.stdin is not None
            await proc.stdin.send_all(self.raw_json)
            await proc.stdin.aclose()
            code = await proc.wait()
            worker.last_exit = code
            if self._stopping():
                return
            lived = time.time() - worker.started
            logger.warning("%s (pid %s) exited with %s after %.1f s; restarting",
                           worker.name, proc.pid, code, lived)
            worker.restarts += 1
            # Back off only while it keeps dying at start-up (a bad port, a broken install).
            delay = RESTART_DELAY_S if lived >= 1 else min(delay * 2, MAX_RESTART_DELAY_S)
            if worker.listeners and worker.group > 1:
                # Out of the ports' groups until the new process is there: meanwhile the
                # kernel gives new connections to the other workers. (A lone worker keeps its
                # sockets: connections wait in their backlogs for the restart.)
                for listener in worker.listeners:
                    listener.sock.close()
                await trio.sleep(delay)
                for listener in worker.listeners:
                    listener.sock = bind_tcp(listener.listen, reuse_port=True)
            else:
                await trio.sleep(delay)

    def _stopping(self) -> bool:
        return self.stopping

    async def stop(self) -> None:
        self.stopping = True
        sd_notify("STOPPING=1")
        procs = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                logger.warning("pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                await proc.wait()

    # -- status --------------------------------------------------------------------------------

    def _on_control(self, frame: bytes) -> None:
        try:
            body = wire.decode_control(frame)
        except wire.WireError:
            return
        now = trio.current_time()
        if body.get("kind") == "viewers":
            streams = body.get("streams")
            self.viewers[str(body.get("worker"))] = (now, streams if isinstance(streams, dict)
                                                     else {})
        else:
            self.directory.on_control(body, now)
        if self.calls is not None:
            self.calls.on_control(body)

    def status(self) -> dict[str, object]:
        now, wall = trio.current_time(), time.time()
        viewers: dict[str, dict[str, int]] = {}
        serving: dict[str, int] = {}  # viewers per worker
        for worker, (seen, streams) in self.viewers.items():
            if now - seen > ANNOUNCE_EXPIRY_S:
                continue
            for key, counts in streams.items():
                total = viewers.setdefault(key, {})
                for proto, n in counts.items():
                    total[proto] = total.get(proto, 0) + n
                    serving[worker] = serving.get(worker, 0) + n
        held: dict[str, int] = {}  # connections per worker, where its group counts them
        group = [w for w in self.workers if w.role == "egress" and w.group > 1]
        if group:
            numbers = read_open(self.cfg.server.run_dir, "egress", len(group)) or []
            held.update((w.name, n) for w, n in zip(group, numbers, strict=False))
        return {
            "uptime": wall - self.started,
            "workers": [{"role": w.role, "name": w.name, "pid": w.pid,
                         "connections": held.get(w.name),
                         "viewers": serving.get(w.name, 0),
                         "uptime": wall - w.started if w.pid else 0.0,
                         "restarts": w.restarts,
                         # Workers report on the bus every second: proof they are up and wired.
                         "reporting": now - self.viewers.get(w.name, (-1e9, {}))[0]
                         <= ANNOUNCE_EXPIRY_S} for w in self.workers],
            "streams": [{"key": str(info.key), **info.info,
                         "viewers": viewers.get(str(info.key), {})}
                        for info in self.directory.live(now)],
        }

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            return {"ok": True, "status": self.status()}
        if request.get("cmd") == "record" and self.calls is not None:
            # The DVR worker owns recordings: the same call as the rtmp_control handler's.
            try:
                answer = await self.calls.call("record", {
                    "action": request.get("action"), "dvr": request.get("dvr"),
                    "key": request.get("key")}, timeout_s=RECORD_CALL_TIMEOUT_S)
            except CallTimeout as exc:
                return {"ok": False, "error": f"the DVR worker did not answer ({exc})"}
            return {k: answer[k] for k in ("ok", "path", "error") if k in answer}
        if request.get("cmd") == "kick" and self.calls is not None:
            answers = await self.calls.gather("kick", {
                "key": request.get("key"), "what": request.get("what", "all")},
                window_s=KICK_WINDOW_S)
            kicked = sum(a["kicked"] for a in answers if isinstance(a.get("kicked"), int))
            return {"ok": True, "kicked": kicked}
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    # -- main ----------------------------------------------------------------------------------

    async def serve(self) -> None:
        os.makedirs(self.cfg.server.run_dir, exist_ok=True)
        self.plan()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        subscriber = BusSubscriber(ctx, bus_endpoints(self.cfg.server.run_dir)[1],
                                   hwm=self.cfg.bus.hwm)
        subscriber.subscribe(wire.CONTROL_TOPIC, self._on_control)
        publisher = BusPublisher(ctx, bus_endpoints(self.cfg.server.run_dir)[0],
                                 hwm=self.cfg.bus.hwm)
        self.calls = BusCalls(publisher.send_control)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber.serve)
                await nursery.start(ctlsock.serve_control, ctlsock.control_path(
                    self.cfg.server.run_dir), self.handle_request)
                for worker in self.workers:
                    nursery.start_soon(self.run_worker, worker)
                rtmp, rtsp, http = (self.cfg.rtmp.listen, self.cfg.rtsp.listen,
                                    self.cfg.http.listen)
                logger.info("rtmpmate ready: rtmp %s:%d, rtsp %s:%d, http %s:%d (%d workers)",
                            rtmp.host, rtmp.port, rtsp.host, rtsp.port, http.host, http.port,
                            len(self.workers))
                sd_notify("READY=1")
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        logger.info("%s: stopping", signal.Signals(signum).name)
                        break
                await self.stop()
                nursery.cancel_scope.cancel()
        finally:
            ctx.destroy(linger=0)
            for worker in self.workers:
                for listener in worker.listeners:
                    listener.sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtmpmate", description="live-streaming gateway")
    parser.add_argument("--config", default="etc/rtmpmate.toml", help="TOML configuration")
    args = parser.parse_args(argv)
    try:
        raw = load_raw(args.config)
        cfg = parse_config(raw, source=args.config, text=_read(args.config))
    except ConfigError as exc:
        sys.exit(f"rtmpmate: {exc}")
    except OSError as exc:
        sys.exit(f"rtmpmate: cannot read {args.config}: {exc.strerror}")
    logging.basicConfig(level=cfg.server.log_level.upper(), stream=sys.stderr,
                        format="supervisor %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(Supervisor(cfg, raw).serve)
    except OSError as exc:
        sys.exit(f"rtmpmate: {exc}")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


if __name__ == "__main__":
    main()
