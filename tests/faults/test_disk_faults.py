"""The client's disk full, then read-only, on a real small filesystem (a tmpfs
mounted for the test): the files already there are untouched, nothing partial
appears at a final path, ``ferry status`` says what is wrong, and sync
completes once space returns or the disk is writable again."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.crash import Oracle
from tests.support.servers import Device, FerryServer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def _setup(make_server: Callable[..., FerryServer], tmp_path: Path) -> tuple[FerryServer, Device]:
    server = make_server("file")
    assert server.admin("user", "add", "alice", "--password-stdin", stdin="alice-pw\n").returncode == 0
    return server, Device(tmp_path / "alice-home", server).login("alice", "alice-pw")


def _status(device: Device) -> str:
    return device.run("status").stdout


def test_disk_full_then_space_returns(
    make_server: Callable[..., FerryServer], small_disk: Path, tmp_path: Path
) -> None:
    server, alice = _setup(make_server, tmp_path)
    rng = random.Random(3)
    a = tmp_path / "a"
    a.mkdir()
    oracle = Oracle(a, rng)
    original = oracle.write("/keep.txt", 10_000)
    alice.run("sync", str(a), "--once", check=True)
    laptop = Device(tmp_path / "laptop-home", server).login("alice", "alice-pw", "laptop")
    b = small_disk / "sync"
    laptop.run("sync", str(b), "--once", check=True)
    assert (b / "keep.txt").read_bytes() == original

    oracle.write("/keep.txt", 6_000_000)  # a new version bigger than the disk
    oracle.write("/other.bin", 3_000_000)
    alice.run("sync", str(a), "--once", check=True)
    r = laptop.run("sync", str(b), "--once")
    assert r.returncode == 1
    assert "is full" in r.stderr and "free some space" in r.stderr, r.stderr
    assert (b / "keep.txt").read_bytes() == original  # untouched
    assert oracle.disk_problems(b) == []  # nothing partial at a final path
    assert list((b / ".ferry-staging").iterdir()) == []  # no staged leftovers holding the space
    status = _status(laptop)
    assert "paused" in status and "not downloaded: the disk is full" in status and "/keep.txt" in status, (
        status
    )

    _remount(small_disk, "size=32m")  # space returns
    laptop.run("sync", str(b), "--once", check=True)
    assert oracle.converged(b) == []
    assert "up to date" in _status(laptop)


def test_read_only_disk_then_writable(
    make_server: Callable[..., FerryServer], small_disk: Path, tmp_path: Path
) -> None:
    server, alice = _setup(make_server, tmp_path)
    rng = random.Random(4)
    a = tmp_path / "a"
    a.mkdir()
    oracle = Oracle(a, rng)
    original = oracle.write("/keep.txt", 10_000)
    alice.run("sync", str(a), "--once", check=True)
    laptop = Device(tmp_path / "laptop-home", server).login("alice", "alice-pw", "laptop")
    b = small_disk / "sync"
    laptop.run("sync", str(b), "--once", check=True)

    oracle.write("/keep.txt", 20_000)
    oracle.write("/new.bin", 50_000)
    alice.run("sync", str(a), "--once", check=True)
    _remount(small_disk, "ro")
    r = laptop.run("sync", str(b), "--once")
    assert r.returncode == 1
    assert "read-only file system; nothing was changed" in r.stderr, r.stderr
    assert (b / "keep.txt").read_bytes() == original
    assert oracle.disk_problems(b) == []
    assert "read-only" in _status(laptop).lower(), r.stderr + _status(laptop)
    # nothing on the server was touched by the device that could not write
    assert alice.run("sync", str(a), "--once").returncode == 0 and oracle.converged(a) == []

    _remount(small_disk, "rw")
    laptop.run("sync", str(b), "--once", check=True)
    assert oracle.converged(b) == []


def test_completely_full_disk_holding_the_state_too(
    make_server: Callable[..., FerryServer], small_disk: Path, tmp_path: Path
) -> None:
    """Found by this test: the sync state (SQLite) on a disk with no byte left
    failed with a traceback (sqlite3.OperationalError: disk I/O error)."""
    server, alice = _setup(make_server, tmp_path)
    rng = random.Random(5)
    a = tmp_path / "a"
    a.mkdir()
    oracle = Oracle(a, rng)
    original = oracle.write("/keep.txt", 1_000)
    alice.run("sync", str(a), "--once", check=True)
    laptop = Device(small_disk / "home", server).login("alice", "alice-pw", "laptop")
    b = small_disk / "sync"
    laptop.run("sync", str(b), "--once", check=True)
    filler = small_disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:  # another program takes every last byte
            f.write(bytes(65536))
    for i in range(5):
        oracle.write(f"/n{i}.txt", 100)
    alice.run("sync", str(a), "--once", check=True)

    r = laptop.run("sync", str(b), "--once")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "is its disk full or read-only?" in r.stderr, r.stderr
    assert (b / "keep.txt").read_bytes() == original
    assert oracle.disk_problems(b) == []

    filler.unlink()  # space returns
    laptop.run("sync", str(b), "--once", check=True)
    assert oracle.converged(b) == []
