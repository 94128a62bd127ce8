"""Sharing end to end through the `ferry` CLI: three users, several devices,
one real server (real PostgreSQL): shared folders, roles, links, quotas."""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.servers import Device, FerryServer


def as_json(r) -> object:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def users(server: FerryServer, tmp_path: Path, *names: str) -> list[Device]:
    devices = []
    for name in names:
        r = server.admin("user", "add", name, "--password-stdin", stdin=f"{name}-pw\n")
        assert r.returncode == 0, r.stderr
        devices.append(Device(tmp_path / f"{name}-laptop", server).login(name, f"{name}-pw"))
    return devices


def put(dev: Device, tmp_path: Path, remote: str, data: bytes) -> None:
    src = tmp_path / hashlib.sha256(remote.encode() + data).hexdigest()[:16]
    src.write_bytes(data)
    dev.run("put", str(src), remote, "-q", check=True)


def get(dev: Device, tmp_path: Path, remote: str) -> bytes:
    out = tmp_path / (
        "got-" + hashlib.sha256(remote.encode() + str(time.monotonic()).encode()).hexdigest()[:16]
    )
    dev.run("get", remote, str(out), "-q", check=True)
    return out.read_bytes()


def invitation(dev: Device) -> int:
    pending = as_json(dev.run("invitations", "--json"))
    assert isinstance(pending, list) and len(pending) == 1, pending
    return int(pending[0]["invitation"])


@pytest.fixture
def trio(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> tuple[FerryServer, Device, Device, Device]:
    server = make_server("file")
    alice, bob, carol = users(server, tmp_path, "alice", "bob", "carol")
    return server, alice, bob, carol


def test_share_accept_roles_revoke_leave(trio, tmp_path: Path) -> None:
    _server, alice, bob, carol = trio
    put(alice, tmp_path, "/Team/plan.txt", b"v1 by alice")
    put(alice, tmp_path, "/Team/docs/deck.pdf", b"%PDF deck")
    put(alice, tmp_path, "/private.txt", b"mine")

    alice.run("share", "/Team", "--with", "bob", "--role", "editor", check=True)
    # alice still sees /Team where it was, now a shared folder
    assert get(alice, tmp_path, "/Team/plan.txt") == b"v1 by alice"
    names = [e["path"] for e in as_json(alice.run("ls", "/", "--json"))]
    assert names == ["/Team", "/private.txt"]
    # bob sees nothing until he accepts
    assert bob.run("ls", "/Team").returncode == 1
    inv = invitation(bob)
    pending = as_json(bob.run("invitations", "--json"))[0]
    assert (pending["name"], pending["owner"], pending["role"]) == ("Team", "alice", "editor")
    bob.run("accept", str(inv), "--as", "/Work/Team", check=True)
    assert as_json(bob.run("invitations", "--json")) == []
    assert get(bob, tmp_path, "/Work/Team/docs/deck.pdf") == b"%PDF deck"
    assert [e["path"] for e in as_json(bob.run("ls", "/Work", "--json"))] == ["/Work/Team"]

    # an editor writes; the owner sees it
    put(bob, tmp_path, "/Work/Team/plan.txt", b"v2 by bob")
    assert get(alice, tmp_path, "/Team/plan.txt") == b"v2 by bob"
    history = as_json(alice.run("history", "/Team/plan.txt", "--json"))
    assert [v["path"] for v in history] == ["/Team/plan.txt", "/Team/plan.txt"]

    members = as_json(alice.run("members", "/Team", "--json"))
    assert [(x["user"], x["role"], x["pending"]) for x in members] == [
        ("alice", "owner", False),
        ("bob", "editor", False),
    ]
    alice.run("share", "/Team", "--with", "carol", "--role", "viewer", check=True)
    assert ("carol", "viewer", True) in [(x["user"], x["role"], x["pending"]) for x in as_json(
        bob.run("members", "/Work/Team", "--json"))]  # fmt: skip
    carol.run("accept", str(invitation(carol)), check=True)
    assert get(carol, tmp_path, "/Team/plan.txt") == b"v2 by bob"

    # a viewer cannot change anything; an editor cannot manage members
    f = tmp_path / "carol.txt"
    f.write_bytes(b"carol was here")
    r = carol.run("put", str(f), "/Team/carol.txt")
    assert r.returncode == 1 and "viewer" in r.stderr
    assert carol.run("rm", "/Team/plan.txt").returncode == 1
    r = bob.run("share", "/Work/Team", "--with", "carol", "--role", "editor")
    assert r.returncode == 1 and "owner" in r.stderr

    # role change: carol becomes an editor, then a viewer again
    alice.run("share", "/Team", "--with", "carol", "--role", "editor", check=True)
    carol.run("put", str(f), "/Team/carol.txt", check=True)
    alice.run("share", "/Team", "--with", "carol", "--role", "viewer", check=True)
    assert carol.run("rm", "/Team/carol.txt").returncode == 1

    # moving into and out of a shared folder: copy + delete across namespaces
    alice.run("mv", "/private.txt", "/Team/moved.txt", check=True)
    assert get(bob, tmp_path, "/Work/Team/moved.txt") == b"mine"
    assert alice.run("ls", "/private.txt").returncode == 1
    bob.run("mv", "/Work/Team/moved.txt", "/mine-now.txt", check=True)
    assert get(bob, tmp_path, "/mine-now.txt") == b"mine"
    assert alice.run("ls", "/Team/moved.txt").returncode == 1

    # revoke bob: he loses it at once; leave: carol drops it herself
    alice.run("unshare", "/Team", "--user", "bob", check=True)
    r = bob.run("ls", "/Work/Team")
    assert r.returncode == 1
    assert bob.run("get", "/Work/Team/plan.txt", str(tmp_path / "x")).returncode == 1
    carol.run("leave", "/Team", check=True)
    assert carol.run("ls", "/Team").returncode == 1
    assert [x["user"] for x in as_json(alice.run("members", "/Team", "--json"))] == ["alice"]
    r = alice.run("leave", "/Team")
    assert r.returncode == 1 and "own" in r.stderr


def test_share_refuses_what_it_cannot_do(trio, tmp_path: Path) -> None:
    _server, alice, bob, _carol = trio
    put(alice, tmp_path, "/file.txt", b"x")
    put(alice, tmp_path, "/A/B/c.txt", b"c")
    for args, why in [
        (("/file.txt", "--with", "bob"), "is a file"),
        (("/missing", "--with", "bob"), "no such folder"),
        (("/A", "--with", "nobody"), "no user named"),
        (("/A", "--with", "alice"), "yourself"),
        (("/", "--with", "bob"), "whole tree"),
    ]:
        r = alice.run("share", *args)
        assert r.returncode == 1 and why in r.stderr, (args, r.stderr)
    alice.run("share", "/A/B", "--with", "bob", check=True)
    r = alice.run("share", "/A", "--with", "bob")
    assert r.returncode == 1 and "contains the shared folder" in r.stderr
    r = alice.run("share", "/A/B/sub", "--with", "carol")
    assert r.returncode == 1 and "inside the shared folder" in r.stderr
    # bob already has a /B: the default mount point is taken
    put(bob, tmp_path, "/B/own.txt", b"bob's")
    r = bob.run("accept", str(invitation(bob)))
    assert r.returncode == 1 and "already exists" in r.stderr
    bob.run("accept", str(invitation(bob)), "--as", "/B2", check=True)
    assert get(bob, tmp_path, "/B2/c.txt") == b"c" and get(bob, tmp_path, "/B/own.txt") == b"bob's"
    assert bob.run("accept", "999999").returncode == 1


def test_links_file_range_folder_zip_expiry_revoke(trio, tmp_path: Path) -> None:
    server, alice, bob, _carol = trio
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 17)  # several blocks
    put(alice, tmp_path, "/Team/deck.pdf", data)
    put(alice, tmp_path, "/Team/notes/a.txt", b"alpha")
    put(alice, tmp_path, "/Team/notes/empty.txt", b"")
    alice.run("share", "/Team", "--with", "bob", check=True)

    made = as_json(alice.run("link", "create", "/Team/deck.pdf", "--json"))
    url = made["url"]
    token = url.rsplit("/", 1)[1]
    assert url.startswith(server.url + "/s/") and len(token) >= 32
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["accept-ranges"] == "bytes" and "attachment" in r.headers["content-disposition"]
    r = httpx.get(url, headers={"Range": "bytes=1048570-2097160"})
    assert r.status_code == 206 and r.content == data[1048570:2097161]
    assert r.headers["content-range"] == f"bytes 1048570-2097160/{len(data)}"
    r = httpx.get(url, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    assert httpx.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416

    folder = alice.run("link", "create", "/Team", check=True).stdout.strip()
    r = httpx.get(folder)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == [
            "Team/deck.pdf",
            "Team/notes/",
            "Team/notes/a.txt",
            "Team/notes/empty.txt",
        ]
        assert z.read("Team/deck.pdf") == data and z.read("Team/notes/a.txt") == b"alpha"
        assert z.read("Team/notes/empty.txt") == b""

    listed = as_json(alice.run("link", "list", "--json"))
    assert [x["path"] for x in listed] == ["/Team/deck.pdf", "/Team"]
    # only the owner makes links
    r = bob.run("accept", str(invitation(bob)))
    assert r.returncode == 0, r.stderr
    r = bob.run("link", "create", "/Team/deck.pdf")
    assert r.returncode == 1 and "owner" in r.stderr

    alice.run("link", "revoke", str(listed[0]["link"]), check=True)
    r = httpx.get(url)
    assert r.status_code == 404 and r.text == "not found"
    assert httpx.get(server.url + "/s/fl_" + "A" * 32).status_code == 404

    short = as_json(alice.run("link", "create", "/Team/notes/a.txt", "--expires", "1s", "--json"))
    time.sleep(1.5)
    r = httpx.get(short["url"])
    assert r.status_code == 404 and r.text == "not found"


def test_link_password_and_rate_limit(trio, tmp_path: Path) -> None:
    _server, alice, _bob, _carol = trio
    put(alice, tmp_path, "/secret.txt", b"the secret")
    url = alice.run(
        "link", "create", "/secret.txt", "--password-stdin", stdin="open sesame\n", check=True
    ).stdout.strip()
    r = httpx.get(url)
    assert r.status_code == 401 and "basic" in r.headers["www-authenticate"].lower()
    assert httpx.get(url, auth=("", "open sesame")).content == b"the secret"
    assert httpx.get(url, headers={"X-Ferry-Link-Password": "open sesame"}).content == b"the secret"
    for _ in range(5):
        assert httpx.get(url, auth=("", "guess")).status_code == 401
    # locked: even the right password waits for the window to end
    r = httpx.get(url, auth=("", "open sesame"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    listed = as_json(alice.run("link", "list", "--json"))
    assert listed[0]["password"] is True


def test_quota_refuses_a_commit_and_counts_shared_folders(trio, tmp_path: Path) -> None:
    server, alice, bob, _carol = trio
    r = server.admin("quota", "alice", "1MiB")
    assert r.returncode == 0, r.stderr
    assert as_json(alice.run("quota", "--json")) == {"used": 0, "quota": 1024 * 1024}
    put(alice, tmp_path, "/Team/a.bin", b"a" * 600_000)
    alice.run("share", "/Team", "--with", "bob", check=True)
    bob.run("accept", str(invitation(bob)), check=True)
    # bob's writes in alice's folder count against alice
    src = tmp_path / "b.bin"
    src.write_bytes(b"b" * 600_000)
    r = bob.run("put", str(src), "/Team/b.bin")
    assert r.returncode == 1 and "quota" in r.stderr, r.stderr
    assert as_json(bob.run("quota", "--json")) == {"used": 0, "quota": None}
    assert as_json(alice.run("quota", "--json"))["used"] == 600_000
    bob.run("put", str(src), "/b.bin", check=True)  # his own tree: no quota
    # freeing space always works, and then the write fits
    alice.run("rm", "/Team/a.bin", check=True)
    bob.run("put", str(src), "/Team/b.bin", check=True)
    assert as_json(alice.run("quota", "--json"))["used"] == 600_000
    assert "of 1.0 MiB used" in alice.run("quota", check=True).stdout
    assert server.admin("quota", "alice", "none").returncode == 0
    assert as_json(alice.run("quota", "--json"))["quota"] is None
