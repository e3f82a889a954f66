from __future__ import annotations

import contextlib
import functools
import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.config import (
    MAX_CHUNK_SIZE,
    Config,
    ConfigError,
    DvrConfig,
    HttpConfig,
    HttpLocationConfig,
    Listen,
    RtmpLocationConfig,
    default_document,
    dump_default,
    load_config,
    load_raw,
    locate_line,
    location_for,
    parse_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ETC = Path(__file__).resolve().parents[2] / "etc" / "rtmpmate.toml"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "x.toml"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


# --- the default configuration --------------------------------------------------------------


def test_etc_file_says_what_default_document_says() -> None:
    from_file = load_config(ETC)
    assert from_file.source == str(ETC)
    assert from_file == parse_config(default_document(), source="defaults")  # source not compared


def test_default_document_values() -> None:
    cfg = parse_config(default_document())
    assert cfg.rtmp.listen == Listen("0.0.0.0", 1935)
    assert cfg.rtsp.listen == Listen("0.0.0.0", 8554)
    assert cfg.http.listen == Listen("0.0.0.0", 8080)
    assert cfg.bus.frontend_tcp == "tcp://127.0.0.1:5556"
    assert cfg.bus.backend_tcp == "tcp://127.0.0.1:5557"
    (loc,) = cfg.rtmp.location
    assert [(d.id, d.name, d.mode) for d in loc.dvr] == [
        ("dvr1", "DVR_FLV", "off"),
        ("fmp4", "DVR_FMP4", "off"),
    ]
    assert [(h.pattern, h.handler, h.cache_frames) for h in cfg.http.location] == [
        ("/rtmp/control", "rtmp_control", 512),
        ("/chat", "chat", 32),
        ("/", "http_file", 512),
    ]


def test_empty_mapping_gives_the_seed_defaults() -> None:
    cfg = parse_config({})
    assert cfg == Config()
    assert cfg.source == "<mapping>"
    assert (cfg.rtsp.listen.port, cfg.http.listen.port) == (554, 80)
    assert (cfg.rtmp.chunk_size_bytes, cfg.rtmp.cache_frames) == (4096, 512)
    assert cfg.rtmp.location == (RtmpLocationConfig(pattern="/"),)


def test_dump_default_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "rtmpmate.toml"
    dump_default(path)
    assert load_config(path) == parse_config(default_document())


def test_dump_default_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "rtmpmate.toml"
    path.write_text("# mine\n")
    with pytest.raises(FileExistsError):
        dump_default(path)
    assert path.read_text() == "# mine\n"


def test_raw_mapping_survives_json_for_the_workers() -> None:
    raw = load_raw(ETC)
    assert parse_config(json.loads(json.dumps(raw))) == load_config(ETC)


# --- errors: message shape, key path, line ---------------------------------------------------


def test_unknown_top_level_key(write: Callable[[str], Path]) -> None:
    path = write("""
        [server]
        log_level = "info"

        [rtmpp]
        listen = 1935
    """)
    err = error_of(path)
    assert str(err) == f"{path}:4: unknown key rtmpp (did you mean rtmp?)"
    assert (err.key_path, err.line, err.source) == ("rtmpp", 4, str(path))


def test_unknown_key_suggests_the_close_one(write: Callable[[str], Path]) -> None:
    path = write("""
        [rtmp]
        chunksize = 4096
    """)
    assert str(error_of(path)) == f"{path}:2: unknown key rtmp.chunksize (did you mean chunk_size?)"


def test_unknown_key_without_a_close_one(write: Callable[[str], Path]) -> None:
    path = write("""
        [bus]
        zebra = 1
    """)
    assert str(error_of(path)) == f"{path}:2: unknown key bus.zebra"


def test_unknown_key_in_second_dvr_of_second_location(write: Callable[[str], Path]) -> None:
    path = write("""
        [rtmp]
        chunk_size = 4096

        [[rtmp.location]]
        pattern = "/"

        [[rtmp.location.dvr]]
        id = "a"
        name = "DVR_FLV"

        [[rtmp.location.dvr]]
        id = "b"
        name = "DVR_FMP4"

        [[rtmp.location]]
        pattern = "/live"

        [[rtmp.location.dvr]]
        id = "a"
        name = "DVR_FLV"
        max_size = 1

        [[rtmp.location.dvr]]
        id = "b"
        name = "DVR_FLV"
        max_size = 2
        max_sise = 3
    """)
    err = error_of(path)
    assert str(err) == (
        f"{path}:27: unknown key rtmp.location[1].dvr[1].max_sise (did you mean max_size?)"
    )
    assert err.key_path == "rtmp.location[1].dvr[1].max_sise"
    assert err.line == 27


def test_locator_counts_array_tables_rather_than_taking_the_first_match() -> None:
    text = textwrap.dedent("""
        [[rtmp.location]]
        [[rtmp.location.dvr]]
        max_size = 1
        [[rtmp.location.dvr]]
        max_size = 2
        [[rtmp.location]]
        [[rtmp.location.dvr]]
        max_size = 3
        [[rtmp.location.dvr]]
        max_size = 4
        [rtmp.location.proxy]
        timeout = 1
    """).lstrip("\n")
    assert locate_line(text, "rtmp.location[0].dvr[1].max_size") == 5
    assert locate_line(text, "rtmp.location[1].dvr[0].max_size") == 8
    assert locate_line(text, "rtmp.location[1].dvr[1].max_size") == 10
    assert locate_line(text, "rtmp.location[1].proxy.timeout") == 12
    assert locate_line(text, "rtmp.location[1].dvr[1].id") == 9  # missing key: its table
    assert locate_line("x = { max_size = 1 }\n", "y.max_size") == 1  # bare-key fallback
    assert locate_line("a = 1\n", "b") is None


def test_missing_required_key_points_at_its_table(write: Callable[[str], Path]) -> None:
    path = write("""
        [[upstream]]
        name = "origin"
        address = "10.0.0.1"
        port = 1935

        [[upstream]]
        name = "origin"
        address = "10.0.0.2"
    """)
    assert str(error_of(path)) == f"{path}:6: upstream[1].port: missing required key"


def test_wrong_type_string_for_integer(write: Callable[[str], Path]) -> None:
    path = write("""
        [rtmp]
        listen = 1935
        chunk_size = "big"
    """)
    err = error_of(path)
    assert str(err) == f'{path}:3: rtmp.chunk_size: expected an integer, got "big"'
    assert (err.key_path, err.line) == ("rtmp.chunk_size", 3)


def test_wrong_type_bool_is_not_an_integer(write: Callable[[str], Path]) -> None:
    path = write("""
        [rtmp]
        cache = true
    """)
    assert str(error_of(path)) == f"{path}:2: rtmp.cache: expected an integer, got true"


def test_integer_is_a_fine_number_but_bool_is_not() -> None:
    assert parse_config({"rtsp": {"timeout": 7}}).rtsp.idle_timeout_s == 7.0
    with pytest.raises(ConfigError, match=r"^<mapping>: rtsp.timeout: expected a number, got tru"):
        parse_config({"rtsp": {"timeout": True}})
    with pytest.raises(ConfigError, match=r"rtsp.timeout: must be a finite number greater than 0"):
        parse_config({"rtsp": {"timeout": 0}})


def test_tcp_nodelay_is_off_unless_asked() -> None:
    assert parse_config({}).server.tcp_nodelay is False
    assert parse_config({"server": {"tcp_nodelay": True}}).server.tcp_nodelay is True
    with pytest.raises(ConfigError, match=r"server.tcp_nodelay"):
        parse_config({"server": {"tcp_nodelay": 1}})


def test_chunk_size_below_the_seed_minimum_is_clamped() -> None:
    assert parse_config({"rtmp": {"chunk_size": 100}}).rtmp.chunk_size_bytes == 128
    assert parse_config({"rtmp": {"chunk_size": MAX_CHUNK_SIZE}}).rtmp.chunk_size_bytes == (
        MAX_CHUNK_SIZE
    )


def test_chunk_size_too_large(write: Callable[[str], Path]) -> None:
    path = write(f"""
        [rtmp]
        chunk_size = {2**31}
    """)
    assert str(error_of(path)) == (
        f"{path}:2: rtmp.chunk_size: must be at most 16777215, got 2147483648"
    )


def test_bad_flag_literal(write: Callable[[str], Path]) -> None:
    path = write("""
        [[upstream]]
        name = "origin"
        address = "10.0.0.1"
        port = 1935
        flag = "primary"
    """)
    assert str(error_of(path)) == (
        f'{path}:5: upstream[0].flag: expected one of "normal", "backup", "down", got "primary"'
    )


def test_bad_hook_url(write: Callable[[str], Path]) -> None:
    path = write("""
        [[rtmp.location]]
        on_connect = "https://auth.example/connect"
        on_publish = ["http://hooks.example/publish", "ftp://hooks.example/x"]
    """)
    err = error_of(path)
    assert str(err) == (
        f"{path}:3: rtmp.location[0].on_publish[1]: "
        'expected an http:// or https:// URL, got "ftp://hooks.example/x"'
    )


def test_hooks_accept_a_string_or_a_list() -> None:
    cfg = parse_config({"rtmp": {"location": [{"on_play": "http://h/play", "on_publish": [
        "http://h/a", "https://h:8443/b"]}]}})  # fmt: skip
    (loc,) = cfg.rtmp.location
    assert loc.on_play == ("http://h/play",)
    assert loc.on_publish == ("http://h/a", "https://h:8443/b")
    with pytest.raises(ConfigError, match=r"on_play: expected a URL or an array of URLs, got 5"):
        parse_config({"rtmp": {"location": [{"on_play": 5}]}})


def test_bad_regex_in_server_name(write: Callable[[str], Path]) -> None:
    path = write("""
        [http]
        server_name = "(live"
    """)
    assert str(error_of(path)) == (
        f"{path}:2: http.server_name: not a valid regular expression: "
        "missing ), unterminated subpattern at position 0"
    )


def test_chat_key_on_an_http_file_location(write: Callable[[str], Path]) -> None:
    path = write("""
        [[http.location]]
        pattern = "/chat"
        handler = "chat"
        visitor = true

        [[http.location]]
        pattern = "/"
        handler = "http_file"
        visitor = true
    """)
    assert str(error_of(path)) == (
        f'{path}:9: http.location[1].visitor: only allowed when handler = "chat" '
        '(this one is "http_file")'
    )


def test_chat_location() -> None:
    loc = {"pattern": "/chat", "handler": "chat", "group": {"maximum": 3}, "user": {"period": 5}}
    (chat,) = parse_config({"http": {"location": [loc]}}).http.location
    assert chat.cache_frames == 32  # the seed's chat default, not http_file's 512
    assert (chat.group.maximum, chat.group.capacity, chat.user.period_s) == (3, 0, 5.0)
    with pytest.raises(ConfigError, match=r"^<mapping>: unknown key http.location\[0\].group.max"):
        parse_config({"http": {"location": [{"handler": "chat", "group": {"max": 3}}]}})


def test_proxy_is_not_supported_yet(write: Callable[[str], Path]) -> None:
    path = write("""
        [[rtmp.location]]
        pattern = "/"

        [rtmp.location.proxy]
        address = "10.0.0.1"
    """)
    assert str(error_of(path)) == (
        f"{path}:4: rtmp.location[0].proxy: not supported yet "
        "(origin/edge proxying is a later feature)"
    )


def test_duplicate_dvr_id() -> None:
    dvr = [{"id": "a", "name": "DVR_FLV"}, {"id": "a", "name": "DVR_FMP4"}]
    with pytest.raises(ConfigError) as info:
        parse_config({"rtmp": {"location": [{"dvr": dvr}]}})
    assert str(info.value) == '<mapping>: rtmp.location[0].dvr[1].id: duplicate id "a" (see dvr[0])'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:1935", Listen("127.0.0.1", 1935)),
        (":1935", Listen("0.0.0.0", 1935)),
        (1935, Listen("0.0.0.0", 1935)),
        ("[::1]:1935", Listen("::1", 1935)),
        ("localhost:0", Listen("localhost", 0)),
    ],
)
def test_listen_forms(value: object, expected: Listen) -> None:
    assert parse_config({"rtmp": {"listen": value}}).rtmp.listen == expected


@pytest.mark.parametrize("value", ["x", "1935", "::1:1935", "host:", True, 70000, "h:70000"])
def test_listen_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^<mapping>: rtmp.listen: ") as info:
        parse_config({"rtmp": {"listen": value}})
    assert info.value.key_path == "rtmp.listen"


def test_listen_error_message(write: Callable[[str], Path]) -> None:
    path = write("""
        [http]
        listen = "x"
    """)
    assert str(error_of(path)) == (
        f'{path}:2: http.listen: expected a port number, "HOST:PORT", "[V6]:PORT" or ":PORT", '
        'got "x"'
    )


@pytest.mark.parametrize("value", ["127.0.0.1:5556", "tcp://host", "tcp://h:0", "ipc://x"])
def test_bus_endpoint_must_be_tcp(value: str) -> None:
    with pytest.raises(ConfigError, match=r"bus.backend_tcp: expected \"tcp://HOST:PORT\""):
        parse_config({"bus": {"backend_tcp": value}})


def test_toml_syntax_error_has_its_line(write: Callable[[str], Path]) -> None:
    path = write("""
        [rtmp]
        chunk_size = 4096
        cache = ?
    """)
    err = error_of(path)
    assert err.line == 3
    assert str(err) == f"{path}:3: invalid TOML: Invalid value (at line 3, column 9)"
    with pytest.raises(ConfigError, match=r":3: invalid TOML"):
        load_raw(path)


def test_error_without_text_has_no_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"log_level": "loud"}}, source="worker")
    assert info.value.line is None
    assert str(info.value) == (
        'worker: server.log_level: expected one of "debug", "info", "warning", "error", '
        'got "loud"'
    )


# --- helpers ---------------------------------------------------------------------------------


def test_location_for_longest_prefix_on_segment_boundaries() -> None:
    root, live, chat = (
        HttpLocationConfig(pattern=p, handler="http_file") for p in ("/", "/live", "/chat/")
    )
    locs = (root, live, chat)
    assert location_for(locs, "/live") is live
    assert location_for(locs, "/live/sample.flv") is live
    assert location_for(locs, "/livestream") is root
    assert location_for(locs, "/chat/live/sample") is chat
    assert location_for((live,), "/other") is None
    assert location_for((), "/") is None


def test_cors_origins() -> None:
    assert HttpConfig().cors_origins == frozenset()
    assert HttpConfig(cors="*").cors_origins == {"*"}
    assert HttpConfig(cors=" https://a.example, https://b.example,").cors_origins == {
        "https://a.example",
        "https://b.example",
    }


def test_dataclasses_are_frozen() -> None:
    dvr = DvrConfig(id="a", name="DVR_FLV")
    with pytest.raises(AttributeError):
        dvr.id = "b"  # type: ignore[misc]


# --- junk never escapes as anything but ConfigError ------------------------------------------

KNOWN_KEYS = (
    "server", "bus", "upstream", "rtmp", "rtsp", "http", "location", "dvr", "proxy", "group",
    "user", "listen", "timeout", "cache", "chunk_size", "pattern", "handler", "on_publish", "id",
    "name", "mode", "max_size", "port", "flag", "weight", "hwm", "frontend_tcp", "server_name",
    "cors", "log_level", "visitor", "maximum", "period",
)  # fmt: skip
KEYS = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)
LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from(["/", "chat", "http_file", "DVR_FLV", "http://h/", ":0", "tcp://h:1", "("])
)  # fmt: skip
JUNK = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


def expect_config_error_only(data: Mapping[str, object], text: str | None = None) -> None:
    with contextlib.suppress(ConfigError):  # anything else escapes and fails the test
        parse_config(data, text=text)


@given(st.dictionaries(KEYS, JUNK, max_size=6), st.none() | st.text(max_size=200))
def test_junk_raises_only_config_error(data: dict[str, object], text: str | None) -> None:
    expect_config_error_only(data, text)


def setters(node: object) -> list[Callable[[object], None]]:
    """One setter for every value inside a raw document, however deep."""
    if isinstance(node, dict):
        items: list[tuple[Any, object]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    found: list[Callable[[object], None]] = []
    for key, child in items:
        found.append(functools.partial(node.__setitem__, key))
        found.extend(setters(child))
    return found


@given(st.data())
def test_junk_anywhere_in_the_default_document_raises_only_config_error(
    data: st.DataObject,
) -> None:
    doc = default_document()
    spots = setters(doc)
    spots[data.draw(st.integers(0, len(spots) - 1))](data.draw(JUNK))
    expect_config_error_only(doc)
    expect_config_error_only(json.loads(json.dumps(doc)))
