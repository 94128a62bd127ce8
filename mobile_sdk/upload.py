"""Resumable uploads: chunk → ask which blocks are missing → PUT them → commit.

The plan of an upload (the file's size and mtime when it was chunked, its
block list with offsets, the parent version and the commit's idempotency
key) is saved in the SDK's state before the first byte is sent. After an
interruption — network drop, app killed — ``upload`` of the same unchanged
file picks the plan up: the server names only the blocks that never
arrived (blocks a user sent stay readable by them), and the commit reuses
the key, so a commit whose reply was lost returns the version it made
instead of making a second one. A changed source file starts a new plan.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from mobile_sdk.cache import BlockCache
from mobile_sdk.errors import ApiError, FerryError, OfflineError
from mobile_sdk.transport import Transport
from protocol.chunking import chunk_hashes

PARALLEL_PUTS = 8
QUERY_BATCH = 10_000


@dataclass
class Plan:
    src: str
    size: int
    mtime_ns: int
    executable: bool
    parent: int | None
    key: str
    blocks: list[tuple[int, int, str]]  # offset, length, hex SHA-256

    @property
    def hashes(self) -> list[str]:
        return [h for _, _, h in self.blocks]


def chunk_file(src: Path) -> list[tuple[int, int, str]]:
    with open(src, "rb") as f:
        return [(offset, length, h.hex()) for offset, length, h in chunk_hashes(f)]


def _read_block(src: Path, offset: int, length: int, want: str) -> bytes:
    with open(src, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if hashlib.sha256(data).hexdigest() != want:
        raise FerryError(f"{src} changed while it was being uploaded; upload it again")
    return data


class Uploader:
    def __init__(self, transport: Transport, cache: BlockCache) -> None:
        self.t, self.cache = transport, cache

    async def upload(self, src: Path, path: str, parent: int | None) -> dict[str, Any]:
        """Upload ``src`` to ``path`` based on version ``parent``; the commit reply."""
        plan = await self._plan(src, path, parent)
        try:
            await self._send(src, plan, await self._missing(plan.hashes))
            body = {"path": path, "parent": plan.parent, "size": plan.size, "mtime_ns": plan.mtime_ns,
                    "executable": plan.executable, "blocks": plan.hashes, "key": plan.key}  # fmt: skip
            try:
                reply = await self.t.json("POST", "/commit", json=body)
            except ApiError as e:
                if e.code != "missing_blocks":  # collected since we asked: send them again, once
                    raise
                await self._send(src, plan, set((e.detail or {}).get("missing", [])))
                reply = await self.t.json("POST", "/commit", json=body)
        except FerryError as e:
            retryable = isinstance(e, OfflineError) or (isinstance(e, ApiError) and e.status >= 500)
            if not retryable:  # the plan cannot succeed (conflict, changed source...): start afresh next time
                self.cache.remember("uploads", path, None)
            raise
        self.cache.remember("uploads", path, None)
        return dict(reply)

    async def _plan(self, src: Path, path: str, parent: int | None) -> Plan:
        st = src.stat()
        saved = self.cache.recall("uploads", path)
        if saved is not None:
            plan = Plan(**orjson.loads(saved))
            if (plan.src, plan.size, plan.mtime_ns) == (str(src), st.st_size, st.st_mtime_ns):
                return plan  # resume
        blocks = await asyncio.to_thread(chunk_file, src)
        plan = Plan(str(src), st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o111) and os.name != "nt",
                    parent, uuid.uuid4().hex, blocks)  # fmt: skip
        self.cache.remember("uploads", path, orjson.dumps(asdict(plan)).decode())
        return plan

    async def _missing(self, hashes: list[str]) -> set[str]:
        missing: set[str] = set()
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), QUERY_BATCH):
            body = await self.t.json("POST", "/blocks/missing", json={"hashes": unique[i : i + QUERY_BATCH]})
            missing.update(body["missing"])
        return missing

    async def _send(self, src: Path, plan: Plan, missing: set[str]) -> None:
        todo = {h: (off, n) for off, n, h in plan.blocks if h in missing}
        window = asyncio.Semaphore(PARALLEL_PUTS)

        async def put(h: str, offset: int, length: int) -> None:
            async with window:
                data = await asyncio.to_thread(_read_block, src, offset, length, h)
                await self.t.request("PUT", f"/blocks/{h}", content=data)

        try:
            async with asyncio.TaskGroup() as tg:
                for h, (offset, length) in todo.items():
                    tg.create_task(put(h, offset, length))
        except ExceptionGroup as group:  # callers catch OfflineError, not groups
            raise group.exceptions[0] from None
