"""Path validation and the path helpers."""

from __future__ import annotations

import pathlib
import re
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    PathError,
    ancestors,
    is_within,
    join,
    name_of,
    parent_of,
    validate_path,
)


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


# Names a valid path may use: no '/', no backslash, no control character, no
# lone surrogate; never '.' or '..'. Combining marks are in, so NFD input shows up.
NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
NAMES = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))
NFD_NAMES = st.lists(
    st.sampled_from(["e\u0301", "a\u030a", "\u1100\u1161", "o\u0308", "x", "."]), min_size=1, max_size=6
).map("".join)


def _not_a_drive(names: list[str]) -> bool:
    return not re.fullmatch(r"[A-Za-z]:", nfc(names[0]))


VALID_PATHS = st.just("/") | st.lists(
    NAMES | NFD_NAMES.filter(lambda n: n not in (".", "..")), min_size=1, max_size=6
).filter(_not_a_drive).map(lambda names: "/" + "/".join(names))


def expected_valid(p: str) -> bool:
    """The documented rules, written out independently of paths.py."""
    if not p.startswith("/"):
        return False
    if any(ord(c) < 0x20 or c == "\x7f" or c == "\\" or 0xD800 <= ord(c) <= 0xDFFF for c in p):
        return False
    if p == "/":
        return True
    q = nfc(p)
    if len(q.encode()) > MAX_PATH_BYTES:
        return False
    names = q[1:].split("/")
    if any(n in ("", ".", "..") or len(n.encode()) > MAX_NAME_BYTES for n in names):
        return False
    return not re.fullmatch(r"[A-Za-z]:", names[0])


def assert_bad_path(p: object) -> None:
    with pytest.raises(PathError) as e:
        validate_path(p)
    assert isinstance(e.value, ProtocolError)
    assert e.value.code is ErrorCode.BAD_PATH


# --- examples ------------------------------------------------------------------------------

LONGEST_NAME = "a" * MAX_NAME_BYTES
LONGEST_PATH = "/" + "/".join([LONGEST_NAME] * 16)  # 16 * 256 bytes


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/a",
        "/a/b/c.txt",
        "/.hidden",
        "/...",
        "/a..b/c.d.",
        "/ spaces /x ",
        "/x/C:",  # a drive letter only matters as the first name
        "/CC:",
        "/C:x",
        "/1:",
        "/CON/aux.txt",  # Windows-reserved names are allowed
        '/a<b>:c"?*|',
        "/日本語/ファイル",
        "/emoji 😀",
        "/" + LONGEST_NAME,
        "/" + "é" * 127,  # 254 bytes
        "/" + "/".join(["é" * 127] * 16),  # 4080 bytes
        LONGEST_PATH,
    ],
)
def test_accepts(path: str) -> None:
    assert validate_path(path) == path


def test_longest_path_is_exactly_the_limit() -> None:
    assert len(LONGEST_PATH.encode()) == MAX_PATH_BYTES == 4096
    assert MAX_NAME_BYTES == 255


@pytest.mark.parametrize(
    ("nfd", "expected"),
    [
        ("/cafe\u0301", "/caf\u00e9"),
        ("/A\u030angstro\u0308m/x", "/\u00c5ngstr\u00f6m/x"),
        ("/\u1100\u1161", "/\uac00"),
        ("/" + "e\u0301" * 100, "/" + "\u00e9" * 100),  # 300 bytes as NFD, 200 as NFC: the NFC form counts
    ],
)
def test_nfd_input_is_normalised_to_nfc(nfd: str, expected: str) -> None:
    assert nfd != expected
    assert validate_path(nfd) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "a",
        "a/b",
        "./a",
        "~/a",
        "/..",
        "/a/..",
        "/a/../b",
        "/.",
        "/a/./b",
        "//",
        "//a",
        "/a//b",
        "/a/",
        "/a/b/",
        "/a\\b",
        "\\a",
        "/a\x00b",
        "/\x00",
        "/a\x01",
        "/a\nb",
        "/a\tb",
        "/a\x1f",
        "/a\x7f",
        "/C:",
        "/c:",
        "/z:/x",
        "/\ud800",  # a lone surrogate is not UTF-8
        "/a/\udfff",
        "/" + "a" * (MAX_NAME_BYTES + 1),
        "/x/" + "é" * 128,  # 256 bytes in UTF-8
        LONGEST_PATH + "b",
        "/" + "/".join(["é" * 127] * 17),  # 2176 characters but 4335 bytes
        "/" + "/".join(["a"] * 2049),  # 4098 bytes of short names
    ],
)
def test_rejects(path: str) -> None:
    assert_bad_path(path)


@pytest.mark.parametrize("path", [None, b"/a", 1, ["/a"], pathlib.PurePosixPath("/a")])
def test_rejects_non_strings(path: object) -> None:
    assert_bad_path(path)


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=300)
@given(path=VALID_PATHS)
def test_valid_paths_come_back_as_nfc_and_validation_is_idempotent(path: str) -> None:
    assert expected_valid(path)
    canonical = validate_path(path)
    assert canonical == nfc(path)
    assert validate_path(canonical) == canonical


# Fragments that hit every rule, glued together at random.
GOOD_PARTS = ["a", "b", "c", ".", "C:", ":", "e\u0301", "\u00e9", " ", "~", "日", "a" * 100, "é" * 50]
BAD_PARTS = ["..", "\\", "\x00", "\x01", "\x7f", "\ud800", "/"]
SOME_NAMES = st.lists(st.sampled_from(GOOD_PARTS * 4 + BAD_PARTS), min_size=1, max_size=3).map("".join)
PATHISH = (
    st.lists(SOME_NAMES, min_size=1, max_size=6).map(lambda names: "/" + "/".join(names))
    | st.lists(st.sampled_from(["/", "a", ".", "..", "\\", "C:", "e\u0301"]), max_size=8).map("".join)
    | st.text(max_size=20)
)


@settings(max_examples=500)
@given(path=PATHISH)
def test_validate_path_agrees_with_the_rules(path: str) -> None:
    # C1 controls (U+0080-U+009F) are accepted today; whether they should be is open.
    assume(not any("\x80" <= c <= "\x9f" for c in path))
    if expected_valid(path):
        canonical = validate_path(path)
        assert canonical == nfc(path)
        assert validate_path(canonical) == canonical
    else:
        assert_bad_path(path)


@settings(max_examples=300)
@given(raw=VALID_PATHS.filter(lambda p: p != "/"))
def test_helpers_are_consistent(raw: str) -> None:
    p = validate_path(raw)
    parent, name = parent_of(p), name_of(p)
    assert name and "/" not in name
    assert validate_path(parent) == parent
    assert join(parent, name) == p
    assert len(parent) < len(p)

    anc = ancestors(p)
    assert len(anc) == p.count("/") - 1
    assert anc == ancestors(parent) + ([] if parent == "/" else [parent])
    assert all(validate_path(a) == a for a in anc)

    for folder in [*anc, "/", parent, p]:
        assert is_within(p, folder)
    for descendant_of_p in (p + "/x", join(p, "y")):
        assert is_within(descendant_of_p, p)
        assert parent_of(descendant_of_p) == p
        assert ancestors(descendant_of_p) == [*anc, p]
    for folder in [*anc, parent]:
        if folder != "/":
            assert not is_within(folder, p)
    assert not is_within(p + "x", p)  # a sibling whose name starts with p's
    assert not is_within(p, p + "x")


@given(a=VALID_PATHS, b=VALID_PATHS)
def test_is_within_means_ancestor_or_self(a: str, b: str) -> None:
    a, b = validate_path(a), validate_path(b)
    assert is_within(a, b) == (b == "/" or b == a or b in ancestors(a))


@given(folder=VALID_PATHS, name=NAMES)
def test_join_validates_and_normalises(folder: str, name: str) -> None:
    folder = validate_path(folder)
    assume(folder != "/" or _not_a_drive([name]))  # "C:" right under the root is refused, rightly
    joined = join(folder, name)
    assert parent_of(joined) == folder
    assert name_of(joined) == nfc(name)
    assert join(folder, "e\u0301") == ("" if folder == "/" else folder) + "/\u00e9"


@pytest.mark.parametrize("name", ["..", ".", "a\x00", "a\\b", "b/", "a" * (MAX_NAME_BYTES + 1)])
def test_join_rejects_bad_names(name: str) -> None:
    with pytest.raises(PathError):
        join("/a", name)


def test_root_helpers() -> None:
    assert parent_of("/a") == "/"
    assert name_of("/a") == "a"
    assert ancestors("/") == []
    assert ancestors("/a") == []
    assert ancestors("/a/b/c") == ["/a", "/a/b"]
    assert is_within("/", "/")
    assert is_within("/a", "/")
    assert not is_within("/", "/a")
    assert not is_within("/ab", "/a")
    assert join("/", "a") == "/a"
