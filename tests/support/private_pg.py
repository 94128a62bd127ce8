"""A PostgreSQL cluster of a test's own, to restart and crash at will (the
shared one at 127.0.0.1:5432 serves other tests and must never go down).

``PrivatePostgres(folder).start()`` runs ``initdb`` (trust auth) and
``pg_ctl start`` on a free port; ``crash()`` stops it with ``-m immediate``
(no shutdown checkpoint: on start it recovers from its WAL, as after a power
cut of the database alone); ``restart()`` is ``crash()`` then ``start()``. As
root, the cluster runs as the ``postgres`` system user (PostgreSQL refuses to
run as root). ``available()`` says why it cannot run here, if it cannot.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.support.moto_server import free_port


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14"):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if candidate.exists():
            return str(candidate)
    return None


def available() -> str | None:
    """None if a private cluster can run here, else why not."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "initdb/pg_ctl not found (install the PostgreSQL server package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' system user to run PostgreSQL as"
    return None


class PrivatePostgres:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}")

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                user = pwd.getpwnam("postgres")
                os.chown(self.folder, user.pw_uid, user.pw_gid)
            initdb = _bin("initdb")
            assert initdb is not None
            self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        return self

    def crash(self) -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.crash()
        self.start()

    def stop(self) -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        if (self.data / "postmaster.pid").exists():
            self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
