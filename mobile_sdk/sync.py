"""A small blocking wrapper for callers without an event loop (scripts, UI
threads): each call runs the async :class:`Client` method on a private loop
in a background thread and waits for it."""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from mobile_sdk.client import Client
from mobile_sdk.reader import RemoteFile
from protocol.messages import Entry, VersionInfo

T = TypeVar("T")


class SyncFile(io.RawIOBase):
    """A :class:`RemoteFile` as an ordinary read-only binary file."""

    def __init__(self, remote: RemoteFile, run: Any) -> None:
        super().__init__()
        self.remote, self._run = remote, run
        self.name = remote.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.remote.seek(offset, whence)

    def tell(self) -> int:
        return self.remote.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._run(self.remote.read(len(buffer)))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n


class SyncClient:
    """``Client`` with blocking methods: ``SyncClient(url, home).list("/")``."""

    def __init__(self, server_url: str, home_dir: str | os.PathLike[str], **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ferry-sdk", daemon=True)
        self._thread.start()
        self.client = Client(server_url, home_dir, **kw)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, user: str, password: str, device: str = "phone") -> None:
        self._run(self.client.login(user, password, device))

    def logout(self) -> None:
        self._run(self.client.logout())

    def list(self, path: str = "/") -> builtins.list[Entry]:
        return self._run(self.client.list(path))

    def stat(self, path: str) -> Entry:
        return self._run(self.client.stat(path))

    def changes(self) -> builtins.list[Entry]:
        return self._run(self.client.changes())

    def wait_for_changes(self, timeout: float = 30.0) -> bool:
        return self._run(self.client.wait_for_changes(timeout))

    def open(self, path: str) -> SyncFile:
        return SyncFile(self._run(self.client.open(path)), self._run)

    def download(self, path: str, dest: str | os.PathLike[str]) -> Entry:
        return self._run(self.client.download(path, dest))

    def upload(self, src: str | os.PathLike[str], path: str) -> Entry:
        return self._run(self.client.upload(src, path))

    def mkdir(self, path: str) -> Entry:
        return self._run(self.client.mkdir(path))

    def move(self, src: str, dst: str) -> Entry:
        return self._run(self.client.move(src, dst))

    def delete(self, path: str) -> Entry:
        return self._run(self.client.delete(path))

    def pin(self, path: str) -> Entry:
        return self._run(self.client.pin(path))

    def unpin(self, path: str) -> None:
        self._run(self.client.unpin(path))

    def thumbnail(self, path: str, size: int = 256) -> bytes:
        return self._run(self.client.thumbnail(path, size))

    def history(self, path: str) -> builtins.list[VersionInfo]:
        return self._run(self.client.history(path))

    def restore(self, path: str, version: int | None = None) -> Entry:
        return self._run(self.client.restore(path, version))
