"""SDP (RFC 4566) as RTSP uses it: the media of an ANNOUNCE, and the DESCRIBE answer.

Only what an RTSP server needs is kept: per media its kind, payload type, encoding, clock
rate, channels, fmtp parameters and control URL; and the session's control. Codec details
(RFC 6184 H.264, RFC 7798 H.265, RFC 3640 AAC, RFC 7587 Opus) are read from these by the
depacketizers. Bad SDP raises SdpError only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

__all__ = ["Media", "SdpError", "SessionDescription", "media_url", "parse_sdp"]


class SdpError(ValueError):
    """An SDP that cannot describe a stream we take."""


@dataclass(frozen=True, slots=True)
class Media:
    kind: str  # "video", "audio", "application"...
    payload_type: int
    encoding: str  # upper-case: "H264", "H265", "MPEG4-GENERIC", "MP4A-LATM", "OPUS"
    clock_rate: int
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)  # lower-case names
    control: str = ""


@dataclass(frozen=True, slots=True)
class SessionDescription:
    medias: tuple[Media, ...]
    control: str = ""


# Static payload types (RFC 3551 §6) that an ANNOUNCE might use without an rtpmap.
_STATIC = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 14: ("MPA", 90000, 1),
           26: ("JPEG", 90000, 1), 32: ("MPV", 90000, 1), 33: ("MP2T", 90000, 1)}
MAX_SDP_BYTES = 64 << 10
MAX_MEDIAS = 16


def parse_sdp(data: bytes) -> SessionDescription:
    if len(data) > MAX_SDP_BYTES:
        raise SdpError("SDP too large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    session_control = ""
    sections: list[dict[str, object]] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:60]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[3].isdigit():
                raise SdpError(f"bad media line {value[:60]!r}")
            if len(sections) >= MAX_MEDIAS:
                raise SdpError("too many media")
            sections.append({"kind": parts[0], "pt": int(parts[3]), "rtpmap": None,
                             "fmtp": {}, "control": ""})
        elif kind == "a":
            name, _, attr = value.partition(":")
            target = sections[-1] if sections else None
            if name == "control":
                if target is None:
                    session_control = attr.strip()
                else:
                    target["control"] = attr.strip()
            elif target is not None and name in ("rtpmap", "fmtp"):
                pt_text, _, rest = attr.strip().partition(" ")
                if pt_text != str(target["pt"]):
                    continue  # another payload type of the same media
                target[name] = rest.strip() if name == "rtpmap" else _fmtp(rest)
    if not sections:
        raise SdpError("SDP without media")
    return SessionDescription(tuple(_media(s) for s in sections), session_control)


def _fmtp(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(";"):
        name, sep, value = item.strip().partition("=")
        if name and sep:
            out[name.strip().lower()] = value.strip()
    return out


def _media(section: dict[str, object]) -> Media:
    pt = section["pt"]
    assert isinstance(pt, int)
    rtpmap = section["rtpmap"]
    if isinstance(rtpmap, str):
        fields = rtpmap.split("/")
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) <= 0:
            raise SdpError(f"bad rtpmap {rtpmap[:60]!r}")
        encoding, rate = fields[0].upper(), int(fields[1])
        channels = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 1
    elif pt in _STATIC:
        encoding, rate, channels = _STATIC[pt]
    else:
        raise SdpError(f"payload type {pt} has no rtpmap")
    fmtp = section["fmtp"]
    control = section["control"]
    assert isinstance(fmtp, dict)
    assert isinstance(control, str)
    return Media(str(section["kind"]), pt, encoding, rate, channels, fmtp, control)


def media_url(base: str, control: str) -> str:
    """The URL a media's SETUP uses: its control, absolute or relative to the base (the
    Content-Base, or the ANNOUNCE/DESCRIBE URL, taken as a folder)."""
    if not control or control == "*":
        return base
    if urlsplit(control).scheme:
        return control
    return urljoin(base if base.endswith("/") else base + "/", control)
