"""Writing one DVR_FLV entry's recording of one stream to disk (the FlvRecorder's shell).

Each tag goes to the kernel as it comes (unbuffered writes of whole tags), so a worker killed
mid-recording leaves a file that plays up to its last tag; a file is finished by writing its
final head (onMetaData with the keyframes index) and the rest of it to a temporary file that
then replaces it. A recording that finds its file name taken replaces the file, as the seed
warns, unless that file was cut short (by a crash: its head has no keyframes index): such a
file is indexed and kept under a name with its modification time, and the new recording
starts afresh. With `append` a recording continues the file (timestamps going on after its
last frame), and the finished file is indexed whole.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from egress.dvr.flv_recorder import (
    FileBytes,
    FileFinished,
    FileStarted,
    FlvEvent,
    FlvFile,
    FlvLimits,
    FlvRecorder,
)
from egress.dvr.paths import dvr_path
from media import amf0, flv

if TYPE_CHECKING:
    from pathlib import Path

    from broker.packet import MediaPacket, StreamKey
    from control.config import DvrConfig

logger = logging.getLogger(__name__)

Notify = Callable[[str, dict[str, object]], None]

COPY_CHUNK = 1 << 20


def finished_by_us(path: Path) -> bool:
    """Does the file start with a finished onMetaData (one with a keyframes index)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(64 << 10)
    except OSError:
        return True
    decoder = flv.FlvDecoder()
    decoder.receive_data(head)
    try:
        while (event := decoder.next_event()) is not flv.NEED_DATA:
            if isinstance(event, flv.FlvTag):
                values = amf0.decode(event.body) if event.tag_type == flv.TagType.SCRIPT else []
                return len(values) > 1 and isinstance(values[1], dict) and "keyframes" in values[1]
    except (flv.FlvError, amf0.AmfError):
        return False
    return False


def scan(path: Path) -> tuple[FlvFile, int]:
    """What a file on disk holds, read tag by tag: its complete tags (`size` ends after the
    last one's PreviousTagSize), keyframes, duration and first onMetaData; and the body size
    of its last tag."""
    decoder = flv.FlvDecoder()
    file: FlvFile | None = None
    last_body = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            decoder.receive_data(chunk)
            while (event := decoder.next_event()) is not flv.NEED_DATA:
                if isinstance(event, flv.FlvHeader):
                    file = FlvFile(0, event.audio, event.video, head_size=13, size=13)
                    continue
                assert file is not None
                assert isinstance(event, flv.FlvTag)
                last_body = len(event.body)
                end = event.offset + 11 + last_body + 4
                if event.tag_type == flv.TagType.SCRIPT and event.offset == 13:
                    file.head_size = end  # our head (or the publisher's): it is replaced
                    values = amf0.decode(event.body)
                    if len(values) > 1 and isinstance(values[1], dict):
                        file.metadata = {k: v for k, v in values[1].items()
                                         if k not in ("duration", "filesize", "keyframes")}
                elif event.tag_type == flv.TagType.VIDEO:
                    body = flv.parse_video_body(event.body)
                    if body is not None and body.keyframe and body.kind == "frame":
                        file.keyframes.append((event.offset, event.timestamp_ms))
                if event.tag_type != flv.TagType.SCRIPT:
                    file.duration_ms = max(file.duration_ms, event.timestamp_ms)
                file.size = end
    if file is None:
        raise flv.FlvError("not an FLV file")
    return file, last_body


def rebuild(path: Path) -> FlvFile:
    """Give a file the finished head its tags call for, and drop a torn last tag."""
    file, last_body = scan(path)
    head, old_head = file.finished_head()
    have = path.stat().st_size
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(head)
        src.seek(old_head)
        torn = have < file.size  # the last tag's PreviousTagSize was cut off, or part of it
        left = (file.size - 4 if torn else file.size) - old_head
        while left > 0 and (chunk := src.read(min(COPY_CHUNK, left))):
            dst.write(chunk)
            left -= len(chunk)
        if torn:
            dst.write(flv.prev_tag_size(last_body))
    os.replace(tmp, path)
    return file


class FlvRecording:
    def __init__(self, entry: DvrConfig, key: StreamKey, *, audio: bool, video: bool,
                 notify: Notify | None = None) -> None:
        self.entry, self.key = entry, key
        self.notify = notify  # ("record" | "record_done", what happened) -> event hooks
        self.recorder = FlvRecorder(entry.mode, FlvLimits(
            entry.max_size_bytes, entry.max_time_ms, entry.max_frames), audio=audio, video=video)
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._append: Path | None = None  # the file the first one continues
        if entry.append:
            path = dvr_path(entry, key, time.time())
            if path.is_file():
                try:
                    self.recorder.resume(scan(path)[0].duration_ms)
                    self._append = path
                except (OSError, flv.FlvError, amf0.AmfError) as exc:
                    logger.warning("dvr %s: cannot append to %s (%s): it is replaced",
                                   entry.id, path, exc)

    def add(self, pkt: MediaPacket) -> None:
        self._apply(self.recorder.add(pkt))

    def close(self) -> None:
        """The session ended: finish the current file."""
        self._apply(self.recorder.finish())

    def _apply(self, events: list[FlvEvent]) -> None:
        for event in events:
            if isinstance(event, FileBytes):
                assert self._file is not None
                self._file.write(event.data)
            elif isinstance(event, FileStarted):
                self._open()
            elif isinstance(event, FileFinished):
                self._finish(event)

    def _open(self) -> None:
        if self._append is not None:
            self.path, self._append = self._append, None
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            logger.info("dvr %s: recording %s, appended to %s", self.entry.id, self.key,
                        self.path)
            return
        path = dvr_path(self.entry, self.key, time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not finished_by_us(path):
                kept = path.with_name(f"{path.stem}-{int(path.stat().st_mtime)}{path.suffix}")
                os.replace(path, kept)
                try:
                    rebuild(kept)  # index it, without its torn last tag
                except (OSError, flv.FlvError, amf0.AmfError) as exc:
                    logger.warning("dvr %s: %s left as it is: %s", self.entry.id, kept, exc)
                logger.warning("dvr %s: %s was cut short; kept as %s", self.entry.id, path, kept)
            else:
                logger.warning("dvr %s: %s is replaced by a new recording (set unique = true to "
                               "keep each)", self.entry.id, path)
        self.path = path
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (lives across packets)
        logger.info("dvr %s: recording %s to %s", self.entry.id, self.key, path)
        self._notify("record", {"path": str(path)})

    def _notify(self, event: str, body: dict[str, object]) -> None:
        if self.notify is not None:
            self.notify(event, {"app": self.key.app, "instance": self.key.instance,
                                "name": self.key.name, "stream": str(self.key),
                                "dvr": self.entry.id, **body})

    def _finish(self, event: FileFinished) -> None:
        file, path = self._file, self.path
        self._file = None
        if file is None or path is None:
            return
        file.close()
        if event.file.appended:
            whole = rebuild(path)  # the head must index what was there before too
            self._done(path, path.stat().st_size, whole.duration_ms)
            return
        head, old_size = event.file.finished_head()
        tmp = path.with_name(path.name + ".tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(head)
            src.seek(old_size)
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)
        os.replace(tmp, path)
        self._done(path, event.file.size + len(head) - old_size, event.file.duration_ms)

    def _done(self, path: Path, size: int, duration_ms: int) -> None:
        logger.info("dvr %s: recorded %s (%d bytes, %.1f s)", self.entry.id, path, size,
                    duration_ms / 1000)
        self._notify("record_done", {"path": str(path), "size": size,
                                     "duration": duration_ms / 1000})
