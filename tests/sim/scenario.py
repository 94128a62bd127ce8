"""What a seed decides: the set-up (clients, their disks, the network's faults)
and the operations, drawn before the run from ``random.Random(seed)``.

Operations name paths from a small pool, so devices collide (``x.txt`` and
``X.txt``, ``café.md`` in NFC and NFD, names used as files and as folders); one
that does not apply when its turn comes does nothing, so any subset of a
failing list is again a valid run (what shrinking needs). A *scenario* fixes
how a seed is drawn: a regression seed replays the scenario that found it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tests.sim.network import Faults

FOLDERS = ["", "/A", "/B", "/A/C"]
NAMES = ["x.txt", "X.txt", "y", "caf\u00e9.md", "cafe\u0301.md", "A", "C"]  # case and NFC/NFD twins
USER_OPS = ["write", "write", "save", "append", "delete", "rename", "rename", "mkdir", "chmodx"]
FAULT_OPS = ["lock", "unlock", "full", "unfull", "offline", "online", "crash"]
# scenario 2 adds a folder another user shares (mounted at /Team), share changes, and that owner's edits
SHARE_OPS = ["share", "share", "unshare", "role", "owner_write", "owner_write", "owner_delete"]
SHARED_FOLDERS = ["", "/A"]
SCENARIO = 2  # what CI runs; a regression seed replays the scenario that found it


@dataclass(frozen=True)
class Op:
    wait: float  # virtual seconds before it
    kind: str
    client: int
    path: str = ""
    to: str = ""

    def __str__(self) -> str:
        extra = f" {self.path!a}" if self.path else ""
        extra += f" -> {self.to!a}" if self.to else ""
        return f"+{self.wait:.2f}s c{self.client} {self.kind}{extra}"


def _path(rng: random.Random, folders: list[str]) -> str:
    return rng.choice(folders) + "/" + rng.choice(NAMES)


def make_ops(rng: random.Random, clients: int, count: int, scenario: int) -> list[Op]:
    folders = [*FOLDERS, "/Team", "/Team/A"] if scenario >= 2 else FOLDERS
    ops = []
    for _ in range(count):
        c = rng.randrange(clients)
        roll = rng.random()
        wait = rng.choice([0.0, 0.0, 0.01, 0.1, 0.5, 2.0])
        if roll < 0.3:
            ops.append(Op(wait, "sync", c))
        elif roll < 0.9:
            kind = rng.choice(USER_OPS)
            ops.append(
                Op(wait, kind, c, _path(rng, folders), _path(rng, folders) if kind == "rename" else "")
            )
        elif scenario >= 2 and roll < 0.95:
            kind = rng.choice(SHARE_OPS)
            ops.append(Op(wait, kind, c, _path(rng, SHARED_FOLDERS) if kind.startswith("owner") else ""))
        else:
            kind = rng.choice(FAULT_OPS)
            ops.append(Op(wait, kind, c, _path(rng, folders) if kind in ("lock", "unlock") else ""))
    return ops


@dataclass
class Setup:
    """What a seed decides besides the operations."""

    clients: int
    modes: list[str]
    faults: Faults

    @classmethod
    def draw(cls, rng: random.Random) -> Setup:
        clients = rng.choice([2, 3, 3])
        modes = [rng.choice(["posix", "posix", "nocase", "nfd"]) for _ in range(clients)]
        return cls(clients, modes, Faults.random(rng))


def draw(seed: int, scenario: int) -> tuple[Setup, list[Op]]:
    rng = random.Random(seed)
    setup = Setup.draw(rng)
    return setup, make_ops(rng, setup.clients, rng.randrange(10, 40), scenario)
