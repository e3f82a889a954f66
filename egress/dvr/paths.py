"""Where a DVR entry writes: its `directory` and `file` templates expanded for one stream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.packet import StreamKey
    from control.config import DvrConfig


def _strftime(template: str, when: float) -> str:
    return time.strftime(template, time.localtime(when))


def _literal(text: str) -> str:
    """Text that strftime leaves as it is."""
    return text.replace("%", "%%")


def expand_directory(template: str, key: StreamKey, when: float) -> str:
    """$(app), $(instance) and strftime formats (local time, like nginx-rtmp's record_path)."""
    text = _literal(template)
    text = text.replace("$(app)", _literal(key.app)).replace("$(instance)", _literal(key.instance))
    return _strftime(text, when)


def expand_file(template: str, key: StreamKey, when: float, *, unique: bool = False) -> str:
    """%s is the stream name (not strftime's epoch seconds); unique adds "-<epoch seconds>"
    before the extension (sample-1554107911.flv)."""
    name = key.name.join(_strftime(piece, when) for piece in template.split("%s"))
    if unique:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}-{int(when)}.{ext}" if dot and stem else f"{name}-{int(when)}"
    return name


def dvr_path(entry: DvrConfig, key: StreamKey, when: float) -> Path:
    """The file (DVR_FLV) or folder (DVR_FMP4) a recording of `key` starting at `when` uses."""
    folder = Path(expand_directory(entry.directory, key, when)) if entry.directory else Path()
    name = expand_file(entry.file, key, when, unique=entry.unique)
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"dvr {entry.id}: file {entry.file!r} gives no usable name for {key}")
    return folder / name
