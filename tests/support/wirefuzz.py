"""Seeded random and mutated WebSocket frames for fuzzing a live server.

:class:`FrameFuzzer` draws from every message type the protocol knows
(requests, replies, pushes), filling each field with values from a pool of
ordinary and nasty ones, then sometimes mutates the JSON body or its text;
and binary block frames, honest or not. The same seed gives the same frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import types
import typing
from typing import Any, Literal, Union

import orjson

from protocol import framing
from protocol import messages as m

HASHES = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
PATHS = ["/", "/a", "/a/b", "/fuzz.txt", "/d/e/f", "/é", "/e\u0301", "/../x", "a", "", "//", "/a/",
         "/\x00", "/C:", "/" + "n" * 300, "/" + "/x" * 2100, "/\u202e", "/CON", "/.ferry"]  # fmt: skip
INTS = [0, 1, 2, 3, -1, 7, 1000, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
STRINGS = ["", "x", "owner", "editor", "viewer", "bob", "mallory", "é" * 40, "\x00", "k" * 5000]
NASTY_JSON = [None, True, False, 0, -1, 1.5, 1e308, 2**64 - 1, -(2**63), "", "x" * 100_000, [], {}, [[[]]],
              {"a": {"b": None}}, ["/"] * 50, list(range(30_000))]  # fmt: skip
RAW_NASTY = ["1" * 400, "-" + "9" * 30, "1e400", "NaN", "\"\\ud800\"", "[" * 3000 + "]" * 3000,
             "\"\\u0000\"", "{\"a\":" * 600 + "1" + "}" * 600]  # fmt: skip


class FrameFuzzer:
    def __init__(self, seed: int, max_block: int) -> None:
        self.rng = random.Random(seed)
        self.max_block = max_block
        self._ids = iter(range(1, 2**31))

    def frame(self) -> str | bytes:
        r = self.rng.random()
        if r < 0.12:
            return self.block_frame()
        if r < 0.17:
            return self.garbage()
        text = self.message_text()
        if self.rng.random() < 0.3:
            text = self.mutate_text(text)
        return text

    # --- messages ---------------------------------------------------------------------

    def message_text(self) -> str:
        cls = self.rng.choice(m.ALL_MESSAGES)
        body = {name: framing.to_wire(v) for name, v in self.fields_of(cls).items()}  # as is: no checks
        body["type"] = cls.TYPE
        if "id" in body and self.rng.random() < 0.9:
            body["id"] = next(self._ids)  # mostly fresh ids, so replies can be matched
        if self.rng.random() < 0.3:
            self.mutate_body(body)
        text = orjson.dumps(body).decode()
        if body and self.rng.random() < 0.1:  # a value orjson would not write: splice it in as text
            field = self.rng.choice(list(body))
            text = text.replace(f'"{field}":', f'"{field}":{self.rng.choice(RAW_NASTY)},"_was":', 1)
        return text

    def value_of(self, tp: Any) -> Any:
        rng = self.rng
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return None if rng.random() < 0.4 else self.value_of(args[0])
        if origin is Literal:
            return rng.choice(typing.get_args(tp))
        if origin is list:
            (item,) = typing.get_args(tp)
            return [self.value_of(item) for _ in range(rng.choice([0, 1, 1, 2, 3, 40]))]
        if origin is dict:
            return {"k": rng.choice(NASTY_JSON[:12])}
        if tp is bytes:
            return rng.choice(HASHES)
        if tp is bool:
            return rng.random() < 0.5
        if tp is int:
            return rng.choice(INTS)
        if tp is str:
            return rng.choice(PATHS + STRINGS)
        if tp is m.BlockRef:
            return m.BlockRef(rng.choice(HASHES), rng.choice([0, 1, 4096, 2**40, -1]))
        if tp is Any:
            return rng.choice(NASTY_JSON[:12])
        if dataclasses.is_dataclass(tp):
            kw = self.fields_of(tp)
            if tp is m.BatchResult:  # exactly one of the two, or its constructor refuses
                kw["failure" if kw["entry"] is not None else "entry"] = None
                if kw["entry"] is None and kw["failure"] is None:
                    kw["failure"] = self.value_of(m.Failure)
            return tp(**kw)
        raise TypeError(f"no fuzz values for {tp!r}")

    def fields_of(self, cls: Any) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: self.value_of(hints[f.name]) for f in dataclasses.fields(cls)}

    def mutate_body(self, body: dict[str, Any]) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            how = rng.random()
            keys = list(body)
            if how < 0.35 and keys:
                body[rng.choice(keys)] = rng.choice(NASTY_JSON)
            elif how < 0.5 and keys:
                del body[rng.choice(keys)]
            elif how < 0.65:
                body["type"] = rng.choice([c.TYPE for c in m.ALL_MESSAGES] + ["", "HELLO", "ping " * 3])
            elif how < 0.8:
                body[rng.choice(["x", "__proto__", "id ", "Type"])] = rng.choice(NASTY_JSON[:12])
            else:
                body["id"] = rng.choice([*INTS, None, "1", 1.0])

    def mutate_text(self, text: str) -> str:
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text) + 1)
            how = rng.random()
            if how < 0.3:
                text = text[:i]  # truncated
            elif how < 0.6:
                text = (
                    text[:i]
                    + chr(rng.choice([0, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x2C, 0xE9, 0x202E]))
                    + text[i:]
                )
            elif how < 0.8:
                text = text[:i] + text[i + 1 :]
            else:
                j = rng.randrange(len(text) + 1)
                text = text[:i] + text[min(i, j) : max(i, j)] + text[i:]
            if not text:
                break
        return text

    # --- binary and garbage --------------------------------------------------------------

    def block_frame(self) -> bytes:
        rng = self.rng
        data = rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000]))
        h = hashlib.sha256(data).digest()
        how = rng.random()
        if how < 0.5:  # honest: the server stores it
            return framing.encode_block(framing.KIND_PUT, next(self._ids), h, data)
        if how < 0.65:  # bytes under another block's name
            return framing.encode_block(framing.KIND_PUT, next(self._ids), rng.choice(HASHES), data)
        if how < 0.8:  # a kind clients may not send, or none at all
            frame = bytearray(framing.encode_block(framing.KIND_DATA, next(self._ids), h, data))
            frame[0] = rng.choice([0, framing.KIND_DATA, 3, 255])
            return bytes(frame)
        if how < 0.95:  # cut inside its header
            return framing.encode_block(framing.KIND_PUT, next(self._ids), h, data)[: rng.randrange(40)]
        return framing.encode_block(
            framing.KIND_PUT, next(self._ids), h, bytes(self.max_block + 1)
        )  # too big

    def garbage(self) -> str | bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.randbytes(rng.randrange(200))
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD7FF)]))
            for _ in range(rng.randrange(200))
        )
