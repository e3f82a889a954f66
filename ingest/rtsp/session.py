"""The server side of one RTSP connection, sans-IO (RFC 2326, TCP-interleaved transport only).

Bytes go in with `receive_data`; events come out for what the shell decides (a publish, a
DESCRIBE, a PLAY) and the answers it gives go out with `data_to_send()`. A request that
waits for the shell's decision holds back the requests after it, so answers stay in order.

Publish: OPTIONS, ANNOUNCE (SDP), SETUP per media with `RTP/AVP/TCP;interleaved=`, RECORD,
then interleaved RTP/RTCP, TEARDOWN. Play: OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN.
GET_PARAMETER and SET_PARAMETER are keep-alives. UDP is answered 461.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from broker.packet import DEFAULT_INSTANCE, MediaPacket, StreamKey
from ingest.rtsp import message as msg
from ingest.rtsp.message import RtspProtocolError, RtspRequest
from ingest.rtsp.play import Packetizer, Player, PlayTrack, describe_sdp
from ingest.rtsp.publish import InTrack, MediaError, Publication
from ingest.rtsp.rtp import RtpError
from ingest.rtsp.sdp import SdpError, media_url, parse_sdp

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AnnounceRequested", "DescribeRequested", "MediaReceived", "PlayPaused",
           "PlayStarted", "PublishEnded", "RecordStarted", "RtspServerConnection",
           "SessionEvent", "Warning"]

PUBLIC: Final = ("OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, "
                 "GET_PARAMETER, SET_PARAMETER")
SESSION_TIMEOUT_S: Final = 60
SERVER: Final = "rtmpmate"
MAX_HELD_BYTES: Final = 1 << 20  # what a client may send on while a request waits
MAX_BAD_PACKETS: Final = 100  # unreadable RTP packets in a row before the connection goes


@dataclass(frozen=True, slots=True)
class AnnounceRequested:
    key: StreamKey
    query: str
    refused: tuple[str, ...]  # announced media left out, and why


@dataclass(frozen=True, slots=True)
class RecordStarted:
    key: StreamKey


@dataclass(frozen=True, slots=True)
class MediaReceived:
    packet: MediaPacket


@dataclass(frozen=True, slots=True)
class PublishEnded:
    key: StreamKey


@dataclass(frozen=True, slots=True)
class DescribeRequested:
    key: StreamKey
    query: str


@dataclass(frozen=True, slots=True)
class PlayStarted:
    key: StreamKey
    player: Player


@dataclass(frozen=True, slots=True)
class PlayPaused:
    key: StreamKey
    player: Player


@dataclass(frozen=True, slots=True)
class Warning:
    text: str


SessionEvent = (AnnounceRequested | RecordStarted | MediaReceived | PublishEnded
                | DescribeRequested | PlayStarted | PlayPaused | Warning)


class State(enum.Enum):
    INIT = "init"
    ANNOUNCED = "announced"  # publish: SDP taken, SETUPs come
    RECORDING = "recording"
    DESCRIBED = "described"  # play: SDP sent, SETUPs come
    PLAYING = "playing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Pending:
    request: RtspRequest
    key: StreamKey


def stream_key(url: str) -> tuple[StreamKey, str]:
    """The stream key and query of an RTSP URL: /app/name or /app/instance/name."""
    parts = urlsplit(url)
    names = [unquote(p) for p in parts.path.split("/") if p]
    try:
        if len(names) == 2:
            return StreamKey(names[0], DEFAULT_INSTANCE, names[1]), parts.query
        if len(names) == 3:
            return StreamKey(names[0], names[1], names[2]), parts.query
    except ValueError:
        pass
    raise RtspProtocolError(f"not a stream URL: {url[:100]!r}", 404)


def _transport(value: str) -> dict[str, str]:
    """The first transport spec of a Transport header, as {name: value} (the profile as
    "profile")."""
    first = value.split(",")[0]
    items = [item.strip() for item in first.split(";")]
    out = {"profile": items[0].upper()}
    for item in items[1:]:
        name, _, val = item.partition("=")
        out[name.lower()] = val
    return out


class RtspServerConnection:
    """The shell gives the session id and `random32`, which draws a player's SSRCs and first
    sequence numbers and RTP times (RFC 3550 wants them random; this core draws nothing)."""

    def __init__(self, *, session_id: str, random32: Callable[[], int],
                 packetizer: Packetizer, host: str = "127.0.0.1") -> None:
        self.session_id = session_id
        self._random32 = random32
        self._packetizer = packetizer
        self.host = host
        self.state = State.INIT
        self.reader = msg.RtspReader()
        self._out: list[bytes] = []
        self._pending: _Pending | None = None
        self.requests = 0  # requests read so far
        self._now = 0.0
        self._session_started = False
        self.key: StreamKey | None = None
        self.base_url = ""
        self.publication: Publication | None = None
        self.play_tracks: list[PlayTrack] = []
        self.player: Player | None = None
        self._play_setup: dict[str, tuple[PlayTrack, int, int]] = {}  # control -> channels
        self._next_channel = 0
        self._bad_packets = 0
        self._warned_channels: set[int] = set()

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[SessionEvent]:
        """Raises RtspProtocolError for input the connection cannot go on with (after
        queueing an answer where one is due)."""
        self.reader.receive_data(data)
        self._now = now
        if self._pending is not None and self.reader.buffered > MAX_HELD_BYTES:
            raise RtspProtocolError("too much data while a request waits for its answer")
        return self._drain()

    def _drain(self) -> list[SessionEvent]:
        """Requests and frames in order; while a request waits for the shell's decision,
        what came after it stays in the reader."""
        events: list[SessionEvent] = []
        while self._pending is None and self.state is not State.CLOSED:
            try:
                item = self.reader.next_event()
            except RtspProtocolError as exc:
                self._answer(exc.status, cseq=None)
                raise
            if isinstance(item, msg.NeedData):
                break
            if isinstance(item, msg.InterleavedFrame):
                events += self._frame(item, self._now)
            else:
                events += self._request(item)
        return events

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def close(self) -> list[SessionEvent]:
        """The connection is gone: what ends with it."""
        events: list[SessionEvent] = []
        if self.publication is not None and self.key is not None:
            events.append(PublishEnded(self.key))
        if self.state is State.PLAYING and self.key is not None and self.player is not None:
            events.append(PlayPaused(self.key, self.player))
        self.publication = None
        self.state = State.CLOSED
        return events

    # -- the shell's decisions -------------------------------------------------------------

    def accept_announce(self, key: StreamKey | None = None) -> list[SessionEvent]:
        """Take the publication, under another key if given (a hook's redirect)."""
        pending = self._take_pending("ANNOUNCE")
        if key is not None and self.publication is not None:
            self.key = key
            for track in self.publication.tracks:
                track.key = key
        self.state = State.ANNOUNCED
        self._answer(200, cseq=pending.request.cseq)
        return self._resume()

    def accept_describe(self, tracks: list[PlayTrack], name: str,
                        key: StreamKey | None = None) -> list[SessionEvent]:
        """Describe `tracks`; the player plays `key` if given (a hook's redirect)."""
        pending = self._take_pending("DESCRIBE")
        self.key = key or self.key
        self.state = State.DESCRIBED
        self.play_tracks = tracks
        body = describe_sdp(tracks, name=name, host=self.host)
        self._answer(200, [("Content-Base", self.base_url + "/"),
                           ("Content-Type", "application/sdp")],
                     body, cseq=pending.request.cseq)
        return self._resume()

    def refuse(self, status: int) -> list[SessionEvent]:
        """Refuse the request waiting for a decision (ANNOUNCE or DESCRIBE)."""
        assert self._pending is not None
        pending, self._pending = self._pending, None
        if pending.request.method == "ANNOUNCE":
            self.publication = None
        self.key = None
        self._answer(status, cseq=pending.request.cseq)
        return self._resume()

    def _take_pending(self, method: str) -> _Pending:
        pending, self._pending = self._pending, None
        assert pending is not None
        assert pending.request.method == method
        return pending

    def _resume(self) -> list[SessionEvent]:
        return self._drain()

    # -- requests --------------------------------------------------------------------------

    def _request(self, req: RtspRequest) -> list[SessionEvent]:
        self.requests += 1
        session = req.headers.get("session", "").split(";")[0].strip()
        if session and self._session_started and session != self.session_id:
            self._answer(454, cseq=req.cseq)
            return []
        handler = getattr(self, "_on_" + req.method.lower(), None)
        if req.method not in msg.METHODS or handler is None:
            self._answer(501, cseq=req.cseq)
            return []
        try:
            events: list[SessionEvent] = handler(req)
        except RtspProtocolError as exc:
            self._answer(exc.status, cseq=req.cseq)
            return [Warning(f"{req.method} {req.uri[:100]}: {exc}")]
        return events

    def _on_options(self, req: RtspRequest) -> list[SessionEvent]:
        self._answer(200, [("Public", PUBLIC)], cseq=req.cseq)
        return []

    def _on_get_parameter(self, req: RtspRequest) -> list[SessionEvent]:
        self._answer(200, self._session_header(), cseq=req.cseq)
        return []

    _on_set_parameter = _on_get_parameter

    def _on_announce(self, req: RtspRequest) -> list[SessionEvent]:
        if self.state is not State.INIT:
            raise RtspProtocolError("ANNOUNCE after the session began", 455)
        if req.headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
            raise RtspProtocolError("ANNOUNCE without an SDP", 415)
        key, query = stream_key(req.uri)
        try:
            self.publication = Publication(key, parse_sdp(req.body))
        except (SdpError, MediaError) as exc:
            raise RtspProtocolError(str(exc), 415 if isinstance(exc, MediaError) else 400) \
                from None
        self.key, self.base_url = key, req.uri.rstrip("/")
        self._pending = _Pending(req, key)
        return [AnnounceRequested(key, query, tuple(self.publication.refused))]

    def _on_describe(self, req: RtspRequest) -> list[SessionEvent]:
        if self.state not in (State.INIT, State.DESCRIBED):
            raise RtspProtocolError("DESCRIBE while publishing or playing", 455)
        key, query = stream_key(req.uri)
        self.key, self.base_url = key, req.uri.rstrip("/")
        self._pending = _Pending(req, key)
        return [DescribeRequested(key, query)]

    def _on_setup(self, req: RtspRequest) -> list[SessionEvent]:
        transport = _transport(req.headers.get("transport", ""))
        if transport["profile"] != "RTP/AVP/TCP":
            raise RtspProtocolError("only RTP/AVP/TCP (interleaved) is served: use TCP "
                                    "(ffmpeg: -rtsp_transport tcp)", 461)
        channels = self._channels(transport.get("interleaved", ""))
        if self.state is State.ANNOUNCED and self.publication is not None:
            track = self._publish_track(req.uri)
            if self.publication.knows_channel(channels[0]) or (
                    self.publication.knows_channel(channels[1])):
                raise RtspProtocolError(f"channels {channels} are taken", 461)
            self.publication.bind(track, *channels)
            spec = f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]};mode=record"
        elif self.state is State.DESCRIBED:
            play = self._play_track(req.uri)
            taken = {c for _, a, b in self._play_setup.values() for c in (a, b)}
            if channels[0] in taken or channels[1] in taken:
                raise RtspProtocolError(f"channels {channels} are taken", 461)
            self._play_setup[play.control] = (play, *channels)
            spec = f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]}"
        else:
            raise RtspProtocolError("SETUP before ANNOUNCE or DESCRIBE", 455)
        self._session_started = True
        self._answer(200, [("Transport", spec), *self._session_header()], cseq=req.cseq)
        return []

    def _channels(self, text: str) -> tuple[int, int]:
        if not text:
            first = self._next_channel
            self._next_channel += 2
            return first, first + 1
        a, _, b = text.partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            raise RtspProtocolError(f"bad interleaved={text[:20]!r}", 400)
        rtp, rtcp = int(a), int(b) if b else int(a) + 1
        if rtp > 255 or rtcp > 255 or rtp == rtcp:
            raise RtspProtocolError(f"bad interleaved={text[:20]!r}", 400)
        self._next_channel = max(self._next_channel, max(rtp, rtcp) + 1)
        return rtp, rtcp

    def _matches(self, url: str, control: str, others: int) -> bool:
        """Whether a SETUP URL names a media with this control. ffmpeg appends the control
        to the query when the URL has one ("?a=1/streamid=0"), GStreamer to the path; the
        control may be absolute; a lone media may be set up by the base URL."""
        url = url.rstrip("/")
        if not control or control == "*":
            return others == 1 and url == self.base_url
        if url == media_url(self.base_url, control).rstrip("/"):
            return True
        return url.endswith("/" + control) or url == control.rstrip("/")

    def _publish_track(self, url: str) -> InTrack:
        assert self.publication is not None
        tracks = self.publication.tracks
        for track in tracks:
            if self._matches(url, track.media.control, len(tracks)):
                return track
        raise RtspProtocolError(f"no announced media at {url[:100]!r}", 404)

    def _play_track(self, url: str) -> PlayTrack:
        for track in self.play_tracks:
            if self._matches(url, track.control, len(self.play_tracks)):
                return track
        raise RtspProtocolError(f"no track at {url[:100]!r}", 404)

    def _on_record(self, req: RtspRequest) -> list[SessionEvent]:
        pub = self.publication
        if self.state is not State.ANNOUNCED or pub is None or self.key is None:
            raise RtspProtocolError("RECORD before ANNOUNCE", 455)
        if not any(t.rtp_channel is not None for t in pub.tracks):
            raise RtspProtocolError("RECORD before SETUP", 455)
        self.state = State.RECORDING
        self._answer(200, self._session_header(), cseq=req.cseq)
        return [RecordStarted(self.key)]

    def _on_play(self, req: RtspRequest) -> list[SessionEvent]:
        if self.state is State.PLAYING:
            self._answer(200, self._session_header(), cseq=req.cseq)  # a keep-alive
            return []
        if self.state is not State.DESCRIBED or not self._play_setup or self.key is None:
            raise RtspProtocolError("PLAY before SETUP", 455)
        player = Player(self._packetizer)
        for play, rtp, rtcp in self._play_setup.values():
            player.add_track(play, rtp, rtcp, ssrc=self._random32(),
                             seq=self._random32() & 0x7FFF, rtp_base=self._random32())
        self.player = player
        self.state = State.PLAYING
        urls = {t.control: media_url(self.base_url, t.control) for t in self.play_tracks}
        self._answer(200, [("Range", "npt=0.000-"), ("RTP-Info", player.rtp_info(urls)),
                           *self._session_header()], cseq=req.cseq)
        return [PlayStarted(self.key, player)]

    def _on_pause(self, req: RtspRequest) -> list[SessionEvent]:
        if self.state is not State.PLAYING or self.key is None or self.player is None:
            raise RtspProtocolError("PAUSE while not playing", 455)
        self.state = State.DESCRIBED
        self._answer(200, self._session_header(), cseq=req.cseq)
        return [PlayPaused(self.key, self.player)]

    def _on_teardown(self, req: RtspRequest) -> list[SessionEvent]:
        self._answer(200, [], cseq=req.cseq)
        return self.close()

    # -- interleaved frames ----------------------------------------------------------------

    def _frame(self, frame: msg.InterleavedFrame, now: float) -> list[SessionEvent]:
        pub = self.publication
        if self.state is State.RECORDING and pub is not None:
            if not pub.knows_channel(frame.channel):
                raise RtspProtocolError(f"data on channel {frame.channel}, which no SETUP "
                                        f"opened", 400)
            try:
                packets = pub.receive(frame.channel, frame.data, now)
            except RtpError as exc:
                self._bad_packets += 1
                if self._bad_packets > MAX_BAD_PACKETS:
                    raise RtspProtocolError(f"{self._bad_packets} unreadable RTP packets "
                                            f"in a row; last: {exc}", 400) from None
                return [Warning(f"dropped an RTP packet: {exc}")] if self._bad_packets == 1 \
                    else []
            self._bad_packets = 0
            events: list[SessionEvent] = [MediaReceived(p) for p in packets]
            for track in pub.tracks:
                events += [Warning(note) for note in track.notes]
                track.notes.clear()
            return events
        if self.state is State.ANNOUNCED and pub is not None and pub.knows_channel(
                frame.channel):
            return []  # RTCP (or early RTP) before RECORD's answer reached the client
        if self.player is not None:
            return []  # a player's receiver reports: they keep it alive, nothing more
        if frame.channel not in self._warned_channels:
            self._warned_channels.add(frame.channel)
            return [Warning(f"ignored data on channel {frame.channel} before any SETUP")]
        return []

    # -- output ----------------------------------------------------------------------------

    def _session_header(self) -> list[tuple[str, str]]:
        if not self._session_started:
            return []
        return [("Session", f"{self.session_id};timeout={SESSION_TIMEOUT_S}")]

    def _answer(self, status: int, headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", *, cseq: str | None) -> None:
        self._out.append(msg.response(status, [("Server", SERVER), *(headers or [])], body,
                                      cseq=cseq))
