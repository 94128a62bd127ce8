"""Text frames (JSON messages), binary block frames and the stream framing."""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from typing import Any, Literal, Union

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import (
    BINARY,
    HEADER_SIZE,
    KIND_DATA,
    KIND_PUT,
    TEXT,
    StreamDecoder,
    decode,
    decode_block,
    encode,
    encode_block,
    error_for,
    stream_block_header,
    stream_frame,
)

# --- strategies built from the dataclass fields ---------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)  # what JSON (and orjson) carries exactly
HASHES = st.binary(min_size=32, max_size=32)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Any valid value of the declared field type ``tp``."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        return st.one_of(*[st.none() if a is type(None) else strategy_for(a) for a in typing.get_args(tp)])
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(strategy_for(item), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
    if tp is bytes:
        return HASHES
    if tp is bool:
        return st.booleans()
    if tp is int:
        return INT64
    if tp is str:
        return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
    if dataclasses.is_dataclass(tp):
        return dataclass_strategy(tp)  # type: ignore[arg-type]
    raise TypeError(f"no strategy for {tp!r}: extend strategy_for")


def dataclass_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Instances of ``cls`` with every field (defaults included) drawn."""
    hints = _hints(cls)
    if cls is m.BatchResult:  # exactly one of its two fields
        return st.builds(cls, entry=strategy_for(m.Entry)) | st.builds(cls, failure=strategy_for(m.Failure))
    if cls is m.Upcoming:  # it names blocks, the version it replaces, or both
        refs = strategy_for(list[m.BlockRef])
        some = st.lists(strategy_for(m.BlockRef), min_size=1, max_size=4)
        return st.builds(cls, id=INT64, ns=INT64, blocks=some, base=st.none() | HASHES) | st.builds(
            cls, id=INT64, ns=INT64, blocks=refs, base=HASHES
        )
    if cls is m.GetBlock:  # its reply echoes the id in a 32-bit header
        return st.builds(cls, id=st.integers(0, 2**32 - 1), hash=HASHES)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)})


def wire(value: Any) -> Any:
    """The documented wire form, written independently of framing.py:
    hashes as lowercase hex, a BlockRef as ``[hex, size]``, dataclasses as objects."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, m.BlockRef):
        return [value.hash.hex(), value.size]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        body = {f.name: wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, m.Message):
            body["type"] = value.TYPE
        return body
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


# --- round trips --------------------------------------------------------------------


def test_registry_lists_every_message_class_once() -> None:
    declared = {
        c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Message) and c is not m.Message
    }
    assert set(m.ALL_MESSAGES) == declared
    assert len(m.ALL_MESSAGES) == len(declared)
    assert set(m.BY_TYPE) == {c.TYPE for c in m.ALL_MESSAGES}
    assert len(m.BY_TYPE) == len(m.ALL_MESSAGES)  # no two classes share a wire name
    for cls in m.ALL_MESSAGES:
        assert m.BY_TYPE[cls.TYPE] is cls


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.TYPE)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_message_round_trips(cls: type[m.Message], data: st.DataObject) -> None:
    msg = data.draw(dataclass_strategy(cls))
    text = encode(msg)
    assert isinstance(text, str)
    out = decode(text)
    assert type(out) is cls
    assert out == msg
    assert decode(text.encode()) == msg  # a text frame may arrive as bytes
    # The wire form is exactly the documented one.
    assert orjson.loads(text) == wire(msg)


def test_wire_shape_example() -> None:
    h1, h2 = bytes(range(32)), bytes(range(32, 64))
    entry = m.Entry(
        path="/a/b.txt",
        kind="file",
        file_id=7,
        version=3,
        size=10,
        content_hash=h2,
        blocks=[m.BlockRef(h1, 10)],
    )
    body = orjson.loads(encode(m.Committed(id=5, seq=42, entry=entry)))
    assert body["type"] == "committed"
    assert body["id"] == 5 and body["seq"] == 42
    assert body["entry"]["blocks"] == [[h1.hex(), 10]]
    assert body["entry"]["content_hash"] == h2.hex()
    assert body["entry"]["deleted"] is False and body["entry"]["device"] is None
    assert orjson.loads(encode(m.QueryBlocks(id=1, hashes=[h1, h2]))) == {
        "type": "query_blocks",
        "id": 1,
        "hashes": [h1.hex(), h2.hex()],
    }


def test_defaults_fill_omitted_fields_and_unknown_fields_are_ignored() -> None:
    assert decode('{"type": "list_folder", "id": 1, "path": "/a"}') == m.ListFolder(id=1, path="/a")
    assert decode('{"type": "list_folder", "id": 1, "path": "/a"}') == m.ListFolder(1, "/a", None, None, 1000)
    welcome = {"type": "welcome", "version": 1, "server": "s", "user": "u", "device_id": 2}
    welcome |= {"max_frame": 3, "max_in_flight": 4, "max_block": 5}
    assert decode(orjson.dumps(welcome)) == m.Welcome(1, "s", "u", 2, 3, 4, 5, [])
    assert decode('{"type": "ping", "id": 1, "added_in_v2": [1, 2]}') == m.Ping(1)


def test_error_for_drops_the_id_from_detail() -> None:
    err = ProtocolError(ErrorCode.NOT_FOUND, "no such path", {"id": 4, "path": "/x"})
    assert error_for(4, err) == m.Error(4, "not_found", "no such path", {"path": "/x"})
    assert error_for(None, ProtocolError(ErrorCode.BAD_REQUEST, "bad", {"id": 9})).detail is None
    assert error_for(3, ProtocolError(ErrorCode.BUSY, "busy")) == m.Error(3, "busy", "busy", None)
    assert decode(encode(error_for(4, err))) == m.Error(4, "not_found", "no such path", {"path": "/x"})


# --- bad input ------------------------------------------------------------------------

H = "ab" * 32
SPACED_HEX = "aa " * 16 + "aa" * 8  # 64 characters that bytes.fromhex reads as 24 bytes
ENTRY = {"path": "/a", "kind": "file", "file_id": 1, "version": 1}

BAD_FRAMES: list[tuple[str | bytes, ErrorCode, int | None, str]] = [
    (orjson.dumps({"type": "upcoming", "id": 4, "ns": 1, "blocks": []}), ErrorCode.BAD_REQUEST, 4, "base"),
    (
        orjson.dumps({"type": "upcoming", "id": 5, "ns": 1, "blocks": [], "base": "ab" * 31}),
        ErrorCode.BAD_REQUEST,
        5,
        "base",
    ),
    # (frame, code, detail['id'], a word the message must contain)
    ('{"type": "ping", "id": 1', ErrorCode.BAD_REQUEST, None, "JSON"),
    ("", ErrorCode.BAD_REQUEST, None, "JSON"),
    (b"\xff\xfe{}", ErrorCode.BAD_REQUEST, None, "JSON"),
    ("[1, 2]", ErrorCode.BAD_REQUEST, None, "object"),
    ('"ping"', ErrorCode.BAD_REQUEST, None, "object"),
    ("null", ErrorCode.BAD_REQUEST, None, "object"),
    ("42", ErrorCode.BAD_REQUEST, None, "object"),
    ('{"type": "nope", "id": 7}', ErrorCode.UNKNOWN_TYPE, 7, "nope"),
    ('{"type": "Ping", "id": 7}', ErrorCode.UNKNOWN_TYPE, 7, "Ping"),
    ('{"id": 7}', ErrorCode.UNKNOWN_TYPE, 7, "type"),
    ('{"type": 5, "id": 7}', ErrorCode.UNKNOWN_TYPE, 7, "type"),
    ('{"type": null}', ErrorCode.UNKNOWN_TYPE, None, "type"),
    # missing fields
    ('{"type": "stat", "id": 3}', ErrorCode.BAD_REQUEST, 3, "path"),
    ('{"type": "ping"}', ErrorCode.BAD_REQUEST, None, "id"),
    (
        '{"type": "commit", "id": 3, "key": "k", "path": "/a", "parent": null, "size": 0, "mtime_ns": 0}',
        ErrorCode.BAD_REQUEST,
        3,
        "blocks",
    ),
    # wrong field types
    ('{"type": "stat", "id": 3, "path": 5}', ErrorCode.BAD_REQUEST, 3, "path"),
    ('{"type": "stat", "id": 3, "path": "/a", "ns": "1"}', ErrorCode.BAD_REQUEST, 3, "ns"),
    ('{"type": "stat", "id": 3, "path": "/a", "ns": true}', ErrorCode.BAD_REQUEST, 3, "ns"),
    ('{"type": "stat", "id": 3, "path": "/a", "ns": 1.0}', ErrorCode.BAD_REQUEST, 3, "ns"),
    ('{"type": "stat", "id": "3", "path": "/a"}', ErrorCode.BAD_REQUEST, None, "id"),
    ('{"type": "ping", "id": true}', ErrorCode.BAD_REQUEST, None, "id"),  # a bool is not an id
    ('{"type": "ping", "id": null}', ErrorCode.BAD_REQUEST, None, "id"),
    ('{"type": "ping", "id": 123456789012345678901234567890}', ErrorCode.BAD_REQUEST, None, "id"),
    ('{"type": "list_folder", "id": 4, "path": "/", "limit": false}', ErrorCode.BAD_REQUEST, 4, "limit"),
    (
        '{"type": "mkdir", "id": 5, "key": "k", "path": "/a", "parents": 1}',
        ErrorCode.BAD_REQUEST,
        5,
        "parents",
    ),
    (
        '{"type": "mkdir", "id": 5, "key": "k", "path": "/a", "parents": "true"}',
        ErrorCode.BAD_REQUEST,
        5,
        "parents",
    ),
    (
        '{"type": "changes", "id": 6, "ns": 1, "entries": [], "cursor": 0, "has_more": 0}',
        ErrorCode.BAD_REQUEST,
        6,
        "has_more",
    ),
    ('{"type": "hello", "versions": [1, "2"]}', ErrorCode.BAD_REQUEST, None, "versions[1]"),
    ('{"type": "hello", "versions": [true]}', ErrorCode.BAD_REQUEST, None, "versions[0]"),
    ('{"type": "hello", "versions": 1}', ErrorCode.BAD_REQUEST, None, "versions"),
    (
        '{"type": "error", "id": 2, "code": "x", "message": "y", "detail": [1]}',
        ErrorCode.BAD_REQUEST,
        2,
        "detail",
    ),
    # hashes
    ('{"type": "get_block", "id": 6, "hash": "' + "zz" * 32 + '"}', ErrorCode.BAD_REQUEST, 6, "hash"),
    ('{"type": "get_block", "id": 6, "hash": "' + "ab" * 31 + '"}', ErrorCode.BAD_REQUEST, 6, "hash"),
    ('{"type": "get_block", "id": 6, "hash": "' + "ab" * 33 + '"}', ErrorCode.BAD_REQUEST, 6, "hash"),
    ('{"type": "get_block", "id": 6, "hash": "' + SPACED_HEX + '"}', ErrorCode.BAD_REQUEST, 6, "hash"),
    ('{"type": "get_block", "id": 6, "hash": 12}', ErrorCode.BAD_REQUEST, 6, "hash"),
    ('{"type": "get_block", "id": 6, "hash": null}', ErrorCode.BAD_REQUEST, 6, "hash"),
    (
        '{"type": "query_blocks", "id": 8, "hashes": ["' + H + '", "xyz"]}',
        ErrorCode.BAD_REQUEST,
        8,
        "hashes[1]",
    ),
    # nested values
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": ENTRY | {"kind": "link"}}),
        ErrorCode.BAD_REQUEST,
        9,
        "kind",
    ),
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": {"path": "/a", "kind": "dir", "version": 1}}),
        ErrorCode.BAD_REQUEST,
        9,
        "entry.file_id",
    ),
    (orjson.dumps({"type": "entry", "id": 9, "entry": []}), ErrorCode.BAD_REQUEST, 9, "entry"),
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": ENTRY | {"blocks": [[H]]}}),
        ErrorCode.BAD_REQUEST,
        9,
        "blocks",
    ),
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": ENTRY | {"blocks": [[H, "5"]]}}),
        ErrorCode.BAD_REQUEST,
        9,
        "blocks",
    ),
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": ENTRY | {"blocks": [{"hash": H, "size": 5}]}}),
        ErrorCode.BAD_REQUEST,
        9,
        "blocks",
    ),
    (
        orjson.dumps({"type": "entry", "id": 9, "entry": ENTRY | {"blocks": [["zz", 5]]}}),
        ErrorCode.BAD_REQUEST,
        9,
        "blocks",
    ),
    (
        orjson.dumps({"type": "listing", "id": 9, "entries": [ENTRY, ENTRY | {"executable": 1}]}),
        ErrorCode.BAD_REQUEST,
        9,
        "entries[1].executable",
    ),
    (
        orjson.dumps(
            {
                "type": "welcome",
                "version": 1,
                "server": "s",
                "user": "u",
                "device_id": 1,
                "max_frame": 1,
                "max_in_flight": 1,
                "max_block": 1,
                "namespaces": [{"ns": 1, "path": "/", "role": "admin", "head_seq": 0}],
            }
        ),
        ErrorCode.BAD_REQUEST,
        None,
        "role",
    ),
]


@pytest.mark.parametrize(("frame", "code", "req_id", "word"), BAD_FRAMES)
def test_bad_frames_raise_protocol_error(
    frame: str | bytes, code: ErrorCode, req_id: int | None, word: str
) -> None:
    with pytest.raises(ProtocolError) as e:
        decode(frame)
    assert e.value.code is code
    assert (e.value.detail or {}).get("id") == req_id
    assert word in e.value.message
    if req_id is not None:
        assert e.value.detail == {"id": req_id}


def wrong_for(tp: Any) -> st.SearchStrategy[Any]:
    """JSON values that must NOT be accepted where ``tp`` is declared."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        (only,) = inner
        return wrong_for(only).filter(lambda v: v is not None)
    if origin is Literal:
        return st.sampled_from(["bogus", "", 1, True, None, ["file"]])
    if origin is list:
        (item,) = typing.get_args(tp)
        one_bad_item = st.tuples(
            st.lists(strategy_for(item), max_size=2),
            wrong_for(item),
            st.lists(strategy_for(item), max_size=2),
        ).map(lambda t: [*wire(t[0]), t[1], *wire(t[2])])
        return st.sampled_from(["x", 1, True, None, {}]) | one_bad_item
    if origin is dict:
        return st.sampled_from([[], "x", 1, True, 1.5])
    if tp is bytes:
        return st.sampled_from(["zz" * 32, "ab" * 31, "ab" * 33, SPACED_HEX, "", 7, None, True, [H]])
    if tp is bool:
        return st.sampled_from([0, 1, "true", "false", None, [], {}, 0.0])
    if tp is int:
        return st.sampled_from(
            ["1", "", True, False, 1.5, 1.0, None, [], {}, [1], 2**63, 2**64 - 1]
        )  # orjson writes up to u64
    if tp is str:
        return st.sampled_from([1, 0, True, None, [], {}, ["a"]])
    if tp is m.BlockRef:
        return st.sampled_from(
            [
                [H],
                [H, 1, 2],
                [1, 2],
                [H, "1"],
                [H, True],
                [H, None],
                ["zz", 1],
                {"hash": H, "size": 1},
                H,
                None,
            ]
        )
    if dataclasses.is_dataclass(tp):
        return st.sampled_from([[], "x", 1, True, None, {}]) | corrupted(tp).map(lambda t: t[0])  # type: ignore[arg-type]
    raise TypeError(f"no wrong values for {tp!r}: extend wrong_for")


@st.composite
def corrupted(draw: st.DrawFn, cls: type) -> tuple[dict[str, Any], str]:
    """The wire body of a valid ``cls`` with one field given a wrong value or
    (if required) left out; returns the body and the field's name."""
    body = wire(draw(dataclass_strategy(cls)))
    f = draw(st.sampled_from(dataclasses.fields(cls)))
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if required and draw(st.booleans()):
        del body[f.name]
    else:
        body[f.name] = draw(wrong_for(_hints(cls)[f.name]))
    return body, f.name


@settings(max_examples=400, deadline=None)
@given(data=st.data(), cls=st.sampled_from(m.ALL_MESSAGES))
def test_any_wrong_or_missing_field_is_bad_request_with_id(data: st.DataObject, cls: type) -> None:
    body, name = data.draw(corrupted(cls))
    readable_id = body["id"] if type(body.get("id")) is int and -(2**63) <= body["id"] < 2**63 else None
    with pytest.raises(ProtocolError) as e:
        decode(orjson.dumps(body))
    assert e.value.code is ErrorCode.BAD_REQUEST
    assert e.value.detail == {"id": readable_id}
    assert name in e.value.message


# --- binary block frames ----------------------------------------------------------------


@given(
    kind=st.sampled_from([KIND_PUT, KIND_DATA]),
    req_id=st.integers(0, 2**32 - 1),
    block_hash=HASHES,
    data=st.binary(max_size=2048),
)
def test_block_frame_round_trips(kind: int, req_id: int, block_hash: bytes, data: bytes) -> None:
    frame = encode_block(kind, req_id, block_hash, data)
    # The documented header: kind u8 | 3 reserved bytes | id u32 BE | 32-byte hash.
    assert HEADER_SIZE == 40
    assert len(frame) == 40 + len(data)
    assert frame[0] == kind
    assert frame[1:4] == b"\0\0\0"
    assert frame[4:8] == req_id.to_bytes(4, "big")
    assert frame[8:40] == block_hash
    assert frame[40:] == data
    assert encode_block(kind, req_id, block_hash, memoryview(data)) == frame
    for buf in (frame, bytearray(frame), memoryview(frame)):
        bf = decode_block(buf)
        assert (bf.kind, bf.id, bf.hash, bytes(bf.data)) == (kind, req_id, block_hash, data)


@given(frame=st.binary(max_size=HEADER_SIZE - 1))
def test_block_frame_shorter_than_header_is_bad_request(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_block(frame)
    assert e.value.code is ErrorCode.BAD_REQUEST


@given(kind=st.integers(0, 255).filter(lambda k: k not in (KIND_PUT, KIND_DATA)), rest=st.binary(max_size=64))
def test_block_frame_of_unknown_kind_is_unknown_type(kind: int, rest: bytes) -> None:
    frame = bytes([kind]) + bytes(3) + (1).to_bytes(4, "big") + bytes(32) + rest
    with pytest.raises(ProtocolError) as e:
        decode_block(frame)
    assert e.value.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_encode_block_refuses_a_hash_of_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError):
        encode_block(KIND_PUT, 1, bytes(size), b"data")


# --- stream framing -------------------------------------------------------------------------

FRAME_LISTS = st.lists(st.one_of(st.text(max_size=40), st.binary(max_size=40)), max_size=12)


def test_stream_frame_header_layout() -> None:
    assert stream_frame("é") == bytes([TEXT]) + (2).to_bytes(4, "big") + "é".encode()
    assert stream_frame(b"xyz") == bytes([BINARY]) + (3).to_bytes(4, "big") + b"xyz"
    assert stream_frame("") == bytes([TEXT, 0, 0, 0, 0])


@given(kind=st.sampled_from([KIND_PUT, KIND_DATA]), req_id=st.integers(0, 2**32 - 1), block_hash=HASHES,
       data=st.binary(max_size=2048))  # fmt: skip
def test_stream_block_header_is_the_frame_without_the_bytes(
    kind: int, req_id: int, block_hash: bytes, data: bytes
) -> None:
    """Header then bytes, written apart, are the same stream as the whole frame."""
    head = stream_block_header(kind, req_id, block_hash, len(data))
    assert head + data == stream_frame(encode_block(kind, req_id, block_hash, data))
    dec = StreamDecoder(4096)
    dec.receive_data(head)
    dec.receive_data(data)
    (frame,) = dec.frames_received()
    assert bytes(decode_block(frame).data) == data
    with pytest.raises(ValueError):
        stream_block_header(kind, req_id, block_hash[:31], len(data))


def _assert_drained(dec: StreamDecoder) -> None:
    """Nothing is left half-read: a fresh frame comes out alone and whole."""
    assert dec.frames_received() == []
    dec.receive_data(stream_frame(b"sentinel"))
    assert dec.frames_received() == [b"sentinel"]


@given(frames=FRAME_LISTS, data=st.data())
def test_stream_frames_survive_random_splits(frames: list[str | bytes], data: st.DataObject) -> None:
    stream = b"".join(stream_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = StreamDecoder(max_frame=1024)
    got: list[str | bytes] = []
    start = 0
    for end in [*cuts, len(stream)]:
        dec.receive_data(stream[start:end])
        start = end
        got += dec.frames_received()
    assert got == frames  # same values, same order, str stays str and bytes stay bytes
    _assert_drained(dec)


@given(frames=FRAME_LISTS)
def test_stream_frames_survive_one_byte_at_a_time(frames: list[str | bytes]) -> None:
    stream = b"".join(stream_frame(f) for f in frames)
    dec = StreamDecoder(max_frame=1024)
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
    assert dec.frames_received() == frames
    _assert_drained(dec)


@given(frames=FRAME_LISTS)
def test_stream_frames_fed_all_at_once(frames: list[str | bytes]) -> None:
    dec = StreamDecoder(max_frame=1024)
    dec.receive_data(b"".join(stream_frame(f) for f in frames))
    assert dec.frames_received() == frames
    _assert_drained(dec)


@given(
    max_frame=st.integers(0, 100_000),
    excess=st.integers(1, 2**32 - 1 - 100_000),
    kind=st.sampled_from([TEXT, BINARY]),
)
def test_oversized_frame_is_refused_from_its_header(max_frame: int, excess: int, kind: int) -> None:
    header = struct.pack(">BI", kind, max_frame + excess)
    dec = StreamDecoder(max_frame=max_frame)
    dec.receive_data(header[:-1])  # not yet a whole header: nothing to judge
    with pytest.raises(ProtocolError) as e:
        dec.receive_data(header[-1:])  # header complete; no payload byte sent
    assert e.value.code is ErrorCode.TOO_LARGE


@given(max_frame=st.integers(0, 4096), kind=st.sampled_from([TEXT, BINARY]))
def test_frame_of_exactly_max_frame_passes_and_one_more_byte_does_not(max_frame: int, kind: int) -> None:
    payload: str | bytes = "x" * max_frame if kind == TEXT else b"x" * max_frame
    too_big: str | bytes = "x" * (max_frame + 1) if kind == TEXT else b"x" * (max_frame + 1)
    dec = StreamDecoder(max_frame=max_frame)
    dec.receive_data(stream_frame(payload))
    assert dec.frames_received() == [payload]
    with pytest.raises(ProtocolError) as e:
        dec.receive_data(stream_frame(too_big)[:5])  # the header alone
    assert e.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("kind", [2, 3, 255])
def test_stream_frame_of_unknown_kind_is_bad_request(kind: int) -> None:
    dec = StreamDecoder(max_frame=1024)
    with pytest.raises(ProtocolError) as e:
        dec.receive_data(bytes([kind, 0, 0, 0, 1]) + b"x")
    assert e.value.code is ErrorCode.BAD_REQUEST


def test_text_stream_frame_with_invalid_utf8_is_bad_request() -> None:
    dec = StreamDecoder(max_frame=1024)
    with pytest.raises(ProtocolError) as e:
        dec.receive_data(bytes([TEXT, 0, 0, 0, 2]) + b"\xff\xfe")
    assert e.value.code is ErrorCode.BAD_REQUEST
