"""Incremental scanning (live mode): updating the last scan from the watcher's
dirty paths must give exactly what a full scan of the same disk gives."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import time
import unicodedata
from pathlib import Path

import pytest

from client.scanner import Scan, _children_index, rescan, scan
from tests.e2e import test_sync
from tests.e2e.test_sync import tree, wait_for

two_clients = test_sync.clients  # test_sync's `clients` fixture, under this name here
PAST = time.time() - 60
_names = itertools.count()


def conflict_name(path: str) -> str:
    return f"{path} (twin {next(_names)})"


def settle(path: Path) -> None:
    os.utime(path, (PAST, PAST), follow_symlinks=False)


def facts(s: Scan) -> tuple[object, ...]:
    return s.tree, s.observed, set(s.skipped), s.unstable


class Disk:
    """A random tree, and random changes to it that report the paths touched as a watcher would."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.dirty: set[str] = set()

    def files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()]

    def dirs(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_dir() and not p.is_symlink()]

    def name(self) -> str:
        return self.rng.choice(["a", "b", "notes", "café", "x.tmp", "lib", "ä", "Photo"]) + str(
            self.rng.randrange(6)
        )

    def touched(self, path: Path) -> None:
        self.dirty.add(str(path))

    def create(self) -> None:
        folder = self.rng.choice([self.root, *self.dirs()])
        name = self.name()
        if self.rng.random() < 0.15:
            name = unicodedata.normalize("NFD", name)  # a decomposed twin (or a new NFD name)
        path = folder / (name + ".txt")
        if path.exists():
            return
        path.write_bytes(self.rng.randbytes(self.rng.randrange(0, 300)))
        settle(path)
        self.touched(path)

    def modify(self) -> None:
        if files := self.files():
            path = self.rng.choice(files)
            path.write_bytes(path.read_bytes() + b"more")
            settle(path)
            self.touched(path)

    def delete(self) -> None:
        if files := self.files():
            path = self.rng.choice(files)
            path.unlink()
            self.touched(path)

    def rename(self) -> None:
        entries = [p for p in self.root.rglob("*") if p.name != ".ferryignore"]
        if not entries:
            return
        src = self.rng.choice(entries)
        folder = self.rng.choice([self.root, *(d for d in self.dirs() if src not in d.parents and d != src)])
        dst = folder / (self.name() + src.suffix)
        if dst.exists():
            return
        os.rename(src, dst)
        self.touched(src)
        self.touched(dst)

    def mkdir(self) -> None:
        folder = self.rng.choice([self.root, *self.dirs()])
        path = folder / self.name()
        if not path.exists():
            path.mkdir()
            self.touched(path)
            if self.rng.random() < 0.5:  # a folder that arrives with contents (moved in, extracted)
                (path / "inner").mkdir()
                (path / "inner" / "f.bin").write_bytes(b"inner")
                settle(path / "inner" / "f.bin")

    def rmdir(self) -> None:
        if dirs := self.dirs():
            path = self.rng.choice(dirs)
            shutil.rmtree(path)
            self.touched(path)

    def symlink(self) -> None:
        folder = self.rng.choice([self.root, *self.dirs()])
        path = folder / (self.name() + ".lnk")
        if not path.exists() and not path.is_symlink():
            path.symlink_to("elsewhere")
            self.touched(path)

    def change(self) -> None:
        op = self.rng.choice([self.create] * 3 + [self.modify] * 2 + [self.delete, self.rename, self.rename,
                                                                          self.mkdir, self.rmdir, self.symlink])  # fmt: skip
        op()


@pytest.mark.parametrize("seed", range(8))
def test_rescan_matches_a_full_scan(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "root"
    root.mkdir()
    (root / ".ferryignore").write_text("*.log\nbuild/\n")
    settle(root / ".ferryignore")
    disk = Disk(root, rng)
    for _ in range(10):
        disk.mkdir()
    for _ in range(40):
        disk.create()
    (root / "build").mkdir()
    for ignored in (root / "build" / "out.bin", root / "keep.log"):
        ignored.write_bytes(b"ignored")
        settle(ignored)  # else, once .ferryignore is deleted, "still being written" depends on the clock
    before = scan(root, {}, conflict_name)
    for _ in range(6):
        disk.dirty.clear()
        for _ in range(rng.randrange(1, 12)):
            disk.change()
        updated = rescan(root, before, sorted(disk.dirty), before.observed, conflict_name)
        full = scan(root, updated.observed, conflict_name)  # after rescan: NFD twins already renamed
        assert not full.renamed
        assert facts(updated) == facts(full)
        if updated.children is not None:  # carried from rescan to rescan, still exact
            assert {f: paths for f, paths in updated.children.items() if paths} == _children_index(updated)
        before = updated


def test_rescan_rechecks_files_still_being_written_without_new_events(tmp_path: Path) -> None:
    with open(tmp_path / "new.txt", "wb") as writer:  # still being written
        writer.write(b"half")
        writer.flush()
        first = scan(tmp_path, {}, conflict_name)
    assert first.unstable == {"/new.txt"}
    settle(tmp_path / "new.txt")
    later = rescan(tmp_path, first, [], first.observed, conflict_name)
    assert "/new.txt" in later.tree and not later.unstable and not later.skipped


def test_a_changed_ignore_file_or_a_foreign_path_means_a_full_scan(tmp_path: Path) -> None:
    for name in ("a.txt", "b.log"):
        (tmp_path / name).write_bytes(b"x")
        settle(tmp_path / name)
    first = scan(tmp_path, {}, conflict_name)
    assert set(first.tree) == {"/a.txt", "/b.log"}
    (tmp_path / ".ferryignore").write_text("*.log\n")
    settle(tmp_path / ".ferryignore")
    later = rescan(tmp_path, first, [str(tmp_path / ".ferryignore")], first.observed, conflict_name)
    assert set(later.tree) == {"/a.txt", "/.ferryignore"}
    assert facts(later) == facts(scan(tmp_path, later.observed, conflict_name))
    (tmp_path / "c.txt").write_bytes(b"x")
    settle(tmp_path / "c.txt")
    elsewhere = rescan(tmp_path, later, ["/somewhere/else"], later.observed, conflict_name)
    assert "/c.txt" in elsewhere.tree


def test_live_sync_with_incremental_scans_converges(two_clients) -> None:
    a, b = two_clients(2)
    a.folder.mkdir()
    b.folder.mkdir()
    procs = [c.device.popen("sync", str(c.folder)) for c in (a, b)]
    try:
        for d in range(10):
            for i in range(30):
                a.write(f"dir{d}/file{i}.txt", f"{d}/{i}".encode())
        wait_for(lambda: tree(b.folder) == tree(a.folder), timeout=60)
        os.rename(a.folder / "dir3", a.folder / "renamed3")
        a.write("dir5/file7.txt", b"edited on a")
        (b.folder / "dir7" / "file1.txt").unlink()
        wait_for(
            lambda: (
                (b.folder / "renamed3").exists()
                and not (a.folder / "dir7" / "file1.txt").exists()
                and (b.folder / "dir5" / "file7.txt").read_bytes() == b"edited on a"
                and tree(a.folder) == tree(b.folder)
            ),
            timeout=60,
        )
        assert not (b.folder / "dir3").exists() and len(tree(b.folder)) == 10 + 300 - 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
