"""How many queued bytes wake a publisher's connection: the estimate and the session's say."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingest.rtmp import messages as m
from ingest.rtmp.wakeups import MAX_THRESHOLD, MIN_VIDEO, WINDOW_VIDEO, WakeupThreshold
from tests.ingest.test_session import (
    aac_config,
    aac_frame,
    avc_config,
    avc_frame,
    nalu,
    publishing,
)

MT = m.MessageType
CHUNK = 4096
AUDIO_WIRE = 16  # the most RTMP framing an audio payload below one chunk carries


def fed(audio: int, video: int, frames: int = MIN_VIDEO) -> WakeupThreshold:
    w = WakeupThreshold()
    for _ in range(frames):
        w.on_audio(audio)
        w.on_video(video)
    return w


def test_nothing_before_enough_video() -> None:
    w = fed(400, 8000, MIN_VIDEO - 1)
    assert w.threshold(CHUNK) == 1
    w.on_video(8000)
    assert w.threshold(CHUNK) == 2 * (400 + AUDIO_WIRE) + 1


def test_two_audio_frames_stay_under_and_any_video_frame_reaches_it() -> None:
    w = fed(400, 4000)
    lowat = w.threshold(CHUNK)
    assert 2 * (400 + AUDIO_WIRE) < lowat <= 4000 // 2


def test_one_audio_frame_when_video_frames_are_smaller() -> None:
    assert fed(400, 1500).threshold(CHUNK) == 400 + AUDIO_WIRE + 1


def test_any_byte_when_video_frames_are_as_small_as_audio() -> None:
    assert fed(400, 800).threshold(CHUNK) == 1


def test_video_only_wakes_on_any_byte() -> None:
    w = WakeupThreshold()
    for _ in range(2 * MIN_VIDEO):
        w.on_video(8000)
    assert w.threshold(CHUNK) == 1


def test_audio_of_several_chunks_counts_their_headers() -> None:
    assert fed(300, 8000).threshold(128) == 2 * (300 + AUDIO_WIRE + 2 * 5) + 1


def test_estimates_forget_what_the_previous_window_saw() -> None:
    w = fed(400, 300, WINDOW_VIDEO)  # a still picture's tiny frames: no threshold
    assert w.threshold(CHUNK) == 1
    for _ in range(WINDOW_VIDEO - 1):
        w.on_audio(400)
        w.on_video(8000)
    assert w.threshold(CHUNK) == 1  # the previous window had them
    w.on_video(8000)
    assert w.threshold(CHUNK) == 2 * (400 + AUDIO_WIRE) + 1


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 1 << 20)), max_size=400),
       st.integers(128, 1 << 16))
def test_no_recent_video_frame_falls_under_twice_the_threshold(
        frames: list[tuple[bool, int]], chunk: int) -> None:
    """Whatever the sizes, a recent video frame alone always wakes the reader, with room to
    spare, and a recent audio frame alone never does."""
    w = WakeupThreshold()
    for video, size in frames:
        (w.on_video if video else w.on_audio)(size)
    lowat = w.threshold(chunk)
    assert lowat >= 1
    recent = frames[-WINDOW_VIDEO:]  # all within the two windows the estimate covers
    if lowat > 1:
        assert all(2 * lowat <= size for video, size in recent if video)
        assert all(size < lowat for video, size in recent if not video)


# -- the session ------------------------------------------------------------------------------

def test_session_threshold_follows_its_published_stream() -> None:
    h = publishing()
    c = h.client
    assert h.conn.wakeup_threshold() == 1
    c.send_media(1, MT.VIDEO, 0, avc_config())
    c.send_media(1, MT.AUDIO, 0, aac_config())
    for i in range(MIN_VIDEO):
        c.send_media(1, MT.AUDIO, 33 * i, aac_frame(bytes(398)))
        c.send_media(1, MT.VIDEO, 33 * i, avc_frame(nalu(1, 4000), key=i == 0))
    h.pump()
    # 128-byte chunks (no Set Chunk Size): each further chunk of an audio frame adds a header.
    assert h.conn.wakeup_threshold() == 2 * (400 + AUDIO_WIRE + 3 * 5) + 1

    # Half a message buffered: wake once the rest of it can be there, never later.
    body = aac_frame(bytes(398))
    c.send_media(1, MT.AUDIO, 33 * MIN_VIDEO, body)
    data = c.data_to_send()
    h.conn.receive_data(data[:100])
    assert len(body) - 100 < h.conn.wakeup_threshold() <= len(data) - 100
    h.conn.receive_data(data[100:300])
    assert len(body) - 300 < h.conn.wakeup_threshold() <= len(data) - 300
    h.conn.receive_data(data[300:])
    assert h.conn.wakeup_threshold() == 2 * (400 + AUDIO_WIRE + 3 * 5) + 1


def test_a_large_half_received_frame_wakes_within_the_cap() -> None:
    h = publishing()
    c = h.client
    c.send_media(1, MT.VIDEO, 0, avc_frame(nalu(5, 1 << 20), key=True))
    data = c.data_to_send()
    h.conn.receive_data(data[:5000])
    assert h.conn.wakeup_threshold() == MAX_THRESHOLD
    h.conn.receive_data(data[5000:-1000])
    assert 0 < h.conn.wakeup_threshold() <= 1000


def test_session_threshold_never_passes_a_due_acknowledgement() -> None:
    h = publishing()
    c = h.client
    for i in range(MIN_VIDEO):
        c.send_media(1, MT.AUDIO, 33 * i, aac_frame(bytes(398)))
        c.send_media(1, MT.VIDEO, 33 * i, avc_frame(nalu(1, 4000), key=i == 0))
    h.pump()
    window = h.bytes_fed + 300
    c.send_window_ack_size(window)
    h.pump()
    left = window - h.bytes_fed
    assert 0 < left < 2 * (400 + AUDIO_WIRE)
    assert h.conn.wakeup_threshold() == left


def test_two_published_streams_wake_on_any_byte() -> None:
    h = publishing()
    h.client.create_stream()
    h.pump()
    h.client.publish(2, "other")
    h.pump()
    assert len(h.conn.publishing) == 2
    assert h.conn.wakeup_threshold() == 1
