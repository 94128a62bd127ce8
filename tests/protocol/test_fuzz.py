"""Fuzzing the wire edge with hypothesis: whatever bytes arrive, the decoders
and the path validator either return a well-formed value or raise a
:class:`ProtocolError` — never another exception — and what they return
holds only values every store can keep.

(test_framing.py and test_paths.py check the documented rules on
well-formed and one-field-wrong input; these feed them anything.)
``FERRY_FUZZ_EXAMPLES`` raises the example counts for a longer campaign.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import INT64, StreamDecoder, decode, decode_block, encode
from protocol.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, PathError, validate_path
from tests.protocol.test_framing import dataclass_strategy

EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_storable(value: Any) -> None:
    """Every int fits 64 bits and no string holds a NUL, all the way down."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        assert INT64[0] <= value <= INT64[1], value
    elif isinstance(value, str):
        assert "\x00" not in value
    elif isinstance(value, list):
        for v in value:
            assert_storable(v)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            assert_storable(getattr(value, f.name))


def decode_or_refuse(frame: str | bytes) -> m.Message | None:
    try:
        msg = decode(frame)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.message
        return None
    assert isinstance(msg, m.Message)
    assert_storable(msg)
    assert decode(encode(msg)) == msg  # what was accepted survives a round trip
    return msg


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """The text of a valid message, then cut, spliced, or with bytes flipped."""
    cls = draw(st.sampled_from(m.ALL_MESSAGES))
    text = encode(draw(dataclass_strategy(cls)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["cut", "insert", "delete", "duplicate", "number"]))
        if how == "cut":
            text = text[:i]
        elif how == "insert":
            text = text[:i] + draw(st.text(max_size=3)) + text[i:]
        elif how == "delete":
            text = text[:i] + text[i + 1 :]
        elif how == "duplicate":
            text = text[:i] + text[i : i + draw(st.integers(1, 40))] + text[i:]
        else:  # a number JSON allows but no store does
            text = (
                text[:i]
                + draw(st.sampled_from(["18446744073709551615", "-9223372036854775809", "1e400", "-0"]))
                + text[i:]
            )
    return text


@FUZZ
@given(frame=st.text(max_size=300) | st.binary(max_size=300))
def test_decode_of_anything_is_a_message_or_a_protocol_error(frame: str | bytes) -> None:
    decode_or_refuse(frame)


@FUZZ
@given(frame=mutated_frames())
def test_decode_of_mutated_frames_is_a_message_or_a_protocol_error(frame: str) -> None:
    decode_or_refuse(frame)


JSON_LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)  # as far as orjson writes | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["\x00", "/a\x00b", "ab" * 32, "/", "/a"])
)  # fmt: skip


@FUZZ
@given(cls=st.sampled_from(m.ALL_MESSAGES), data=st.data())
def test_any_json_object_with_a_known_type_decodes_or_is_refused(
    cls: type[m.Message], data: st.DataObject
) -> None:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = st.recursive(
        JSON_LEAVES,
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from([*names, "x"]), kids, max_size=4)
        ),
        max_leaves=10,
    )
    body = data.draw(st.dictionaries(st.sampled_from(names), values, max_size=len(names)))
    body["type"] = cls.TYPE
    decode_or_refuse(orjson.dumps(body))


@FUZZ
@given(frame=st.binary(max_size=200))
def test_decode_block_of_anything_is_a_frame_or_a_protocol_error(frame: bytes) -> None:
    try:
        block = decode_block(frame)
    except ProtocolError as e:
        assert e.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE)
        return
    assert len(block.hash) == 32 and bytes(block.data) == frame[40:]


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), max_frame=st.integers(0, 256))
def test_stream_decoder_of_anything_yields_bounded_frames_or_refuses(
    chunks: list[bytes], max_frame: int
) -> None:
    decoder = StreamDecoder(max_frame)
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            for frame in decoder.frames_received():
                assert len(frame) <= max_frame
                assert isinstance(frame, bytes | str)
    except ProtocolError as e:
        assert e.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)


ANY_TEXT = st.text(st.characters(), max_size=80) | st.lists(
    st.sampled_from(
        ["/", "a", ".", "..", "\x00", "\x85", "\u200b", "\ud800", "e\u0301", "C:", "\\", "é" * 130]
    ),
    max_size=12,
).map("".join)


@FUZZ
@given(path=ANY_TEXT)
def test_validate_path_of_anything_is_a_canonical_path_or_a_path_error(path: str) -> None:
    try:
        canonical = validate_path(path)
    except PathError as e:
        assert e.code is ErrorCode.BAD_PATH
        return
    assert validate_path(canonical) == canonical  # canonical is a fixed point
    assert canonical.startswith("/") and len(canonical.encode()) <= MAX_PATH_BYTES
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\\" for c in canonical)
    assert all(
        len(n.encode()) <= MAX_NAME_BYTES and n not in ("", ".", "..")
        for n in canonical[1:].split("/")
        if canonical != "/"
    )


# --- defects the live fuzzer found (tests/e2e/test_fuzz_live.py) --------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "list_changes", "id": 4, "since": 0, "ns": 18446744073709551615}',
        '{"type": "revoke_link", "id": 4, "link": 9223372036854775808}',
        '{"type": "get_version", "id": 4, "path": "/a", "version": 18446744073709551615}',
    ],
)
def test_integers_beyond_64_bits_are_bad_requests(frame: str) -> None:
    """They reached PostgreSQL and came back as internal errors."""
    with pytest.raises(ProtocolError) as e:
        decode(frame)
    assert e.value.code is ErrorCode.BAD_REQUEST and "64-bit" in e.value.message
    assert e.value.detail == {"id": 4}


def test_an_id_beyond_64_bits_is_not_echoed() -> None:
    """An error reply naming it would be refused by the client's own decoder."""
    with pytest.raises(ProtocolError) as e:
        decode('{"type": "ping", "id": 18446744073709551615}')
    assert e.value.code is ErrorCode.BAD_REQUEST and e.value.detail == {"id": None}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type": "commit_batch", "id": 4, "key": "\\u0000", "files": []}', ErrorCode.BAD_REQUEST),
        (
            '{"type": "share", "id": 4, "path": "/a", "user": "bob\\u0000", "role": "viewer"}',
            ErrorCode.BAD_REQUEST,
        ),
        ('{"type": "stat", "id": 4, "path": "/a\\u0000b"}', ErrorCode.BAD_PATH),
        ('{"type": "list_folder", "id": 4, "path": "/", "after": "/a\\u0000"}', ErrorCode.BAD_PATH),
    ],
)
def test_strings_with_nul_are_refused(frame: str, code: ErrorCode) -> None:
    """PostgreSQL text cannot hold NUL: they came back as internal errors."""
    with pytest.raises(ProtocolError) as e:
        decode(frame)
    assert e.value.code is code and "NUL" in e.value.message
    assert e.value.detail == {"id": 4}


def test_get_block_id_must_fit_the_32_bits_of_its_reply_header() -> None:
    """The server failed to pack the reply's header: an internal error."""
    frame = '{"type": "get_block", "id": 4294967296, "hash": "' + "ab" * 32 + '"}'
    with pytest.raises(ProtocolError) as e:
        decode(frame)
    assert e.value.code is ErrorCode.BAD_REQUEST and "32 bits" in e.value.message
    assert e.value.detail == {"id": 4294967296}
    assert decode(frame.replace("4294967296", "4294967295")) == m.GetBlock(
        2**32 - 1, bytes.fromhex("ab" * 32)
    )
