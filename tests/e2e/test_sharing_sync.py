"""Shared folders in synced folders: three users, several devices, `ferry sync`
processes against one real server."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_sync import Client, tree, wait_for
from tests.support.servers import Device, FerryServer


def device(server: FerryServer, tmp_path: Path, user: str, name: str) -> Client:
    dev = Device(tmp_path / f"{user}-{name}", server).login(user, f"{user}-pw", device=name)
    return Client(dev, tmp_path / f"Ferry-{user}-{name}")


def invitation(dev: Device) -> int:
    r = dev.run("invitations", "--json", check=True)
    pending = json.loads(r.stdout)
    assert len(pending) == 1, pending
    return int(pending[0]["invitation"])


@pytest.fixture
def team(make_server: Callable[..., FerryServer], tmp_path: Path) -> Callable[..., Client]:
    server = make_server("file")
    for user in ("alice", "bob", "carol"):
        assert server.admin("user", "add", user, "--password-stdin", stdin=f"{user}-pw\n").returncode == 0
    return lambda user, name: device(server, tmp_path, user, name)


def sub(c: Client, folder: str) -> dict:
    prefix = folder + "/"
    return {k[len(prefix) :]: v for k, v in tree(c.folder).items() if k.startswith(prefix)}


def test_members_devices_sync_a_shared_folder(team) -> None:
    laptop, desktop = team("alice", "laptop"), team("alice", "desktop")
    bob = team("bob", "laptop")
    laptop.write("Team/plan.txt", b"v1")
    laptop.write("Team/docs/spec.md", b"# spec")
    laptop.write("private.txt", b"alice only")
    laptop.sync()
    desktop.sync()
    before = tree(laptop.folder)

    laptop.device.run("share", "/Team", "--with", "bob", "--role", "editor", check=True)
    laptop.sync()
    desktop.sync()
    # turning /Team into a shared folder changes nothing on alice's disks
    assert tree(laptop.folder) == before and tree(desktop.folder) == before

    bob.device.run("accept", str(invitation(bob.device)), "--as", "/Work/Team", check=True)
    bob.sync()
    assert sub(bob, "Work/Team") == sub(laptop, "Team")
    assert not (bob.folder / "private.txt").exists()

    # an edit by a member fans out to every device of every member
    bob.write("Work/Team/plan.txt", b"v2 by bob")
    bob.write("Work/Team/new.txt", b"new from bob")
    bob.sync()
    laptop.sync()
    desktop.sync()
    assert (desktop.folder / "Team" / "plan.txt").read_bytes() == b"v2 by bob"
    assert sub(laptop, "Team") == sub(bob, "Work/Team") == sub(desktop, "Team")

    # concurrent edits by two members converge; both edits are kept
    laptop.write("Team/plan.txt", b"alice's edit", age=3)
    bob.write("Work/Team/plan.txt", b"bob's edit", age=2)
    laptop.sync()
    bob.sync()
    laptop.sync()
    desktop.sync()
    assert sub(laptop, "Team") == sub(bob, "Work/Team") == sub(desktop, "Team")
    contents = {k: v[1] for k, v in sub(laptop, "Team").items()}
    assert contents["plan.txt"] == b"alice's edit"
    assert [v for k, v in contents.items() if "conflicted copy" in k] == [b"bob's edit"]

    # moving a file into and out of the shared folder (copy + delete across namespaces)
    os.rename(laptop.folder / "private.txt", laptop.folder / "Team" / "moved-in.txt")
    os.rename(bob.folder / "Work" / "Team" / "new.txt", bob.folder / "mine.txt")
    laptop.sync()
    bob.sync()
    laptop.sync()
    desktop.sync()
    assert (bob.folder / "Work" / "Team" / "moved-in.txt").read_bytes() == b"alice only"
    assert not (desktop.folder / "private.txt").exists()
    assert not (desktop.folder / "Team" / "new.txt").exists()
    assert bob.device.run("get", "/mine.txt", str(bob.folder.parent / "check"), check=True)
    assert sub(laptop, "Team") == sub(bob, "Work/Team") == sub(desktop, "Team")


def test_viewer_edits_stay_local_and_are_reported(team) -> None:
    alice, carol = team("alice", "laptop"), team("carol", "laptop")
    alice.write("Team/plan.txt", b"the plan")
    alice.sync()
    alice.device.run("share", "/Team", "--with", "carol", "--role", "viewer", check=True)
    carol.device.run("accept", str(invitation(carol.device)), check=True)
    carol.sync()
    assert (carol.folder / "Team" / "plan.txt").read_bytes() == b"the plan"

    carol.write("Team/plan.txt", b"carol's edit")
    carol.write("Team/extra.txt", b"carol's file")
    r = carol.sync()
    assert "kept here only" in r.stdout
    status = carol.status()
    assert set(status["not_uploaded"]) == {"/Team/plan.txt", "/Team/extra.txt"}
    assert "viewer" in status["not_uploaded"]["/Team/plan.txt"]
    assert "kept here" in carol.device.run("status", check=True).stdout
    # nothing reached the server, and carol's copy was not overwritten
    alice.sync()
    assert (alice.folder / "Team" / "plan.txt").read_bytes() == b"the plan"
    assert not (alice.folder / "Team" / "extra.txt").exists()
    assert (carol.folder / "Team" / "plan.txt").read_bytes() == b"carol's edit"
    # the owner's later edits still arrive; carol's edit is kept beside them
    alice.write("Team/other.txt", b"more")
    alice.sync()
    carol.sync()
    assert (carol.folder / "Team" / "other.txt").read_bytes() == b"more"


def test_revoke_while_a_member_is_syncing(team) -> None:
    alice, bob = team("alice", "laptop"), team("bob", "laptop")
    alice.write("Team/a.txt", b"a")
    alice.sync()
    alice.device.run("share", "/Team", "--with", "bob", check=True)
    bob.device.run("accept", str(invitation(bob.device)), check=True)
    bob.folder.mkdir()
    proc = bob.device.popen("sync", str(bob.folder))
    try:
        wait_for(lambda: (bob.folder / "Team" / "a.txt").exists())
        alice.write("Team/b.txt", b"b")
        alice.sync()
        wait_for(lambda: (bob.folder / "Team" / "b.txt").exists())
        alice.device.run("unshare", "/Team", "--user", "bob", check=True)
        # his copies stay, as his own files now
        wait_for(lambda: bob.device.run("ls", "/Team/b.txt").returncode == 0, timeout=60)
        alice.write("Team/after.txt", b"not for bob")
        alice.sync()
        bob.write("Team/b.txt", b"bob's own now", age=0)
        wait_for(lambda: bob.device.run("get", "/Team/b.txt", str(bob.folder.parent / "b"),).returncode == 0
                 and (bob.folder.parent / "b").read_bytes() == b"bob's own now")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)
    assert not (bob.folder / "Team" / "after.txt").exists()
    assert (bob.folder / "Team" / "a.txt").read_bytes() == b"a"
    alice.sync()
    assert (alice.folder / "Team" / "b.txt").read_bytes() == b"b"


def test_quota_refusal_keeps_the_file_and_says_so(team) -> None:
    alice = team("alice", "laptop")
    server = alice.device.server
    assert server.admin("quota", "alice", "100KB").returncode == 0
    alice.write("small.txt", b"s" * 10_000)
    alice.sync()
    alice.write("big.bin", b"b" * 200_000)
    r = alice.sync(ok=False)
    assert r.returncode == 1 and "quota" in r.stderr, r.stderr
    assert (alice.folder / "big.bin").read_bytes() == b"b" * 200_000
    assert "quota" in alice.status()["not_uploaded"]["/big.bin"]
    assert "quota" in alice.device.run("status", check=True).stdout
    assert server.admin("quota", "alice", "1MB").returncode == 0
    # held back for a minute after a refusal; a new run retries at once
    alice.sync()
    assert alice.device.run("ls", "/big.bin").returncode == 0
