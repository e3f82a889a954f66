"""Serving the DVR worker's CMAF presentations: HLS playlists, init segments, segments, parts.

The DVR worker writes the files and says on the bus ("cmaf" control messages) where they are
and how far each track is. Every egress worker keeps that news, so any of them can answer any
request: files come from disk; an LL-HLS blocking playlist reload (`_HLS_msn`, `_HLS_part`,
draft-pantos-hls-rfc8216bis §6.2.5.2) and a request for the hinted next part wait here until
the news says the part exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import trio
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse

from broker.packet import DEFAULT_INSTANCE, StreamKey
from egress.dash.mpd import TIME_PATH

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

EVENT: Final = "cmaf"
WANT: Final = "cmaf-want"
# A live-only presentation runs while asked for: each worker repeats the ask this often
# while players fetch it (the DVR worker stops one nobody asked for in 30 s).
WANT_INTERVAL_S: Final = 5.0
# A request that finds no presentation running waits this long for its first whole segment
# (a live-only one starts now, from the GOP the bus keeps: players that do not know LL-HLS
# parts need a segment, and the first is whole at the stream's next keyframe).
FIRST_SEGMENT_WAIT_S: Final = 8.0
# A blocking request waits at most this many target durations, then gets 503 (§6.2.5.2).
BLOCK_TARGETS: Final = 3
# How many segments ahead of the last one _HLS_msn may name before the answer is 400.
MSN_ADVANCE_LIMIT: Final = 2

_FILE = (r"(?P<file>index\.m3u8|index\.mpd|(?P<track>[va])(?:\.m3u8|-init-\d+\.m4s"
         r"|-(?P<msn>\d+)\.m4s|-p(?P<part>\d+)\.m4s))")
_PATH = re.compile(r"/(?P<stream>[^/]+/(?:[^/]+/)?[^/]+)/" + _FILE)
CONTENT_TYPES: Final = {".m3u8": "application/vnd.apple.mpegurl", ".mpd": "application/dash+xml",
                        ".m4s": "video/iso.segment"}


@dataclass(frozen=True, slots=True)
class FileRequest:
    key: StreamKey
    file: str
    track: str | None  # "v" or "a" for a track's files
    part: int | None  # the part number of a part file
    msn: int | None = None  # the media sequence number of a segment file

    @property
    def is_media_playlist(self) -> bool:
        return self.track is not None and self.file.endswith(".m3u8")


def parse_path(path: str) -> FileRequest | None:
    """'/live/sample/v.m3u8' (or '/live/inst/sample/...') -> what it asks for; None if not
    a presentation file."""
    m = _PATH.fullmatch(path)
    if m is None:
        return None
    parts = m["stream"].split("/")
    if len(parts) == 2:
        parts.insert(1, DEFAULT_INSTANCE)
    if any(p.startswith("$") or "\x00" in p for p in parts):
        return None
    part, msn = m["part"], m["msn"]
    return FileRequest(StreamKey(*parts), m["file"], m["track"], int(part) if part else None,
                       int(msn) if msn else None)


class Blocking(NamedTuple):
    msn: int
    part: int | None


class BadRequest(ValueError):
    """A blocking-reload query the server must answer with 400."""


def blocking_query(query: Mapping[str, str]) -> Blocking | None:
    """_HLS_msn / _HLS_part of a media playlist request; None when it does not block."""
    msn, part = query.get("_HLS_msn"), query.get("_HLS_part")
    if msn is None:
        if part is not None:
            raise BadRequest("_HLS_part without _HLS_msn")
        return None
    if not msn.isdigit() or (part is not None and not part.isdigit()):
        raise BadRequest("_HLS_msn and _HLS_part are decimal integers")
    return Blocking(int(msn), int(part) if part is not None else None)


@dataclass(frozen=True, slots=True)
class TrackProgress:
    msn: int  # segment of the newest part
    part: int  # its index in the segment
    next_part: int  # the part number the preload hint names

    def reached(self, want: Blocking) -> bool:
        """Does the playlist now hold what the request waits for? Without _HLS_part, segment
        msn must be whole (a later one has begun); a part past a segment's last one means
        the next segment's first part, which the same comparison covers."""
        if self.msn != want.msn:
            return self.msn > want.msn
        return want.part is not None and self.part >= want.part


@dataclass(frozen=True, slots=True)
class Presentation:
    folder: Path
    tracks: dict[str, TrackProgress]
    ended: bool
    keep: bool  # a recording (kept whole) rather than a live window
    target_s: int

    @property
    def started(self) -> bool:
        """Every track has a whole segment (or the presentation is over)."""
        return bool(self.tracks) and (self.ended or all(t.msn > 0 for t in self.tracks.values()))

    @classmethod
    def from_news(cls, body: Mapping[str, Any]) -> Presentation:
        tracks = body["tracks"]
        return cls(Path(str(body["folder"])),
                   {str(name): TrackProgress(*(int(x) for x in progress))
                    for name, progress in tracks.items()},
                   bool(body["ended"]), bool(body["keep"]), int(body["target"]))


class Presentations:
    """What the bus says of every presentation, and waiting for it to move on."""

    def __init__(self, send_control: Callable[[str, dict[str, object]], None]) -> None:
        self.known: dict[StreamKey, Presentation] = {}
        self._changed = trio.Event()
        self._send_control = send_control
        self._asked: dict[StreamKey, float] = {}  # when this worker last asked for each

    def want(self, key: StreamKey) -> None:
        """Ask the DVR worker to run the presentation (at most every WANT_INTERVAL_S)."""
        now = trio.current_time()
        if now - self._asked.get(key, -WANT_INTERVAL_S) >= WANT_INTERVAL_S:
            self._asked[key] = now
            self._send_control(WANT, {"key": str(key)})
            for old in [k for k, t in self._asked.items() if now - t > 10 * WANT_INTERVAL_S]:
                del self._asked[old]

    def on_control(self, body: dict[str, Any]) -> None:
        if body.get("kind") != EVENT:
            return
        try:
            key = StreamKey.parse(str(body["key"]))
            self.known[key] = Presentation.from_news(body)
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # malformed news: ignore it rather than fail the worker
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, key: StreamKey, ready: Callable[[Presentation], bool],
                       timeout_s: float) -> Presentation | None:
        """The presentation once `ready` holds for it; None if that takes over timeout_s."""
        with trio.move_on_after(timeout_s):
            while (p := self.known.get(key)) is None or not ready(p):
                await self._changed.wait()
            return p
        return None

    async def serve(self, req: FileRequest, query: Mapping[str, str],
                    headers: dict[str, str], base_url: str) -> Response:
        try:
            blocking = blocking_query(query) if req.is_media_playlist else None
        except BadRequest as exc:
            return PlainTextResponse(f"{exc}\n", 400, headers=headers)
        self.want(req.key)
        # A live-only presentation that ended (nobody asked, or the publisher left) starts
        # again if the stream is live; failing that, what is on disk is still served.
        current = await self.wait_for(req.key, lambda p: p.started and (
            p.keep or not p.ended), FIRST_SEGMENT_WAIT_S) or self.known.get(req.key)
        if current is None or not current.tracks:
            return PlainTextResponse(f"stream {req.key} has no HLS/DASH presentation\n", 404,
                                     headers=headers)
        progress = current.tracks.get(req.track) if req.track else None
        limit_s = BLOCK_TARGETS * current.target_s
        if blocking is not None and progress is not None and not current.ended:
            if blocking.msn > progress.msn + MSN_ADVANCE_LIMIT:
                return PlainTextResponse("_HLS_msn is too far ahead\n", 400, headers=headers)
            track = req.track

            def reached(p: Presentation) -> bool:
                t = p.tracks.get(track or "")
                return p.ended or (t is not None and t.reached(blocking))

            if await self.wait_for(req.key, reached, limit_s) is None:
                return PlainTextResponse("the part did not come in time\n", 503,
                                         headers=headers)
        elif req.part is not None and progress is not None and req.part >= progress.next_part:
            if req.part > progress.next_part:
                return PlainTextResponse("no such part\n", 404, headers=headers)
            number, track = req.part, req.track or ""

            def written(p: Presentation) -> bool:  # the hinted part: wait until it is there
                t = p.tracks.get(track)
                return p.ended or (t is not None and t.next_part > number)

            if await self.wait_for(req.key, written, limit_s) is None:
                return PlainTextResponse("the part did not come in time\n", 503,
                                         headers=headers)
        elif (req.msn is not None and progress is not None and not current.ended
              and progress.msn <= req.msn <= progress.msn + 1):
            # The segment being written (or the next): low-latency DASH reads it as it grows.
            return StreamingResponse(self._growing(req, req.msn, limit_s),
                                     media_type=CONTENT_TYPES[".m4s"], headers=headers)
        return self._file(req, headers, base_url)

    async def _growing(self, req: FileRequest, msn: int, limit_s: float) -> AsyncIterator[bytes]:
        """A segment's parts as each is written; what is left from the segment file once it
        is whole. (The DVR worker writes a segment file before the next segment's parts.)"""
        track = req.track or ""

        def opened(p: Presentation) -> bool:
            t = p.tracks.get(track)
            return p.ended or (t is not None and t.msn >= msn)

        current = await self.wait_for(req.key, opened, limit_s)
        progress = current.tracks.get(track) if current is not None else None
        if current is None or progress is None:
            return
        folder, sent = current.folder, 0
        number = progress.next_part - 1 - progress.part if progress.msn == msn else None
        while True:
            part = folder / f"{track}-p{number}.m4s" if number is not None else None
            part_there = part is not None and part.is_file()
            whole = folder / f"{track}-{msn}.m4s"
            if whole.is_file():
                yield whole.read_bytes()[sent:]
                return
            if number is None:
                return  # whole before we came, and gone since
            if part_there:
                data = part.read_bytes() if part is not None else b""
                sent += len(data)
                yield data
                number += 1
                continue

            def moved(p: Presentation, wanted: int = number) -> bool:
                t = p.tracks.get(track)
                return p.ended or t is None or t.msn > msn or t.next_part > wanted

            if await self.wait_for(req.key, moved, limit_s) is None:
                return
            if self.known[req.key].ended and not whole.is_file():
                return

    def _file(self, req: FileRequest, headers: dict[str, str], base_url: str) -> Response:
        presentation = self.known[req.key]
        path = presentation.folder / req.file
        suffix = path.suffix
        media_type = "video/mp4" if "-init-" in req.file else CONTENT_TYPES[suffix]
        try:
            if suffix in (".m3u8", ".mpd"):
                # Replaced (by a rename) many times a second: read it in one go, as one file.
                data = path.read_bytes()
                if suffix == ".mpd":  # the server's clock, as an absolute URL
                    data = data.replace(f'"{TIME_PATH}"'.encode(),
                                        f'"{base_url}{TIME_PATH}"'.encode())
                return Response(data, media_type=media_type,
                                headers={**headers, "Cache-Control": "no-cache"})
            if path.is_file():  # media files never change once there
                return FileResponse(path, media_type=media_type, headers=headers)
        except FileNotFoundError:
            pass
        return PlainTextResponse("not found\n", 404, headers=headers)
