"""DTS from PTS: exact values for small GOPs, properties over random GOPs, an x264 stream."""

from __future__ import annotations

import itertools
import subprocess
from fractions import Fraction
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.rtsp.dts import MAX_REORDER_FRAMES, DtsRebuilder
from media.codecs import avc

if TYPE_CHECKING:
    from pathlib import Path

STEP = 3000  # 30 fps on the 90 kHz clock


def run(d: DtsRebuilder, display: list[int], step: int = STEP, offset: int = 0) -> list[
        tuple[int, int]]:
    """(dts, pts) per frame, for frames given in decode order by their display index."""
    return [d.dts(i * step + offset) for i in display]


def dts_of(out: list[tuple[int, int]]) -> list[int]:
    return [dts for dts, _ in out]


def test_i_p_b_b() -> None:
    # I0 P3 B1 B2 P6 B4 B5: each B follows one frame (its P) that is displayed after it.
    display = [0, 3, 1, 2, 6, 4, 5]
    out = run(DtsRebuilder(1, STEP), display)
    assert dts_of(out) == [-3000, 0, 3000, 6000, 9000, 12000, 15000]
    assert [pts for _, pts in out] == [i * STEP for i in display]


def test_b_pyramid() -> None:
    # I0 P4 B2 b1 b3 (x264's b-pyramid): b1 follows P4 and B2, a depth of 2.
    display = [0, 4, 2, 1, 3, 8, 6, 5, 7]
    d = DtsRebuilder(2, STEP)
    out = run(d, display)
    assert dts_of(out) == [(i - 2) * STEP for i in range(len(display))]
    assert all(dts <= pts for dts, pts in out)
    assert (d.grew, d.glitches) == (0, 0)


def test_no_b_frames() -> None:
    out = run(DtsRebuilder(0, STEP), list(range(10)), offset=123)
    assert all(dts == pts for dts, pts in out)


def test_unknown_depth_glitches_the_first_b_frames_then_holds() -> None:
    d = DtsRebuilder(None, STEP)
    out = run(d, [0, 3, 1, 2, 6, 4, 5, 9, 7, 8])
    # B1 and B2 come after P3 already took DTS 9000: no DTS fits, so their PTS are raised.
    assert out[:5] == [(0, 0), (9000, 9000), (9001, 9001), (9002, 9002), (9003, 18000)]
    assert out[5:] == [(12000, 12000), (15000, 15000), (18000, 27000), (21000, 21000),
                       (24000, 24000)]
    assert (d.reorder, d.grew, d.glitches) == (1, 1, 2)


def test_unknown_depth_b_pyramid() -> None:
    d = DtsRebuilder(None, STEP)
    out = run(d, [0, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11])
    # B2 shows a depth of 1, b1 of 2; b3 (depth 1) is glitched too, DTS 12000 being gone.
    assert [pts for _, pts in out[2:5]] == [12001, 12002, 12003]
    assert (d.reorder, d.grew, d.glitches) == (2, 2, 3)
    # Then the DTS creep up by a tick until the PTS popped catch up: s_(i-2) again from b5.
    assert dts_of(out[4:8]) == [12003, 12004, 12005, 15000]
    assert dts_of(out[8:]) == [(i - 2) * STEP for i in range(8, 13)]


def test_too_small_depth_grows_to_the_frame_reorder_count() -> None:
    d = DtsRebuilder(1, STEP)  # the SPS says 1, the stream has a b-pyramid
    out = run(d, [0, 4, 2, 1, 3, 8, 6, 5, 7])
    assert out[2:4] == [(6000, 6000), (6001, 6001)]  # b1 follows P4 and B2
    assert (d.reorder, d.grew, d.glitches) == (2, 1, 1)
    assert all(dts <= pts for dts, pts in out)


def test_repeated_pts_glitches_without_growing() -> None:
    d = DtsRebuilder(0, STEP)
    assert run(d, [0, 1, 1, 2]) == [(0, 0), (3000, 3000), (3001, 3001), (6000, 6000)]
    assert (d.reorder, d.grew, d.glitches) == (0, 0, 1)


def test_depth_stays_within_the_dpb() -> None:
    assert DtsRebuilder(40, STEP).reorder == MAX_REORDER_FRAMES
    d = DtsRebuilder(0, STEP)
    run(d, [*range(1, 31), 0])  # one frame displayed before 30 that were decoded before it
    assert d.reorder == MAX_REORDER_FRAMES


def test_clock_reset_restarts() -> None:
    d = DtsRebuilder(2, STEP, reset_ticks=10 * STEP)
    run(d, [0, 4, 2, 1, 3, 40, 38, 37])
    assert d.dts(5 * STEP) == (3 * STEP, 5 * STEP)  # 32 frames back: a new timeline
    assert (d.resets, d.reorder, d.glitches) == (1, 2, 0)
    assert dts_of(run(d, [9, 7, 6, 8])) == [4 * STEP, 5 * STEP, 6 * STEP, 7 * STEP]
    # Less than reset_ticks back is taken for reordering: one glitch, no restart.
    assert d.dts(0) == (7 * STEP + 1, 7 * STEP + 1)
    assert d.resets == 1


# ---------------------------------------------------------------------- random GOP structures

MAX_B = 7  # B-frames per mini-GOP


def pyramid(lo: int, hi: int) -> list[int]:
    """Decode order of the B-frames displayed lo..hi-1 as a b-pyramid: middle first."""
    if lo >= hi:
        return []
    mid = (lo + hi) // 2
    return [mid, *pyramid(lo, mid), *pyramid(mid + 1, hi)]


def decode_order(mini_gops: list[tuple[int, bool]]) -> tuple[list[int], list[int]]:
    """Display indices in decode order: an I frame, then per mini-GOP its anchor (I or P) and
    its B-frames, displayed between the previous anchor and this one. Also the decode index
    at which each mini-GOP ends."""
    order, ends = [0], [1]
    for b_frames, pyramided in mini_gops:
        shown = len(order)
        anchor = shown + b_frames
        order.append(anchor)
        order += pyramid(shown, anchor) if pyramided else list(range(shown, anchor))
        ends.append(len(order))
    return order, ends


def reorder_counts(order: list[int]) -> list[int]:
    """Per frame, the frames decoded before it and displayed after it (max_num_reorder_frames
    is the largest)."""
    return [sum(1 for q in order[:i] if q > p) for i, p in enumerate(order)]


gops = st.lists(st.tuples(st.integers(0, MAX_B), st.booleans()), max_size=12)
offsets = st.integers(-(1 << 40), 1 << 40)


@given(gops, st.integers(1, 10_000), offsets, st.integers(0, 3))
def test_known_depth_gives_exact_dts(mini_gops: list[tuple[int, bool]], step: int, offset: int,
                                     extra: int) -> None:
    order, _ = decode_order(mini_gops)
    depth = max(reorder_counts(order)) + extra  # the SPS may claim more than the stream uses
    d = DtsRebuilder(depth, step)
    out = run(d, order, step, offset)
    assert dts_of(out) == [offset + (i - depth) * step for i in range(len(order))]
    assert [pts for _, pts in out] == [i * step + offset for i in order]
    # A P frame is shown after the B-frames decoded behind it: its PTS leads by up to MAX_B.
    assert all(0 <= pts - dts <= (depth + MAX_B) * step for dts, pts in out)
    assert (d.grew, d.glitches) == (0, 0)
    assert len(d._heap) <= depth  # bounded: only the PTS not used yet


@given(gops, st.integers(64, 10_000), offsets)
def test_unknown_depth_glitches_only_until_the_stream_shows_its_depth(
        mini_gops: list[tuple[int, bool]], step: int, offset: int) -> None:
    # A frame step far above the frames per mini-GOP, as on any real clock (90 kHz at 120 fps
    # is 750 ticks): the DTS pushed ahead by a learning glitch catch up within a mini-GOP.
    order, ends = decode_order(mini_gops)
    counts = reorder_counts(order)
    depth = max(counts)
    d = DtsRebuilder(None, step)
    out = run(d, order, step, offset)
    dts = dts_of(out)
    assert all(a < b for a, b in itertools.pairwise(dts))
    assert all(dts <= pts for dts, pts in out)
    glitched = [i for i, (p, (_, pts)) in enumerate(zip(order, out, strict=True))
                if pts != p * step + offset]
    assert len(glitched) == d.glitches
    shown = counts.index(depth)  # the first frame that needs the full depth
    full_depth_end = next(end for end in ends if end > shown)
    assert all(i < full_depth_end for i in glitched)
    assert all(order[i] < max(order[:i]) for i in glitched)  # B-frames only
    assert d.reorder <= depth
    assert d.grew <= depth


# ------------------------------------------------------------------------------ real x264


def test_x264_stream_matches_ffmpeg_dts(tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    av = pytest.importorskip("av")
    path = tmp_path / "b.mp4"
    subprocess.run([  # libx264 defaults: 3 B-frames with b-pyramid
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-frames:v", "60",
        "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path),
    ], check=True, timeout=60)  # fmt: skip
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = int(1 / (Fraction(stream.average_rate) * Fraction(stream.time_base)))
        cfg = avc.parse_avcc(bytes(stream.codec_context.extradata))
        packets = [(p.dts, p.pts) for p in container.demux(stream) if p.size]
    assert len(packets) == 60
    pts = [p for _, p in packets]
    assert pts != sorted(pts)  # there are B-frames
    reorder = avc.reorder_depth(avc.parse_sps(cfg.sps[0]))
    assert reorder == 2
    d = DtsRebuilder(reorder, step)
    out = [d.dts(p) for p in pts]
    assert out == packets  # the DTS ffmpeg's own muxer wrote
    dts = dts_of(out)
    assert {b - a for a, b in itertools.pairwise(dts)} == {step}
    assert all(dts <= pts for dts, pts in out)
