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
from protocol.buffers import Keeper
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


def block_header(kind: int, req_id: int, block_hash: bytes) -> bytes:
    if len(block_hash) != HASH_BYTES:  # struct would silently pad or truncate it
        raise ValueError(f"a block hash is {HASH_BYTES} bytes, got {len(block_hash)}")
    return HEADER.pack(kind, req_id, block_hash)


def encode_block(kind: int, req_id: int, block_hash: bytes, data: bytes | memoryview) -> bytes:
    return block_header(kind, req_id, block_hash) + data


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
    names = _field_names(type(value))  # type: ignore[arg-type]  # (every type is hashable)
    if names is not None:
        return {name: to_wire(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names (None: not a dataclass), looked up once per class."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


def _jsonable(value: Any) -> Any:
    """orjson's hook for what it does not write itself; it writes the result
    (recursing into it), so a listing costs one Python call per object, not
    one per field as :func:`to_wire` does."""
    if type(value) is bytes:
        return value.hex()
    if type(value) is m.BlockRef:
        return [value.hash.hex(), value.size]
    names = _field_names(type(value))  # type: ignore[arg-type]  # (every type is hashable)
    if names is None:
        raise TypeError(f"cannot encode a {type(value).__name__}")
    out = {name: getattr(value, name) for name in names}
    if isinstance(value, m.Message):
        out["type"] = value.TYPE
    return out


def dumps(value: Any) -> bytes:
    """The JSON of :func:`to_wire` of ``value`` (a message also gets its ``type``)."""
    return orjson.dumps(value, default=_jsonable, option=orjson.OPT_PASSTHROUGH_DATACLASS)


def encode(msg: m.Message) -> str:
    """``msg`` as its JSON text frame."""
    return dumps(msg).decode()


def _bad(where: str, want: str, got: Any) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"field {where!r}: expected {want}, got {type(got).__name__}")


Decoder = typing.Callable[[Any, str], Any]


def from_wire(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as a ``tp``, every field's type checked;
    ``where`` names it in error messages."""
    return _decoder(tp)(value, where)


@functools.cache
def _decoder(tp: Any) -> Decoder:
    """A decoding function for ``tp``, built once per type (decoding is on
    every hot path: each entry of a listing or a change feed passes here)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        optional = type(None) in args
        inner = _decoder(next(a for a in args if a is not type(None)))

        def union(value: Any, where: str) -> Any:
            return None if value is None and optional else inner(value, where)

        return union
    if origin is Literal:
        allowed = typing.get_args(tp)

        def literal(value: Any, where: str) -> Any:
            if value not in allowed:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"field {where!r}: {value!r} is not one of {allowed}"
                )
            return value

        return literal
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _decoder(item_tp)

        def list_of(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise _bad(where, "a list", value)
            return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

        return list_of
    if origin is dict:

        def dict_of(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(where, "an object", value)
            return value

        return dict_of
    if tp is bytes:
        return _hash
    if tp is m.BlockRef:
        return _block_ref
    if dataclasses.is_dataclass(tp):

        def nested(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(where, "an object", value)
            return _build(tp, value, where + ".")

        return nested
    if tp is int:
        return _int
    if tp is str:
        return _str
    if tp is bool:
        return _bool
    if tp is Any:
        return lambda value, where: value
    raise TypeError(f"no wire form for {tp!r}")  # a bug in messages.py, not bad input


INT64 = (-(2**63), 2**63 - 1)  # what every side stores (PostgreSQL bigint, SQLite INTEGER)


def _int(value: Any, where: str) -> int:
    if type(value) is not int:
        raise _bad(where, "an integer", value)
    if not INT64[0] <= value <= INT64[1]:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"field {where!r}: {value} is outside the 64-bit integer range"
        )
    return value


_PATH_FIELDS = {"path", "src", "dst", "after"}  # a NUL there is a bad path, as validate_path says


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a string", value)
    if "\x00" in value:  # no store can keep one (PostgreSQL text refuses it)
        code = ErrorCode.BAD_PATH if where.rsplit(".", 1)[-1] in _PATH_FIELDS else ErrorCode.BAD_REQUEST
        raise ProtocolError(code, f"field {where!r}: contains a NUL character")
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _bad(where, "true or false", value)
    return value


def _hash(value: Any, where: str) -> bytes:
    try:
        return parse_hash(value)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"field {where!r}: not a SHA-256 hex digest") from None


def _block_ref(value: Any, where: str) -> m.BlockRef:
    if not (isinstance(value, list) and len(value) == 2):
        raise _bad(where, "[hash, size]", value)
    size = value[1]
    if type(size) is not int:
        raise _bad(where, "an integer", size)
    return m.BlockRef(_hash(value[0], where), size)


@functools.cache
def _fields(cls: Any) -> tuple[tuple[str, Decoder, bool], ...]:
    """(name, decoder, required) for each field of a message dataclass."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, _decoder(hints[f.name]),
         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    )  # fmt: skip


def _build(cls: Any, body: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    for name, decode_field, required in _fields(cls):
        if name in body:
            kwargs[name] = decode_field(body[name], prefix + name)
        elif required:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field {prefix + name!r} is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a rule across fields (messages.py's __post_init__)
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{prefix.rstrip('.') or cls.TYPE}: {e}") from None


def decode(frame: str | bytes | bytearray | memoryview) -> m.Message:
    """One text frame → its message, or :class:`ProtocolError` (with the
    request id in ``detail['id']`` when one could be read)."""
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
    raw_id = body.get("id")
    req_id = raw_id if type(raw_id) is int and INT64[0] <= raw_id <= INT64[1] else None
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


def stream_block_header(kind: int, req_id: int, block_hash: bytes, size: int) -> bytes:
    """What goes before a block's ``size`` bytes in a stream: the same frame as
    ``stream_frame(encode_block(...))`` without copying the bytes into it."""
    return _STREAM_HEADER.pack(BINARY, HEADER_SIZE + size) + block_header(kind, req_id, block_hash)


class StreamDecoder:
    """Feed bytes as they arrive (``receive_data``), or let a transport write
    them straight into ``get_buffer()`` and report ``buffer_updated(n)`` (a
    frame's payload then lands in its own buffer, never copied); take whole
    frames out: ``str`` for text, ``bytearray`` (or, given a ``keeper``, a
    view of one of its buffers) for binary. Rejects a frame whose announced
    length exceeds ``max_frame`` before buffering its payload. With a
    ``keeper`` (``protocol.buffers.Keeper``), a binary frame of at least
    ``KEPT_OVER`` bytes is read into one of its buffers when one is free: no
    zero fill, no fresh pages; the buffer is not used again while anybody
    holds the frame."""

    KEPT_OVER = 64 * 1024

    def __init__(self, max_frame: int, keeper: Keeper[bytearray] | None = None) -> None:
        self.max_frame = max_frame
        self.keeper = keeper
        self._head = bytearray(_STREAM_HEADER.size)
        self._body: bytearray | memoryview | None = None  # the payload being filled, once its header is in
        self._kind = TEXT
        self._got = 0  # bytes of the header, then of the payload, filled so far
        self._out: list[str | bytearray | memoryview] = []

    def get_buffer(self) -> memoryview:
        """Where the next bytes go (never empty)."""
        return memoryview(self._head if self._body is None else self._body)[self._got :]

    def buffer_updated(self, n: int) -> None:
        self._got += n
        if self._body is None:
            if self._got < len(self._head):
                return
            kind, length = _STREAM_HEADER.unpack(self._head)
            if kind not in (TEXT, BINARY):
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown stream frame kind {kind}")
            if length > self.max_frame:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE, f"frame of {length} bytes exceeds the {self.max_frame}-byte limit"
                )
            self._kind, self._body, self._got = kind, self._new_body(kind, length), 0
            if length:
                return
        elif self._got < len(self._body):
            return
        body, self._body, self._got = self._body, None, 0
        if self._kind == BINARY:
            self._out.append(body)
            return
        assert isinstance(body, bytearray)  # (text never takes a kept buffer)
        try:
            self._out.append(body.decode())
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "text frame is not valid UTF-8") from None

    def _new_body(self, kind: int, length: int) -> bytearray | memoryview:
        if kind == BINARY and length >= self.KEPT_OVER and self.keeper is not None:
            kept = self.keeper.take(length)
            if kept is not None:
                return memoryview(kept)[:length]
        return bytearray(length)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def frames_received(self) -> list[str | bytearray | memoryview]:
        out, self._out = self._out, []
        return out


assert HEADER_SIZE == 8 + HASH_BYTES
