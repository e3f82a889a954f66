"""SDP of ANNOUNCE and DESCRIBE as real publishers and cameras write them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtsp.sdp import SdpError, media_url, parse_sdp

SDP = Path(__file__).parent / "sdp"  # SDPs as publishers and cameras write them

# ffmpeg 7 publishing with -f rtsp (libavformat's ANNOUNCE): H.264 + AAC.
FFMPEG = (SDP / "ffmpeg-announce.sdp").read_bytes()
# An IP camera's DESCRIBE answer: absolute controls, H.265 and G.711, a session control.
CAMERA = (SDP / "camera-describe.sdp").read_bytes()
# GStreamer's rtspclientsink: relative "stream=N" controls, Opus with two rtpmap lines.
GSTREAMER = (SDP / "gstreamer-announce.sdp").read_bytes()


def test_ffmpeg_announce() -> None:
    sd = parse_sdp(FFMPEG)
    video, audio = sd.medias
    assert (video.kind, video.payload_type, video.encoding, video.clock_rate) == (
        "video", 96, "H264", 90000)
    assert video.fmtp["sprop-parameter-sets"].startswith("Z2QAFKzZ")
    assert video.fmtp["packetization-mode"] == "1"
    assert video.control == "streamid=0"
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("MPEG4-GENERIC", 44100, 2)
    assert audio.fmtp["config"] == "1210"
    assert audio.fmtp["sizelength"] == "13"


def test_camera_describe() -> None:
    sd = parse_sdp(CAMERA)
    assert sd.control.startswith("rtsp://192.168.1.64:554/Streaming/Channels/101/")
    video, audio = sd.medias
    assert video.encoding == "H265"
    assert set(video.fmtp) == {"sprop-vps", "sprop-sps", "sprop-pps"}
    assert (audio.payload_type, audio.encoding, audio.clock_rate) == (0, "PCMU", 8000)
    assert media_url("rtsp://x/y", video.control) == video.control  # absolute


def test_gstreamer_announce() -> None:
    video, audio = parse_sdp(GSTREAMER).medias
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("OPUS", 48000, 2)
    assert audio.fmtp == {"sprop-stereo": "1"}  # the first format's, not PCMU's
    assert video.control == "stream=0"


@pytest.mark.parametrize(("base", "control", "url"), [
    ("rtsp://h:8554/live/cam", "streamid=0", "rtsp://h:8554/live/cam/streamid=0"),
    ("rtsp://h:8554/live/cam/", "stream=1", "rtsp://h:8554/live/cam/stream=1"),
    ("rtsp://h:8554/live/cam", "*", "rtsp://h:8554/live/cam"),
    ("rtsp://h:8554/live/cam", "", "rtsp://h:8554/live/cam"),
    ("rtsp://h:8554/live/cam", "rtsp://h:8554/live/cam/trackID=1",
     "rtsp://h:8554/live/cam/trackID=1"),
])
def test_media_urls(base: str, control: str, url: str) -> None:
    assert media_url(base, control) == url


@pytest.mark.parametrize("data", [
    b"", b"v=0\r\ns=x\r\n", b"v=0\r\nm=video 0 RTP/AVP\r\n", b"garbage", b"m=video 0 RTP/AVP 96\n",
    b"v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264\n", b"\xff\xfe",
])
def test_bad_sdp(data: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(data)


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_garbage_raises_only_sdp_error(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(data)
