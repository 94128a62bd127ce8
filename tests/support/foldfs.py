"""A real case-insensitive filesystem for tests: a FUSE passthrough that
compares names as macOS's APFS does by default (case-insensitive, Unicode
normalisation-insensitive, preserving the name it was created with).

Linux here has no such filesystem (no vfat module, an ext4 without
CONFIG_UNICODE), so the client is tested on this one: the kernel, the syscalls
and the client's own code are real; only name lookup is folded, in userspace.

Run as ``python -m tests.support.foldfs BACKING MOUNTPOINT`` (stays in the
foreground until unmounted); :func:`mounted` does that for a test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WHY_NOT = ""  # why no mount is possible here (the test says so when it skips)
try:
    from fuse import FUSE, FuseOSError, Operations  # fusepy, over libfuse2
except (ImportError, OSError) as e:  # no fusepy, or no libfuse.so.2
    WHY_NOT = f"FUSE is not available ({e}); install libfuse2 and fusepy"
    Operations = object
if not WHY_NOT and not os.access("/dev/fuse", os.R_OK | os.W_OK):
    WHY_NOT = "no access to /dev/fuse (a FUSE mount needs it)"


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class FoldFS(Operations):  # type: ignore[misc,valid-type]
    use_ns = True  # times in nanoseconds both ways: mtimes survive exactly

    def __init__(self, backing: str) -> None:
        self.backing = backing

    def _real(self, path: str) -> str:
        """The backing path for ``path``, matching each existing part by folded name."""
        real = self.backing
        for part in [p for p in path.split("/") if p]:
            real = os.path.join(real, self._match(real, part) or part)
        return real

    @staticmethod
    def _match(folder: str, name: str) -> str | None:
        if os.path.lexists(os.path.join(folder, name)):
            return name
        try:
            return next((e for e in os.listdir(folder) if _fold(e) == _fold(name)), None)
        except OSError:
            return None

    def __call__(self, op: str, *args: Any) -> Any:
        try:
            return super().__call__(op, *args)
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        s = os.lstat(self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")
        out = {k: getattr(s, k) for k in keys}
        out.update(st_atime=s.st_atime_ns, st_mtime=s.st_mtime_ns, st_ctime=s.st_ctime_ns)
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._real(path), amode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self._real(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._real(path), ns=times)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        os.mknod(self._real(path), mode, dev)

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._real(target))

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def rename(self, old: str, new: str) -> None:
        src = self._real(old)
        folder, name = os.path.split(new)
        parent = self._real(folder)
        there = self._match(parent, name)
        if there is not None and there != name and not os.path.samefile(src, os.path.join(parent, there)):
            os.unlink(os.path.join(parent, there))  # replaced, and the new name's case is kept
        os.rename(src, os.path.join(parent, name))

    def statfs(self, path: str) -> dict[str, int]:
        v = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag")
        return {k: getattr(v, k) for k in (*keys, "f_frsize", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(self._real(path), length)

    def flush(self, path: str, fh: int) -> None:
        pass

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path) -> Iterator[Path]:
    """``mountpoint`` as a case-insensitive view of ``backing``, for the duration."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tests.support.foldfs", str(backing), str(mountpoint)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"foldfs did not mount: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)  # polling a mount table: there is no event to await
        yield mountpoint
    finally:
        unmount = shutil.which("fusermount") or "umount"
        subprocess.run([unmount, "-u" if "fusermount" in unmount else "-l", str(mountpoint)], check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    # no kernel caching of names: every lookup must go through the folding above
    FUSE(FoldFS(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True, use_ino=True,
         entry_timeout=0, attr_timeout=0, negative_timeout=0)  # fmt: skip
