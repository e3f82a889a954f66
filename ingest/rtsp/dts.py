"""Decode timestamps for RTP video, rebuilt from presentation timestamps with no added delay.

RTP carries one timestamp per frame, the presentation time (PTS). With B-frames the frames
arrive in decode order and their PTS go back and forth, but FLV and MP4 need a decode
timestamp (DTS) per frame as well: strictly increasing, and never after the frame's PTS.

Method. Number the frames i = 0, 1, ... in decode order, and let s_0 < s_1 < ... be all their
PTS sorted (display order). The reorder depth R bounds how many frames may precede a frame in
decode order and follow it in display order (H.264 max_num_reorder_frames). Then
DTS_i = s_(i-R) works:

- It is known when frame i arrives. The frame displayed k-th is decoded at some j <= k + R:
  of the j frames decoded before it, at most k are displayed before it and at most R after.
  So by frame i every frame displayed at a position up to i - R has arrived, and s_(i-R) is
  the smallest PTS not yet used: a min-heap pops it, holding at most R + 1 values.
- It is never after the PTS. Frame i is displayed at some d_i >= i - R: of the i frames
  decoded before it, at most R are displayed after it. So s_(i-R) <= s_(d_i) = PTS_i.
- It increases strictly, as the s do.

The first R frames come before s_0 is known: they get first_pts - (R - i) * frame_step, which
is below every PTS when the stream starts at a keyframe (an IDR picture is displayed before
everything decoded after it). Once s_0 is known the DTS advance by one frame each.

Unknown or wrong depth. A frame whose PTS is at or below the last DTS given (the depth was
unknown, too small, or the stream did not start at a keyframe) cannot get a valid DTS. It gets
last DTS + 1 as both DTS and PTS, a one-frame glitch in display time rather than a DTS after
the PTS. Its own reorder count (earlier frames with a later PTS) is the depth the stream
needs; when that is more than R, R grows to it and the heap keeps the extra values (the
next pops are skipped), so the glitches stop. `grew` counts the growths, for the caller's log.

Clock reset. A PTS more than `reset_ticks` below the last DTS is a new timeline (a
publisher's clock reset), not reordering: the state restarts from that frame, keeping the
depth learned, and the DTS go back with it. `resets` counts these; the caller treats them as
a discontinuity. Otherwise the caller unwraps the RTP timestamps, so they normally increase.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Final

__all__ = ["DEFAULT_RESET_TICKS", "MAX_REORDER_FRAMES", "DtsRebuilder"]

# The deepest reordering H.264 and HEVC allow (the DPB holds at most 16 frames).
MAX_REORDER_FRAMES: Final = 16
# 10 s of the 90 kHz RTP video clock: no B-frame reaches that far back.
DEFAULT_RESET_TICKS: Final = 900_000


class DtsRebuilder:
    """Give each frame, fed in decode order with its PTS, a DTS at once."""

    def __init__(self, reorder: int | None, frame_step: int, *,
                 reset_ticks: int = DEFAULT_RESET_TICKS) -> None:
        self.reorder = min(max(reorder or 0, 0), MAX_REORDER_FRAMES)  # current depth R
        self.frame_step = max(frame_step, 1)
        self.reset_ticks = reset_ticks
        self.grew = 0  # times the stream showed a deeper reordering than R
        self.glitches = 0  # frames whose PTS was raised to their DTS
        self.resets = 0  # clock resets
        self._restart()

    def _restart(self) -> None:
        self._heap: list[int] = []  # PTS not yet used as a DTS
        # The PTS of the last frames in decode order, to count a late frame's reorder depth.
        self._recent: deque[int] = deque(maxlen=MAX_REORDER_FRAMES)
        self._count = 0  # frames since the start
        self._first = 0  # PTS of the first frame
        self._last: int | None = None  # last DTS given

    def dts(self, pts: int) -> tuple[int, int]:
        """(dts, pts) of the next frame in decode order; pts changes only in a glitch."""
        last = self._last
        if last is not None and pts < last - self.reset_ticks:
            self.resets += 1
            self._restart()
            last = None
        if last is not None and pts <= last:
            # Displayed before a frame that has its DTS already: count how deep that goes.
            depth = sum(1 for p in self._recent if p > pts)
            if depth > self.reorder:
                self.reorder = depth
                self.grew += 1
        if self._count == 0:
            self._first = pts
        heapq.heappush(self._heap, pts)
        self._recent.append(pts)
        if len(self._heap) > self.reorder:
            candidate = heapq.heappop(self._heap)  # s_(i-R)
        elif self._count < self.reorder:
            candidate = self._first - (self.reorder - self._count) * self.frame_step
        else:  # R just grew: while the heap fills up again, the DTS advance as little as they can
            assert last is not None  # R grows only on a frame after the first
            candidate = last + 1
        self._count += 1
        # Only the guesses can exceed the PTS; a PTS at or below the last DTS is a glitch.
        dts = candidate if last is None else max(last + 1, min(candidate, pts))
        if dts > pts:
            self.glitches += 1
            pts = dts
        self._last = dts
        return dts, pts
