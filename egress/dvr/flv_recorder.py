"""Sans-IO DVR_FLV recorder: one stream's packets in, the bytes of FLV files out.

A file starts with the FLV header (flags matching the tracks kept), an onMetaData tag, the
sequence headers and a keyframe (audio-only: any frame), so each file plays on its own; tag
timestamps start at 0 in each file. When a limit is passed (bytes, milliseconds, frames) the
recording goes on in a new file from the next keyframe. The bytes are complete tags only, so
a file cut short by a crash plays up to its last tag.

While a file grows its onMetaData is the publisher's (duration 0). `finished_head` gives what
the shell puts in its place once the file is complete: onMetaData with duration, filesize,
the codecs and a keyframes index (filepositions/times, as yamdi writes it) so that players
can seek. AMF0 numbers are 8 bytes whatever their value, so the new head's size depends only
on the number of keyframes and the positions are known before they are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NamedTuple

from broker import flvpacket
from broker.packet import Codec, MediaPacket, TrackKind
from media import amf0, flv
from media.amf0 import AmfError, EcmaArray

# What a DVR_FLV mode keeps: (audio, video, only keyframes, script data after the first).
KEEPS: Final = {
    "all": (True, True, False, False),
    "manual": (True, True, False, False),
    "auto": (True, True, False, False),
    "advanced": (True, True, False, True),
    "audio": (True, False, False, False),
    "autoAudio": (True, False, False, False),
    "video": (False, True, False, False),
    "autoVideo": (False, True, False, False),
    "keyframe": (False, True, True, False),
}
APPEND_GAP_MS: Final = 40  # an appended recording starts this long after the file's end
_VIDEO_CODEC_IDS: Final = {Codec.H264: 7, Codec.HEVC: 12, Codec.AV1: 13}
_AUDIO_CODEC_IDS: Final = {Codec.AAC: 10, Codec.OPUS: 13, Codec.MP3: 2}
# onMetaData fields of a track a recording leaves out.
_VIDEO_FIELDS: Final = ("width", "height", "framerate", "videocodecid", "videodatarate")
_AUDIO_FIELDS: Final = ("audiocodecid", "audiodatarate", "audiosamplerate", "audiosamplesize",
                        "stereo")


@dataclass(frozen=True, slots=True)
class FlvLimits:
    max_size: int = 0  # bytes per file; 0 = no limit
    max_time_ms: int = 0
    max_frames: int = 0  # video frames (audio frames in an audio-only recording)


class FileStarted(NamedTuple):
    """A new file begins; the bytes that follow go into it."""

    number: int  # files of this recording, from 0


class FileBytes(NamedTuple):
    data: bytes


class FileFinished(NamedTuple):
    """The current file is complete: `FlvFile.finished_head` replaces its head."""

    file: FlvFile


FlvEvent = FileStarted | FileBytes | FileFinished


@dataclass(slots=True)
class FlvFile:
    """What is known of one file: enough to write its final onMetaData."""

    number: int
    audio: bool  # the FLV header's flags
    video: bool
    head_size: int = 0  # FLV header + the growing file's onMetaData tag
    size: int = 0
    duration_ms: int = 0
    frames: int = 0
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (file offset, ms)
    metadata: dict[str, amf0.Value] = field(default_factory=dict)
    appended: bool = False  # continues a file on disk: only a scan of it knows it all

    def finished_head(self) -> tuple[bytes, int]:
        """(new head, old head size): the file's bytes from the old head's end follow it."""
        fields = EcmaArray({**self.metadata, "duration": self.duration_ms / 1000,
                            "filesize": 0.0, "hasKeyframes": bool(self.keyframes),
                            "hasMetadata": True,
                            "keyframes": {"filepositions": [0.0] * len(self.keyframes),
                                          "times": [0.0] * len(self.keyframes)}})
        size = len(self.head_for(fields)) - self.head_size  # how much the head grows
        fields["filesize"] = float(self.size + size)
        fields["keyframes"] = {"filepositions": [float(p + size) for p, _ in self.keyframes],
                               "times": [t / 1000 for _, t in self.keyframes]}
        head = self.head_for(fields)
        assert len(head) - self.head_size == size
        return head, self.head_size

    def head_for(self, fields: EcmaArray) -> bytes:
        """The FLV header and an onMetaData tag of these fields."""
        body = amf0.encode(["onMetaData", fields])
        return flv.header(audio=self.audio, video=self.video) + flv.encode_tag(
            flv.TagType.SCRIPT, 0, body)


class FlvRecorder:
    """Feed packets (metadata and configs first, as a hub's snapshot gives them) to add()."""

    def __init__(self, mode: str, limits: FlvLimits, *, audio: bool, video: bool) -> None:
        if mode not in KEEPS:
            raise ValueError(f"DVR_FLV mode {mode!r} records nothing")
        keep_audio, keep_video, self.keyframes_only, self.script = KEEPS[mode]
        self.audio = audio and keep_audio
        self.video = video and keep_video
        if not self.audio and not self.video:
            raise ValueError(f"mode {mode!r} keeps no track this stream has")
        self.limits = limits
        self._metadata: dict[str, amf0.Value] = {}
        self._configs: dict[TrackKind, MediaPacket] = {}
        self.file: FlvFile | None = None
        self._files = 0
        self._start_ms = 0  # dts of the file's first frame
        self._full = False  # a limit was passed: cut at the next start point
        self._resume_ms: int | None = None

    def add(self, pkt: MediaPacket) -> list[FlvEvent]:
        kind = pkt.kind
        if kind is TrackKind.DATA:
            return self._data(pkt)
        if (kind is TrackKind.AUDIO and not self.audio) or (
                kind is TrackKind.VIDEO and not self.video):
            return []
        if pkt.is_config:
            self._configs[kind] = pkt
            return self._tag(pkt) if self.file is not None else []
        if self.keyframes_only and not pkt.keyframe:
            return []
        start_point = (kind is TrackKind.VIDEO and pkt.keyframe) if self.video else True
        events: list[FlvEvent] = []
        if self.file is None or (self._full and start_point):
            if not start_point:
                return []  # a file starts with a keyframe
            events += self.finish()
            events += self._start(pkt)
        events += self._tag(pkt)
        file = self.file
        assert file is not None
        if kind is TrackKind.VIDEO or not self.video:
            file.frames += 1
        limits = self.limits
        self._full = bool((limits.max_size and file.size >= limits.max_size) or (
            limits.max_time_ms and file.duration_ms >= limits.max_time_ms) or (
            limits.max_frames and file.frames >= limits.max_frames))
        return events

    def resume(self, duration_ms: int) -> None:
        """The first file continues one that lasts duration_ms (DVR_FLV `append`): no head,
        and timestamps that go on after its last frame."""
        self._resume_ms = duration_ms + APPEND_GAP_MS

    def finish(self) -> list[FlvEvent]:
        """End the current file (at a limit, or when the stream ends)."""
        file, self.file = self.file, None
        return [FileFinished(file)] if file is not None else []

    def _data(self, pkt: MediaPacket) -> list[FlvEvent]:
        try:
            values = amf0.decode(pkt.payload)
        except AmfError:
            return []
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            self._metadata = {k: v for k, v in values[1].items()
                              if k not in ("duration", "filesize", "keyframes")}
            return []
        if self.script and self.file is not None:
            return self._tag(pkt)  # "advanced": cue points, text and other script data
        return []

    def _start(self, first: MediaPacket) -> list[FlvEvent]:
        self._start_ms = flvpacket.flv_tag_parts(first)[1]
        self._full = False
        file = self.file = FlvFile(self._files, self.audio, self.video)
        self._files += 1
        if self._resume_ms is not None:
            self._start_ms -= self._resume_ms
            self._resume_ms = None
            file.appended = True
            events: list[FlvEvent] = [FileStarted(file.number)]
            for kind in (TrackKind.VIDEO, TrackKind.AUDIO):  # repeated: decoders reset on them
                if (config := self._configs.get(kind)) is not None:
                    events += self._tag(config)
            return events
        dropped = (() if self.video else _VIDEO_FIELDS) + (() if self.audio else _AUDIO_FIELDS)
        file.metadata = {**{k: v for k, v in self._metadata.items() if k not in dropped},
                         **self._codec_fields()}
        head = file.head_for(EcmaArray({**file.metadata, "duration": 0.0}))
        file.head_size = file.size = len(head)
        events = [FileStarted(file.number), FileBytes(head)]
        for kind in (TrackKind.VIDEO, TrackKind.AUDIO):
            if (config := self._configs.get(kind)) is not None:
                events += self._tag(config)
        return events

    def _codec_fields(self) -> dict[str, amf0.Value]:
        out: dict[str, amf0.Value] = {}
        video, audio = self._configs.get(TrackKind.VIDEO), self._configs.get(TrackKind.AUDIO)
        if self.video and video is not None and video.codec in _VIDEO_CODEC_IDS:
            out["videocodecid"] = float(_VIDEO_CODEC_IDS[video.codec])
        if self.audio and audio is not None and audio.codec in _AUDIO_CODEC_IDS:
            out["audiocodecid"] = float(_AUDIO_CODEC_IDS[audio.codec])
        return out

    def _tag(self, pkt: MediaPacket) -> list[FlvEvent]:
        file = self.file
        assert file is not None
        tag_type, ts, body = flvpacket.flv_tag_parts(pkt)
        ts = max(0, ts - self._start_ms)
        if pkt.kind is TrackKind.VIDEO and pkt.keyframe and not pkt.is_config:
            file.keyframes.append((file.size, ts))
        data = flv.encode_tag(tag_type, ts, body)
        file.size += len(data)
        if not pkt.is_config:
            file.duration_ms = max(file.duration_ms, ts)
        return [FileBytes(data)]
