"""RtmpServerConnection driven in memory by the sans-IO test client: client bytes go into
`receive_data`, `data_to_send()` goes back into the client, and the test plays the shell's
part (accept_connect, accept_publish, ...)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.flvpacket import flv_tag_parts
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from ingest.rtmp import messages as m
from ingest.rtmp.chunk import ChunkDecoder, NeedData, RtmpMessage
from ingest.rtmp.errors import RtmpProtocolError
from ingest.rtmp.session import (
    ConnectRequested,
    MediaReceived,
    MediaRefused,
    PlayEnded,
    PlayRequested,
    PublishEnded,
    PublishRequested,
    RtmpServerConnection,
    SessionEvent,
    State,
    media_message_bytes,
)
from media import amf0
from tests.ingest.rtmp_client import RtmpTestClient, summary

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

KEY = StreamKey("live", "_definst_", "stream")
TC_URL = "rtmp://127.0.0.1:1935/live"
MT = m.MessageType
UC = m.UserControl

# -- FLV tag bodies, spelled out by hand (FLV v10.1 E.4.2/E.4.3) ------------------------------

# avcC: version 1, High@3.1, 4-byte lengths, one SPS, one PPS (contents abbreviated)
AVCC = bytes.fromhex("01 64 00 1f ff e1 00 04 67 64 00 1f 01 00 04 68 eb e3 cb")
ASC = bytes.fromhex("1190")  # AAC-LC, 48 kHz, stereo


def avc_config() -> bytes:
    return b"\x17\x00\x00\x00\x00" + AVCC


def avc_frame(nalus: bytes, *, key: bool, cts: int = 0) -> bytes:
    return bytes((0x17 if key else 0x27, 1)) + cts.to_bytes(3, "big", signed=True) + nalus


def aac_config() -> bytes:
    return b"\xaf\x00" + ASC


def aac_frame(raw: bytes) -> bytes:
    return b"\xaf\x01" + raw


def nalu(kind: int, size: int) -> bytes:
    """One length-prefixed NAL unit of `size` bytes."""
    return size.to_bytes(4, "big") + bytes((kind,)) + bytes(i & 0xFF for i in range(size - 1))


FFMPEG_METADATA: dict[str, amf0.Value] = {
    "duration": 0.0, "width": 1280.0, "height": 720.0, "videodatarate": 2500.0,
    "framerate": 25.0, "videocodecid": 7.0, "audiodatarate": 128.0, "audiosamplerate": 48000.0,
    "audiosamplesize": 16.0, "stereo": True, "audiocodecid": 10.0, "encoder": "Lavf61.1.100",
    "filesize": 0.0,
}

# -- driving a connection ----------------------------------------------------------------------

def accept_all(conn: RtmpServerConnection, events: list[SessionEvent]) -> None:
    """What the shell does for a server that allows everything."""
    for ev in events:
        if isinstance(ev, ConnectRequested):
            conn.accept_connect()
        elif isinstance(ev, PublishRequested):
            conn.accept_publish(ev.stream_id, ev.key)
        elif isinstance(ev, PlayRequested):
            conn.accept_play(ev.stream_id, ev.key)


def decide_later(conn: RtmpServerConnection, events: list[SessionEvent]) -> None:
    """The test calls accept_*/reject_* itself."""


class Harness:
    """One server connection and one test client, with bytes moved between them by `pump`."""

    def __init__(self, policy: Callable[[RtmpServerConnection, list[SessionEvent]], None]
                 = accept_all, **server_kwargs: int) -> None:
        self.conn = RtmpServerConnection(**server_kwargs)
        self.client = RtmpTestClient()
        self.policy = policy
        self.events: list[SessionEvent] = []
        self.segments: list[bytes] = []  # every write of the client, for replays
        self.output = bytearray()  # every byte the server sent

    @property
    def bytes_fed(self) -> int:
        return sum(map(len, self.segments))

    def pump(self) -> tuple[list[SessionEvent], list[RtmpMessage]]:
        """Move bytes both ways until both sides are quiet; returns the server's new events
        and the messages the client received meanwhile."""
        events: list[SessionEvent] = []
        msgs: list[RtmpMessage] = []
        while True:
            data = self.client.data_to_send()
            if data:
                self.segments.append(data)
                new = self.conn.receive_data(data)
                events += new
                self.policy(self.conn, new)
            out = self.conn.data_to_send()
            if out:
                self.output += out
                msgs += self.client.receive(out)
            if not data and not out:
                break
        self.events += events
        return events, msgs

    def flush(self) -> list[RtmpMessage]:
        """Deliver what the server queued after a decision taken outside `pump`."""
        return self.pump()[1]


def connected(policy: Callable[[RtmpServerConnection, list[SessionEvent]], None] = accept_all,
              **server_kwargs: int) -> Harness:
    h = Harness(policy, **server_kwargs)
    h.client.connect("live", TC_URL)
    h.pump()
    if policy is decide_later:
        h.conn.accept_connect()
        h.flush()
    assert h.conn.state is State.CONNECTED
    return h


def publishing(**server_kwargs: int) -> Harness:
    """Connected, stream 1 created and publishing `KEY` (accepted)."""
    h = connected(accept_all, **server_kwargs)
    h.client.create_stream()
    h.pump()
    h.client.publish(1, "stream")
    h.pump()
    assert 1 in h.conn.publishing
    return h


def state_of(conn: RtmpServerConnection) -> State:
    """Read through a call so mypy doesn't narrow `state` across method calls."""
    return conn.state


def packets(events: Sequence[SessionEvent]) -> list[MediaPacket]:
    return [ev.packet for ev in events if isinstance(ev, MediaReceived)]


def of_type(msgs: Sequence[RtmpMessage], type_id: int) -> list[RtmpMessage]:
    return [msg for msg in msgs if msg.type_id == type_id]


def test_digest_handshake_client() -> None:
    h = Harness()
    h.client = RtmpTestClient(digest=True)
    h.client.connect("live", TC_URL)
    events, msgs = h.pump()
    assert h.client.handshake.digest
    assert [type(ev) for ev in events] == [ConnectRequested]
    assert h.client.status_codes(msgs) == []
    assert "_result:NetConnection.Connect.Success" in summary(msgs)


# -- publish ------------------------------------------------------------------------------------


def test_ffmpeg_publish_flow() -> None:
    h = Harness(decide_later)
    c = h.client
    txn = c.connect("live", TC_URL)
    events, msgs = h.pump()
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, ConnectRequested)
    assert (ev.app, ev.tc_url, ev.query) == ("live", TC_URL, "")
    assert ev.params["flashVer"] == "FMLE/3.0 (compatible; Lavf61.1.100)"
    assert msgs == []  # nothing but the handshake until the shell decides
    assert state_of(h.conn) is State.CONNECT_PENDING

    h.conn.accept_connect()
    msgs = h.flush()
    assert summary(msgs) == ["WINDOW_ACK_SIZE(2500000)", "SET_PEER_BANDWIDTH(2500000)",
                             "SET_CHUNK_SIZE(4096)", "_result:NetConnection.Connect.Success"]
    assert of_type(msgs, MT.SET_PEER_BANDWIDTH)[0].payload[4] == m.PeerBandwidthLimit.DYNAMIC
    result = c.result(txn)
    assert result is not None
    assert result.name == "_result"
    assert isinstance(result.command_object, dict)
    assert "fmsVer" in result.command_object
    assert c.decoder.chunk_size == 4096
    assert state_of(h.conn) is State.CONNECTED

    # ffmpeg waits for each answer here; the OBS test below sends them back to back.
    for call in (c.release_stream, c.fc_publish):
        txn = call("stream")
        events, msgs = h.pump()
        assert events == []
        result = c.result(txn, msgs)
        assert result is not None
        assert result.name == "_result"
    assert "onFCPublish" in [cmd.name for cmd in c.commands(msgs)]
    txn = c.create_stream()
    events, msgs = h.pump()
    result = c.result(txn, msgs)
    assert result is not None
    assert (result.name, result.command_object, result.args) == ("_result", None, [1.0])

    c.publish(1, "stream")
    events, msgs = h.pump()
    assert events == [PublishRequested(1, KEY, "", "live")]
    assert msgs == []
    h.conn.accept_publish(1, KEY)
    msgs = h.flush()
    assert summary(msgs) == ["STREAM_BEGIN(1)", "onStatus:NetStream.Publish.Start"]
    assert [msg.stream_id for msg in msgs] == [0, 1]
    assert c.status_codes(msgs, stream_id=1) == ["NetStream.Publish.Start"]

    c.send_metadata(1, FFMPEG_METADATA)
    c.send_media(1, MT.VIDEO, 0, avc_config())
    c.send_media(1, MT.AUDIO, 0, aac_config())
    idr, p_frame, b_frame = nalu(5, 3000), nalu(1, 700), nalu(1, 300)
    c.send_media(1, MT.VIDEO, 0, avc_frame(idr, key=True, cts=80))
    c.send_media(1, MT.AUDIO, 0, aac_frame(b"\x21" * 200))
    c.send_media(1, MT.VIDEO, 40, avc_frame(p_frame, key=False, cts=120))
    c.send_media(1, MT.AUDIO, 21, aac_frame(b"\x22" * 190))
    c.send_media(1, MT.VIDEO, 80, avc_frame(b_frame, key=False, cts=-40))
    events, msgs = h.pump()
    assert msgs == []
    got = packets(events)
    assert len(got) == len(events) == 8
    meta = got[0]
    assert (meta.kind, meta.codec, meta.dts, meta.is_config) == (TrackKind.DATA, Codec.AMF0, 0,
                                                                 True)
    values = amf0.decode(meta.payload)
    assert values == ["onMetaData", FFMPEG_METADATA]
    assert isinstance(values[1], amf0.EcmaArray)

    expected = [
        # kind, codec, keyframe, is_config, dts, pts, payload
        (TrackKind.VIDEO, Codec.H264, True, True, 0, 0, AVCC),
        (TrackKind.AUDIO, Codec.AAC, True, True, 0, 0, ASC),
        (TrackKind.VIDEO, Codec.H264, True, False, 0, 80, idr),
        (TrackKind.AUDIO, Codec.AAC, True, False, 0, 0, b"\x21" * 200),
        (TrackKind.VIDEO, Codec.H264, False, False, 40, 160, p_frame),
        (TrackKind.AUDIO, Codec.AAC, True, False, 21, 21, b"\x22" * 190),
        (TrackKind.VIDEO, Codec.H264, False, False, 80, 40, b_frame),  # negative CTS
    ]
    assert [(p.kind, p.codec, p.keyframe, p.is_config, p.dts, p.pts, p.payload)
            for p in got[1:]] == expected
    assert all(p.stream == KEY and p.timescale == 1000 for p in got)


def test_metadata_sent_as_object_becomes_ecma_array() -> None:
    h = publishing()
    h.client.send_data(1, "@setDataFrame", "onMetaData", {"width": 640.0})
    h.client.send_data(1, "onMetaData", {"height": 360.0})  # without the wrapper
    h.client.send_data(1, "onTextData", {"text": "hi"})  # not cached or forwarded as metadata
    (first, second) = packets(h.pump()[0])
    for pkt, props in ((first, {"width": 640.0}), (second, {"height": 360.0})):
        values = amf0.decode(pkt.payload)
        assert values == ["onMetaData", props]
        assert isinstance(values[1], amf0.EcmaArray)


OBS_CONNECT: dict[str, amf0.Value] = {
    "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
    "swfUrl": "rtmp://127.0.0.1/live", "fpad": False, "capabilities": 15.0,
    "audioCodecs": 3191.0, "videoCodecs": 252.0, "videoFunction": 1.0,
    "fourCcList": ["av01", "hvc1", "avc1"],
}


def test_obs_publish_flow_with_early_chunk_size_and_back_to_back_commands() -> None:
    h = Harness()
    c = h.client
    c.send_set_chunk_size(4096)  # OBS: right after the handshake, before connect
    txn = c.connect("live", "rtmp://127.0.0.1/live", **OBS_CONNECT)
    assert len(amf0.encode(["connect", txn, OBS_CONNECT])) > 128  # needs the new chunk size
    events, msgs = h.pump()
    assert [type(ev) for ev in events] == [ConnectRequested]
    assert c.status_codes(msgs) == []
    result = c.result(txn, msgs)
    assert result is not None
    assert result.name == "_result"

    txns = [c.release_stream("stream"), c.fc_publish("stream"), c.create_stream()]
    segments = len(h.segments)
    events, msgs = h.pump()
    assert len(h.segments) == segments + 1  # all three in one write, before any answer
    assert events == []
    answers = [c.result(t, msgs) for t in txns]
    assert [a.name if a else None for a in answers] == ["_result"] * 3
    assert answers[2] is not None
    assert answers[2].args == [1.0]
    # onFCPublish carries the stream name, as FMLE expects
    fc = [cmd for cmd in c.commands(msgs) if cmd.name == "onFCPublish"]
    assert len(fc) == 1
    assert isinstance(fc[0].args[0], dict)
    assert fc[0].args[0]["description"] == "stream"

    c.publish(1, "stream?key=abc")
    events, msgs = h.pump()
    assert events == [PublishRequested(1, KEY, "key=abc", "live")]
    assert c.status_codes(msgs, stream_id=1) == ["NetStream.Publish.Start"]

    big = nalu(5, 10_000)  # several 4096-byte chunks each way
    c.send_media(1, MT.VIDEO, 0, avc_config())
    c.send_media(1, MT.VIDEO, 0, avc_frame(big, key=True, cts=66))
    c.send_media(1, MT.VIDEO, 33, avc_frame(nalu(1, 3000), key=False, cts=100))
    c.send_media(1, MT.VIDEO, 66, avc_frame(nalu(1, 50), key=False, cts=-33))
    got = packets(h.pump()[0])
    assert [(p.dts, p.pts, p.keyframe, p.is_config) for p in got] == [
        (0, 0, True, True), (0, 66, True, False), (33, 133, False, False),
        (66, 33, False, False)]
    assert got[1].payload == big


def test_connect_with_query_and_instance() -> None:
    h = Harness(decide_later)
    h.client.connect("live/inst?token=1", "rtmp://host/live/inst?token=1")
    (ev,), _ = h.pump()
    assert isinstance(ev, ConnectRequested)
    assert (ev.app, ev.query) == ("live/inst", "token=1")
    h.conn.accept_connect()
    h.flush()
    h.client.create_stream()
    h.client.publish(1, "cam")
    # createStream's answer is not awaited here: the server takes both in one write
    events, _ = h.pump()
    assert events == [PublishRequested(1, StreamKey("live", "inst", "cam"), "", "live")]


# -- refusals -----------------------------------------------------------------------------------


def test_reject_publish_sends_bad_name() -> None:
    h = connected(decide_later)
    h.client.create_stream()
    h.pump()
    h.client.publish(1, "stream")
    events, _ = h.pump()
    assert events == [PublishRequested(1, KEY, "", "live")]
    h.conn.reject_publish(1, "NetStream.Publish.BadName", "already publishing")
    msgs = h.flush()
    assert h.client.status_codes(msgs, stream_id=1) == ["NetStream.Publish.BadName"]
    assert h.conn.publishing == {}
    h.client.send_media(1, MT.VIDEO, 0, avc_config())
    assert h.pump() == ([], [])  # media on a stream that is not publishing is dropped


@pytest.mark.parametrize("name", ["a/b", "$x", ""])
def test_publish_with_a_bad_name_is_refused_without_an_event(name: str) -> None:
    h = connected()
    h.client.create_stream()
    h.client.publish(1, name)
    events, msgs = h.pump()
    assert events == []
    assert h.client.status_codes(msgs, stream_id=1) == ["NetStream.Publish.BadName"]


def test_reject_connect() -> None:
    h = Harness(decide_later)
    txn = h.client.connect("live", TC_URL)
    h.pump()
    h.conn.reject_connect("go away")
    msgs = h.flush()
    assert h.conn.state is State.CLOSED
    result = h.client.result(txn, msgs)
    assert result is not None
    assert result.name == "_error"
    assert isinstance(result.args[0], dict)
    assert result.args[0]["code"] == "NetConnection.Connect.Rejected"
    assert result.args[0]["description"] == "go away"
    h.client.create_stream()
    assert h.pump() == ([], [])  # a closed connection ignores everything


# -- play ---------------------------------------------------------------------------------------


def playing(policy: Callable[[RtmpServerConnection, list[SessionEvent]], None] = accept_all,
            ) -> Harness:
    h = connected(policy)
    h.client.create_stream()
    h.pump()
    h.client.play(1, "stream?token=x")
    return h


def test_play_flow() -> None:
    h = playing(decide_later)
    events, msgs = h.pump()
    assert events == [PlayRequested(1, KEY, "token=x")]
    assert msgs == []
    h.conn.accept_play(1, KEY)
    msgs = h.flush()
    assert summary(msgs) == ["STREAM_BEGIN(1)", "onStatus:NetStream.Play.Reset",
                             "onStatus:NetStream.Play.Start", "data:|RtmpSampleAccess",
                             "data:onStatus"]
    assert all(msg.stream_id == 1 for msg in msgs[1:])
    assert h.client.data_messages(msgs) == [
        (1, ["|RtmpSampleAccess", True, True]), (1, ["onStatus", {"code": "NetStream.Data.Start"}])]
    assert h.conn.playing == {1}

    h.conn.play_unpublished(1, KEY)
    assert summary(h.flush()) == ["onStatus:NetStream.Play.UnpublishNotify", "STREAM_EOF(1)"]
    h.conn.play_republished(1, KEY)
    assert summary(h.flush()) == ["STREAM_BEGIN(1)", "onStatus:NetStream.Play.PublishNotify"]


def test_reject_play() -> None:
    h = playing(decide_later)
    h.pump()
    h.conn.reject_play(1, "NetStream.Play.StreamNotFound", "not published")
    assert h.client.status_codes(h.flush(), stream_id=1) == ["NetStream.Play.StreamNotFound"]
    assert h.conn.playing == set()


MEDIA_PACKETS = [
    MediaPacket(stream=KEY, kind=TrackKind.DATA, codec=Codec.AMF0, dts=0, pts=0,
                timescale=1000, keyframe=False, is_config=True,
                payload=amf0.encode(["onMetaData", amf0.EcmaArray(FFMPEG_METADATA)])),
    MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=0, pts=0,
                timescale=1000, keyframe=True, is_config=True, payload=AVCC),
    MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0, pts=0,
                timescale=1000, keyframe=True, is_config=True, payload=ASC),
    MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=40, pts=120,
                timescale=1000, keyframe=True, is_config=False, payload=nalu(5, 9000)),
    MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=80, pts=40,
                timescale=1000, keyframe=False, is_config=False, payload=nalu(1, 100)),
    MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0x1_0000_0010,
                pts=0x1_0000_0010, timescale=1000, keyframe=True, is_config=False,
                payload=b"\x01" * 5000),
    MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=0x1234_5678,
                pts=0x1234_5678, timescale=1000, keyframe=False, is_config=False,
                payload=nalu(1, 4200)),
    MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=900_000,
                pts=903_600, timescale=90_000, keyframe=False, is_config=False,
                payload=nalu(1, 10)),
]


@pytest.mark.parametrize("pkt", MEDIA_PACKETS, ids=lambda p: f"{p.kind.name}-{p.dts}")
def test_media_message_bytes_decode_to_the_flv_tag(pkt: MediaPacket) -> None:
    wire = media_message_bytes(pkt, 1, 4096)
    decoder = ChunkDecoder()
    decoder.set_chunk_size(4096)
    decoder.receive_data(wire)
    msg = decoder.next_event()
    assert isinstance(msg, RtmpMessage)
    assert isinstance(decoder.next_event(), NeedData)
    type_id, ts, body = flv_tag_parts(pkt)
    assert (msg.type_id, msg.timestamp, msg.stream_id, msg.payload) == (
        type_id, ts & 0xFFFFFFFF, 1, body)


def test_media_bytes_interleave_with_session_output() -> None:
    """Shared media bytes and the session's own messages can go out in any order."""
    h = playing()
    h.pump()
    wire = [media_message_bytes(pkt, 1, h.conn.chunk_size) for pkt in MEDIA_PACKETS]
    h.client.send_ping(7)
    h.conn.receive_data(h.client.data_to_send())
    h.conn.play_unpublished(1, KEY)
    mixed = wire[0] + h.conn.data_to_send() + b"".join(wire[1:])
    msgs = h.client.receive(mixed)
    assert summary(msgs)[:3] == ["data:onMetaData", "PING_RESPONSE(7)",
                                 "onStatus:NetStream.Play.UnpublishNotify"]
    media = [msg for msg in msgs if msg.type_id in (MT.AUDIO, MT.VIDEO)]
    assert [msg.payload for msg in media] == [flv_tag_parts(p)[2] for p in MEDIA_PACKETS[1:]]


# -- ending streams -----------------------------------------------------------------------------


def _end(h: Harness, how: str, stream_id: int) -> tuple[list[SessionEvent], list[RtmpMessage]]:
    c = h.client
    if how == "deleteStream":
        c.delete_stream(stream_id)
    elif how == "FCUnpublish":
        c.fc_unpublish("stream")
    else:
        c.close_stream(stream_id)
    return h.pump()


@pytest.mark.parametrize("how", ["deleteStream", "FCUnpublish", "closeStream"])
def test_publish_ends(how: str) -> None:
    h = publishing()
    events, msgs = _end(h, how, 1)
    assert events == [PublishEnded(1, KEY)]
    assert "NetStream.Unpublish.Success" in h.client.status_codes(msgs, stream_id=1)
    assert h.conn.publishing == {}
    h.client.send_media(1, MT.AUDIO, 0, aac_config())
    assert h.pump()[0] == []


def test_ffmpeg_teardown_ends_the_publish_once() -> None:
    h = publishing()
    h.client.fc_unpublish("stream")
    h.client.delete_stream(1)
    events, _ = h.pump()
    assert events == [PublishEnded(1, KEY)]
    h.client.publish(1, "stream")  # the stream is gone
    with pytest.raises(RtmpProtocolError, match="not created"):
        h.pump()


@pytest.mark.parametrize("how", ["deleteStream", "closeStream"])
def test_play_ends(how: str) -> None:
    h = playing()
    h.pump()
    events, _ = _end(h, how, 1)
    assert events == [PlayEnded(1)]
    assert h.conn.playing == set()


def test_close_ends_everything() -> None:
    h = publishing()
    h.client.create_stream()
    h.pump()
    h.client.play(2, "other")
    events, _ = h.pump()
    assert events == [PlayRequested(2, StreamKey("live", "_definst_", "other"), "")]
    h.conn.play_unpublished(2, StreamKey("live", "_definst_", "other"))  # dropped by close()
    assert h.conn.close() == [PublishEnded(1, KEY), PlayEnded(2)]
    assert h.conn.state is State.CLOSED
    assert not h.conn.has_output
    assert h.conn.data_to_send() == b""
    assert h.conn.publishing == {}
    assert h.conn.playing == set()
    h.client.send_media(1, MT.AUDIO, 0, aac_config())
    assert h.conn.receive_data(h.client.data_to_send()) == []
    assert h.conn.close() == []


# -- acknowledgements, pings --------------------------------------------------------------------


def test_acknowledgements_count_bytes() -> None:
    h = publishing()
    h.client.send_window_ack_size(1000)
    acks: list[tuple[int, int]] = []  # (sequence number, bytes fed when it was sent)
    h.pump()
    for i in range(10):
        h.client.send_media(1, MT.AUDIO, i * 21, aac_frame(bytes(498)))  # 500-byte bodies
        _, msgs = h.pump()
        acks += [(m.parse_u32(a), h.bytes_fed) for a in of_type(msgs, MT.ACKNOWLEDGEMENT)]
    assert len(acks) >= 5
    assert all(seq == fed for seq, fed in acks)
    seqs = [seq for seq, _ in acks]
    assert all(b - a >= 1000 for a, b in itertools.pairwise(seqs))
    assert seqs[-1] > h.bytes_fed - 1000


def test_no_acknowledgements_without_window() -> None:
    h = publishing()
    for i in range(10):
        h.client.send_media(1, MT.AUDIO, i * 21, aac_frame(bytes(498)))
    assert of_type(h.pump()[1], MT.ACKNOWLEDGEMENT) == []


def test_ping() -> None:
    h = connected()
    h.client.send_ping(0xDEADBEEF)
    _, msgs = h.pump()
    assert h.client.user_controls(msgs) == [(UC.PING_RESPONSE, 0xDEADBEEF)]


def test_set_buffer_length_and_unknown_messages_are_ignored() -> None:
    h = playing()
    h.pump()
    h.client.send(RtmpMessage(2, 0, MT.USER_CONTROL, 0, struct.pack(">HII", 3, 1, 3000)))
    h.client.send(RtmpMessage(2, 0, MT.SET_PEER_BANDWIDTH, 0, struct.pack(">IB", 5000, 2)))
    h.client.send(RtmpMessage(2, 0, MT.ACKNOWLEDGEMENT, 0, struct.pack(">I", 12345)))
    h.client.send(RtmpMessage(5, 0, MT.SHARED_OBJECT_AMF0, 0, b"whatever"))
    h.client.send(RtmpMessage(5, 0, 99, 0, b"unknown type"))
    assert h.pump() == ([], [])


def test_abort_drops_a_partial_message() -> None:
    h = publishing()
    # Half of a 200-byte video message on csid 10 (chunk size 128), then Abort(10).
    header = bytes((10,)) + bytes(3) + (200).to_bytes(3, "big") + bytes((9,)) + (1).to_bytes(
        4, "little")
    h.client.send_raw(header + bytes(128))
    h.client.send(RtmpMessage(2, 0, MT.ABORT, 0, struct.pack(">I", 10)))
    h.client.send_raw(bytes((10,)) + bytes(3) + (len(aac_config())).to_bytes(3, "big")
                      + bytes((8,)) + (1).to_bytes(4, "little") + aac_config())
    got = packets(h.pump()[0])
    assert [(p.kind, p.is_config) for p in got] == [(TrackKind.AUDIO, True)]


def test_refused_codec_is_reported_once_per_track() -> None:
    h = publishing()
    for ts in (0, 40, 80):
        h.client.send_media(1, MT.VIDEO, ts, b"\x12" + bytes(20))  # Sorenson H.263
        h.client.send_media(1, MT.AUDIO, ts, b"\x2f" + bytes(20))  # MP3
    events, _ = h.pump()
    assert [type(ev) for ev in events] == [MediaRefused, MediaRefused]


def test_skippable_media_bodies() -> None:
    h = publishing()
    h.client.send_media(1, MT.VIDEO, 0, b"")  # empty keep-alive
    h.client.send_media(1, MT.AUDIO, 0, b"")
    h.client.send_media(1, MT.VIDEO, 0, b"\x57\x00")  # command frame (frame type 5)
    h.client.send_media(1, MT.VIDEO, 0, b"\x17\x02\x00\x00\x00")  # AVC end of sequence
    assert h.pump() == ([], [])


def test_aggregate_message() -> None:
    h = publishing()

    def tag(type_id: int, ts: int, body: bytes) -> bytes:
        head = bytes((type_id,)) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(
            3, "big") + bytes((ts >> 24,)) + bytes(3)
        return head + body + (11 + len(body)).to_bytes(4, "big")

    body = (tag(9, 5000, avc_config()) + tag(8, 5000, aac_config())
            + tag(18, 5010, amf0.encode(["onCuePoint"]))  # skipped
            + tag(9, 5040, avc_frame(nalu(5, 100), key=True, cts=40)))
    h.client.send_media(1, MT.AGGREGATE, 1000, body)
    got = packets(h.pump()[0])
    assert [(p.kind, p.dts, p.pts) for p in got] == [
        (TrackKind.VIDEO, 1000, 1000), (TrackKind.AUDIO, 1000, 1000),
        (TrackKind.VIDEO, 1040, 1080)]


# -- timestamps ---------------------------------------------------------------------------------


def test_timestamp_wrap_gives_monotonic_dts() -> None:
    h = publishing()
    wire = [0xFFFFFF00, 0xFFFFFF40, 0xFFFFFFC0, 0x00000000, 0x00000080, 0x00000100]
    for ts in wire:
        h.client.send_media(1, MT.VIDEO, ts, avc_frame(nalu(1, 300), key=False, cts=-20))
        h.client.send_media(1, MT.AUDIO, ts, aac_frame(bytes(10)))
    got = packets(h.pump()[0])
    for kind in (TrackKind.VIDEO, TrackKind.AUDIO):
        dts = [p.dts for p in got if p.kind is kind]
        assert dts == [0xFFFFFF00, 0xFFFFFF40, 0xFFFFFFC0, 1 << 32, (1 << 32) + 0x80,
                       (1 << 32) + 0x100]
    assert [p.pts - p.dts for p in got if p.kind is TrackKind.VIDEO] == [-20] * 6


@pytest.mark.parametrize("size", [10, 300, 5000])
def test_extended_timestamps_survive(size: int) -> None:
    h = publishing()
    wire = [0x01000000, 0x01000021, 0x01000042, 0x01000063, 0x7FFFFFFF, 0x80000020]
    for ts in wire:
        h.client.send_media(1, MT.VIDEO, ts, avc_frame(nalu(1, size), key=False))
    got = packets(h.pump()[0])
    assert [p.dts for p in got] == wire
    assert all(p.payload == nalu(1, size) for p in got)


def test_timestamp_step_backwards_is_not_a_wrap() -> None:
    h = publishing()
    for ts in (5000, 4990, 6000):
        h.client.send_media(1, MT.AUDIO, ts, aac_frame(b"x"))
    assert [p.dts for p in packets(h.pump()[0])] == [5000, 4990, 6000]


# -- other commands -----------------------------------------------------------------------------


def test_unknown_command_with_transaction_id_gets_an_error() -> None:
    h = connected()
    txn = h.client.call("noSuchThing", None, "arg")
    events, msgs = h.pump()
    assert events == []
    result = h.client.result(txn, msgs)
    assert result is not None
    assert result.name == "_error"
    assert isinstance(result.args[0], dict)
    assert result.args[0]["code"] == "NetConnection.Call.Failed"


def test_unknown_command_without_transaction_id_is_ignored() -> None:
    h = connected()
    h.client.call("noSuchThing", None, transaction_id=0.0)
    assert h.pump() == ([], [])


@pytest.mark.parametrize("name", ["getStreamLength", "_checkbw"])
def test_player_commands_get_a_result(name: str) -> None:
    h = connected()
    h.client.create_stream()
    h.pump()
    txn = h.client.call(name, None, "stream")
    _, msgs = h.pump()
    result = h.client.result(txn, msgs)
    assert result is not None
    assert result.name == "_result"


@pytest.mark.parametrize("name", ["receiveAudio", "receiveVideo", "pause", "seek",
                                  "FCUnsubscribe", "_result", "onBWDone"])
def test_ignored_commands(name: str) -> None:
    h = playing()
    h.pump()
    h.client.call(name, None, True, stream_id=1)
    assert h.pump() == ([], [])


def test_create_stream_limit() -> None:
    h = connected()
    txns = [h.client.create_stream() for _ in range(17)]
    _, msgs = h.pump()
    answers = [h.client.result(t, msgs) for t in txns]
    assert [a.args[0] if a else None for a in answers[:16]] == [float(i) for i in range(1, 17)]
    assert answers[16] is not None
    assert answers[16].name == "_error"


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x06" + bytes(1536), b"\x00"])
def test_garbage_instead_of_a_handshake(garbage: bytes) -> None:
    with pytest.raises(RtmpProtocolError, match="RTMP"):
        RtmpServerConnection().receive_data(garbage)


def _after_handshake() -> Harness:
    h = Harness()
    h.pump()
    assert h.conn.state is State.AWAIT_CONNECT
    return h


def test_publish_without_connect() -> None:
    h = _after_handshake()
    h.client.publish(1, "stream")
    with pytest.raises(RtmpProtocolError, match="publish before connect"):
        h.pump()


def test_create_stream_while_connect_is_pending() -> None:
    h = Harness(decide_later)
    h.client.connect("live", TC_URL)
    h.client.create_stream()
    with pytest.raises(RtmpProtocolError, match="createStream before connect"):
        h.pump()


def test_play_before_create_stream() -> None:
    h = connected()
    h.client.play(1, "stream")
    with pytest.raises(RtmpProtocolError, match="not created"):
        h.pump()


def test_publish_twice_on_one_stream() -> None:
    h = publishing()
    h.client.publish(1, "stream")
    with pytest.raises(RtmpProtocolError, match="already in use"):
        h.pump()


def test_connect_twice() -> None:
    h = connected()
    h.client.connect("live", TC_URL)
    with pytest.raises(RtmpProtocolError, match="connect sent twice"):
        h.pump()


@pytest.mark.parametrize("props", [{"app": 1.0}, {"tcUrl": TC_URL}])
def test_connect_without_app(props: dict[str, amf0.Value]) -> None:
    h = _after_handshake()
    h.client.call("connect", props)
    with pytest.raises(RtmpProtocolError, match="without an app"):
        h.pump()


@pytest.mark.parametrize("values", [[1.0, 2.0], ["name"], [], ["name", "not a txn"]])
def test_command_without_a_name_or_transaction(values: list[amf0.Value]) -> None:
    h = connected()
    h.client.send(RtmpMessage(3, 0, MT.COMMAND_AMF0, 0, amf0.encode(values)))
    with pytest.raises(RtmpProtocolError, match="command"):
        h.pump()


def test_deeply_nested_amf_in_connect() -> None:
    depth = 10_000
    nested = b"\x03" + b"\x00\x01a\x03" * (depth - 1) + b"\x00\x00\x09" * depth
    h = _after_handshake()
    h.client.send(RtmpMessage(3, 0, MT.COMMAND_AMF0, 0,
                              amf0.encode(["connect", 1.0]) + nested))
    with pytest.raises(RtmpProtocolError, match="bad AMF"):
        h.pump()


@pytest.mark.parametrize("size", [0, 2**31, 0xFFFFFFFF])
def test_bad_set_chunk_size(size: int) -> None:
    h = connected()
    h.client.send_set_chunk_size(size, apply=False)
    with pytest.raises(RtmpProtocolError, match="chunk size"):
        h.pump()


@pytest.mark.parametrize("type_id", [MT.SET_CHUNK_SIZE, MT.ABORT, MT.WINDOW_ACK_SIZE,
                                     MT.USER_CONTROL])
def test_short_control_messages(type_id: int) -> None:
    h = connected()
    h.client.send(RtmpMessage(2, 0, type_id, 0, b"\x00\x01"))
    with pytest.raises(RtmpProtocolError, match="short"):
        h.pump()


def test_message_above_max_message_bytes() -> None:
    h = publishing(max_message_bytes=4096)
    h.client.send_media(1, MT.VIDEO, 0, avc_frame(nalu(1, 4000), key=True))  # 4013 bytes: fine
    assert len(packets(h.pump()[0])) == 1
    h.client.send_media(1, MT.VIDEO, 40, avc_frame(nalu(1, 4100), key=True))
    with pytest.raises(RtmpProtocolError, match="exceeds"):
        h.pump()


@pytest.mark.parametrize("chunk_size", [128, 0xFFFFFF])
def test_huge_declared_message_just_waits(chunk_size: int) -> None:
    """The default limit (16 MiB) admits a 0xFFFFFF-byte message; until it completes the
    session needs data, buffering no more than it was sent."""
    h = publishing()
    if chunk_size != 128:
        h.client.send_set_chunk_size(chunk_size)
    h.pump()
    header = bytes((6,)) + bytes(3) + b"\xff\xff\xff\x09" + (1).to_bytes(4, "little")
    pieces = [header + b"\x17\x01" + bytes(chunk_size - 2 if chunk_size == 128 else 126)]
    filler = bytes(128) if chunk_size == 128 else bytes(1 << 16)
    pieces += [(b"\xc6" if chunk_size == 128 else b"") + filler] * 200
    for piece in pieces:
        assert h.conn.receive_data(piece) == []
    assert h.conn.data_to_send() == b""
    assert h.conn.state is State.CONNECTED


def test_aggregate_with_truncated_sub_tag() -> None:
    h = publishing()
    sub = b"\x09" + (100).to_bytes(3, "big") + bytes(7) + avc_config()[:50]
    h.client.send_media(1, MT.AGGREGATE, 0, sub)
    with pytest.raises(RtmpProtocolError, match="truncated aggregate"):
        h.pump()


@pytest.mark.parametrize("body", [b"\x17\x01\x00", b"\x17", b"\x27\x03\x00\x00\x00",
                                  b"\x90avc", b"\xaf"])
def test_malformed_media_body(body: bytes) -> None:
    h = publishing()
    type_id = MT.AUDIO if body[0] == 0xAF else MT.VIDEO
    h.client.send_media(1, type_id, 0, body)
    with pytest.raises(RtmpProtocolError, match="bad media message"):
        h.pump()


def test_publish_end_is_reported_even_if_the_same_read_fails() -> None:
    h = publishing()
    h.client.delete_stream(1)
    h.client.send_set_chunk_size(0, apply=False)  # garbage in the same TCP read
    reported: list[SessionEvent] = []
    with pytest.raises(RtmpProtocolError):
        reported += h.conn.receive_data(h.client.data_to_send())
    reported += h.conn.close()  # what the shell does after a protocol error
    assert reported.count(PublishEnded(1, KEY)) == 1


@pytest.mark.parametrize("stream_id", [float("nan"), float("inf")])
def test_delete_stream_with_non_finite_id(stream_id: float) -> None:
    h = connected()
    h.client.call("deleteStream", None, stream_id)
    with contextlib.suppress(RtmpProtocolError):
        h.pump()


def test_huge_unknown_command_name() -> None:
    h = connected()
    h.client.send_set_chunk_size(0xFFFFFF)
    h.client.call("x" * (0xFFFFFF - 40))
    with contextlib.suppress(RtmpProtocolError):
        h.pump()


# -- properties ---------------------------------------------------------------------------------


@functools.cache
def _prefix(publish: bool) -> tuple[bytes, ...]:
    """Client writes up to connected (and publishing on stream 1), for replays."""
    h = publishing() if publish else connected()
    return tuple(h.segments)


def _replay(segments: Sequence[bytes], cuts: Sequence[Sequence[int]] | None = None,
            ) -> tuple[RtmpServerConnection, list[str], bytes]:
    """Feed recorded client writes, each cut at `cuts[i]` (sorted offsets), accepting every
    request as `pump` did. Returns the connection, event reprs and output without S1."""
    conn = RtmpServerConnection()
    events: list[str] = []
    out = bytearray()
    for i, seg in enumerate(segments):
        bounds = [0, *(cuts[i] if cuts is not None else ()), len(seg)]
        for a, b in itertools.pairwise(bounds):
            new = conn.receive_data(seg[a:b])
            accept_all(conn, new)
            events += map(repr, new)
            out += conn.data_to_send()
    return conn, events, bytes(out[:1] + out[1 + 1536:])  # S1 is random; S2 echoes our C1


FUZZ_SETTINGS = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("publish", [False, True], ids=["connected", "publishing"])
@FUZZ_SETTINGS
@given(data=st.binary(min_size=1, max_size=3000), cut=st.integers(1, 3000))
def test_arbitrary_bytes_only_raise_protocol_errors(publish: bool, data: bytes,
                                                    cut: int) -> None:
    conn, _, _ = _replay(_prefix(publish))
    with contextlib.suppress(RtmpProtocolError):
        conn.receive_data(data[:cut])
        if data[cut:]:
            conn.receive_data(data[cut:])
        conn.receive_data(b"")  # EOF


_TYPE_IDS = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22]) | st.integers(0, 255)
_MESSAGES = st.lists(st.tuples(_TYPE_IDS, st.integers(0, 2), st.integers(0, 0xFFFFFFFF),
                               st.binary(max_size=600)), max_size=8)


@FUZZ_SETTINGS
@given(msgs=_MESSAGES)
def test_arbitrary_messages_only_raise_protocol_errors(
        msgs: list[tuple[int, int, int, bytes]]) -> None:
    """Well-framed messages of any type with arbitrary payloads, on a publishing stream."""
    conn, _, _ = _replay(_prefix(True))
    client = RtmpTestClient()
    for type_id, stream_id, ts, payload in msgs:
        client.send(RtmpMessage(3 + type_id % 60, ts, type_id, stream_id, payload))
    client.skip_handshake()
    with contextlib.suppress(RtmpProtocolError):
        conn.receive_data(client.data_to_send())


_AMF_SCALARS = (st.none() | st.booleans() | st.floats() | st.text(max_size=20)
                | st.just(amf0.UNDEFINED))


@FUZZ_SETTINGS
@given(name=st.sampled_from(["connect", "createStream", "publish", "play", "deleteStream",
                             "closeStream", "FCPublish", "FCUnpublish", "releaseStream",
                             "getStreamLength", "_checkbw", "receiveAudio", "pause", "x"]),
       txn=st.floats(allow_nan=False, allow_infinity=False),
       args=st.lists(_AMF_SCALARS | st.dictionaries(st.text(max_size=8), _AMF_SCALARS,
                                                    max_size=4), max_size=4),
       stream_id=st.integers(0, 3))
def test_arbitrary_commands_only_raise_protocol_errors(
        name: str, txn: float, args: list[amf0.Value], stream_id: int) -> None:
    conn, _, _ = _replay(_prefix(True))
    client = RtmpTestClient()
    client.call(name, *args, stream_id=stream_id, transaction_id=txn)
    client.skip_handshake()
    with contextlib.suppress(RtmpProtocolError):
        for ev in conn.receive_data(client.data_to_send()):
            accept_all(conn, [ev])


@functools.cache
def _scenario() -> tuple[bytes, ...]:
    """A varied session: OBS-style start, publish with media, pings, a chunk size change,
    an aggregate, wrapping and extended timestamps, a play on a second stream, teardown."""
    h = Harness()
    c = h.client
    c.send_set_chunk_size(256)
    c.connect("live", TC_URL, **OBS_CONNECT)
    h.pump()
    c.release_stream("stream")
    c.fc_publish("stream")
    c.create_stream()
    h.pump()
    c.publish(1, "stream")
    h.pump()
    c.send_metadata(1, FFMPEG_METADATA)
    base = 0xFFFFFF00  # the 32-bit timestamps wrap at i = 7
    c.send_media(1, MT.VIDEO, base, avc_config())
    c.send_media(1, MT.AUDIO, base, aac_config())
    for i in range(12):
        ts = base + i * 40 if i < 8 else 0x01000000 + i * 40
        c.send_media(1, MT.VIDEO, ts, avc_frame(nalu(5 if i % 6 == 0 else 1, 700 + 300 * i),
                                                key=i % 6 == 0, cts=40 - 20 * (i % 3)))
        c.send_media(1, MT.AUDIO, ts + 3, aac_frame(bytes(range(i, i + 150))))
        if i == 4:
            c.send_ping(i)
            c.send_set_chunk_size(1000)
    agg = (b"\x08" + (3).to_bytes(3, "big") + bytes(7) + aac_frame(b"z")
           + (14).to_bytes(4, "big"))
    c.send_media(1, MT.AGGREGATE, 0x01001000, agg)
    c.create_stream()
    h.pump()
    c.play(2, "other?x=1")
    c.send(m.user_control(UC.SET_BUFFER_LENGTH, 2, 3000))
    h.pump()
    c.close_stream(2)
    c.fc_unpublish("stream")
    c.delete_stream(1)
    h.pump()
    for kind in (TrackKind.VIDEO, TrackKind.AUDIO):
        dts = [p.dts for p in packets(h.events) if p.kind is kind]
        assert dts == sorted(dts)
        assert dts[0] == base
        assert dts[-1] > 1 << 32  # wrapped, then jumped
    kinds = [type(ev).__name__ for ev in h.events]
    assert kinds.count("MediaReceived") == 28
    assert kinds[-2:] == ["PlayEnded", "PublishEnded"]
    return tuple(h.segments)


def test_scenario_fed_whole_and_byte_by_byte() -> None:
    segments = _scenario()
    _, events, out = _replay(segments)
    assert len(events) == 33
    byte_cuts = [range(1, len(seg)) for seg in segments]
    _, events_bytewise, out_bytewise = _replay(segments, byte_cuts)
    assert events_bytewise == events
    assert out_bytewise == out


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_split_invariance(data: st.DataObject) -> None:
    segments = _scenario()
    _, events, out = _replay(segments)
    cuts = [sorted(data.draw(st.sets(st.integers(1, len(seg) - 1), max_size=30)))
            if len(seg) > 1 else [] for seg in segments]
    _, events_cut, out_cut = _replay(segments, cuts)
    assert events_cut == events
    assert out_cut == out
