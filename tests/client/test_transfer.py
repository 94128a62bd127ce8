"""The download's disk steps on a real filesystem: copying kept blocks from
the old copy (checked where they land), and placing the fetched file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from client import transfer
from client.fs import OsDisk
from protocol.hashing import block_hash


def _fd(path: Path, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_CREAT, 0o600)


def test_a_kept_block_is_copied_and_checked_where_it_landed(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_bytes(b"x" * 100 + b"the block" + b"y" * 100)
    src, dst = _fd(old), _fd(tmp_path / "new", os.O_RDWR)
    try:
        assert transfer._copy_block(src, dst, 100, 9, 5, block_hash(b"the block"), big=True)
        assert os.pread(dst, 9, 5) == b"the block"
        # the old copy no longer holds that block there: left for the network
        assert not transfer._copy_block(src, dst, 0, 9, 20, block_hash(b"the block"), big=False)
        # the old copy is shorter than it was
        assert not transfer._copy_block(src, dst, 195, 9, 40, block_hash(b"yyyyy"), big=False)
    finally:
        os.close(src)
        os.close(dst)


def test_copy_range_reads_and_writes_where_the_kernel_will_not_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "a").write_bytes(data)

    def cross_device(*_args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    src, dst = _fd(tmp_path / "a"), _fd(tmp_path / "b", os.O_RDWR)
    try:
        assert OsDisk.copy_range(src, dst, len(data) - 7, 7, 0) == len(data) - 7
        # fewer at the end of src
        assert OsDisk.copy_range(src, dst, 100, len(data) - 10, len(data) - 7) == 10
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "b").read_bytes() == data[7:] + data[-10:]


def test_placing_over_a_big_file_keeps_its_blocks_aside_to_delete_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 10)
    dest, tmp, aside = tmp_path / "f.bin", tmp_path / "tmp", tmp_path / "aside"
    dest.write_bytes(b"the old version")
    tmp.write_bytes(b"new")
    assert transfer.place(tmp, dest, aside) == aside
    assert dest.read_bytes() == b"new" and not tmp.exists()
    assert aside.read_bytes() == b"the old version"  # for the caller to delete

    small = tmp_path / "aside-2"
    tmp.write_bytes(b"newer")
    assert transfer.place(tmp, dest, small) is None  # 3 bytes: freed in the rename
    assert dest.read_bytes() == b"newer" and not small.exists()


def test_placing_where_hard_links_fail_still_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 1)

    def no_links(*_args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(OsDisk, "link", staticmethod(no_links))
    dest, tmp = tmp_path / "f.bin", tmp_path / "tmp"
    dest.write_bytes(b"old")
    tmp.write_bytes(b"new")
    assert transfer.place(tmp, dest, tmp_path / "aside") is None
    assert dest.read_bytes() == b"new" and not (tmp_path / "aside").exists()


def test_a_failed_rename_takes_back_the_link_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 1)
    dest, aside = tmp_path / "f.bin", tmp_path / "aside"
    dest.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        transfer.place(tmp_path / "gone", dest, aside)
    assert dest.read_bytes() == b"old" and not aside.exists()
