"""One stream's recordings in the DVR worker: a viewer-less hub and what it writes.

A RecordingHub feeds an FlvRecording per DVR_FLV entry that records (egress/dvr/flv_writer.py)
and a Presentation (a CmafRecorder and its folder) per DVR_FMP4 entry. A Presentation writes
parts, segments and init segments first, each under a temporary name and renamed into place,
then the playlists and the MPD, so a reader never sees half a file nor a playlist naming a
file that is not there; each change is announced on the bus for the egress workers.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Final

import trio

from broker.hub import StreamHub
from broker.packet import TrackKind
from egress.dash.mpd import MPD_NAME, mpd
from egress.dvr.flv_writer import FlvRecording
from egress.dvr.paths import dvr_path
from egress.fmp4.fragmenter import Mp4WriteError
from egress.fmp4.segmenter import (
    DEFAULT_SEGMENT_S,
    CmafRecorder,
    RemoveFile,
    SegmentPlan,
    WriteFile,
)
from egress.hls.playlist import MULTIVARIANT, media_playlist, multivariant_playlist

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from broker.packet import MediaPacket, StreamKey
    from control.config import DvrConfig
    from egress.fmp4.segmenter import Action

logger = logging.getLogger(__name__)

# Files of ours in a presentation folder (removed before a new live presentation starts there).
OWN_SUFFIXES: Final = (".m4s", ".m3u8", ".mpd", ".tmp")


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plan_for(entry: DvrConfig) -> SegmentPlan:
    segment_s = entry.max_time_ms / 1000 if entry.max_time_ms else DEFAULT_SEGMENT_S
    return SegmentPlan(segment_s=segment_s, keep=entry.mode != "off",
                       max_size=entry.max_size_bytes, max_frames=entry.max_frames)


def serving_entry(entries: tuple[DvrConfig, ...]) -> DvrConfig | None:
    """The entry whose files the HLS/DASH URLs serve: the live one (mode "off") if any."""
    return next((d for d in entries if d.mode == "off"), entries[0] if entries else None)


class Presentation:
    """One DVR_FMP4 entry's presentation of one stream: its recorder and its folder."""

    def __init__(self, entry: DvrConfig, key: StreamKey, *, video: bool, audio: bool) -> None:
        self.entry = entry
        plan = plan_for(entry)
        # "audio"/"video" (and their auto forms) keep that track only.
        if entry.mode in ("audio", "autoAudio") and audio:
            video = False
        elif entry.mode in ("video", "autoVideo") and video:
            audio = False
        self.recorder = CmafRecorder(plan, video=video, audio=audio)
        self.folder = dvr_path(entry, key, time.time()).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        stale = [p for p in self.folder.iterdir() if p.name.endswith(OWN_SUFFIXES)]
        if stale:
            if plan.keep:
                logger.warning("dvr %s: %s already holds a recording; it is replaced (set "
                               "unique = true to keep each)", entry.id, self.folder)
            for path in stale:
                path.unlink(missing_ok=True)

    def apply(self, actions: list[Action], *, changed: bool = False) -> bool:
        """Carry out the recorder's actions; True when the playlists changed (as they do
        when `changed` says so)."""
        for action in actions:
            if isinstance(action, WriteFile):
                write_atomically(self.folder / action.name, action.data)
                changed = True
            elif isinstance(action, RemoveFile):
                (self.folder / action.name).unlink(missing_ok=True)
        if changed:
            timelines = self.recorder.timelines
            for timeline in timelines:
                if timeline.segments:
                    others = tuple(t for t in timelines if t is not timeline)
                    write_atomically(self.folder / timeline.playlist_name,
                                     media_playlist(timeline, others).encode())
            top = multivariant_playlist(self.recorder)
            if top is not None:
                write_atomically(self.folder / MULTIVARIANT, top.encode())
            manifest = mpd(self.recorder, now=time.time())
            if manifest is not None:
                write_atomically(self.folder / MPD_NAME, manifest.encode())
        return changed

    def news(self, key: StreamKey) -> dict[str, object]:
        """The "cmaf" control message: where the files are and how far each track is."""
        plan = self.recorder.plan
        tracks = {}
        for t in self.recorder.timelines:
            last = t.last_part()
            if last is not None:
                tracks[t.prefix] = [last[0], last[1], t.next_part]
        return {"key": str(key), "folder": str(self.folder), "tracks": tracks,
                "ended": any(t.ended for t in self.recorder.timelines), "keep": plan.keep,
                "target": plan.target_duration, "part_target": plan.part_target_s}


class RecordingHub(StreamHub):
    """A viewer-less hub that records one stream for each of its DVR entries: a CMAF
    presentation per DVR_FMP4 entry, FLV files per DVR_FLV entry."""

    def __init__(self, key: StreamKey, entries: tuple[DvrConfig, ...],
                 flv_entries: tuple[DvrConfig, ...],
                 announce: Callable[[dict[str, object]], None],
                 notify: Callable[[DvrConfig, str, dict[str, object]], None] | None = None,
                 ) -> None:
        super().__init__(key, _no_mux)
        self.entries = entries
        self.flv_entries = flv_entries
        self.serving = serving_entry(entries)
        self.announce = announce
        self.notify = notify  # a recording's events, for the on_record hooks
        self.presentations: list[Presentation] = []
        self.recordings: list[FlvRecording] = []  # this publishing session's
        self.manual_entries: list[DvrConfig] = []  # started by the control API
        self.ended_at: float | None = None  # trio clock: the publisher left
        self.finished = False

    def _went_live(self) -> None:
        self.ended_at = None
        if not self.presentations:
            video = self.cache.video_config is not None
            audio = self.cache.audio_config is not None
            for entry in self.entries:
                try:
                    self.presentations.append(Presentation(entry, self.key, video=video,
                                                           audio=audio))
                except (OSError, ValueError) as exc:
                    logger.error("dvr %s: cannot record %s: %s", entry.id, self.key, exc)
        if not self.recordings:
            for entry in (*self.flv_entries, *self.manual_entries):
                self._new_recording(entry)
        snapshot = self.cache.snapshot()
        # The cached GOP comes in one burst: its last frame is the one that is live now.
        frames = [p for p in snapshot if p.kind is not TrackKind.DATA and not p.is_config]
        if frames:
            now = time.time()
            for presentation in self.presentations:
                presentation.recorder.set_clock(max(p.dts / p.timescale for p in frames), now)
        for pkt in snapshot:
            self._record(pkt)

    def _deliver(self, pkt: MediaPacket, sync: bool) -> None:
        self._record(pkt)

    def on_session(self) -> None:
        super().on_session()
        self._each(lambda p: p.recorder.new_session(time.time()))
        self._close_files()  # a new publisher: new headers, new files

    def on_end(self) -> None:
        super().on_end()
        self.ended_at = trio.current_time()
        self._each(lambda p: p.recorder.new_session(time.time()))  # close the segments now
        self._close_files()

    def recording(self, entry: DvrConfig) -> FlvRecording | None:
        return next((r for r in self.recordings if r.entry.id == entry.id), None)

    def start_recording(self, entry: DvrConfig) -> FlvRecording:
        """Record with this entry from now (the control API), from the cached GOP on."""
        self.manual_entries.append(entry)
        recording = self._new_recording(entry)
        if recording is None:
            raise ValueError("no track to record")
        for pkt in self.cache.snapshot():
            recording.add(pkt)
        return recording

    def stop_recording(self, entry: DvrConfig) -> FlvRecording | None:
        self.manual_entries = [e for e in self.manual_entries if e.id != entry.id]
        recording = self.recording(entry)
        if recording is not None:
            self.recordings.remove(recording)
            recording.close()
        return recording

    def _new_recording(self, entry: DvrConfig) -> FlvRecording | None:
        try:
            notify = self.notify
            recording = FlvRecording(
                entry, self.key, audio=self.cache.audio_config is not None,
                video=self.cache.video_config is not None,
                notify=None if notify is None else (
                    lambda event, body: notify(entry, event, body)))
        except ValueError as exc:
            logger.warning("dvr %s: %s: %s", entry.id, self.key, exc)
            return None
        self.recordings.append(recording)
        return recording

    def _close_files(self) -> None:
        recordings, self.recordings = self.recordings, []
        for recording in recordings:
            try:
                recording.close()
            except OSError as exc:
                logger.error("dvr %s: cannot finish %s: %s", recording.entry.id,
                             recording.path, exc)

    def finish(self) -> None:
        """The publisher did not come back: the playlists end, the recordings are complete."""
        self.finished = True
        self._each(lambda p: p.recorder.end(time.time()), changed=True)

    def _record(self, pkt: MediaPacket) -> None:
        for recording in list(self.recordings):
            try:
                recording.add(pkt)
            except OSError as exc:
                logger.error("dvr %s: stops recording %s: %s", recording.entry.id,
                             recording.path, exc)
                self.recordings.remove(recording)
        if pkt.kind is TrackKind.DATA:
            return
        now = time.time()
        self._each(lambda p: p.recorder.add(pkt, now) + p.recorder.expire(now))

    def _each(self, step: Callable[[Presentation], list[Action]], *,
              changed: bool = False) -> None:
        for presentation in list(self.presentations):
            try:
                news = presentation.apply(step(presentation), changed=changed)
            except Mp4WriteError as exc:
                logger.warning("dvr %s: stops recording %s: %s", presentation.entry.id,
                               self.key, exc)
                self.presentations.remove(presentation)
                continue
            except OSError as exc:
                logger.error("dvr %s: cannot write %s: %s", presentation.entry.id,
                             presentation.folder, exc)
                self.presentations.remove(presentation)
                continue
            if news and presentation.entry is self.serving:
                self.announce(presentation.news(self.key))


def _no_mux(pkt: MediaPacket, variant: object) -> bytes:
    raise AssertionError("a RecordingHub has no viewers")
