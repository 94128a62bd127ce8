"""``Client``: what a phone app calls. Metadata comes from the server; bytes
come from the block cache when it has them, else from the server one block
at a time (hash-checked, then cached)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from mobile_sdk.cache import BlockCache
from mobile_sdk.errors import ApiError, CorruptBlock, FerryError, OfflineError
from mobile_sdk.reader import RemoteFile
from mobile_sdk.transport import Stats, Transport
from mobile_sdk.upload import Uploader
from protocol import framing
from protocol.hashing import block_hash
from protocol.messages import Entry, VersionInfo
from protocol.paths import validate_path

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
THUMBNAIL_SIZES = (64, 256, 1024)


def _entry(value: Any) -> Entry:
    entry: Entry = framing.from_wire(Entry, value, "entry")
    return entry


def _json(entry: Entry) -> str:
    return orjson.dumps(framing.to_wire(entry)).decode()


class Client:
    """An on-demand Ferry client whose state (token, cursor, cache, pins,
    unfinished uploads) lives in ``home_dir`` and survives restarts.

    ``cache_bytes`` bounds the unpinned cached blocks (LRU); pinned files are
    kept whatever it says. Calls that need the server raise
    :class:`OfflineError` when it cannot be reached; ``open`` of a file read
    before (or pinned) works offline for the bytes that are cached."""

    def __init__(
        self,
        server_url: str,
        home_dir: str | os.PathLike[str],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.home = Path(home_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache = BlockCache(self.home, cache_bytes)
        self.t = Transport(server_url, retries=retries, backoff=backoff, timeout=timeout, transport=transport)
        if self.cache.get_state("server") == self.t.server_url:  # a token is only good on its server
            self.t.token = self.cache.get_state("token")
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}

    @property
    def stats(self) -> Stats:
        return self.t.stats

    async def close(self) -> None:
        await self.t.close()
        self.cache.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- account ---------------------------------------------------------------------

    async def login(self, user: str, password: str, device: str = "phone") -> None:
        body = await self.t.json("POST", "/login", auth=False,
                                 json={"user": user, "password": password, "device": device})  # fmt: skip
        self.t.token = body["token"]
        self.cache.set_state("token", body["token"])
        self.cache.set_state("server", self.t.server_url)

    async def logout(self) -> None:
        """Revoke this device's token on the server and forget it here (the
        cache and pins stay). Offline: :class:`OfflineError`, still logged in."""
        try:
            await self.t.request("POST", "/logout")
        except ApiError as e:
            if e.status != 401:  # 401: the token no longer works there anyway
                raise
        self.t.token = None
        self.cache.set_state("token", None)

    # --- metadata ----------------------------------------------------------------------

    async def list(self, path: str = "/") -> builtins.list[Entry]:
        """Every entry in a folder (all pages), without block lists."""
        entries: builtins.list[Entry] = []
        after: str | None = None
        while True:
            params = {"path": validate_path(path), **({"after": after} if after else {})}
            body = await self.t.json("GET", "/list", params=params)
            entries += [_entry(e) for e in body["entries"]]
            after = body["next"]
            if after is None:
                return entries

    async def stat(self, path: str) -> Entry:
        entry = _entry(await self.t.json("GET", "/stat", params={"path": validate_path(path)}))
        if entry.kind == "file":
            self.cache.remember("files", entry.path, _json(entry))
        return entry

    async def changes(self) -> builtins.list[Entry]:
        """Metadata changes since the last call (from the beginning the first
        time), oldest first; no file bytes move, except to refresh pinned files."""
        cursor = self.cache.get_state("cursor")
        entries: builtins.list[Entry] = []
        while True:
            try:
                body = await self.t.json("GET", "/changes", params={"cursor": cursor} if cursor else {})
            except ApiError as e:
                if e.status != 400 or cursor is None:
                    raise
                cursor, entries = None, []  # the server does not know our cursor: start over
                continue
            entries += [_entry(e) for e in body["entries"]]
            cursor = body["cursor"]
            if not body["has_more"]:
                break
        await self._apply(entries)
        self.cache.set_state("cursor", cursor)
        return entries

    async def wait_for_changes(self, timeout: float = 30.0) -> bool:
        """Block until something changed after the last ``changes()`` (or after
        now, if it was never called), or ``timeout`` seconds; True if it did."""
        cursor = self.cache.get_state("cursor")
        if cursor is None:
            cursor = (await self.t.json("GET", "/cursor"))["cursor"]
            self.cache.set_state("cursor", cursor)
        seconds = max(1, min(120, round(timeout)))
        body = await self.t.json("GET", "/changes/wait", params={"cursor": cursor, "timeout": seconds},
                                 timeout=seconds + 15)  # fmt: skip
        return bool(body["changes"])

    async def _apply(self, entries: builtins.list[Entry]) -> None:
        """Keep known file entries and pinned files up to date with the changes."""
        pins = self.cache.pins()
        for entry in entries:
            known = self.cache.recall("files", entry.path) is not None
            if entry.deleted or entry.kind != "file":
                if known:
                    self.cache.remember("files", entry.path, None)
                if entry.path in pins:
                    self.cache.unpin(entry.path)
                continue
            if known:
                self.cache.remember("files", entry.path, _json(entry))
            if entry.path in pins:
                await self._pin_entry(entry, _entry(orjson.loads(pins[entry.path])))

    # --- bytes ---------------------------------------------------------------------------

    async def open(self, path: str) -> RemoteFile:
        """The file at ``path`` for reading; offline, the last version this
        device saw of it (pinned or opened before)."""
        path = validate_path(path)
        try:
            entry = await self.stat(path)
        except OfflineError:
            known = self._known(path)
            if known is None:
                raise OfflineError(f"offline, and {path} was never opened or pinned on this device") from None
            entry = known
        if entry.kind != "file":
            raise FerryError(f"{path} is a folder; list it instead")
        return RemoteFile(entry, self._block)

    def _known(self, path: str) -> Entry | None:
        saved = self.cache.pins().get(path) or self.cache.recall("files", path)
        return None if saved is None else _entry(orjson.loads(saved))

    async def download(self, path: str, dest: str | os.PathLike[str]) -> Entry:
        """Save the file at ``path`` to ``dest`` (written beside it, fsynced and
        renamed: ``dest`` is never half-written). Blocks not already cached
        are not added to the cache: a download is not a reason to evict."""
        f = await self.open(path)
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.ferry-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as out:
                for ref in f.entry.blocks or []:
                    data = await self._block(ref.hash, keep=False)
                    await asyncio.to_thread(out.write, data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return f.entry

    async def _block(self, h: bytes, keep: bool = True) -> bytes:
        """A block from the cache, else from the server (one fetch however many ask at once)."""
        if self.cache.has(h):
            data = await asyncio.to_thread(self.cache.read, h)
            if data is not None:
                self.cache.touch(h, len(data))
                return data
            self.cache.forget(h)  # damaged on disk: fetch it again
        pending = self._inflight.get(h)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[h] = future
        try:
            data = await self._fetch(h, keep)
            future.set_result(data)
            return data
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._inflight[h]

    async def _fetch(self, h: bytes, keep: bool) -> bytes:
        data = (await self.t.request("GET", f"/blocks/{h.hex()}")).content
        self.t.stats.blocks_fetched += 1
        if await asyncio.to_thread(block_hash, data) != h:
            raise CorruptBlock(f"block {h.hex()} from the server does not match its hash; retry")
        if keep and len(data) <= self.cache.limit:
            await asyncio.to_thread(self.cache.write, h, data)
            self.cache.touch(h, len(data))
            self.cache.evict()
        return data

    async def upload(
        self, src: str | os.PathLike[str], path: str, *, parent: int | str | None = "auto"
    ) -> Entry:
        """Upload a local file to ``path`` as a new version (``parent="auto"``:
        of whatever is there now). Interrupted, calling it again resumes."""
        path = validate_path(path)
        if parent == "auto":
            parent = await self._current_version(path)
        assert parent is None or isinstance(parent, int)
        reply = await Uploader(self.t, self.cache).upload(Path(src), path, parent)
        return _entry(reply["entry"])

    async def _current_version(self, path: str) -> int | None:
        try:
            return (await self.stat(path)).version
        except ApiError as e:
            if e.code == "not_found":
                return None
            raise

    async def mkdir(self, path: str) -> Entry:
        """Make a folder and any missing parents."""
        return await self._change("/mkdir", {"path": validate_path(path)})

    async def move(self, src: str, dst: str) -> Entry:
        """Move or rename a file or a whole folder on the server."""
        return await self._change("/move", {"src": validate_path(src), "dst": validate_path(dst)})

    async def delete(self, path: str) -> Entry:
        """Delete a file or a folder and everything in it (``restore`` brings it back)."""
        return await self._change("/delete", {"path": validate_path(path)})

    async def _change(self, route: str, body: dict[str, Any]) -> Entry:
        # one key for every retry of this call: a retry after a lost reply is not a second change
        return _entry((await self.t.json("POST", route, json={**body, "key": uuid.uuid4().hex}))["entry"])

    # --- pins ------------------------------------------------------------------------------

    async def pin(self, path: str) -> Entry:
        """Keep the file at ``path`` cached (fetching it now) and up to date."""
        entry = await self.stat(path)
        if entry.kind != "file":
            raise FerryError(f"{path} is a folder; pin files")
        old = self._known_pin(entry.path)
        await self._pin_entry(entry, old)
        return entry

    async def unpin(self, path: str) -> None:
        self.cache.unpin(validate_path(path))
        self.cache.evict()

    def pinned(self) -> builtins.list[str]:
        return list(self.cache.pins())

    async def refresh_pins(self) -> None:
        """Bring every pinned file to its current version (``changes()`` also does)."""
        for path in self.pinned():
            with contextlib.suppress(ApiError):
                await self.pin(path)

    def _known_pin(self, path: str) -> Entry | None:
        saved = self.cache.pins().get(path)
        return None if saved is None else _entry(orjson.loads(saved))

    async def _pin_entry(self, entry: Entry, old: Entry | None) -> None:
        """Pin ``entry``; until all its blocks are here the old version stays pinned too."""
        new = [b.hash for b in entry.blocks or []]
        before = [b.hash for b in (old.blocks or [])] if old else []
        self.cache.pin(entry.path, _json(old or entry), before + new)
        for h in new:
            await self._block(h)
        self.cache.pin(entry.path, _json(entry), new)
        self.cache.remember("files", entry.path, _json(entry))
        self.cache.evict()

    # --- images and history ---------------------------------------------------------------

    async def thumbnail(self, path: str, size: int = 256) -> bytes:
        """A JPEG at most ``size`` (64, 256 or 1024) pixels on its longer side."""
        if size not in THUMBNAIL_SIZES:
            raise ValueError(f"size must be one of {THUMBNAIL_SIZES}")
        params = {"path": validate_path(path), "size": size}
        return (await self.t.request("GET", "/thumbnail", params=params)).content

    async def history(self, path: str) -> builtins.list[VersionInfo]:
        """Every version of the file at ``path``, newest first."""
        infos: builtins.list[VersionInfo] = []
        before: int | None = None
        while True:
            params: dict[str, Any] = {"path": validate_path(path), **({"before": before} if before else {})}
            body = await self.t.json("GET", "/history", params=params)
            infos += [framing.from_wire(VersionInfo, v, "version") for v in body["versions"]]
            before = body["next"]
            if before is None:
                return infos

    async def restore(self, path: str, version: int | None = None) -> Entry:
        """Make ``version`` current again (a new version); without one, undelete ``path``."""
        return await self._change("/restore", {"path": validate_path(path), "version": version})
