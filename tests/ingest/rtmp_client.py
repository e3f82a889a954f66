"""A small sans-IO RTMP *client* driver for tests (and the benchmark's load client).

It plays the client's side of the flows the server has to understand: the handshake
(`ClientHandshake`), commands and media encoded with a compressing `ChunkEncoder` (fmt 1/2/3
headers, as real encoders send), and a `ChunkDecoder` for what the server answers, with the
server's Set Chunk Size applied. No I/O: move bytes with `data_to_send()` and `receive()`.

    client = RtmpTestClient()
    client.connect("live", "rtmp://localhost/live")
    server_events = conn.receive_data(client.data_to_send())   # C0+C1 only, at first
    client.receive(conn.data_to_send())                         # S0+S1+S2 -> C2 + connect
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from ingest.rtmp import messages as m
from ingest.rtmp.chunk import ChunkDecoder, ChunkEncoder, NeedData, RtmpMessage
from ingest.rtmp.handshake import PACKET_SIZE, ClientHandshake
from media import amf0

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["CSID_MEDIA", "RtmpTestClient"]

# Chunk stream ids the client sends media and data on (ffmpeg's choice: audio/video/data apart,
# so the compressing encoder can use fmt 2/3 headers for back-to-back frames of one track).
CSID_MEDIA: dict[int, int] = {m.MessageType.AUDIO: 4, m.MessageType.VIDEO: 6,
                              m.MessageType.DATA_AMF0: 8}
CSID_OTHER = 7  # any other message type sent with send_media (aggregates, odd types)
CSID_STREAM_COMMAND = 8  # ffmpeg sends publish/play on csid 8, connect & co. on csid 3


class RtmpTestClient:
    """The client side of one RTMP connection.

    Outgoing bytes accumulate until `data_to_send()`. Chunks queued before the handshake is
    over (e.g. `connect` called right away) are held back until C2 has been produced.
    Every message received is also appended to `received`.
    """

    def __init__(self, *, digest: bool = False,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.handshake = ClientHandshake(digest=digest, random_bytes=random_bytes)
        self.encoder = ChunkEncoder(compress=True)
        self.decoder = ChunkDecoder()
        self.received: list[RtmpMessage] = []
        self._handshake_out = bytearray(self.handshake.initial_data())
        self._chunks_out = bytearray()
        self._next_txn = 1

    # -- bytes in and out ----------------------------------------------------------------------

    @property
    def handshake_done(self) -> bool:
        return self.handshake.done

    def skip_handshake(self) -> None:
        """Consider the handshake done without sending it, to talk to a connection whose
        handshake was done by someone else (e.g. a replay of recorded bytes)."""
        if not self.handshake.done:
            self.handshake.receive_data(bytes((3,)) + bytes(2 * PACKET_SIZE))
            self.handshake.data_to_send()  # our C2
        self._handshake_out.clear()

    def data_to_send(self) -> bytes:
        out = bytes(self._handshake_out)
        self._handshake_out.clear()
        if self.handshake.done:
            out += self._chunks_out
            self._chunks_out.clear()
        return out

    def receive(self, data: bytes) -> list[RtmpMessage]:
        """Feed the server's bytes; returns the complete messages they finished."""
        if not self.handshake.done:
            self.handshake.receive_data(data)
            if not self.handshake_done:  # the property keeps mypy from narrowing `done`
                return []
            self._handshake_out += self.handshake.data_to_send()
            data = self.handshake.leftover
        if data:
            self.decoder.receive_data(data)
        out: list[RtmpMessage] = []
        while not isinstance(msg := self.decoder.next_event(), NeedData):
            if msg.type_id == m.MessageType.SET_CHUNK_SIZE:
                self.decoder.set_chunk_size(m.parse_u32(msg))  # applies to the next chunk on
            out.append(msg)
        self.received.extend(out)
        return out

    def send(self, msg: RtmpMessage) -> None:
        self._chunks_out += self.encoder.encode(msg)

    def send_raw(self, data: bytes) -> None:
        """Bytes to go out as they are, after the handshake (for malformed-input tests)."""
        self._chunks_out += data

    # -- commands ------------------------------------------------------------------------------

    def next_transaction_id(self) -> float:
        txn = self._next_txn
        self._next_txn += 1
        return float(txn)

    def call(self, name: str, *args: amf0.Value, stream_id: int = 0,
             csid: int = m.CSID_COMMAND, transaction_id: float | None = None) -> float:
        """Send a command (AMF0, type 20); returns its transaction id."""
        txn = self.next_transaction_id() if transaction_id is None else transaction_id
        self.send(m.command(name, txn, *args, stream_id=stream_id, csid=csid))
        return txn

    def connect(self, app: str, tc_url: str, **props: amf0.Value) -> float:
        """connect(txn 1-style) with the command object ffmpeg sends; `props` add or override."""
        obj: dict[str, amf0.Value] = {
            "app": app, "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61.1.100)",
            "tcUrl": tc_url,
        }
        obj.update(props)
        return self.call("connect", obj)

    def release_stream(self, name: str) -> float:
        return self.call("releaseStream", None, name)

    def fc_publish(self, name: str) -> float:
        return self.call("FCPublish", None, name)

    def fc_unpublish(self, name: str) -> float:
        return self.call("FCUnpublish", None, name)

    def create_stream(self) -> float:
        return self.call("createStream", None)

    def delete_stream(self, stream_id: int) -> float:
        return self.call("deleteStream", None, float(stream_id))

    def close_stream(self, stream_id: int) -> float:
        return self.call("closeStream", None, stream_id=stream_id, csid=CSID_STREAM_COMMAND)

    def publish(self, stream_id: int, name: str, mode: str = "live") -> float:
        return self.call("publish", None, name, mode, stream_id=stream_id,
                         csid=CSID_STREAM_COMMAND)

    def play(self, stream_id: int, name: str, start: float = -2.0) -> float:
        return self.call("play", None, name, start, stream_id=stream_id,
                         csid=CSID_STREAM_COMMAND)

    # -- media, data and control ---------------------------------------------------------------

    def send_media(self, stream_id: int, type_id: int, ts: int, body: bytes) -> None:
        """An audio (8), video (9) or data (18) message with a 32-bit timestamp."""
        csid = CSID_MEDIA.get(type_id, CSID_OTHER)
        self.send(RtmpMessage(csid, ts & 0xFFFFFFFF, type_id, stream_id, body))

    def send_data(self, stream_id: int, *values: amf0.Value, ts: int = 0) -> None:
        self.send_media(stream_id, m.MessageType.DATA_AMF0, ts, amf0.encode(values))

    def send_metadata(self, stream_id: int, props: dict[str, amf0.Value]) -> None:
        """`@setDataFrame`, `onMetaData`, ECMA array: what ffmpeg and OBS send after publish."""
        self.send_data(stream_id, "@setDataFrame", "onMetaData", amf0.EcmaArray(props))

    def send_set_chunk_size(self, n: int, *, apply: bool = True) -> None:
        """Set Chunk Size with `n` written as is (so 0 and 2**31 can be sent); with `apply`,
        the following chunks use the new size."""
        payload = struct.pack(">I", n & 0xFFFFFFFF)
        self.send(RtmpMessage(m.CSID_CONTROL, 0, m.MessageType.SET_CHUNK_SIZE, 0, payload))
        if apply:
            self.encoder.set_chunk_size(n)

    def send_window_ack_size(self, n: int) -> None:
        self.send(m.window_ack_size(n))

    def send_ping(self, value: int) -> None:
        self.send(m.user_control(m.UserControl.PING_REQUEST, value))

    # -- what the server said ------------------------------------------------------------------

    def commands(self, messages: Iterable[RtmpMessage] | None = None) -> list[m.Command]:
        """Parsed command messages (type 20/17) among `messages` (default: all received)."""
        source = self.received if messages is None else messages
        return [m.parse_command(msg) for msg in source
                if msg.type_id in (m.MessageType.COMMAND_AMF0, m.MessageType.COMMAND_AMF3)]

    def data_messages(self, messages: Iterable[RtmpMessage] | None = None,
                      ) -> list[tuple[int, list[amf0.Value]]]:
        """(stream id, AMF values) of the data messages (type 18) among `messages`."""
        source = self.received if messages is None else messages
        return [(msg.stream_id, amf0.decode(msg.payload)) for msg in source
                if msg.type_id == m.MessageType.DATA_AMF0]

    def result(self, transaction_id: float,
               messages: Iterable[RtmpMessage] | None = None) -> m.Command | None:
        """The `_result` or `_error` answering `transaction_id`, if one arrived."""
        for cmd in self.commands(messages):
            if cmd.name in ("_result", "_error") and cmd.transaction_id == transaction_id:
                return cmd
        return None

    def status_codes(self, messages: Iterable[RtmpMessage] | None = None,
                     *, stream_id: int | None = None) -> list[str]:
        """The info `code` of every onStatus command (optionally on one stream), in order."""
        return [code for cmd in self.commands(messages)
                if cmd.name == "onStatus" and (stream_id is None or cmd.stream_id == stream_id)
                and (code := info_code(cmd)) is not None]

    def user_controls(self, messages: Iterable[RtmpMessage] | None = None,
                      ) -> list[tuple[int, int]]:
        """(event type, value) of every user control message."""
        source = self.received if messages is None else messages
        return [m.parse_user_control(msg) for msg in source
                if msg.type_id == m.MessageType.USER_CONTROL]


def info_code(cmd: m.Command) -> str | None:
    """The `code` of a command's info object (the first argument), if it has one."""
    info = cmd.args[0] if cmd.args else None
    if isinstance(info, dict):
        code = info.get("code")
        if isinstance(code, str):
            return code
    return None


def summary(messages: Iterable[RtmpMessage]) -> list[str]:
    """A readable trace of server messages: control types, user control events, command
    names with their status codes, data message names; for asserting on order."""
    out: list[str] = []
    for msg in messages:
        t = msg.type_id
        if t == m.MessageType.USER_CONTROL:
            event, value = m.parse_user_control(msg)
            out.append(f"{m.UserControl(event).name}({value})")
        elif t in (m.MessageType.COMMAND_AMF0, m.MessageType.COMMAND_AMF3):
            cmd = m.parse_command(msg)
            code = info_code(cmd)
            out.append(f"{cmd.name}:{code}" if code else cmd.name)
        elif t == m.MessageType.DATA_AMF0:
            values = amf0.decode(msg.payload)
            first = values[0] if values else None
            out.append(f"data:{first if isinstance(first, str) else repr(first)}")
        elif t in (m.MessageType.AUDIO, m.MessageType.VIDEO):
            out.append(m.MessageType(t).name)
        else:
            out.append(f"{m.MessageType(t).name}({m.parse_u32(msg)})")
    return out
