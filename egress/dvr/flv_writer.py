"""Writing one DVR_FLV entry's recording of one stream to disk (the FlvRecorder's shell).

Each tag goes to the kernel as it comes (unbuffered writes of whole tags), so a worker killed
mid-recording leaves a file that plays up to its last tag; a file is finished by writing its
final head (onMetaData with the keyframes index) and the rest of it to a temporary file that
then replaces it. A recording that finds its file name taken replaces the file, as the seed
warns, unless that file was cut short (by a crash: its head has no keyframes index): such a
file is kept under a name with its modification time, and the new recording starts afresh.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, BinaryIO

from egress.dvr.flv_recorder import (
    FileBytes,
    FileFinished,
    FileStarted,
    FlvEvent,
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


class FlvRecording:
    def __init__(self, entry: DvrConfig, key: StreamKey, *, audio: bool, video: bool) -> None:
        self.entry, self.key = entry, key
        self.recorder = FlvRecorder(entry.mode, FlvLimits(
            entry.max_size_bytes, entry.max_time_ms, entry.max_frames), audio=audio, video=video)
        self.path: Path | None = None
        self._file: BinaryIO | None = None

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
        path = dvr_path(self.entry, self.key, time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not finished_by_us(path):
                kept = path.with_name(f"{path.stem}-{int(path.stat().st_mtime)}{path.suffix}")
                os.replace(path, kept)
                logger.warning("dvr %s: %s was cut short; kept as %s", self.entry.id, path, kept)
            else:
                logger.warning("dvr %s: %s is replaced by a new recording (set unique = true to "
                               "keep each)", self.entry.id, path)
        self.path = path
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (lives across packets)
        logger.info("dvr %s: recording %s to %s", self.entry.id, self.key, path)

    def _finish(self, event: FileFinished) -> None:
        file, path = self._file, self.path
        self._file = None
        if file is None or path is None:
            return
        file.close()
        head, old_size = event.file.finished_head()
        tmp = path.with_name(path.name + ".tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(head)
            src.seek(old_size)
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)
        os.replace(tmp, path)
        logger.info("dvr %s: recorded %s (%d bytes, %.1f s)", self.entry.id, path,
                    event.file.size + len(head) - old_size, event.file.duration_ms / 1000)
