"""The scanner on a real folder: what it must not read again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from client import scanner
from client.scanner import Scan, rescan, scan


def _name(path: str) -> str:
    return path + " (conflicted)"


def test_a_renamed_file_is_known_by_its_inode_without_being_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    video = tmp_path / "d" / "video.bin"
    video.write_bytes(os.urandom(3 * 1024 * 1024))
    old = time.time() - 60
    os.utime(video, (old, old))
    first = scan(tmp_path, {}, _name)
    assert "/d/video.bin" in first.tree

    def no_reading(*_args: object) -> bytes:
        raise AssertionError("a renamed file was read again")

    monkeypatch.setattr(scanner, "hash_file", no_reading)
    os.rename(video, tmp_path / "moved.bin")
    for found in (
        scan(tmp_path, first.observed, _name),
        rescan(tmp_path, first, [str(video), str(tmp_path / "moved.bin")], first.observed, _name),
    ):
        assert isinstance(found, Scan) and "/d/video.bin" not in found.tree
        assert found.tree["/moved.bin"] == first.tree["/d/video.bin"]
        assert found.observed["/moved.bin"] == first.observed["/d/video.bin"]


def test_a_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"one")
    old = time.time() - 60
    os.utime(f, (old, old))
    first = scan(tmp_path, {}, _name)
    f.write_bytes(b"two")  # same inode and size, new mtime
    os.utime(f, (old + 1, old + 1))
    assert scan(tmp_path, first.observed, _name).tree["/a.txt"] != first.tree["/a.txt"]


def test_a_rescan_keeps_the_block_list_of_a_big_file_it_read(tmp_path: Path) -> None:
    """The upload reads only the blocks the server lacks, by the scan's list: an
    incremental rescan (live sync) must hand it on as a full scan does."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    old = time.time() - 60
    os.utime(big, (old, old))
    first = scan(tmp_path, {}, _name)
    with open(big, "r+b") as f:
        f.write(b"x")
    os.utime(big, (old + 1, old + 1))
    for found in (
        scan(tmp_path, first.observed, _name),
        rescan(tmp_path, first, [str(big)], first.observed, _name),
    ):
        known = found.blocks["/big.bin"]
        info = big.stat()
        assert known.stat == (info.st_size, info.st_mtime_ns, info.st_ino)
        assert sum(known.sizes) == info.st_size and len(known.hashes) == len(known.offsets) > 1


def test_a_scan_keeps_small_files_bytes_for_the_upload_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files a scan (full or incremental) read are kept, bytes and block
    hashes, with the stat they were read at, so the upload need not read them
    again; bigger files are not, and a scan keeps no more than its budget."""
    from protocol.chunking import chunk_bytes
    from protocol.hashing import content_hash

    old = time.time() - 60
    (tmp_path / "d").mkdir()
    small = {f"/d/f{i}.txt": os.urandom(4096 + i) for i in range(5)}
    for path, data in small.items():
        (tmp_path / path.lstrip("/")).write_bytes(data)
    (tmp_path / "big.bin").write_bytes(os.urandom(scanner.KEEP_BYTES_UPTO + 1))
    for f in [*tmp_path.rglob("*.txt"), tmp_path / "big.bin"]:
        os.utime(f, (old, old))
    first = scan(tmp_path, {}, _name)
    assert set(first.data) == set(small) and first.data_bytes == sum(map(len, small.values()))
    for path, data in small.items():
        info = (tmp_path / path.lstrip("/")).stat()
        stat, blocks = first.data[path]
        assert stat == (info.st_size, info.st_mtime_ns, info.st_ino)
        assert b"".join(b for _, b in blocks) == data
        assert [h for h, _ in blocks] == [b.hash for b in chunk_bytes(data)]
        assert first.tree[path].content_hash == content_hash(h for h, _ in blocks)

    monkeypatch.setattr(scanner, "KEEP_BYTES_BUDGET", 8200)  # room for f0 (now 7 bytes) and f1 only
    (tmp_path / "d" / "f0.txt").write_bytes(b"changed")
    os.utime(tmp_path / "d" / "f0.txt", (old + 1, old + 1))
    for found in (
        scan(tmp_path, {}, _name),
        rescan(tmp_path, first, [str(tmp_path / "d" / "f0.txt")], {}, _name),
    ):
        assert len(found.data) == 2 and found.data_bytes <= 8200
        for path, (_stat, blocks) in found.data.items():
            assert b"".join(b for _, b in blocks) == (tmp_path / path.lstrip("/")).read_bytes()


def test_a_fresh_file_is_complete_once_no_one_has_it_open_for_writing(tmp_path: Path) -> None:
    f = tmp_path / "new.txt"
    before = signal.getsignal(signal.SIGIO)
    try:
        with open(f, "wb") as writer:
            writer.write(b"half")
            writer.flush()
            now = time.time()
            mtime = f.stat().st_mtime_ns
            assert scanner.settle_left(f, mtime, now) > 0  # writer checks off: the settle time says
            scanner.enable_writer_checks()
            assert scanner.settle_left(f, mtime, now) > 0  # still open for writing
            assert "/new.txt" in scan(tmp_path, {}, _name).unstable
        assert scanner.settle_left(f, mtime, now) == 0  # closed: complete, however recent
        assert scan(tmp_path, {}, _name).tree["/new.txt"].kind == "file"
        with open(f, "rb"):  # a reader is no writer
            assert scanner.settle_left(f, mtime, now) == 0
    finally:
        signal.signal(signal.SIGIO, before)


def test_an_nfd_twin_is_renamed_beside_it_onto_a_free_name(tmp_path: Path) -> None:
    """Found by the simulation (tests/sim, seed 596): a second NFD twin renamed in the
    same second took the first one's conflicted name, replacing that file; and in a
    subfolder the name was glued to the folder's ("/A/Ccafé ...")."""
    folder = tmp_path / "A"
    folder.mkdir()
    nfc, nfd = "caf\u00e9.md", "cafe\u0301.md"
    (folder / nfc).write_bytes(b"the NFC one")
    (folder / "caf\u00e9.md (conflicted)").write_bytes(b"an earlier twin, renamed before")
    (folder / nfd).write_bytes(b"the NFD twin")
    found = scan(tmp_path, {}, _name)
    assert (folder / "caf\u00e9.md (conflicted)").read_bytes() == b"an earlier twin, renamed before"
    second = "caf\u00e9 2.md (conflicted)"  # (the numbering goes before what looks like an extension)
    assert sorted(os.listdir(folder)) == sorted([nfc, "caf\u00e9.md (conflicted)", second])
    assert (folder / second).read_bytes() == b"the NFD twin"
    assert found.renamed == [("/A/" + nfd, "/A/" + second)]
