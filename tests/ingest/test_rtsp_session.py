"""The RTSP connection core: conversations as ffmpeg and GStreamer hold them, byte for byte."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from ingest.rtsp import aac as rtp_aac
from ingest.rtsp import h264 as rtp_h264
from ingest.rtsp import session as s
from ingest.rtsp.message import InterleavedFrame, RtspProtocolError, RtspReader, interleaved
from ingest.rtsp.play import Packetizer, play_tracks
from ingest.rtsp.rtp import build_rtp, build_sender_report
from media.codecs import avc

SDP = (Path(__file__).parent / "sdp" / "ffmpeg-announce.sdp").read_bytes()
URL = "rtsp://127.0.0.1:8554/live/cam"
KEY = StreamKey("live", "_definst_", "cam")
SPS, PPS = (base64.b64decode(x) for x in (
    "Z2QAFKzZQUH7ARAAAAMAEAAAAwPA8UKZYA==", "aOvjyyLA"))
IDR = bytes((0x65,)) + bytes(range(256)) * 12  # larger than one packet: FU-A
P_SLICE = bytes((0x41,)) + b"\x9a" * 300


def request(method: str, url: str, cseq: int, headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}", "User-Agent: Lavf61.1.100"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def connection() -> s.RtspServerConnection:
    counter = itertools.count(1000)
    return s.RtspServerConnection(session_id="abc123", random32=lambda: next(counter),
                                  packetizer=Packetizer())


def answers(conn: s.RtspServerConnection) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses sent so far, parsed: (status, headers, body)."""
    out = []
    data = conn.data_to_send()
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return out


def publish_setup() -> bytes:
    """What ffmpeg sends to publish, up to and including RECORD."""
    sdp_headers = {"Content-Type": "application/sdp"}
    return b"".join([
        request("OPTIONS", URL, 1),
        request("ANNOUNCE", URL, 2, sdp_headers, SDP),
        request("SETUP", URL + "/streamid=0", 3,
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"}),
        request("SETUP", URL + "/streamid=1", 4,
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record",
                 "Session": "abc123"}),
        request("RECORD", URL, 5, {"Range": "npt=0.000-", "Session": "abc123"}),
    ])


def media_frames() -> bytes:
    """Sender reports, then two video frames (IDR split in FU-A, P) and three AAC frames."""
    out = [interleaved(1, build_sender_report(1, 1000.0, 90_000, 0, 0)),
           interleaved(3, build_sender_report(2, 1000.0, 44_100, 0, 0))]
    seq = 0
    for ts, nals in ((90_000, [SPS, PPS, IDR]), (93_000, [P_SLICE])):
        payloads = rtp_h264.packetize(nals)
        for i, p in enumerate(payloads):
            out.append(interleaved(0, build_rtp(96, i == len(payloads) - 1, seq, ts, 1, p)))
            seq += 1
    for i in range(3):
        for payload, marker, _ in rtp_aac.packetize([bytes((0x21, i)) * 50]):
            out.append(interleaved(2, build_rtp(97, marker, i, 44_100 + 1024 * i, 2, payload)))
    return b"".join(out)


def run_publish(chunks: list[bytes]) -> tuple[s.RtspServerConnection, list[s.SessionEvent]]:
    conn = connection()
    events: list[s.SessionEvent] = []
    for chunk in chunks:
        for ev in conn.receive_data(chunk, now=5.0):
            events.append(ev)
            if isinstance(ev, s.AnnounceRequested):
                events += conn.accept_announce()
    return conn, events


def test_ffmpeg_publish_conversation() -> None:
    conn, events = run_publish([publish_setup()])
    assert events[0] == s.AnnounceRequested(KEY, "", ())
    assert events[1] == s.RecordStarted(KEY)
    got = answers(conn)
    assert [status for status, _, _ in got] == [200] * 5
    assert [h["cseq"] for _, h, _ in got] == ["1", "2", "3", "4", "5"]
    assert "ANNOUNCE" in got[0][1]["public"]
    assert "RECORD" in got[0][1]["public"]
    assert got[2][1]["transport"] == "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"
    assert got[2][1]["session"] == "abc123;timeout=60"
    assert "session" not in got[1][1]  # no session before the first SETUP

    media = [e.packet for e in conn.receive_data(media_frames(), now=5.1)
             if isinstance(e, s.MediaReceived)]
    video = [p for p in media if p.kind is TrackKind.VIDEO]
    audio = [p for p in media if p.kind is TrackKind.AUDIO]
    assert [p.is_config for p in video] == [True, False, False]
    assert avc.parse_avcc(video[0].payload).sps == (SPS,)
    assert video[1].keyframe
    assert avc.split_avcc(video[1].payload) == [IDR]
    assert video[1].timescale == 90_000
    assert [p.is_config for p in audio] == [True, False, False, False]
    assert audio[0].payload == bytes.fromhex("1210")
    assert [p.payload for p in audio[1:]] == [bytes((0x21, i)) * 50 for i in range(3)]
    # Both tracks' sender reports say the same instant: they start together, 0.2 s in.
    assert video[1].pts / 90_000 == pytest.approx(0.2, abs=1e-3)
    assert audio[1].pts / 44_100 == pytest.approx(0.2, abs=1e-3)
    assert [p.dts for p in audio[1:]] == [audio[1].dts + 1024 * i for i in range(3)]

    conn.receive_data(request("TEARDOWN", URL, 6, {"Session": "abc123"}), now=6.0)
    assert conn.state is s.State.CLOSED
    assert conn.close() == []  # the publication ended with TEARDOWN, once


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_publish_split_invariance(data: st.DataObject) -> None:
    """However TCP cuts the bytes, the same events come out."""
    stream = publish_setup() + media_frames()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=30)))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    _, whole = run_publish([stream])
    _, split = run_publish(chunks)
    assert split == whole


def test_teardown_and_close_end_the_publication() -> None:
    conn, _ = run_publish([publish_setup()])
    assert conn.close() == [s.PublishEnded(KEY)]


def play_conversation(conn: s.RtspServerConnection) -> list[s.SessionEvent]:
    events = conn.receive_data(request("DESCRIBE", URL, 1, {"Accept": "application/sdp"}), 1.0)
    assert events == [s.DescribeRequested(KEY, "")]
    configs = [
        MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=0, pts=0,
                    timescale=1000, keyframe=True, is_config=True,
                    payload=avc.build_avcc([SPS], [PPS])),
        MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0, pts=0,
                    timescale=1000, keyframe=True, is_config=True,
                    payload=bytes.fromhex("1210"))]
    tracks, skipped = play_tracks(configs)
    assert skipped == []
    events = conn.accept_describe(tracks, "cam")
    events += conn.receive_data(b"".join([
        request("SETUP", URL + "/trackID=0", 2,
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}),
        request("SETUP", URL + "/trackID=1", 3,
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=2-3", "Session": "abc123"}),
        request("PLAY", URL + "/", 4, {"Range": "npt=0.000-", "Session": "abc123"}),
    ]), 1.1)
    return events


def test_play_conversation_and_rtp_round_trip() -> None:
    conn = connection()
    events = play_conversation(conn)
    got = answers(conn)
    assert [status for status, _, _ in got] == [200, 200, 200, 200]
    describe = got[0]
    assert describe[1]["content-base"] == URL + "/"
    assert describe[1]["content-type"] == "application/sdp"
    sdp = describe[2].decode()
    assert "a=rtpmap:96 H264/90000" in sdp
    assert "sprop-parameter-sets=Z2QAFKzZQUH7ARAAAAMAEAAAAwPA8UKZYA==,aOvjyyLA" in sdp
    assert "profile-level-id=640014" in sdp
    assert "a=rtpmap:97 MPEG4-GENERIC/44100/2" in sdp
    assert "config=1210" in sdp
    assert got[1][1]["transport"] == "RTP/AVP/TCP;unicast;interleaved=0-1"
    play = got[3][1]
    assert play["range"] == "npt=0.000-"
    assert play["rtp-info"].startswith(f"url={URL}/trackID=0;seq=")
    started = events[-1]
    assert isinstance(started, s.PlayStarted)

    # What the player is sent reads back, through our own publish side, as what was sent.
    sent = [
        MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=1000, pts=1040,
                    timescale=1000, keyframe=True, is_config=False,
                    payload=avc.annexb_to_avcc(b"\x00\x00\x00\x01" + IDR)),
        MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=1010, pts=1010,
                    timescale=1000, keyframe=True, is_config=False, payload=b"\x21" * 700),
        MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=1033, pts=1073,
                    timescale=1000, keyframe=False, is_config=False,
                    payload=avc.annexb_to_avcc(b"\x00\x00\x00\x01" + P_SLICE)),
        MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=1066, pts=1106,
                    timescale=1000, keyframe=False, is_config=False,
                    payload=avc.annexb_to_avcc(b"\x00\x00\x00\x01" + P_SLICE)),
    ]
    wire = b"".join(started.player.mux(p) for p in sent)
    reader = RtspReader()
    reader.receive_data(wire)
    receiver = connection()
    receiver.receive_data(publish_setup(), 0.0)
    receiver.accept_announce()
    frames = []
    while isinstance(item := reader.next_event(), InterleavedFrame):
        assert item.channel in (0, 2)
        frames += [e.packet for e in receiver.receive_data(interleaved(item.channel, item.data),
                                                            0.0)
                   if isinstance(e, s.MediaReceived) and not e.packet.is_config]
    video = [p for p in frames if p.kind is TrackKind.VIDEO]
    assert [avc.split_avcc(p.payload)[-1] for p in video] == [IDR, P_SLICE, P_SLICE]
    # The keyframe carried its parameter sets in band.
    assert avc.split_avcc(video[0].payload) == [IDR]
    assert video[1].pts - video[0].pts == 33 * 90
    assert [p.payload for p in frames if p.kind is TrackKind.AUDIO] == [b"\x21" * 700]
    assert started.player.sender_reports(1000.0).count(b"$") == 2
    assert started.player.bye().count(b"$") == 2


def test_play_pause_and_teardown() -> None:
    conn = connection()
    events = play_conversation(conn)
    assert isinstance(events[-1], s.PlayStarted)
    player = events[-1].player
    assert conn.receive_data(request("PAUSE", URL, 5, {"Session": "abc123"}), 2.0) == [
        s.PlayPaused(KEY, player)]
    events = conn.receive_data(request("PLAY", URL, 6, {"Session": "abc123"}), 2.5)
    assert isinstance(events[0], s.PlayStarted)
    assert conn.receive_data(request("TEARDOWN", URL, 7, {"Session": "abc123"}), 3.0) == [
        s.PlayPaused(KEY, events[0].player)]
    assert conn.state is s.State.CLOSED


def test_requests_wait_behind_an_undecided_describe() -> None:
    conn = connection()
    events = conn.receive_data(request("DESCRIBE", URL, 1) + request("OPTIONS", URL, 2), 0.0)
    assert events == [s.DescribeRequested(KEY, "")]
    assert answers(conn) == []
    conn.refuse(404)
    assert [(status, h["cseq"]) for status, h, _ in answers(conn)] == [(404, "1"), (200, "2")]


@pytest.mark.parametrize(("data", "status"), [
    (request("SETUP", URL + "/streamid=0", 1,
             {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}), 455),
    (request("PLAY", URL, 1), 455),
    (request("RECORD", URL, 1), 455),
    (request("ANNOUNCE", URL, 1, {"Content-Type": "text/plain"}, b"hello"), 415),
    (request("ANNOUNCE", URL, 1, {"Content-Type": "application/sdp"}, b"v=0\r\n"), 400),
    (request("ANNOUNCE", URL, 1, {"Content-Type": "application/sdp"},
             b"v=0\r\nm=audio 0 RTP/AVP 8\r\n"), 415),
    (request("ANNOUNCE", "rtsp://127.0.0.1/onlyone", 1, {"Content-Type": "application/sdp"},
             SDP), 404),
    (request("DESCRIBE", "rtsp://127.0.0.1/a/b/c/d", 1), 404),
    (request("FROBNICATE", URL, 1), 501),
])
def test_refused_requests(data: bytes, status: int) -> None:
    conn = connection()
    events = conn.receive_data(data, 0.0)
    assert [st for st, _, _ in answers(conn)] == [status]
    assert all(isinstance(e, s.Warning) for e in events)


def test_udp_is_refused_with_461() -> None:
    conn = connection()
    conn.receive_data(request("ANNOUNCE", URL, 1, {"Content-Type": "application/sdp"}, SDP),
                      0.0)
    conn.accept_announce()
    answers(conn)
    events = conn.receive_data(request("SETUP", URL + "/streamid=0", 2, {
        "Transport": "RTP/AVP;unicast;client_port=5000-5001;mode=record"}), 0.0)
    assert [st for st, _, _ in answers(conn)] == [461]
    assert isinstance(events[0], s.Warning)
    assert "TCP" in events[0].text


def test_wrong_session_is_454() -> None:
    conn, _ = run_publish([publish_setup()])
    answers(conn)
    conn.receive_data(request("GET_PARAMETER", URL, 9, {"Session": "nope"}), 0.0)
    assert [st for st, _, _ in answers(conn)] == [454]


def test_bad_input_on_the_wire() -> None:
    conn = connection()
    with pytest.raises(RtspProtocolError):
        conn.receive_data(b"HELLO\r\n\r\n", 0.0)
    assert [st for st, _, _ in answers(conn)] == [400]
    conn = connection()
    with pytest.raises(RtspProtocolError):
        conn.receive_data(request("ANNOUNCE", URL, 1, {"Content-Length": str(2 << 30)}), 0.0)
    assert [st for st, _, _ in answers(conn)] == [413]
    # Data on a channel no SETUP opened, while recording, ends the connection.
    conn, _ = run_publish([publish_setup()])
    with pytest.raises(RtspProtocolError, match="channel 7"):
        conn.receive_data(interleaved(7, b"\x80" * 20), 0.0)
    # Garbage RTP is dropped with one warning; the connection goes on.
    conn, _ = run_publish([publish_setup()])
    events = conn.receive_data(interleaved(0, b"\x00" * 20) * 3, 0.0)
    assert len(events) == 1
    assert isinstance(events[0], s.Warning)


def test_gstreamer_setup_urls_and_absolute_controls() -> None:
    """GStreamer appends the control to the path; cameras use absolute controls; ffmpeg puts
    it after the query."""
    for base, setup in ((URL, URL + "/stream=0"), (URL + "?token=x", URL + "?token=x/streamid=0"),
                        (URL, URL + "/streamid=0/")):
        control = setup.rstrip("/").rsplit("/", 1)[1]
        sdp = SDP.replace(b"streamid=0", control.encode())
        conn = connection()
        conn.receive_data(request("ANNOUNCE", base, 1, {"Content-Type": "application/sdp"},
                                  sdp), 0.0)
        conn.accept_announce()
        conn.receive_data(request("SETUP", setup, 2, {
            "Transport": "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"}), 0.0)
        assert [st for st, _, _ in answers(conn)] == [200, 200], setup
