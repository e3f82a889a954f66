"""The http_file handler's static files: `root`, sub-domain folders, conditional requests,
ranges, and FLV recordings played while they are written.

Paths are checked after percent-decoding: "." or ".." segments, backslashes and NUL are
refused, and the resolved file (symlinks followed) must lie inside the root. `server_name`
is a regular expression on the Host header: when it matches, its first group (or the one
named "sub") is a sub-folder of the root, so with `^([a-z0-9-]+)\\.example\\.com$` the URL
http://a.example.com/x is the file ROOT/a/x.

A .flv file whose head shows it is still being recorded (its onMetaData has no keyframes
index yet) is sent from its start and then followed as it grows, until the recorder
finishes it or it stops growing: "real-time playback" of a recording.
"""

from __future__ import annotations

import mimetypes
import os
import re
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

import trio
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse

from egress.dvr.flv_writer import finished_by_us

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

INDEX_FILES: Final = ("index.html", "index.htm")
MEDIA_TYPES: Final = {
    ".m3u8": "application/vnd.apple.mpegurl", ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment", ".mp4": "video/mp4", ".flv": "video/x-flv",
    ".ts": "video/mp2t", ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json", ".txt": "text/plain",
    ".wasm": "application/wasm", ".svg": "image/svg+xml",
}
FOLLOW_POLL_S: Final = 0.1  # how often a growing recording is looked at
FOLLOW_IDLE_S: Final = 10.0  # a recording that did not grow for this long is over
READ_CHUNK: Final = 256 << 10


class BadPath(ValueError):
    """A request path that can never name a file (answered 400)."""


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream")


def resolve(root: Path, url_path: str, host: str | None,
            server_name: re.Pattern[str] | None) -> Path | None:
    """The file a decoded URL path names, or None (not there, or outside the root)."""
    if "\x00" in url_path or "\\" in url_path:
        raise BadPath("NUL or backslash in the path")
    parts = [p for p in url_path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    base = root
    if server_name is not None and host:
        m = server_name.fullmatch(re.sub(r":\d+$", "", host))  # the port is not the name
        if m is not None and m.groups():
            sub = m.groupdict().get("sub") or m.group(1)
            if not sub or sub in (".", "..") or "/" in sub:
                return None
            base = root / sub
    try:
        real_root = root.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != real_root and real_root not in target.parents:
        return None  # a symlink out of the root
    if target.is_dir():
        for name in INDEX_FILES:
            if (target / name).is_file():
                return target / name
        return None
    return target if target.is_file() else None


def not_modified(etag: str, last_modified: str, request: Mapping[str, str]) -> bool:
    """RFC 9110 §13.1.2-3: If-None-Match wins over If-Modified-Since."""
    if (match := request.get("if-none-match")) is not None:
        tags = [t.strip().removeprefix("W/") for t in match.split(",")]
        return "*" in tags or etag in tags
    if (since := request.get("if-modified-since")) is not None:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


def serve_file(path: Path, method: str, request_headers: Mapping[str, str],
               headers: dict[str, str]) -> Response:
    if path.suffix == ".flv" and "range" not in request_headers and not finished_by_us(path):
        growing = {**headers, "Cache-Control": "no-cache"}
        if method == "HEAD":
            return Response(media_type=media_type(path), headers=growing)
        return StreamingResponse(_follow(path), media_type=media_type(path), headers=growing)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return not_found(headers)
    response = FileResponse(path, media_type=media_type(path), headers=headers,
                            stat_result=stat)
    etag, modified = response.headers["etag"], response.headers["last-modified"]
    if not_modified(etag, modified, request_headers):
        return Response(status_code=304, headers={**headers, "ETag": etag,
                                                  "Last-Modified": modified})
    return response


async def _follow(path: Path) -> AsyncIterator[bytes]:
    """The file from its start, then what is appended, while it is being recorded."""
    async with await trio.open_file(path, "rb") as f:
        inode = os.fstat(f.fileno()).st_ino
        idle = 0.0
        while True:
            chunk = await f.read(READ_CHUNK)
            if chunk:
                idle = 0.0
                yield chunk
                continue
            try:
                finished = os.stat(path).st_ino != inode  # the recorder replaced it
            except FileNotFoundError:
                finished = True
            if finished or idle >= FOLLOW_IDLE_S:
                if rest := await f.read():
                    yield rest
                return
            await trio.sleep(FOLLOW_POLL_S)
            idle += FOLLOW_POLL_S


def not_found(headers: dict[str, str]) -> Response:
    return PlainTextResponse("not found\n", 404, headers=headers)
