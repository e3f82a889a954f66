"""Start and stop the servers under test: rtmpmate (as tests/e2e/harness.py does) and nginx-rtmp.

Both listen on free loopback ports and run from a fresh temporary directory; their logs go to
the benchmark's work directory. `stop()` always ends the whole process group, so an
interrupted benchmark leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from bench import procstat
from control import ctlsock
from control.config import default_document

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
APP = "live"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 8.0
NGINX = "nginx"
NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


LOWEST_PORT = 10000


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_candidates() -> Iterator[int]:
    top = max(_ephemeral_floor(), LOWEST_PORT + 1000)
    start = random.randrange(LOWEST_PORT, top)  # two runs at once rarely meet
    yield from range(start, top)
    yield from range(LOWEST_PORT, start)


_CANDIDATES = _port_candidates()


def free_port() -> int:
    """A loopback port that is free now, below the kernel's ephemeral range: a port handed
    out for bind(0) can become some client's source port before the server binds it (a test
    failed that way with "Address already in use"). Each port is offered once per process."""
    for port in _CANDIDATES:
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port left below the ephemeral range")


def commit_of(source: Path) -> str | None:
    """The checkout's commit, "+dirty" when it has changes (read-only git commands)."""
    try:
        rev = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.strip() + ("+dirty" if dirty.strip() else "")


def _wait(predicate: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S} s; see {log}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class Target:
    """One running server under test."""

    name: str  # "rtmpmate" or "nginx-rtmp"
    rtmp_port: int
    http_port: int | None  # None: no HTTP playback at all
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    host: str = HOST
    app: str = APP

    @property
    def root_pid(self) -> int:
        return self.proc.pid

    def port_for(self, listener: str) -> int | None:
        return self.rtmp_port if listener == "rtmp" else self.http_port

    def roles(self) -> dict[int, str]:
        """pid -> role of every process now in the tree ("egress", "ingest", "worker"...)."""
        return {pid: role_of(procstat.cmdline(pid)) for pid in procstat.tree(self.root_pid)}

    def connections(self) -> dict[int, int]:
        """pid -> connections held, for the workers that count theirs (rtmpmate's egress
        workers in a group); empty for a server that does not say."""
        if self.name != "rtmpmate":
            return {}
        try:
            answer = ctlsock.request(str(self.workdir / "run" / "ctl.sock"), {"cmd": "status"})
        except (OSError, ValueError):
            return {}
        return {w["pid"]: w["connections"] for w in answer.get("status", {}).get("workers", [])
                if isinstance(w.get("connections"), int)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Whatever is left in the group (a stuck worker) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.workdir, ignore_errors=True)


def role_of(cmd: str) -> str:
    words = cmd.split()
    if "control.workers" in words:
        return words[words.index("control.workers") + 1]
    if "control.supervisor" in words:
        return "supervisor"
    if cmd.startswith("nginx: "):
        return cmd.split()[1]  # "master" or "worker"
    return cmd[:40]


def start_rtmpmate(logdir: Path, *, ingest: int = 1, egress: int = 1,
                   log_level: str = "warning", label: str = "rtmpmate",
                   source: Path = REPO, egress_only: bool = False) -> Target:
    """rtmpmate from the checkout `source` (this one by default; another one, e.g. an export
    of an older commit, to measure before and after a change in one invocation). With
    `egress_only`, egress workers serve every HTTP player (none goes to the publisher's
    ingest worker), so that the egress tier itself is measured."""
    # ipc:// paths are limited to about 100 characters: keep the run directory short.
    workdir = Path(tempfile.mkdtemp(prefix="rmb-", dir="/tmp"))
    doc = default_document()
    server: dict[str, object] = {"ingest_workers": ingest, "egress_workers": egress,
                                 "run_dir": str(workdir / "run"), "log_level": log_level}
    if egress_only and "publisher_http_players" in (source / "control" / "config.py").read_text():
        server["publisher_http_players"] = 0  # (older checkouts had no such key)
    doc["server"] = server
    doc["bus"] = {"frontend_tcp": "", "backend_tcp": "", "hwm": 10000}
    rtmp_port, http_port = free_port(), free_port()
    for section, port in (("rtmp", rtmp_port), ("http", http_port), ("rtsp", free_port())):
        table = doc[section]
        assert isinstance(table, dict)
        table["listen"] = f"{HOST}:{port}"
    config = workdir / "rtmpmate.toml"
    config.write_bytes(tomli_w.dumps(doc).encode())
    logdir.mkdir(parents=True, exist_ok=True)
    log_path = logdir / f"{label}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control.supervisor", "--config", str(config)],
            cwd=source, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONPATH": str(source)})
    target = Target("rtmpmate", rtmp_port, http_port, proc, workdir, log_path)

    def ready() -> bool:
        try:
            answer = ctlsock.request(str(workdir / "run" / "ctl.sock"), {"cmd": "status"})
        except (OSError, ValueError):
            return False
        workers = answer.get("status", {}).get("workers", [])
        return bool(workers) and all(w["reporting"] for w in workers if w["role"] != "broker")

    try:
        _wait(ready, "rtmpmate", proc, log_path)
    except BaseException:
        target.stop()
        raise
    return target


def nginx_missing() -> str | None:
    """Why nginx-rtmp cannot run here, or None when it can."""
    if shutil.which(NGINX) is None and not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (apt-get install nginx libnginx-mod-rtmp)"
    if not NGINX_RTMP_MODULE.exists():
        return f"{NGINX_RTMP_MODULE} is missing (apt-get install libnginx-mod-rtmp)"
    return None


NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 8192; }}
rtmp {{
    server {{
        listen {host}:{port};
        chunk_size 4096;
        application {app} {{ live on; }}
    }}
}}
"""


def start_nginx(logdir: Path, *, label: str = "nginx-rtmp") -> Target:
    workdir = Path(tempfile.mkdtemp(prefix="rmb-nginx-", dir="/tmp"))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=NGINX_RTMP_MODULE, workdir=workdir, host=HOST,
                                      port=port, app=APP))
    binary = shutil.which(NGINX) or "/usr/sbin/nginx"
    logdir.mkdir(parents=True, exist_ok=True)
    log_path = logdir / f"{label}.log"
    with open(log_path, "wb") as log:
        # -e: the error log before the configuration is read (not /var/log/nginx).
        proc = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    target = Target("nginx-rtmp", port, None, proc, workdir, log_path)
    try:
        _wait(lambda: _listening(port), "nginx", proc, log_path)
    except BaseException:
        target.stop()
        raise
    return target


@contextlib.contextmanager
def running(target: Target) -> Iterator[Target]:
    """Stop the server however the block ends (Ctrl-C included); keep nginx's error log."""
    try:
        yield target
    finally:
        error_log = target.workdir / "error.log"
        if error_log.exists():
            with open(target.log_path, "ab") as log:
                log.write(error_log.read_bytes())
        target.stop()
