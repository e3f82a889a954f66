"""Configuration: etc/rtmpmate.toml -> frozen dataclasses, one per section.

The supervisor is the only process that reads the file. It ships the raw TOML mapping to its
workers as JSON and each worker calls parse_config() on it, so every check lives here and needs
nothing but the mapping. Key names and defaults are the seed's; attribute names add a unit suffix
where the seed's unit is implicit (`timeout` -> `idle_timeout_s`, `max_size` -> `max_size_bytes`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar, get_args
from urllib.parse import urlsplit

import tomli_w

from control.access import parse_networks

if TYPE_CHECKING:
    import os

LogLevel = Literal["debug", "info", "warning", "error"]
UpstreamFlag = Literal["normal", "backup", "down"]
DvrName = Literal["DVR_FLV", "DVR_FMP4"]
DvrMode = Literal[
    "audio", "video", "all", "autoAudio", "autoVideo", "auto", "keyframe", "advanced", "manual",
    "off",
]  # fmt: skip
HttpHandler = Literal["http_file", "rtmp_control", "chat"]

# The literals' values, for validation; get_args keeps one spelling of each list.
LOG_LEVELS: Final[tuple[LogLevel, ...]] = get_args(LogLevel)
UPSTREAM_FLAGS: Final[tuple[UpstreamFlag, ...]] = get_args(UpstreamFlag)
HookFailure = Literal["refuse", "allow"]
HookFormat = Literal["json", "form"]
DVR_NAMES: Final[tuple[DvrName, ...]] = get_args(DvrName)
HOOK_FAILURES: Final[tuple[HookFailure, ...]] = get_args(HookFailure)
HOOK_FORMATS: Final[tuple[HookFormat, ...]] = get_args(HookFormat)
DVR_MODES: Final[tuple[DvrMode, ...]] = get_args(DvrMode)
HTTP_HANDLERS: Final[tuple[HttpHandler, ...]] = get_args(HttpHandler)

ANY_HOST: Final = "0.0.0.0"
# The seed's floor: smaller chunk sizes are raised to it, not rejected.
MIN_CHUNK_SIZE: Final = 128
# RTMP message lengths are 24-bit, so a chunk can never usefully be larger.
MAX_CHUNK_SIZE: Final = 0xFFFFFF
# Keys only a chat location understands; anywhere else they are almost surely a mistake.
CHAT_KEYS: Final = ("protocol", "query", "on_connect", "on_control", "visitor", "group", "user")


@dataclass(frozen=True, slots=True)
class Listen:
    """Where a server binds. Port 0 asks the OS for a free port (tests use it)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """[server]: process layout. A relative run_dir is relative to the current directory."""

    ingest_workers: int = 0  # 0 = one per CPU core
    egress_workers: int = 0  # 0 = one per CPU core
    run_dir: str = "run"  # ipc sockets and the control socket
    log_level: LogLevel = "info"
    # Bounds per worker process; over one, a new client is closed at once, with a log line.
    max_connections: int = 16384  # per ingest or egress worker, every protocol together
    max_connections_per_ip: int = 4096  # per worker and client address
    max_streams: int = 1024  # live streams on the bus; another publish is refused
    # Time a new client has for the RTMP handshake, its first RTSP request or its HTTP head.
    handshake_timeout_s: float = 10.0
    # True: TCP_NODELAY on players' sockets all along. False (nginx-rtmp's and SRS's way):
    # once a player's start (headers, GOP) is out, its media goes with Nagle's algorithm.
    tcp_nodelay: bool = False
    # Live HTTP and WebSocket players (FLV, fMP4) an ingest worker serves itself, of the
    # streams published on it: the egress worker that admitted one passes its connection
    # over, and the stream's frames reach it without crossing the bus. Past this many,
    # egress workers serve them (more cores for one popular stream); 0 = egress always.
    publisher_http_players: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """[bus]: the ZeroMQ proxy. An empty TCP endpoint keeps that side on ipc:// only."""

    frontend_tcp: str = ""  # XSUB side, where publishers connect
    backend_tcp: str = ""  # XPUB side, where subscribers connect
    hwm: int = 10000  # high-water mark, messages


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """One [[upstream]] server; servers sharing a name form one weighted group."""

    name: str
    address: str
    port: int
    flag: UpstreamFlag = "normal"
    weight: int = 5
    timeout_s: float = 5.0
    max_fails: int = 0  # 0 = never marked down


@dataclass(frozen=True, slots=True, kw_only=True)
class DvrConfig:
    """One [[rtmp.location.dvr]] recorder. The three limits are 0 = unlimited."""

    id: str
    name: DvrName
    mode: DvrMode = "off"  # "off" = live only, nothing written
    directory: str = ""  # may use $(app), $(instance) and strftime formats
    file: str = "%s"  # %s = stream name; a folder name for DVR_FMP4
    unique: bool = False
    append: bool = False
    max_size_bytes: int = 0
    max_time_ms: int = 0
    max_frames: int = 0
    on_record: tuple[str, ...] = ()
    on_record_done: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RtmpLocationConfig:
    """One [[rtmp.location]]; its pattern is matched against "/" + app."""

    pattern: str = "/"
    handler: str = ""
    on_connect: tuple[str, ...] = ()
    on_publish: tuple[str, ...] = ()
    on_publish_done: tuple[str, ...] = ()
    on_play: tuple[str, ...] = ()
    on_play_done: tuple[str, ...] = ()
    on_record: tuple[str, ...] = ()
    on_record_done: tuple[str, ...] = ()
    hook_timeout_s: float = 5.0
    hook_failure: HookFailure = "refuse"  # what a hook that fails or times out decides
    hook_format: HookFormat = "json"
    secret: str = ""  # HMAC key of signed URLs (control.access)
    signed: tuple[str, ...] = ()  # "publish" and/or "play": these need a signed URL
    allow_publish: tuple[str, ...] = ()  # CIDR blocks
    deny_publish: tuple[str, ...] = ()
    allow_play: tuple[str, ...] = ()
    deny_play: tuple[str, ...] = ()
    dvr: tuple[DvrConfig, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RtmpConfig:
    listen: Listen = Listen(ANY_HOST, 1935)
    idle_timeout_s: float = 65.0
    chunk_size_bytes: int = 4096
    cache_frames: int = 512
    location: tuple[RtmpLocationConfig, ...] = (RtmpLocationConfig(),)


@dataclass(frozen=True, slots=True, kw_only=True)
class RtspConfig:
    listen: Listen = Listen(ANY_HOST, 554)
    idle_timeout_s: float = 65.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatGroupConfig:
    maximum: int = 0  # groups per room, 0 = unlimited
    capacity: int = 0  # users per group, 0 = unlimited


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatUserConfig:
    period_s: float = 0.0  # between online-count pushes, 0 = never


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLocationConfig:
    """One [[http.location]]. The parser defaults cache_frames to 32 for chat (messages)."""

    pattern: str = "/"
    handler: HttpHandler
    cache_frames: int = 512
    protocol: str = ""  # Sec-WebSocket-Protocol to answer
    query: str = ""  # sqlite3 message store path
    on_connect: tuple[str, ...] = ()
    on_control: tuple[str, ...] = ()
    visitor: bool = False
    group: ChatGroupConfig = ChatGroupConfig()
    user: ChatUserConfig = ChatUserConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    listen: Listen = Listen(ANY_HOST, 80)
    idle_timeout_s: float = 65.0
    # The control API (rtmp_control, /api/streams) answers clients in control_allow (the
    # host's own addresses by default) or, when a token is set, any client that sends
    # "Authorization: Bearer TOKEN".
    control_token: str = ""
    control_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # An HLS or DASH player that fetched nothing for this long has left (on_play_done).
    play_timeout_s: float = 30.0
    root: str = "www"
    cors: str = ""  # comma-separated origins, "*" = all, "" = none
    server_name: str = ""  # regex mapping a sub-domain to a sub-folder
    location: tuple[HttpLocationConfig, ...] = (HttpLocationConfig(handler="http_file"),)

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o for part in self.cors.split(",") if (o := part.strip()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    bus: BusConfig = BusConfig()
    upstream: tuple[UpstreamConfig, ...] = ()
    rtmp: RtmpConfig = RtmpConfig()
    rtsp: RtspConfig = RtspConfig()
    http: HttpConfig = HttpConfig()
    # Where it came from is not part of what it says, so equality ignores it.
    source: str = field(default="<mapping>", compare=False)


class ConfigError(Exception):
    """A config that must not be started with; str() reads "file:line: key.path: why"."""

    def __init__(
        self, message: str, *, key_path: str = "", line: int | None = None, source: str = ""
    ) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.key_path = key_path
        self.line = line
        self.source = source


# --- validation ---------------------------------------------------------------------------------

T = TypeVar("T")
S = TypeVar("S", bound=str)


class _Invalid(Exception):
    """A failed check, raised before the line number and source are known."""

    def __init__(self, key_path: str, reason: str, *, message: str | None = None) -> None:
        super().__init__(key_path, reason)
        self.key_path = key_path
        self.message = message or (f"{key_path}: {reason}" if key_path else reason)


_ABSENT: Final = object()
_TCP_RE: Final = re.compile(r"tcp://(\*|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")
_LISTEN_RE: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]*)):(?P<port>[0-9]{1,5})"
)


def _show(value: object) -> str:
    """A value as the TOML author wrote it, short enough for one log line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...", ensure_ascii=False)
    if isinstance(value, int):  # bounded: str() of a huge int raises ValueError
        return str(value) if value.bit_length() <= 128 else "a huge integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    return "an array" if isinstance(value, list | tuple) else type(value).__name__


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _Table:
    """One table being read: typed getters that remember which keys are known.

    A default of `...` marks a required key.
    """

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise _Invalid(path, f"expected a table, got {_show(data)}")
        self.data: Mapping[object, object] = data
        self.path = path
        self.known: list[str] = []

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, reason: str) -> _Invalid:
        return _Invalid(self.sub(key), reason)

    def _raw(self, key: str) -> object:
        self.known.append(key)
        return self.data.get(key, _ABSENT)

    def _value(self, key: str, default: T | EllipsisType, kind: type[T], expected: str) -> T:
        raw = self._raw(key)
        if raw is _ABSENT:
            if isinstance(default, EllipsisType):
                raise self.error(key, "missing required key")
            return default
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw) if raw.bit_length() < 1000 else math.inf  # `timeout = 5` is fine
        if isinstance(raw, kind) and (kind is bool or not isinstance(raw, bool)):
            return raw  # TOML true is not the integer 1
        raise self.error(key, f"expected {expected}, got {_show(raw)}")

    def string(self, key: str, default: str | EllipsisType = ..., *, nonempty: bool = False) -> str:
        value = self._value(key, default, str, "a string")
        if nonempty and not value:
            raise self.error(key, "must not be empty")
        return value

    def integer(
        self, key: str, default: int | EllipsisType = ..., *, lo: int = 0, hi: int | None = None
    ) -> int:
        value = self._value(key, default, int, "an integer")
        if value < lo or (hi is not None and value > hi):
            bound = f"at least {lo}" if value < lo else f"at most {hi}"
            raise self.error(key, f"must be {bound}, got {_show(value)}")
        return value

    def seconds(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self._value(key, default, float, "a number")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "greater than 0" if positive else "at least 0"
            raise self.error(key, f"must be a finite number {bound}, got {_show(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._value(key, default, bool, "true or false")

    def choice(self, key: str, choices: tuple[S, ...], default: S | EllipsisType = ...) -> S:
        expected = "one of " + ", ".join(json.dumps(c) for c in choices)
        value = self._value(key, default, str, expected)
        for choice in choices:  # returns the typed literal, not the raw string
            if value == choice:
                return choice
        raise self.error(key, f"expected {expected}, got {_show(value)}")

    def strings(self, key: str, check: Callable[[str], str | None] | None = None, *,
                default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """An array of strings; `check` says what is wrong with one, if anything."""
        raw = self._raw(key)
        if raw is _ABSENT:
            return default
        if not isinstance(raw, list | tuple):
            raise self.error(key, f"expected an array of strings, got {_show(raw)}")
        for i, item in enumerate(raw):
            problem = f"expected a string, got {_show(item)}" if not isinstance(item, str) else (
                check(item) if check is not None else None)
            if problem:
                raise _Invalid(f"{self.sub(key)}[{i}]", problem)
        return tuple(raw)

    def hooks(self, key: str) -> tuple[str, ...]:
        """Event-hook URLs: one string or an array of strings."""
        raw = self._raw(key)
        if raw is _ABSENT:
            return ()
        if isinstance(raw, str):
            raw = [raw]
            paths = [self.sub(key)]
        elif isinstance(raw, list | tuple):
            paths = [f"{self.sub(key)}[{i}]" for i in range(len(raw))]
        else:
            raise self.error(key, f"expected a URL or an array of URLs, got {_show(raw)}")
        for path, url in zip(paths, raw, strict=True):
            if not _is_http_url(url):
                raise _Invalid(path, f"expected an http:// or https:// URL, got {_show(url)}")
        return tuple(raw)

    def listen(self, key: str, default_port: int) -> Listen:
        raw = self._raw(key)
        if raw is _ABSENT:
            return Listen(ANY_HOST, default_port)
        if isinstance(raw, int) and not isinstance(raw, bool):
            host, port = ANY_HOST, raw
        elif isinstance(raw, str) and (m := _LISTEN_RE.fullmatch(raw)):
            host, port = m["v6"] or m["host"] or ANY_HOST, int(m["port"])
        else:
            forms = '"HOST:PORT", "[V6]:PORT" or ":PORT"'
            raise self.error(key, f"expected a port number, {forms}, got {_show(raw)}")
        if not 0 <= port <= 65535:
            raise self.error(key, f"port must be 0..65535 (0 = any free port), got {_show(raw)}")
        return Listen(host, port)

    def tcp(self, key: str) -> str:
        value = self.string(key, "")
        m = _TCP_RE.fullmatch(value)
        if value and not (m and 1 <= int(m[2]) <= 65535):
            raise self.error(key, f'expected "tcp://HOST:PORT", got {_show(value)}')
        return value

    def pattern(self) -> str:
        value = self.string("pattern", "/")
        if not value.startswith("/"):
            raise self.error("pattern", f'must start with "/", got {_show(value)}')
        return value

    def regex(self, key: str) -> str:
        value = self.string(key, "")
        try:
            re.compile(value)
        except (re.error, OverflowError, RecursionError) as exc:
            raise self.error(key, f"not a valid regular expression: {exc}") from None
        return value

    def reject(self, key: str, reason: str) -> None:
        if key in self.data:
            raise self.error(key, reason)

    def table(self, key: str, build: Callable[[_Table], T]) -> T:
        raw = self._raw(key)
        return _read(_Table({} if raw is _ABSENT else raw, self.sub(key)), build)

    def tables(
        self, key: str, build: Callable[[_Table], T], default: tuple[T, ...]
    ) -> tuple[T, ...]:
        raw = self._raw(key)
        if raw is _ABSENT:
            return default
        if not isinstance(raw, list | tuple):
            raise self.error(key, f"expected an array of tables, got {_show(raw)}")
        path = self.sub(key)
        return tuple(_read(_Table(item, f"{path}[{i}]"), build) for i, item in enumerate(raw))

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                path = self.sub(str(key))
                close = difflib.get_close_matches(str(key), self.known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise _Invalid(path, "unknown key", message=f"unknown key {path}{hint}")


def _read(table: _Table, build: Callable[[_Table], T]) -> T:
    value = build(table)
    table.finish()  # after build, so every key it knows has been looked at
    return value


def _server(t: _Table) -> ServerConfig:
    return ServerConfig(
        ingest_workers=t.integer("ingest_workers", 0),
        egress_workers=t.integer("egress_workers", 0),
        run_dir=t.string("run_dir", "run", nonempty=True),
        log_level=t.choice("log_level", LOG_LEVELS, "info"),
        max_connections=t.integer("max_connections", 16384, lo=1),
        max_connections_per_ip=t.integer("max_connections_per_ip", 4096, lo=1),
        max_streams=t.integer("max_streams", 1024, lo=1),
        handshake_timeout_s=t.seconds("handshake_timeout", 10.0),
        tcp_nodelay=t.boolean("tcp_nodelay", False),
        publisher_http_players=t.integer("publisher_http_players", 1000, lo=0),
    )


def _bus(t: _Table) -> BusConfig:
    return BusConfig(
        frontend_tcp=t.tcp("frontend_tcp"),
        backend_tcp=t.tcp("backend_tcp"),
        hwm=t.integer("hwm", 10000, lo=100),
    )


def _upstream(t: _Table) -> UpstreamConfig:
    return UpstreamConfig(
        name=t.string("name", nonempty=True),
        address=t.string("address", nonempty=True),
        port=t.integer("port", lo=1, hi=65535),
        flag=t.choice("flag", UPSTREAM_FLAGS, "normal"),
        weight=t.integer("weight", 5, lo=1),
        timeout_s=t.seconds("timeout", 5.0),
        max_fails=t.integer("max_fails", 0),
    )


def _dvr(t: _Table) -> DvrConfig:
    return DvrConfig(
        id=t.string("id", nonempty=True),
        name=t.choice("name", DVR_NAMES),
        mode=t.choice("mode", DVR_MODES, "off"),
        directory=t.string("directory", ""),
        file=t.string("file", "%s"),
        unique=t.boolean("unique", False),
        append=t.boolean("append", False),
        max_size_bytes=t.integer("max_size", 0),
        max_time_ms=t.integer("max_time", 0),
        max_frames=t.integer("max_frames", 0),
        on_record=t.hooks("on_record"),
        on_record_done=t.hooks("on_record_done"),
    )


def _rtmp_location(t: _Table) -> RtmpLocationConfig:
    t.reject("proxy", "not supported yet (origin/edge proxying is a later feature)")
    loc = RtmpLocationConfig(
        pattern=t.pattern(),
        handler=t.string("handler", ""),
        on_connect=t.hooks("on_connect"),
        on_publish=t.hooks("on_publish"),
        on_publish_done=t.hooks("on_publish_done"),
        on_play=t.hooks("on_play"),
        on_play_done=t.hooks("on_play_done"),
        on_record=t.hooks("on_record"),
        on_record_done=t.hooks("on_record_done"),
        hook_timeout_s=t.seconds("hook_timeout", 5.0),
        hook_failure=t.choice("hook_failure", HOOK_FAILURES, "refuse"),
        hook_format=t.choice("hook_format", HOOK_FORMATS, "json"),
        secret=t.string("secret", ""),
        signed=t.strings("signed", lambda v: None if v in ("publish", "play") else
                         f"expected \"publish\" or \"play\", got {_show(v)}"),
        allow_publish=t.strings("allow_publish", _cidr_problem),
        deny_publish=t.strings("deny_publish", _cidr_problem),
        allow_play=t.strings("allow_play", _cidr_problem),
        deny_play=t.strings("deny_play", _cidr_problem),
        dvr=t.tables("dvr", _dvr, ()),
    )
    if loc.signed and not loc.secret:
        raise t.error("secret", "signed URLs need a secret")
    first: dict[str, int] = {}
    for i, dvr in enumerate(loc.dvr):  # rtmp_control addresses a recorder by its id
        if (j := first.setdefault(dvr.id, i)) != i:
            path = f"{t.sub('dvr')}[{i}].id"
            raise _Invalid(path, f"duplicate id {_show(dvr.id)} (see dvr[{j}])")
    return loc


def _rtmp(t: _Table) -> RtmpConfig:
    return RtmpConfig(
        listen=t.listen("listen", 1935),
        idle_timeout_s=t.seconds("timeout", 65.0),
        chunk_size_bytes=max(
            MIN_CHUNK_SIZE, t.integer("chunk_size", 4096, lo=1, hi=MAX_CHUNK_SIZE)
        ),
        cache_frames=t.integer("cache", 512, lo=1),
        location=t.tables("location", _rtmp_location, RtmpConfig().location),
    )


def _rtsp(t: _Table) -> RtspConfig:
    return RtspConfig(listen=t.listen("listen", 554), idle_timeout_s=t.seconds("timeout", 65.0))


def _chat_group(t: _Table) -> ChatGroupConfig:
    return ChatGroupConfig(maximum=t.integer("maximum", 0), capacity=t.integer("capacity", 0))


def _chat_user(t: _Table) -> ChatUserConfig:
    return ChatUserConfig(period_s=t.seconds("period", 0.0, positive=False))


def _http_location(t: _Table) -> HttpLocationConfig:
    pattern = t.pattern()
    handler = t.choice("handler", HTTP_HANDLERS)
    cache_frames = t.integer("cache", 32 if handler == "chat" else 512, lo=1)
    if handler != "chat":
        for key in CHAT_KEYS:
            t.reject(key, f'only allowed when handler = "chat" (this one is {_show(handler)})')
        return HttpLocationConfig(pattern=pattern, handler=handler, cache_frames=cache_frames)
    return HttpLocationConfig(
        pattern=pattern,
        handler=handler,
        cache_frames=cache_frames,
        protocol=t.string("protocol", ""),
        query=t.string("query", ""),
        on_connect=t.hooks("on_connect"),
        on_control=t.hooks("on_control"),
        visitor=t.boolean("visitor", False),
        group=t.table("group", _chat_group),
        user=t.table("user", _chat_user),
    )


def _http(t: _Table) -> HttpConfig:
    return HttpConfig(
        listen=t.listen("listen", 80),
        idle_timeout_s=t.seconds("timeout", 65.0),
        root=t.string("root", "www"),
        cors=t.string("cors", ""),
        server_name=t.regex("server_name"),
        control_token=t.string("control_token", ""),
        control_allow=t.strings("control_allow", _cidr_problem,
                                default=HttpConfig().control_allow),
        play_timeout_s=t.seconds("play_timeout", 30.0),
        location=t.tables("location", _http_location, HttpConfig().location),
    )


def parse_config(
    data: Mapping[str, object], *, source: str = "<mapping>", text: str | None = None
) -> Config:
    """Validate a raw mapping (TOML, or TOML via JSON). `text` lets errors carry line numbers."""

    def build(t: _Table) -> Config:
        return Config(
            server=t.table("server", _server),
            bus=t.table("bus", _bus),
            upstream=t.tables("upstream", _upstream, ()),
            rtmp=t.table("rtmp", _rtmp),
            rtsp=t.table("rtsp", _rtsp),
            http=t.table("http", _http),
            source=source,
        )

    try:
        return _read(_Table(data, ""), build)
    except _Invalid as exc:
        line = None if text is None else locate_line(text, exc.key_path)
        raise ConfigError(exc.message, key_path=exc.key_path, line=line, source=source) from None


def _loads(text: str, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = int(m[1]) if m else None
        raise ConfigError(f"invalid TOML: {exc}", line=line, source=source) from None


def _read_text(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid TOML: not UTF-8 ({exc.reason})", source=str(path)) from None


def load_raw(path: str | os.PathLike[str]) -> dict[str, object]:
    """The file as a plain mapping (what the supervisor ships to workers)."""
    return _loads(_read_text(path), str(path))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a file; OSError if it cannot be read, ConfigError if it is wrong."""
    text = _read_text(path)
    return parse_config(_loads(text, str(path)), source=str(path), text=text)


# --- line numbers -------------------------------------------------------------------------------
# tomllib reports no positions, so find a key's line by scanning the text. Best effort: headers,
# array-of-tables counts and `key =` lines are understood; inline tables are not.

_KEY: Final = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_DOTTED: Final = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_HEADER: Final = re.compile(rf"\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER: Final = re.compile(rf"\s*\[\s*({_DOTTED})\s*\]")
_KEY_LINE: Final = re.compile(rf"\s*({_DOTTED})\s*=")


def _segments(dotted: str) -> list[str]:
    return [s.strip("\"'") for s in re.findall(_KEY, dotted)]


def _line_index(text: str) -> dict[str, int]:
    """Key path ("rtmp.location[0].dvr[1].id") -> first line defining it."""
    lines: dict[str, int] = {}
    latest: dict[str, int] = {}  # array-of-tables path -> index of its latest element

    def concrete(segments: list[str]) -> str:
        path = ""
        for seg in segments:
            path = f"{path}.{seg}" if path else seg
            if path in latest:
                path += f"[{latest[path]}]"
        return path

    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        if m := _ARRAY_HEADER.match(line):
            *parents, last = _segments(m[1])
            base = f"{concrete(parents)}.{last}" if parents else last
            latest[base] = latest.get(base, -1) + 1
            table = path = f"{base}[{latest[base]}]"
        elif m := _TABLE_HEADER.match(line):
            table = path = concrete(_segments(m[1]))
        elif m := _KEY_LINE.match(line):
            key = ".".join(_segments(m[1]))
            path = f"{table}.{key}" if table else key
        else:
            continue
        lines.setdefault(path, number)
    return lines


def locate_line(text: str, key_path: str) -> int | None:
    """The line of key_path in text, else of its nearest enclosing table, else of the bare key."""
    lines = _line_index(text)
    path = key_path
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition("[")[0] if path.endswith("]") else path.rpartition(".")[0]
    bare = re.split(r"[.\[]", key_path.rpartition(".")[2])[0]
    pattern = re.compile(rf"(?:^|[\s{{,]){re.escape(bare)}\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        if bare and pattern.search(line):
            return number
    return None


# --- defaults and helpers -----------------------------------------------------------------------


def _cidr_problem(text: str) -> str | None:
    try:
        parse_networks((text,))
    except ValueError:
        return f"expected a network such as 10.0.0.0/8 or ::1, got {_show(text)}"
    return None


def _dvr_doc(id: str, name: DvrName, directory: str, file: str) -> dict[str, object]:
    return {
        "id": id, "name": name, "mode": "off", "directory": directory, "file": file,
        "unique": False, "append": False, "max_size": 0, "max_time": 0, "max_frames": 0,
        "on_record": [], "on_record_done": [],
    }  # fmt: skip


def default_document() -> dict[str, object]:
    """The out-of-the-box configuration (what etc/rtmpmate.toml says), ready for tomli_w."""
    hooks = ("on_connect", "on_publish", "on_publish_done", "on_play", "on_play_done",
             "on_record", "on_record_done")  # fmt: skip
    return {
        "server": {"ingest_workers": 0, "egress_workers": 0, "run_dir": "run", "log_level": "info"},
        "bus": {
            "frontend_tcp": "tcp://127.0.0.1:5556",
            "backend_tcp": "tcp://127.0.0.1:5557",
            "hwm": 10000,
        },
        "upstream": [],
        "rtmp": {
            "listen": 1935, "timeout": 65, "chunk_size": 4096, "cache": 512,
            "location": [{
                "pattern": "/",
                "handler": "",
                **{hook: [] for hook in hooks},
                "dvr": [
                    _dvr_doc("dvr1", "DVR_FLV", "var/dvr/$(app)/$(instance)", "%s.flv"),
                    _dvr_doc("fmp4", "DVR_FMP4", "var/fmp4/$(app)/$(instance)", "%s"),
                ],
            }],
        },
        "rtsp": {"listen": 8554, "timeout": 65},
        "http": {
            "listen": 8080, "timeout": 65, "root": "www", "cors": "", "server_name": "",
            "location": [
                {"pattern": "/rtmp/control", "handler": "rtmp_control"},
                {"pattern": "/chat", "handler": "chat", "cache": 32, "protocol": "", "query": "",
                 "on_connect": [], "on_control": [], "visitor": False,
                 "group": {"maximum": 0, "capacity": 0}, "user": {"period": 0}},
                {"pattern": "/", "handler": "http_file", "cache": 512},
            ],
        },
    }


def dump_default(path: str | os.PathLike[str]) -> None:
    """Write default_document() to path; FileExistsError rather than overwrite a config."""
    with open(path, "xb") as f:
        tomli_w.dump(default_document(), f)


class _Routed(Protocol):
    @property
    def pattern(self) -> str: ...


L = TypeVar("L", bound=_Routed)


def location_for(locations: Iterable[L], path: str) -> L | None:
    """The location whose pattern is the longest prefix of path, on "/" boundaries."""
    best: L | None = None
    for loc in locations:
        p = loc.pattern
        if not (path == p or (path.startswith(p) and (p.endswith("/") or path[len(p)] == "/"))):
            continue  # "/live" serves "/live/x" but not "/livestream"
        if best is None or len(p) > len(best.pattern):
            best = loc
    return best
