"""AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) parsing and building.

Malformed input raises CodecError only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

__all__ = ["AacConfig", "AudioObjectType", "CodecError", "build_asc", "codec_string", "parse_asc"]


class AudioObjectType(IntEnum):
    """Audio object types used here (ISO/IEC 14496-3 §1.5.1.1, Table 1.1)."""

    AAC_MAIN = 1
    AAC_LC = 2
    AAC_SSR = 3
    AAC_LTP = 4
    SBR = 5  # HE-AAC (v1)
    AAC_SCALABLE = 6
    ER_AAC_LC = 17
    ER_AAC_LD = 23
    PS = 29  # HE-AAC v2
    ESCAPE = 31


# samplingFrequencyIndex 0..12 (Table 1.18); 13/14 are reserved, 15 = explicit 24-bit rate.
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
                8000, 7350)  # fmt: skip
_EXPLICIT_RATE = 15
# channelConfiguration -> channel count (Table 1.19 and its amendments); 0 = PCE-defined.
_CHANNELS = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 13: 24, 14: 8}
_CONFIG_FOR_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 8: 7}
# Object types that carry GASpecificConfig (§1.6.2.1, §4.4.1).
_GA_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})
_SYNC_EXTENSION = 0x2B7  # backward-compatible (implicit) SBR signalling, §1.6.6.1
_PS_SYNC_EXTENSION = 0x548


@dataclass(frozen=True, slots=True)
class AacConfig:
    """Decoded AudioSpecificConfig.

    sample_rate/frame_length describe the core AAC stream (1024 or 960 samples per frame):
    fMP4 sample durations come from these. sbr_sample_rate is the HE-AAC output rate when
    SBR is signalled (explicitly via object type 5/29, or implicitly); ps marks HE-AAC v2.
    channels is 0 when a program_config_element defines the layout.
    """

    object_type: int
    sample_rate: int
    channels: int
    frame_length: int = 1024
    sbr_sample_rate: int | None = None
    ps: bool = False


def _object_type(r: BitReader) -> int:
    aot = r.u(5)
    return 32 + r.u(6) if aot == AudioObjectType.ESCAPE else aot


def _sample_rate(r: BitReader) -> int:
    index = r.u(4)
    if index == _EXPLICIT_RATE:
        rate = r.u(24)
        if rate == 0:
            raise CodecError("explicit AAC sampling frequency is 0")
        return rate
    if index >= len(SAMPLE_RATES):
        raise CodecError(f"reserved AAC samplingFrequencyIndex {index}")
    return SAMPLE_RATES[index]


def _implicit_sbr(r: BitReader) -> tuple[int | None, bool]:
    """Backward-compatible SBR/PS signalling after an AAC-LC GASpecificConfig (§1.6.6.1)."""
    try:
        if r.flag() or r.remaining < 16 or r.u(11) != _SYNC_EXTENSION:
            return None, False  # extensionFlag set, or no sync extension
        if _object_type(r) != AudioObjectType.SBR or not r.flag():
            return None, False
        rate = _sample_rate(r)
        ps = r.remaining >= 12 and r.u(11) == _PS_SYNC_EXTENSION and r.flag()
    except CodecError:
        return None, False  # a damaged optional trailer must not reject a usable config
    return rate, ps


def parse_asc(asc: bytes) -> AacConfig:
    """Parse an AudioSpecificConfig (the FLV AAC sequence header body)."""
    r = BitReader(asc)
    signalled = _object_type(r)
    if signalled == 0:
        raise CodecError("AAC audioObjectType 0 (null)")
    rate = _sample_rate(r)
    config = r.u(4)
    if config not in _CHANNELS:
        raise CodecError(f"reserved AAC channelConfiguration {config}")
    core, sbr_rate, ps = signalled, None, signalled == AudioObjectType.PS
    if signalled in (AudioObjectType.SBR, AudioObjectType.PS):
        # Explicit hierarchical signalling: the output rate, then the core object type.
        sbr_rate = _sample_rate(r)
        core = _object_type(r)
        if core == 22:
            r.skip(4)  # extensionChannelConfiguration (ER BSAC)
    frame_length = 1024
    if core in _GA_TYPES:
        # Some muxers cut the ASC right after the channel fields; missing GA bits mean zero.
        frame_length = 960 if r.remaining and r.flag() else 1024
        if r.remaining and r.flag():  # dependsOnCoreCoder
            r.skip(14)
        if sbr_rate is None and core == AudioObjectType.AAC_LC and config != 0:
            sbr_rate, ps = _implicit_sbr(r)
    return AacConfig(signalled, rate, _CHANNELS[config], frame_length, sbr_rate, ps)


def build_asc(object_type: int, sample_rate: int, channels: int) -> bytes:
    """Build a plain AudioSpecificConfig (e.g. AAC-LC 44.1 kHz stereo -> 12 10).

    HE-AAC (5/29) needs both rates, so it is refused; pass such configs through instead.
    """
    if not 0 < object_type < 96 or object_type in (5, 29, AudioObjectType.ESCAPE):
        raise CodecError(f"cannot build an AudioSpecificConfig for object type {object_type}")
    if channels not in _CONFIG_FOR_CHANNELS:
        raise CodecError(f"no channelConfiguration for {channels} channels")
    if not 0 < sample_rate < 1 << 24:
        raise CodecError(f"sample rate {sample_rate} out of range")
    value, nbits = 0, 0

    def put(v: int, n: int) -> None:
        nonlocal value, nbits
        value, nbits = (value << n) | v, nbits + n

    if object_type >= AudioObjectType.ESCAPE:
        put(AudioObjectType.ESCAPE, 5)
        put(object_type - 32, 6)
    else:
        put(object_type, 5)
    if sample_rate in SAMPLE_RATES:
        put(SAMPLE_RATES.index(sample_rate), 4)
    else:
        put(_EXPLICIT_RATE, 4)
        put(sample_rate, 24)
    put(_CONFIG_FOR_CHANNELS[channels], 4)
    if object_type in _GA_TYPES:
        put(0, 3)  # frameLengthFlag=0 (1024), dependsOnCoreCoder=0, extensionFlag=0
    pad = -nbits % 8
    return (value << pad).to_bytes((nbits + pad) // 8, "big")


def codec_string(cfg: AacConfig) -> str:
    """RFC 6381 codecs parameter, e.g. "mp4a.40.2"."""
    return f"mp4a.40.{cfg.object_type}"
