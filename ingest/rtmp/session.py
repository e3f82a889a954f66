"""The server side of one RTMP connection, sans-IO: bytes in, events out, bytes to send.

The shell feeds received bytes to `receive_data`, acts on the returned events (a publish or
play request waits for its decision: `accept_publish`, `reject_publish`, ...), and sends
`data_to_send()`. Command order varies by client (OBS, ffmpeg, FMLE, GStreamer, librtmp), so
the state machine reacts to whatever arrives instead of following a script.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from broker import flvpacket
from broker.packet import DEFAULT_INSTANCE, MediaPacket, StreamKey
from ingest.rtmp import messages as m
from ingest.rtmp.chunk import NEED_DATA, ChunkDecoder, ChunkEncoder, RtmpMessage
from ingest.rtmp.errors import RtmpProtocolError
from ingest.rtmp.handshake import ServerHandshake
from ingest.rtmp.wakeups import MAX_THRESHOLD, WakeupThreshold
from media import amf0
from media.flv import FlvError

# What we ask of peers right after connect (the values SRS and MediaMTX use).
WINDOW_ACK_SIZE = 2_500_000
PEER_BANDWIDTH = 2_500_000
SERVER_VERSION = "FMS/3,0,1,123"
MAX_STREAMS_PER_CONNECTION = 16
MAX_ECHO_CHARS = 200


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    app: str
    tc_url: str
    query: str
    params: dict[str, amf0.Value] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PublishRequested:
    stream_id: int
    key: StreamKey
    query: str
    mode: str  # "live", "record" or "append", as the client asked


@dataclass(frozen=True, slots=True)
class PlayRequested:
    stream_id: int
    key: StreamKey
    query: str


@dataclass(frozen=True, slots=True)
class MediaReceived:
    packet: MediaPacket


@dataclass(frozen=True, slots=True)
class PublishEnded:
    stream_id: int
    key: StreamKey


@dataclass(frozen=True, slots=True)
class PlayEnded:
    stream_id: int


@dataclass(frozen=True, slots=True)
class MediaRefused:
    """Media the bus cannot carry (an unsupported codec); reported once per stream and track."""

    key: StreamKey
    reason: str


SessionEvent = (ConnectRequested | PublishRequested | PlayRequested | MediaReceived
                | PublishEnded | PlayEnded | MediaRefused)


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await connect"
    CONNECT_PENDING = "connect pending"
    CONNECTED = "connected"
    CLOSED = "closed"


def _clip(text: str) -> str:
    """Client strings echoed in replies are cut: a reply must fit RTMP's 24-bit length."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


def split_name(text: str) -> tuple[str, str]:
    """'sample?token=x' -> ('sample', 'token=x')."""
    name, _, query = text.partition("?")
    return name, query


def stream_key(app: str, name: str) -> StreamKey:
    """Build the stream key from the connect app ("live" or "live/inst") and the stream name."""
    app_name, _, instance = app.partition("/")
    key = StreamKey(app_name, instance or DEFAULT_INSTANCE, name)
    for part in (key.app, key.instance, key.name):
        if not part or "/" in part or "\x00" in part or part.startswith("$"):
            raise ValueError(f"bad stream name {app}/{name}")
        if len(part) > MAX_ECHO_CHARS:
            raise ValueError("stream name too long")
    return key


class _Published:
    """One published stream: timestamp unwrapping (32-bit ms in, 64-bit ms out), refused
    tracks, and the media sizes that say how much input is worth a wake-up."""

    __slots__ = ("key", "last", "refused", "wakeup")

    def __init__(self, key: StreamKey) -> None:
        self.key = key
        self.last: dict[int, tuple[int, int]] = {}  # type id -> (wire ts, unwrapped ts)
        self.refused: set[int] = set()
        self.wakeup = WakeupThreshold()

    def unwrap(self, type_id: int, ts: int) -> int:
        prev = self.last.get(type_id)
        if prev is None:
            out = ts
        else:
            delta = (ts - prev[0]) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32  # serial-number arithmetic (RTMP 1.0 §3): a step backwards
            out = prev[1] + delta
        self.last[type_id] = (ts, out)
        return out


class RtmpServerConnection:
    def __init__(self, *, chunk_size: int = 4096,
                 max_message_bytes: int = 16 << 20) -> None:
        self.state = State.HANDSHAKE
        self.chunk_size = chunk_size
        self._handshake = ServerHandshake()
        self._decoder = ChunkDecoder(max_message_bytes=max_message_bytes)
        # Type-0 headers only: control output and shared media bytes then interleave in any order.
        self._encoder = ChunkEncoder(chunk_size=128)
        self._out: list[bytes] = []
        self.app = ""
        self.tc_url = ""
        self.object_encoding = 0.0
        self._connect_txn = 0.0
        self._next_stream_id = 1
        self._streams: set[int] = set()
        self.publishing: dict[int, _Published] = {}
        self.playing: set[int] = set()
        self._orphans: list[SessionEvent] = []  # ends decided in a read that then failed
        self._bytes_in = 0
        self._ack_window = 0  # the peer's Window Acknowledgement Size; 0 = none asked
        self._last_ack = 0

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[SessionEvent]:
        if self.state is State.CLOSED:
            return []
        self._bytes_in += len(data)
        if self.state is State.HANDSHAKE:
            self._handshake.receive_data(data)
            self._out.append(self._handshake.data_to_send())
            if not self._handshake.done:
                return []
            self.state = State.AWAIT_CONNECT
            data = self._handshake.leftover
            if not data:
                return []
        self._decoder.receive_data(data)
        events: list[SessionEvent] = []
        try:
            while True:
                msg = self._decoder.next_event()
                if msg is NEED_DATA:
                    break
                assert isinstance(msg, RtmpMessage)
                self._handle(msg, events)
        except RtmpProtocolError:
            # The caller never sees this read's events; close() must still report the ends.
            self._orphans += [e for e in events if isinstance(e, PublishEnded | PlayEnded)]
            raise
        if self._ack_window and self._bytes_in - self._last_ack >= self._ack_window:
            self._last_ack = self._bytes_in
            self._send(m.acknowledgement(self._bytes_in))
        return events

    def wakeup_threshold(self) -> int:
        """Received bytes worth a wake-up (SO_RCVLOWAT) now: 1, except while this connection
        publishes one stream: then the rest of a message half received, or, between
        messages of audio and video, about one video frame (see ingest.rtmp.wakeups). It
        never holds back the read that an Acknowledgement is due at."""
        if len(self.publishing) != 1:
            return 1
        if self._decoder.pending:
            want = min(self._decoder.missing, MAX_THRESHOLD)
        else:
            pub = next(iter(self.publishing.values()))
            want = pub.wakeup.threshold(self._decoder.chunk_size)
        if self._ack_window and want > 1:
            want = max(1, min(want, self._last_ack + self._ack_window - self._bytes_in))
        return want

    def _handle(self, msg: RtmpMessage, events: list[SessionEvent]) -> None:
        t = msg.type_id
        if t in (m.MessageType.AUDIO, m.MessageType.VIDEO):
            self._media(msg, t, msg.timestamp, msg.payload, events)
        elif t == m.MessageType.AGGREGATE:
            self._aggregate(msg, events)
        elif t in (m.MessageType.COMMAND_AMF0, m.MessageType.COMMAND_AMF3):
            self._command(m.parse_command(msg), events)
        elif t in (m.MessageType.DATA_AMF0, m.MessageType.DATA_AMF3):
            self._data(msg, events)
        elif t == m.MessageType.SET_CHUNK_SIZE:
            self._decoder.set_chunk_size(m.parse_u32(msg))
        elif t == m.MessageType.ABORT:
            self._decoder.abort(m.parse_u32(msg))
        elif t == m.MessageType.WINDOW_ACK_SIZE:
            self._ack_window = m.parse_u32(msg)
        elif t == m.MessageType.USER_CONTROL:
            event, value = m.parse_user_control(msg)
            if event == m.UserControl.PING_REQUEST:
                self._send(m.user_control(m.UserControl.PING_RESPONSE, value))
        # Acknowledgement, Set Peer Bandwidth, shared objects and unknown types are ignored:
        # skipping what we do not use is what keeps odd clients working (gortmplib#128).

    def _media(self, msg: RtmpMessage, type_id: int, ts: int, body: bytes,
               events: list[SessionEvent]) -> None:
        pub = self.publishing.get(msg.stream_id)
        if pub is None or not body:
            return  # media on a stream that is not publishing, or an empty keep-alive tag
        ts64 = pub.unwrap(type_id, ts)
        try:
            pkt = flvpacket.packet_from_flv(pub.key, type_id, ts64, body)
        except flvpacket.UnsupportedMedia as exc:
            if type_id not in pub.refused:
                pub.refused.add(type_id)
                events.append(MediaRefused(pub.key, str(exc)))
            return
        except FlvError as exc:
            raise RtmpProtocolError(f"bad media message: {exc}") from exc
        if pkt is not None:
            events.append(MediaReceived(pkt))
            if not pkt.is_config:
                if type_id == m.MessageType.VIDEO:
                    pub.wakeup.on_video(len(body))
                else:
                    pub.wakeup.on_audio(len(body))

    def _aggregate(self, msg: RtmpMessage, events: list[SessionEvent]) -> None:
        """Aggregate messages (§7.1.6) hold FLV tags whose timestamps are relative to the first."""
        body, pos, base = msg.payload, 0, None
        while pos + 11 <= len(body):
            tag_type = body[pos]
            size = int.from_bytes(body[pos + 1:pos + 4], "big")
            ts = int.from_bytes(body[pos + 4:pos + 7], "big") | body[pos + 7] << 24
            if pos + 11 + size + 4 > len(body):
                raise RtmpProtocolError("truncated aggregate message")
            if base is None:
                base = ts
            tag_ts = (msg.timestamp + ts - base) & 0xFFFFFFFF
            if tag_type in (m.MessageType.AUDIO, m.MessageType.VIDEO):
                self._media(msg, tag_type, tag_ts, body[pos + 11:pos + 11 + size], events)
            pos += 11 + size + 4

    def _data(self, msg: RtmpMessage, events: list[SessionEvent]) -> None:
        pub = self.publishing.get(msg.stream_id)
        if pub is None:
            return
        values = m.parse_data(msg)
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            # Always an ECMA array, as enhanced RTMP requires of onMetaData.
            payload = amf0.encode(["onMetaData", amf0.EcmaArray(values[1])])
            events.append(MediaReceived(flvpacket.metadata_packet(pub.key, payload)))

    # -- commands ------------------------------------------------------------------------------

    def _command(self, cmd: m.Command, events: list[SessionEvent]) -> None:
        name = cmd.name
        if name == "connect":
            self._connect(cmd, events)
            return
        if name in ("_result", "_error", "onBWDone", "_checkbw"):
            if name == "_checkbw" and cmd.transaction_id:
                self._send(m.command("_result", cmd.transaction_id, None, amf0.UNDEFINED))
            return
        if self.state is not State.CONNECTED:
            raise RtmpProtocolError(f"{name} before connect")
        if name == "createStream":
            if len(self._streams) >= MAX_STREAMS_PER_CONNECTION:
                self._error(cmd, "NetStream.Create.Failed", "too many streams")
                return
            sid = self._next_stream_id
            self._next_stream_id += 1
            self._streams.add(sid)
            self._send(m.command("_result", cmd.transaction_id, None, float(sid)))
        elif name in ("releaseStream", "FCPublish", "FCSubscribe"):
            if cmd.transaction_id:
                self._send(m.command("_result", cmd.transaction_id, None, amf0.UNDEFINED))
            if name == "FCPublish" and cmd.args and isinstance(cmd.args[0], str):
                # FMLE waits for this before it publishes.
                self._send(m.command("onFCPublish", 0.0, None, {
                    "code": "NetStream.Publish.Start", "description": _clip(cmd.args[0])}))
        elif name == "publish":
            self._publish(cmd, events)
        elif name == "play":
            self._play(cmd, events)
        elif name in ("deleteStream", "closeStream", "FCUnpublish"):
            sid = cmd.stream_id
            if name == "deleteStream" and cmd.args and isinstance(cmd.args[0], float):
                sid = int(cmd.args[0]) if math.isfinite(cmd.args[0]) else 0
            elif name == "FCUnpublish":
                sid = next(iter(self.publishing), 0)
                if cmd.transaction_id:
                    self._send(m.command("_result", cmd.transaction_id, None, amf0.UNDEFINED))
            self._end_stream(sid, events, delete=name == "deleteStream")
        elif name == "getStreamLength":
            self._send(m.command("_result", cmd.transaction_id, None, 0.0))
        elif name in ("receiveAudio", "receiveVideo", "pause", "seek", "FCUnsubscribe"):
            pass  # live streams cannot pause or seek; ignoring is what players cope with best
        elif cmd.transaction_id:
            self._error(cmd, "NetConnection.Call.Failed", f"unknown command {name}")

    def _error(self, cmd: m.Command, code: str, description: str) -> None:
        self._send(m.command("_error", cmd.transaction_id, None, {
            "level": "error", "code": code, "description": _clip(description)}))

    def _connect(self, cmd: m.Command, events: list[SessionEvent]) -> None:
        if self.state is not State.AWAIT_CONNECT:
            raise RtmpProtocolError("connect sent twice")
        params = cmd.command_object if isinstance(cmd.command_object, dict) else {}
        app = params.get("app")
        if not isinstance(app, str):
            raise RtmpProtocolError("connect without an app")
        tc_url = params.get("tcUrl", params.get("tcurl", ""))
        self.app, query = split_name(app.strip("/"))
        self.tc_url = tc_url if isinstance(tc_url, str) else ""
        encoding = params.get("objectEncoding", 0.0)
        self.object_encoding = encoding if isinstance(encoding, float) else 0.0
        self._connect_txn = cmd.transaction_id
        self.state = State.CONNECT_PENDING
        events.append(ConnectRequested(self.app, self.tc_url, query, dict(params)))

    def accept_connect(self) -> None:
        if self.state is not State.CONNECT_PENDING:
            return
        self.state = State.CONNECTED
        self._send(m.window_ack_size(WINDOW_ACK_SIZE))
        self._send(m.set_peer_bandwidth(PEER_BANDWIDTH, m.PeerBandwidthLimit.DYNAMIC))
        self._send(m.set_chunk_size(self.chunk_size))
        self._encoder.set_chunk_size(self.chunk_size)
        self._send(m.command("_result", self._connect_txn,
                             {"fmsVer": SERVER_VERSION, "capabilities": 31.0},
                             {"level": "status", "code": "NetConnection.Connect.Success",
                              "description": "Connection succeeded.",
                              "objectEncoding": self.object_encoding}))

    def reject_connect(self, description: str) -> None:
        self._send(m.command("_error", self._connect_txn, None, {
            "level": "error", "code": "NetConnection.Connect.Rejected",
            "description": description}))
        self.state = State.CLOSED

    def _stream_request(self, cmd: m.Command) -> tuple[StreamKey, str] | None:
        if cmd.stream_id not in self._streams:
            raise RtmpProtocolError(f"{cmd.name} on a stream that was not created")
        if not cmd.args or not isinstance(cmd.args[0], str):
            raise RtmpProtocolError(f"{cmd.name} without a stream name")
        name, query = split_name(cmd.args[0])
        try:
            return stream_key(self.app, name), query
        except ValueError as exc:
            code = ("NetStream.Publish.BadName" if cmd.name == "publish"
                    else "NetStream.Play.StreamNotFound")
            self._send(m.status(cmd.stream_id, "error", code, _clip(str(exc))))
            return None

    def _publish(self, cmd: m.Command, events: list[SessionEvent]) -> None:
        req = self._stream_request(cmd)
        if req is None:
            return
        if cmd.stream_id in self.publishing or cmd.stream_id in self.playing:
            raise RtmpProtocolError("publish on a stream that is already in use")
        mode = cmd.args[1] if len(cmd.args) > 1 and isinstance(cmd.args[1], str) else "live"
        events.append(PublishRequested(cmd.stream_id, req[0], req[1], mode))

    def accept_publish(self, stream_id: int, key: StreamKey) -> None:
        self.publishing[stream_id] = _Published(key)
        self._send(m.user_control(m.UserControl.STREAM_BEGIN, stream_id))
        self._send(m.status(stream_id, "status", "NetStream.Publish.Start",
                            f"{key.name} is now published."))

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        self._send(m.status(stream_id, "error", code, description))

    def _play(self, cmd: m.Command, events: list[SessionEvent]) -> None:
        req = self._stream_request(cmd)
        if req is None:
            return
        if cmd.stream_id in self.publishing or cmd.stream_id in self.playing:
            raise RtmpProtocolError("play on a stream that is already in use")
        events.append(PlayRequested(cmd.stream_id, req[0], req[1]))

    def accept_play(self, stream_id: int, key: StreamKey) -> None:
        self.playing.add(stream_id)
        self._send(m.user_control(m.UserControl.STREAM_BEGIN, stream_id))
        self._send(m.status(stream_id, "status", "NetStream.Play.Reset",
                            f"Playing and resetting {key.name}."))
        self._send(m.status(stream_id, "status", "NetStream.Play.Start",
                            f"Started playing {key.name}."))
        self._send(m.data_message(stream_id, "|RtmpSampleAccess", True, True))
        self._send(m.data_message(stream_id, "onStatus", {"code": "NetStream.Data.Start"}))

    def reject_play(self, stream_id: int, code: str, description: str) -> None:
        self._send(m.status(stream_id, "error", code, description))

    def play_unpublished(self, stream_id: int, key: StreamKey) -> None:
        """The publisher left; the player stays attached and resumes if a new one comes."""
        self._send(m.status(stream_id, "status", "NetStream.Play.UnpublishNotify",
                            f"{key.name} is now unpublished."))
        self._send(m.user_control(m.UserControl.STREAM_EOF, stream_id))

    def play_republished(self, stream_id: int, key: StreamKey) -> None:
        self._send(m.user_control(m.UserControl.STREAM_BEGIN, stream_id))
        self._send(m.status(stream_id, "status", "NetStream.Play.PublishNotify",
                            f"{key.name} is now published."))

    def _end_stream(self, sid: int, events: list[SessionEvent], *, delete: bool) -> None:
        pub = self.publishing.pop(sid, None)
        if pub is not None:
            self._send(m.status(sid, "status", "NetStream.Unpublish.Success",
                                f"{pub.key.name} is now unpublished."))
            events.append(PublishEnded(sid, pub.key))
        if sid in self.playing:
            self.playing.discard(sid)
            events.append(PlayEnded(sid))
        if delete:
            self._streams.discard(sid)

    def close(self) -> list[SessionEvent]:
        """The connection is gone: end whatever it published or played."""
        events, self._orphans = self._orphans, []
        for sid in list(self.publishing) + list(self.playing):
            self._end_stream(sid, events, delete=True)
        self.state = State.CLOSED
        self._out.clear()
        return events

    # -- output --------------------------------------------------------------------------------

    def _send(self, msg: RtmpMessage) -> None:
        self._out.append(self._encoder.encode(msg))

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)


def media_message_bytes(pkt: MediaPacket, stream_id: int, chunk_size: int,
                        encoder: ChunkEncoder | None = None) -> bytes:
    """A packet as a self-contained RTMP message (type-0 header), shareable by every player."""
    type_id, ts, body = flvpacket.flv_tag_parts(pkt)
    csid = {8: m.CSID_AUDIO, 9: m.CSID_VIDEO}.get(type_id, m.CSID_DATA)
    enc = encoder or ChunkEncoder(chunk_size=chunk_size)
    return enc.encode(RtmpMessage(csid, ts & 0xFFFFFFFF, type_id, stream_id, body))
