"""Encoding messages to WebSocket frames and back, and a length-prefixed
stream framing for transports without message boundaries (the LAN link).

Text frame: one JSON object, ``{"type": ..., <fields>}``; hashes are hex.
Binary frame: a fixed 40-byte header then the block bytes::

    kind (u8) | 3 reserved bytes | request id (u32, big endian) | SHA-256 (32 bytes)

``kind`` 1 = PUT (client sends a block), 2 = DATA (reply to ``get_block``).
Decoding validates every field's type, so a handler only ever sees values
of the declared shape; anything else is a :class:`ProtocolError`.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import orjson

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import HASH_BYTES, parse_hash

HEADER = struct.Struct(">B3xI32s")
HEADER_SIZE = HEADER.size
KIND_PUT = 1
KIND_DATA = 2


@dataclass(frozen=True, slots=True)
class BlockFrame:
    kind: int
    id: int
    hash: bytes
    data: memoryview | bytes


def encode_block(kind: int, req_id: int, block_hash: bytes, data: bytes | memoryview) -> bytes:
    if len(block_hash) != HASH_BYTES:  # struct would silently pad or truncate it
        raise ValueError(f"a block hash is {HASH_BYTES} bytes, got {len(block_hash)}")
    return HEADER.pack(kind, req_id, block_hash) + data


def decode_block(frame: bytes | bytearray | memoryview) -> BlockFrame:
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"binary frame shorter than its {HEADER_SIZE}-byte header")
    kind, req_id, h = HEADER.unpack_from(frame)
    if kind not in (KIND_PUT, KIND_DATA):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown binary frame kind {kind}")
    return BlockFrame(kind, req_id, h, memoryview(frame)[HEADER_SIZE:])


# --- JSON <-> dataclasses ----------------------------------------------------


def to_wire(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, m.BlockRef):
        return [value.hash.hex(), value.size]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


def encode(msg: m.Message) -> str:
    body = to_wire(msg)
    body["type"] = msg.TYPE
    return orjson.dumps(body).decode()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _bad(where: str, want: str, got: Any) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"field {where!r}: expected {want}, got {type(got).__name__}")


def from_wire(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return from_wire(inner[0], value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"field {where!r}: {value!r} is not one of {typing.get_args(tp)}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        (item,) = typing.get_args(tp)
        return [from_wire(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return value
    if tp is bytes:
        try:
            return parse_hash(value)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field {where!r}: not a SHA-256 hex digest") from None
    if tp is m.BlockRef:
        if not (isinstance(value, list) and len(value) == 2):
            raise _bad(where, "[hash, size]", value)
        return m.BlockRef(from_wire(bytes, value[0], where), from_wire(int, value[1], where))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return _build(tp, value, where + ".")
    if tp is int:
        if type(value) is not int:
            raise _bad(where, "an integer", value)
        return value
    if tp is bool:
        if type(value) is not bool:
            raise _bad(where, "true or false", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    if tp is Any:
        return value
    raise TypeError(f"no wire form for {tp!r}")  # a bug in messages.py, not bad input


def _build(cls: Any, body: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = from_wire(hints[f.name], body[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field {prefix + f.name!r} is missing")
    return cls(**kwargs)


def decode(frame: str | bytes) -> m.Message:
    """One text frame → its message, or :class:`ProtocolError` (with the
    request id in ``detail['id']`` when one could be read)."""
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
    req_id = body.get("id") if type(body.get("id")) is int else None
    kind = body.pop("type", None)
    cls = m.BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", {"id": req_id})
    try:
        msg: m.Message = _build(cls, body)
    except ProtocolError as e:
        e.detail = {"id": req_id}
        raise
    return msg


def error_for(req_id: int | None, err: ProtocolError) -> m.Error:
    detail = {k: v for k, v in (err.detail or {}).items() if k != "id"} or None
    return m.Error(req_id, err.code.value, err.message, detail)


# --- stream framing (non-WebSocket transports) ---------------------------------

_STREAM_HEADER = struct.Struct(">BI")  # 0 = text, 1 = binary; payload length
TEXT = 0
BINARY = 1


def stream_frame(payload: str | bytes) -> bytes:
    if isinstance(payload, str):
        data = payload.encode()
        return _STREAM_HEADER.pack(TEXT, len(data)) + data
    return _STREAM_HEADER.pack(BINARY, len(payload)) + payload


class StreamDecoder:
    """Feed bytes as they arrive; take whole frames out. Rejects a frame whose
    announced length exceeds ``max_frame`` before buffering its payload."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._out: list[str | bytes] = []

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _STREAM_HEADER.size:
            kind, length = _STREAM_HEADER.unpack_from(self._buf)
            if kind not in (TEXT, BINARY):
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown stream frame kind {kind}")
            if length > self.max_frame:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE, f"frame of {length} bytes exceeds the {self.max_frame}-byte limit"
                )
            end = _STREAM_HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[_STREAM_HEADER.size : end])
            del self._buf[:end]
            if kind == BINARY:
                self._out.append(payload)
                continue
            try:
                self._out.append(payload.decode())
            except UnicodeDecodeError:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "text frame is not valid UTF-8") from None

    def frames_received(self) -> list[str | bytes]:
        out, self._out = self._out, []
        return out


assert HEADER_SIZE == 8 + HASH_BYTES
