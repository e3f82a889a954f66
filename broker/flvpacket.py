"""MediaPacket <-> FLV tag bodies, the form RTMP messages and FLV files carry media in."""

from __future__ import annotations

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from media import flv

_VIDEO_FOURCC = {"avc1": Codec.H264, "hvc1": Codec.HEVC, "av01": Codec.AV1}
_AUDIO_FOURCC = {"mp4a": Codec.AAC, "Opus": Codec.OPUS}
_FOURCC_OF = {c: f for f, c in (_VIDEO_FOURCC | _AUDIO_FOURCC).items()}
RTMP_TIMESCALE = 1000


class UnsupportedMedia(Exception):
    """Well-formed media in a codec the bus does not carry (e.g. VP6, Speex, MP3)."""


def packet_from_flv(stream: StreamKey, tag_type: int, ts_ms: int,
                    body: bytes) -> MediaPacket | None:
    """An audio or video tag body as a packet; None for bodies that carry no media.

    Raises flv.FlvError for malformed bodies and UnsupportedMedia for other codecs.
    """
    if tag_type == flv.TagType.VIDEO:
        video = flv.parse_video_body(body)
        if video is None or video.kind == "end":
            return None
        codec = _VIDEO_FOURCC.get(video.codec)
        if codec is None:
            raise UnsupportedMedia(f"video codec {video.codec} is not supported")
        config = video.kind == "config"
        return MediaPacket(
            stream=stream, kind=TrackKind.VIDEO, codec=codec, dts=ts_ms,
            pts=ts_ms + (0 if config else video.cts_ms), timescale=RTMP_TIMESCALE,
            keyframe=video.keyframe or config, is_config=config, payload=video.data)
    if tag_type == flv.TagType.AUDIO:
        audio = flv.parse_audio_body(body)
        if audio is None:
            return None
        codec = _AUDIO_FOURCC.get(audio.codec)
        if codec is None:
            raise UnsupportedMedia(f"audio codec {audio.codec} is not supported")
        config = audio.kind == "config"
        return MediaPacket(
            stream=stream, kind=TrackKind.AUDIO, codec=codec, dts=ts_ms, pts=ts_ms,
            timescale=RTMP_TIMESCALE, keyframe=True, is_config=config, payload=audio.data)
    return None


def metadata_packet(stream: StreamKey, amf_payload: bytes) -> MediaPacket:
    return MediaPacket(stream=stream, kind=TrackKind.DATA, codec=Codec.AMF0, dts=0, pts=0,
                       timescale=RTMP_TIMESCALE, keyframe=False, is_config=True,
                       payload=amf_payload)


def flv_tag_parts(pkt: MediaPacket) -> tuple[int, int, bytes]:
    """(tag type, timestamp in ms, body) of a packet, for FLV tags and RTMP messages alike."""
    dts_ms = _ms(pkt.dts, pkt.timescale)
    if pkt.kind is TrackKind.DATA:
        return flv.TagType.SCRIPT, dts_ms, pkt.payload
    fourcc = _FOURCC_OF[pkt.codec]
    if pkt.kind is TrackKind.VIDEO:
        cts_ms = _ms(pkt.pts, pkt.timescale) - dts_ms
        body = flv.build_video_body(fourcc, keyframe=pkt.keyframe,
                                    kind="config" if pkt.is_config else "frame",
                                    cts_ms=cts_ms, data=pkt.payload)
        return flv.TagType.VIDEO, dts_ms, body
    body = flv.build_audio_body(fourcc, kind="config" if pkt.is_config else "frame",
                                data=pkt.payload)
    return flv.TagType.AUDIO, dts_ms, body


def _ms(ts: int, timescale: int) -> int:
    return ts if timescale == RTMP_TIMESCALE else (ts * 1000 + timescale // 2) // timescale
