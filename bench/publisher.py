"""The benchmark's RTMP publisher: the test file's tags, paced in real time, send times recorded.

Each video frame's send time (trio's monotonic clock, as its bytes are handed to the socket) is
kept by FLV timestamp, so a player in the same process computes per-frame latency by subtraction.
The file loops when a run outlasts it, its timestamps shifted to keep increasing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from bench.rtmp import RtmpClientConnection, client_socket, open_rtmp, send_all
from ingest.rtmp import messages as m
from ingest.rtmp.chunk import ChunkEncoder, RtmpMessage
from media import amf0, flv

if TYPE_CHECKING:
    from bench.media import Media, Tag

BLOCKED_S = 0.005  # a send that takes longer than this waited for the socket to drain


class EncodedMedia:
    """Each loop of the file as RTMP messages (type-0 headers), encoded once per run and
    shared by every publisher: the load process should spend its time on sockets."""

    def __init__(self, media: Media, chunk_size: int) -> None:
        self.media = media
        self._encoder = ChunkEncoder(chunk_size=chunk_size)
        self._loops: dict[tuple[int, int], list[bytes]] = {}

    def timestamp(self, loop: int, tag: Tag) -> int:
        return loop * self.media.duration_ms + tag.timestamp_ms

    def messages(self, stream_id: int, loop: int) -> list[bytes]:
        key = (stream_id, loop)
        if key not in self._loops:
            self._loops[key] = [self._encode(stream_id, self.timestamp(loop, t), t)
                                for t in self.media.tags]
        return self._loops[key]

    def _encode(self, stream_id: int, ts: int, tag: Tag) -> bytes:
        csid = m.CSID_VIDEO if tag.tag_type == flv.TagType.VIDEO else m.CSID_AUDIO
        return self._encoder.encode(RtmpMessage(csid, ts, tag.tag_type, stream_id, tag.body))


class Publisher:
    """Publishes one stream; `quantum_s` > 0 batches sends (many publishers, less CPU)."""

    def __init__(self, encoded: EncodedMedia, *, quantum_s: float = 0.0,
                 publish_type: str = "live") -> None:
        self.encoded = encoded
        self.quantum_s = quantum_s
        self.publish_type = publish_type  # "live", "record" or "append"
        self.sent_at: dict[int, float] = {}  # video frame timestamp -> send time
        self.media_bytes = 0  # FLV bytes of the frames sent (tag header + body + trailer)
        self.max_late_s = 0.0  # worst (send completed - due time) so far
        self.blocked_s = 0.0  # time spent waiting in send for the server to read
        self.started_at = 0.0
        self._control: list[bytes] = []  # acks and pongs, sent with the next media batch

    async def run(self, host: str, port: int, app: str, name: str, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        _, sock = client_socket()
        with sock:
            conn = await open_rtmp(sock, host, port, app)
            conn.auto_ack = False  # _pace is the socket's only writer
            sid = await conn.create_stream()
            await conn.publish(name, self.publish_type)
            await self._send_headers(conn, sid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, conn)
                task_status.started()
                await self._pace(conn, sid)

    async def _send_headers(self, conn: RtmpClientConnection, sid: int) -> None:
        media = self.encoded.media
        if media.metadata:
            payload = amf0.encode(["@setDataFrame"]) + media.metadata
            await conn.send_message(
                RtmpMessage(m.CSID_DATA, 0, m.MessageType.DATA_AMF0, sid, payload))
        for tag in media.headers:
            csid = m.CSID_VIDEO if tag.tag_type == flv.TagType.VIDEO else m.CSID_AUDIO
            await conn.send_message(RtmpMessage(csid, 0, tag.tag_type, sid, tag.body))

    async def _pace(self, conn: RtmpClientConnection, sid: int) -> None:
        tags = self.encoded.media.tags
        base = tags[0].timestamp_ms
        start = self.started_at = trio.current_time()
        loop, i = 0, 0
        messages = self.encoded.messages(sid, loop)
        while True:
            now = trio.current_time()
            batch: list[bytes] = self._control
            self._control = []
            first_due: float | None = None
            video: list[int] = []
            size = 0
            while True:
                ts = self.encoded.timestamp(loop, tags[i])
                due = start + (ts - base) / 1000
                if due > now:
                    break
                first_due = due if first_due is None else first_due
                batch.append(messages[i])
                size += tags[i].flv_size
                if tags[i].tag_type == flv.TagType.VIDEO:
                    video.append(ts)
                i += 1
                if i == len(tags):
                    loop, i = loop + 1, 0
                    messages = self.encoded.messages(sid, loop)
            if batch:
                # The send time is taken *before* the send: trio yields after it, and a fast
                # server's player may read the frame before this task runs again.
                handed = trio.current_time()
                for ts in video:
                    self.sent_at[ts] = handed
                await send_all(conn.sock, b"".join(batch))
                done = trio.current_time()
                if done - handed > BLOCKED_S:
                    self.blocked_s += done - handed
                self.media_bytes += size
                if first_due is not None:
                    self.max_late_s = max(self.max_late_s, done - first_due)
            await trio.sleep_until(max(due, now + self.quantum_s))

    async def _read(self, conn: RtmpClientConnection) -> None:
        """Drain what the server sends (acks, pings), queueing our answers for the writer."""
        while True:
            msg = await conn.next_message()
            if conn.ack_window and conn.decoder.bytes_received - conn.acked >= conn.ack_window:
                conn.acked = conn.decoder.bytes_received
                self._control.append(conn.encoder.encode(m.acknowledgement(conn.acked)))
            if msg.type_id == m.MessageType.USER_CONTROL:
                event, value = m.parse_user_control(msg)
                if event == m.UserControl.PING_REQUEST:
                    self._control.append(conn.encoder.encode(
                        m.user_control(m.UserControl.PING_RESPONSE, value)))
