"""A small RTMP client for the load process: rtmpmate's own sans-IO cores on a trio socket.

Handshake (ClientHandshake), chunk stream (ChunkDecoder/ChunkEncoder) and messages come from
ingest/rtmp, so the benchmark speaks the same RTMP any server must accept. The client plays
fair like ffmpeg or OBS: it answers pings and sends an Acknowledgement each time the server's
window of bytes has been received (nginx-rtmp asks for 5 MB, rtmpmate for 2.5 MB).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import trio

from ingest.rtmp import messages as m
from ingest.rtmp.chunk import NEED_DATA, ChunkDecoder, ChunkEncoder, RtmpMessage
from ingest.rtmp.errors import RtmpProtocolError
from ingest.rtmp.handshake import ClientHandshake

if TYPE_CHECKING:
    from collections.abc import Iterator

    from media import amf0

CHUNK_SIZE = 4096  # what OBS and ffmpeg announce when they publish
RECV_BYTES = 65536
MAX_SETUP_MESSAGES = 1000  # a server that talks this much before answering is broken
FLASH_VER = "LNX 9,0,124,2"


class RtmpError(Exception):
    """The server refused or broke the session (a status error, a protocol error, EOF)."""


def client_socket() -> tuple[socket.socket, trio.socket.SocketType]:
    """A TCP socket with Nagle off, as librtmp, OBS and browsers have it: otherwise a command
    written right after another waits for the server's delayed ACK (40 ms on Linux).

    Returned both ways: trio's for the setup, and the plain non-blocking one it wraps, for the
    counting loop's direct reads. Closing the trio socket closes both.
    """
    raw = socket.socket()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw, trio.socket.from_stdlib_socket(raw)


async def send_all(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


class RtmpClientConnection:
    """One RTMP connection: the setup commands, then media in (play) or out (publish)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.decoder = ChunkDecoder()
        self.encoder = ChunkEncoder()
        self.ack_window = 0  # the server's Window Acknowledgement Size; 0 = none asked
        self.acked = 0  # byte count of our last Acknowledgement
        self.stream_id = 0
        self.auto_ack = True  # off when another task owns sending (the publisher)
        self._txn = 0.0
        self.buf = bytearray(RECV_BYTES)

    # -- setup ---------------------------------------------------------------------------------

    async def handshake(self) -> None:
        hs = ClientHandshake()
        await send_all(self.sock, hs.initial_data())
        while not hs.done:
            hs.receive_data(await self._recv())
            if out := hs.data_to_send():
                await send_all(self.sock, out)
        if out := hs.data_to_send():
            await send_all(self.sock, out)  # C2
        if hs.leftover:
            self.decoder.receive_data(hs.leftover)

    async def connect(self, app: str, tc_url: str) -> None:
        await self._send(m.set_chunk_size(CHUNK_SIZE))
        self.encoder.set_chunk_size(CHUNK_SIZE)
        await self._call("connect", {"app": app, "flashVer": FLASH_VER, "tcUrl": tc_url,
                                     "fpad": False, "capabilities": 15.0,
                                     "audioCodecs": 3191.0, "videoCodecs": 252.0,
                                     "videoFunction": 1.0})

    async def create_stream(self) -> int:
        result = await self._call("createStream", None)
        if not isinstance(result, float):
            raise RtmpError(f"createStream answered {result!r}")
        self.stream_id = int(result)
        return self.stream_id

    async def play(self, name: str) -> None:
        """Ask to play; the server's onStatus and the media follow (read them, or count)."""
        await self._send(m.command("play", 0.0, None, name, -2000.0,
                                   stream_id=self.stream_id, csid=m.CSID_STATUS))
        # ffmpeg and librtmp announce a 3 s client buffer the same way.
        await self._send(m.user_control(m.UserControl.SET_BUFFER_LENGTH, self.stream_id, 3000))

    async def publish(self, name: str, publish_type: str = "live") -> None:
        await self._send(m.command("publish", 0.0, None, name, publish_type,
                                   stream_id=self.stream_id, csid=m.CSID_STATUS))
        for _ in range(MAX_SETUP_MESSAGES):
            msg = await self.next_message()
            if msg.type_id != m.MessageType.COMMAND_AMF0:
                continue
            cmd = m.parse_command(msg)
            if cmd.name == "onStatus":
                code = _status_code(cmd)
                if code == "NetStream.Publish.Start":
                    return
                raise RtmpError(f"publish refused: {code}")
        raise RtmpError("no answer to publish")

    # -- messages ------------------------------------------------------------------------------

    async def next_message(self) -> RtmpMessage:
        """The next message from the server, after handling its protocol control part."""
        while True:
            for msg in self.drain():
                return msg
            self.decoder.receive_data(await self._recv())
            if self.auto_ack:
                await self.maybe_ack(self.decoder.bytes_received)

    def drain(self) -> Iterator[RtmpMessage]:
        """Messages already buffered; protocol control messages are applied on the way."""
        while True:
            try:
                msg = self.decoder.next_event()
            except RtmpProtocolError as exc:
                raise RtmpError(str(exc)) from exc
            if msg is NEED_DATA:
                return
            assert isinstance(msg, RtmpMessage)
            if msg.type_id == m.MessageType.SET_CHUNK_SIZE:
                self.decoder.set_chunk_size(m.parse_u32(msg))
            elif msg.type_id == m.MessageType.WINDOW_ACK_SIZE:
                self.ack_window = m.parse_u32(msg)
            yield msg

    async def maybe_ack(self, received: int) -> None:
        """Acknowledge once a window's worth came in; `received` counts every byte so far."""
        if self.ack_window and received - self.acked >= self.ack_window:
            self.acked = received
            await self._send(m.acknowledgement(received))

    async def answer_ping(self, msg: RtmpMessage) -> None:
        if msg.type_id == m.MessageType.USER_CONTROL:
            event, value = m.parse_user_control(msg)
            if event == m.UserControl.PING_REQUEST:
                await self._send(m.user_control(m.UserControl.PING_RESPONSE, value))

    async def send_message(self, msg: RtmpMessage) -> None:
        await self._send(msg)

    async def _send(self, msg: RtmpMessage) -> None:
        await send_all(self.sock, self.encoder.encode(msg))

    async def _recv(self) -> bytes:
        n = await self.sock.recv_into(self.buf)
        if not n:
            raise RtmpError("connection closed by the server")
        return bytes(self.buf[:n])

    async def _call(self, name: str, obj: amf0.Value) -> amf0.Value:
        """Send a command and wait for its _result; returns the result's first argument."""
        self._txn += 1
        txn = self._txn
        await self._send(m.command(name, txn, obj))
        for _ in range(MAX_SETUP_MESSAGES):
            msg = await self.next_message()
            await self.answer_ping(msg)
            if msg.type_id != m.MessageType.COMMAND_AMF0:
                continue
            cmd = m.parse_command(msg)
            if cmd.transaction_id != txn:
                continue
            if cmd.name == "_result":
                return cmd.args[0] if cmd.args else None
            raise RtmpError(f"{name} answered {cmd.name}: {_describe(cmd)}")
        raise RtmpError(f"no answer to {name}")


def _status_code(cmd: m.Command) -> str:
    info = cmd.args[0] if cmd.args else None
    code = info.get("code") if isinstance(info, dict) else None
    return code if isinstance(code, str) else "?"


def _describe(cmd: m.Command) -> str:
    info = cmd.args[0] if cmd.args else None
    return str(info.get("description", info)) if isinstance(info, dict) else repr(info)


def play_status(msg: RtmpMessage) -> str | None:
    """The code of an onStatus message (None for anything else)."""
    if msg.type_id != m.MessageType.COMMAND_AMF0:
        return None
    cmd = m.parse_command(msg)
    return _status_code(cmd) if cmd.name == "onStatus" else None


async def open_rtmp(sock: trio.socket.SocketType, host: str, port: int,
                    app: str) -> RtmpClientConnection:
    """Connect `sock`, handshake and `connect` to the app: ready for createStream."""
    await sock.connect((host, port))
    conn = RtmpClientConnection(sock)
    await conn.handshake()
    await conn.connect(app, f"rtmp://{host}:{port}/{app}")
    return conn
