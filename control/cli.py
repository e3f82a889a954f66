"""rtmpmate-ctl: check or create a configuration, and ask a running rtmpmate how it is doing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from broker.packet import DEFAULT_INSTANCE, StreamKey
from control import ctlsock
from control.access import sign, stream_path
from control.config import ConfigError, dump_default, load_config, location_for


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _bitrate(bps: float) -> str:
    return f"{bps / 1e6:.2f} Mbit/s" if bps >= 1e6 else f"{bps / 1e3:.0f} kbit/s"


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def format_status(status: dict[str, Any]) -> str:
    lines = [f"rtmpmate up {_duration(status['uptime'])}", "",
             f"{'WORKER':<12} {'ROLE':<8} {'PID':>8} {'UPTIME':>9} {'RESTARTS':>8} "
             f"{'CONNECTIONS':>11} {'VIEWERS':>7}"]
    lines += [f"{w['name']:<12} {w['role']:<8} {w['pid'] or '-':>8} "
              f"{_duration(w['uptime']):>9} {w['restarts']:>8} "
              f"{_count(w.get('connections')):>11} {_count(w.get('viewers')):>7}"
              for w in status["workers"]]
    lines.append("")
    streams = status["streams"]
    if not streams:
        lines.append("no live streams")
    for st in streams:
        codecs = st.get("codecs", {})
        size = f"{st.get('width', 0)}x{st.get('height', 0)}" if st.get("width") else "-"
        viewers = st.get("viewers", {})
        per = ", ".join(f"{p} {n}" for p, n in sorted(viewers.items())) or "none"
        lines += [
            f"stream {st['key']}",
            f"  publisher  {st.get('peer', '?')} for {_duration(_age(st))}",
            f"  codecs     video {codecs.get('video', '-')}, audio {codecs.get('audio', '-')}, "
            f"{size}",
            f"  bitrate in {_bitrate(st.get('bitrate', 0.0))}",
            f"  viewers    {sum(viewers.values())} ({per})",
        ]
    return "\n".join(lines)


def _age(stream: dict[str, Any]) -> float:
    import time

    started = stream.get("started")
    return time.time() - started if isinstance(started, float | int) else 0.0


def _stream_key(text: str) -> StreamKey:
    parts = text.strip("/").split("/")
    if len(parts) == 2:
        parts.insert(1, DEFAULT_INSTANCE)
    try:
        return StreamKey.parse("/".join(parts))
    except ValueError:
        sys.exit(f"rtmpmate-ctl: {text!r} is not APP/NAME or APP/INSTANCE/NAME")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtmpmate-ctl")
    parser.add_argument("--config", default="etc/rtmpmate.toml", help="TOML configuration")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate the configuration and exit")
    status = sub.add_parser("status", help="workers and live streams of a running rtmpmate")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    record = sub.add_parser("record", help="start or stop a DVR_FLV recording")
    record.add_argument("action", choices=["start", "stop"])
    record.add_argument("stream", help="APP/NAME or APP/INSTANCE/NAME")
    record.add_argument("--dvr", required=True, help="the DVR entry's id")
    kick = sub.add_parser("kick", help="close a stream's publisher and/or players")
    kick.add_argument("stream", help="APP/NAME or APP/INSTANCE/NAME")
    kick.add_argument("--what", choices=["publisher", "players", "all"], default="all")
    sign_cmd = sub.add_parser("sign", help="make a signed URL query for a stream")
    sign_cmd.add_argument("stream", help="APP/NAME or APP/INSTANCE/NAME")
    sign_cmd.add_argument("--ttl", type=int, default=3600, help="seconds it stays valid")
    sign_cmd.add_argument("--secret", help="the key (default: the stream's location's)")
    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    init = config_sub.add_parser("init", help="write the default configuration to PATH")
    init.add_argument("path")
    args = parser.parse_args(argv)

    if args.command == "config":
        try:
            dump_default(args.path)
        except FileExistsError:
            sys.exit(f"rtmpmate-ctl: {args.path} exists; not overwriting it")
        print(f"wrote {args.path}")
        return
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        sys.exit(f"rtmpmate-ctl: {exc}")
    except OSError as exc:
        sys.exit(f"rtmpmate-ctl: cannot read {args.config}: {exc.strerror}")
    if args.command == "check":
        print(f"{args.config}: ok")
        return
    if args.command == "sign":
        key = _stream_key(args.stream)
        loc = location_for(cfg.rtmp.location, f"/{key.app}")
        secret = args.secret or (loc.secret if loc is not None else "")
        if not secret:
            sys.exit(f"rtmpmate-ctl: no secret for /{key.app} (set one, or pass --secret)")
        expires = int(time.time()) + args.ttl
        path = stream_path(key.app, key.instance, key.name, DEFAULT_INSTANCE)
        print(f"expires={expires}&token={sign(secret, path, expires)}")
        return
    path = ctlsock.control_path(cfg.server.run_dir)
    request: dict[str, Any] = {"cmd": args.command}
    if args.command == "record":
        key = _stream_key(args.stream)
        request |= {"action": args.action, "dvr": args.dvr, "key": str(key)}
    elif args.command == "kick":
        request |= {"key": str(_stream_key(args.stream)), "what": args.what}
    try:
        answer = ctlsock.request(path, request, timeout_s=10.0)
    except (OSError, ValueError) as exc:
        sys.exit(f"rtmpmate-ctl: rtmpmate is not running (no answer on {path}: {exc})")
    if not answer.get("ok"):
        sys.exit(f"rtmpmate-ctl: {answer.get('error')}")
    if args.command == "record":
        print(f"{'recording to' if args.action == 'start' else 'stopped'} {answer.get('path')}")
        return
    if args.command == "kick":
        print(f"kicked {answer.get('kicked', 0)} session(s)")
        return
    if args.json:
        print(json.dumps(answer["status"], indent=2))
    else:
        print(format_status(answer["status"]))


if __name__ == "__main__":
    main()
