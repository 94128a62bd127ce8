"""Path rules: what a path inside a namespace may look like on the wire.

A path is absolute inside its namespace (``/`` is the root), ``/``-separated,
NFC-normalised, with no empty, ``.`` or ``..`` segments, no backslash, no NUL
or other control characters, no drive letter, at most 255 UTF-8 bytes per
name and 4096 per path. Windows-reserved names and ``<>:"?*`` are allowed:
the server stores them; a client that cannot write them says so locally.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.errors import ErrorCode, ProtocolError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:$")


class PathError(ProtocolError):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(ErrorCode.BAD_PATH, f"invalid path {path!r}: {why}")


def validate_path(path: object) -> str:
    """Return ``path`` in canonical (NFC) form, or raise :class:`PathError`."""
    if not isinstance(path, str):
        raise PathError(repr(path), "a path must be a string")
    if not path.startswith("/"):
        raise PathError(path, "must start with '/'")
    if _CONTROL.search(path):
        raise PathError(path, "contains NUL or a control character")
    if "\\" in path:
        raise PathError(path, "contains a backslash; use '/' between names")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError(path, "is not valid UTF-8") from None
    if path == "/":
        return path
    path = unicodedata.normalize("NFC", path)
    encoded = path.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        raise PathError(path[:64] + "...", f"longer than {MAX_PATH_BYTES} bytes")
    names = path[1:].split("/")
    for i, name in enumerate(names):
        if name == "":
            raise PathError(path, "has an empty name ('//' or a trailing '/')")
        if name in (".", ".."):
            raise PathError(path, f"'{name}' is not allowed as a name")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(path[:64] + "...", f"a name is longer than {MAX_NAME_BYTES} bytes")
        if i == 0 and _DRIVE.match(name):
            raise PathError(path, "starts with a drive letter")
    return path


def parent_of(path: str) -> str:
    """``/a/b`` → ``/a``; ``/a`` → ``/``. ``path`` must be valid."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


def join(folder: str, name: str) -> str:
    return validate_path(("" if folder == "/" else folder) + "/" + name)


def ancestors(path: str) -> list[str]:
    """Proper ancestors of ``path`` below the root, outermost first: ``/a/b/c`` → ``['/a', '/a/b']``."""
    names = path[1:].split("/")[:-1]
    return ["/" + "/".join(names[: i + 1]) for i in range(len(names))]


def is_within(path: str, folder: str) -> bool:
    """True if ``path`` is ``folder`` or below it."""
    return folder == "/" or path == folder or path.startswith(folder + "/")
