"""RTMP message payloads: protocol control, user control, commands and data (RTMP 1.0 §5.4, §7)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ingest.rtmp.chunk import RtmpMessage
from ingest.rtmp.errors import RtmpProtocolError
from media import amf0


class MessageType(enum.IntEnum):
    """RTMP 1.0 §5.4 (protocol control) and §7.1 (RTMP messages)."""

    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControl(enum.IntEnum):
    """RTMP 1.0 §7.1.7 user control event types."""

    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


class PeerBandwidthLimit(enum.IntEnum):
    """RTMP 1.0 §5.4.5."""

    HARD = 0
    SOFT = 1
    DYNAMIC = 2


# Chunk stream ids we send on (the choice is free; these are the ones ffmpeg and nginx use).
CSID_CONTROL = 2  # protocol control must use csid 2 (§5.4)
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_STATUS = 5
CSID_VIDEO = 6
CSID_DATA = 8


def _control(type_id: MessageType, payload: bytes) -> RtmpMessage:
    return RtmpMessage(CSID_CONTROL, 0, type_id, 0, payload)


def set_chunk_size(size: int) -> RtmpMessage:
    return _control(MessageType.SET_CHUNK_SIZE, struct.pack(">I", size & 0x7FFFFFFF))


def window_ack_size(size: int) -> RtmpMessage:
    return _control(MessageType.WINDOW_ACK_SIZE, struct.pack(">I", size))


def set_peer_bandwidth(size: int, limit: PeerBandwidthLimit) -> RtmpMessage:
    return _control(MessageType.SET_PEER_BANDWIDTH, struct.pack(">IB", size, limit))


def acknowledgement(sequence: int) -> RtmpMessage:
    """The sequence number is the byte count received so far, modulo 2**32 (§5.4.3)."""
    return _control(MessageType.ACKNOWLEDGEMENT, struct.pack(">I", sequence & 0xFFFFFFFF))


def user_control(event: UserControl, value: int, extra: int | None = None) -> RtmpMessage:
    payload = struct.pack(">HI", event, value & 0xFFFFFFFF)
    if extra is not None:
        payload += struct.pack(">I", extra & 0xFFFFFFFF)
    return _control(MessageType.USER_CONTROL, payload)


def parse_u32(msg: RtmpMessage) -> int:
    if len(msg.payload) < 4:
        raise RtmpProtocolError(f"{MessageType(msg.type_id).name} payload too short")
    value: int = struct.unpack_from(">I", msg.payload)[0]
    return value


def parse_user_control(msg: RtmpMessage) -> tuple[int, int]:
    """(event type, first value); SetBufferLength's second value is not needed by a server."""
    if len(msg.payload) < 6:
        raise RtmpProtocolError("user control message too short")
    event, value = struct.unpack_from(">HI", msg.payload)
    return event, value


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    transaction_id: float
    command_object: amf0.Value
    args: list[amf0.Value]
    stream_id: int


def command(name: str, transaction_id: float, *args: amf0.Value, stream_id: int = 0,
            csid: int = CSID_COMMAND) -> RtmpMessage:
    payload = amf0.encode([name, transaction_id, *args])
    return RtmpMessage(csid, 0, MessageType.COMMAND_AMF0, stream_id, payload)


def status(stream_id: int, level: str, code: str, description: str,
           **extra: amf0.Value) -> RtmpMessage:
    """An onStatus call (§7.2.2), as players and publishers expect on the stream's msid."""
    info: dict[str, amf0.Value] = {"level": level, "code": code, "description": description}
    info.update(extra)
    return command("onStatus", 0.0, None, info, stream_id=stream_id, csid=CSID_STATUS)


def data_message(stream_id: int, *values: amf0.Value) -> RtmpMessage:
    return RtmpMessage(CSID_STATUS, 0, MessageType.DATA_AMF0, stream_id, amf0.encode(values))


def _amf_values(msg: RtmpMessage) -> list[amf0.Value]:
    payload = msg.payload
    if msg.type_id in (MessageType.COMMAND_AMF3, MessageType.DATA_AMF3) and payload[:1] == b"\x00":
        payload = payload[1:]  # AMF3 command/data messages start with a format byte, then AMF0
    try:
        return amf0.decode(payload)
    except amf0.AmfError as exc:
        raise RtmpProtocolError(f"bad AMF in {MessageType(msg.type_id).name}: {exc}") from exc


def parse_command(msg: RtmpMessage) -> Command:
    values = _amf_values(msg)
    if len(values) < 2 or not isinstance(values[0], str):
        raise RtmpProtocolError("command without a name")
    txn = values[1]
    if not isinstance(txn, float | int) or isinstance(txn, bool):
        raise RtmpProtocolError(f"command {values[0]!r} without a transaction id")
    obj = values[2] if len(values) > 2 else None
    return Command(values[0], float(txn), obj, values[3:], msg.stream_id)


def parse_data(msg: RtmpMessage) -> list[amf0.Value]:
    """A data message's values, without the @setDataFrame wrapper publishers add."""
    values = _amf_values(msg)
    if values[:1] == ["@setDataFrame"]:
        values = values[1:]
    return values
