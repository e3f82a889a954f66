"""MSB-first bit reader with Exp-Golomb codes (H.264 §7.2, §9.1; ISO/IEC 14496-3 §1.6)."""

from __future__ import annotations

from media.codecs.errors import CodecError

# ue(v) values of real streams fit in 32 bits; longer prefixes are garbage.
_MAX_LEADING_ZEROS = 31


class BitReader:
    """Reads big-endian bit fields; running past the end raises CodecError."""

    __slots__ = ("_nbits", "_pos", "_value")

    def __init__(self, data: bytes) -> None:
        # One big int keeps each read O(len) with no per-byte Python loop; inputs are small.
        self._value = int.from_bytes(data, "big")
        self._nbits = len(data) * 8
        self._pos = 0

    @property
    def remaining(self) -> int:
        return self._nbits - self._pos

    def u(self, n: int) -> int:
        end = self._pos + n
        if end > self._nbits:
            raise CodecError("truncated bitstream")
        self._pos = end
        return (self._value >> (self._nbits - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def skip(self, n: int) -> None:
        self.u(n)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > _MAX_LEADING_ZEROS:
                raise CodecError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)
