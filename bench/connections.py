"""Idle connections on one server process: memory, and one change's fan-out.

    .venv/bin/python bench/connections.py [--connections 10000] [--workers 4] [--devices 10] [--idle 70]

Starts one `ferry server` (real PostgreSQL: 127.0.0.1:5432 or
$FERRY_TEST_DATABASE_URL, else embedded; connection bounds lifted), logs one
user in on ``--devices`` devices, then ``--workers`` client processes open
``--connections`` authenticated WebSocket sessions between them (raw
`websockets` clients: upgrade with the token, hello/welcome, then idle but
for the protocol ping every 20 s, as `ferry sync` does). With every session
open and idle, it reads the server's RSS; then another session commits a
file and each worker timestamps the `changed` push on each of its sessions.

Prints the server's RSS (before, with every session open, per session), its
CPU while idle, and the fan-out: time from sending the commit to its reply,
and to the first, median, p99 and last `changed` received (wall clock,
shared by the processes), and the server CPU seconds the commit and its
fan-out took (what a quiet machine would need at least). Aims (issue 8): under 1 GiB RSS for 10,000 sessions, every push
within 2 s. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import websockets  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from protocol import framing  # noqa: E402
from protocol import messages as m  # noqa: E402
from tests.support.servers import FerryServer, admin_url, create_database, drop_database  # noqa: E402

PING_EVERY = 20.0
OPENING_AT_ONCE = 8  # per worker: upgrades in flight (the server drops one not done in 10 s)


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- worker process: holds its share of the sessions ------------------------------------


async def open_session(url: str, token: str) -> Any:
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                       ping_interval=None, open_timeout=120, max_size=None, proxy=None)  # fmt: skip
    await ws.send(framing.encode(m.Hello([1], "bench/connections")))
    welcome = framing.decode(await asyncio.wait_for(ws.recv(), 120))
    assert isinstance(welcome, m.Welcome), welcome
    return ws


async def hold(ws: Any, arrivals: list[float], t: int) -> None:
    """Ping now and then; note when the first `changed` arrives."""
    next_ping = time.monotonic() + PING_EVERY * (0.5 + (t % 100) / 200)  # spread the pings
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), max(0.0, next_ping - time.monotonic()))
        except TimeoutError:
            await ws.send(framing.encode(m.Ping(1)))
            next_ping = time.monotonic() + PING_EVERY
            continue
        if isinstance(frame, str) and '"changed"' in frame:
            arrivals.append(time.time())
            return


async def worker(url: str, tokens: list[str], count: int, offset: int) -> None:
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    arrivals: list[float] = []
    holders = []
    retries: list[int] = []

    async def one(i: int) -> Any:
        async with gate:
            for attempt in range(10):  # a loaded machine may be slow to upgrade a burst
                try:
                    ws = await open_session(url, tokens[(offset + i) % len(tokens)])
                    break
                except (OSError, websockets.exceptions.InvalidHandshake, TimeoutError):
                    if attempt == 9:
                        raise
                    retries.append(i)
                    await asyncio.sleep(1)
        holders.append(asyncio.create_task(hold(ws, arrivals, i)))  # pinging from the start
        return ws

    sessions = await asyncio.gather(*(one(i) for i in range(count)))
    print(f"READY {len(retries)}", flush=True)
    await asyncio.gather(*holders)
    print("ARRIVALS " + json.dumps(arrivals), flush=True)
    sys.stdin.readline()  # hold the sessions until the parent has measured
    for ws in sessions:
        ws.transport.abort()


# --- parent --------------------------------------------------------------------------------


def start_server(tmp: Path) -> tuple[FerryServer, str, str]:
    admin = admin_url(tmp)
    db = create_database(admin)
    server = FerryServer(tmp / "server", db, extra=["--max-connections-per-user", "0",
                                                    "--max-connections-per-ip", "0"])  # fmt: skip
    server.start()
    return server, admin, db


def login_devices(server: FerryServer, n: int) -> list[str]:
    import httpx

    r = server.admin("user", "add", "bench", "--password-stdin", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    tokens = []
    for i in range(n):
        body = {"user": "bench", "password": "pw", "device": f"dev{i}"}
        tokens.append(httpx.post(server.url + "/api/v1/login", json=body, trust_env=False).json()["token"])
    return tokens


async def commit_one(url: str, token: str) -> tuple[float, float]:
    """Upload and commit a file; wall times of sending the commit and of its reply."""
    for attempt in range(10):
        try:
            ws = await open_session(url, token)
            break
        except (OSError, websockets.exceptions.InvalidHandshake, TimeoutError):
            if attempt == 9:
                raise
            print("the committing session's upgrade failed; retrying", file=sys.stderr)
    data = os.urandom(1000)
    h = hashlib.sha256(data).digest()
    await ws.send(framing.encode_block(framing.KIND_PUT, 1, h, data))
    while not isinstance(framing.decode(await ws.recv()), m.Ok):
        pass
    sent = time.time()
    await ws.send(framing.encode(m.Commit(2, "bench-key", "/pushed.txt", None, 1000, 0, [h])))
    while not isinstance(framing.decode(await ws.recv()), m.Committed):
        pass
    replied = time.time()
    await ws.close()
    return sent, replied


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument(
        "--idle",
        type=float,
        default=70.0,
        help="seconds idle before the commit (the server freezes old objects out of the GC each minute); its CPU is measured meanwhile",
    )
    p.add_argument("--worker", nargs=3, metavar=("URL", "COUNT", "OFFSET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_open_files_limit()
    if args.worker:
        url, count, offset = args.worker
        tokens = json.loads(sys.stdin.readline())
        asyncio.run(worker(url, tokens, int(count), int(offset)))
        return 0

    with tempfile.TemporaryDirectory(prefix="ferry-bench-conn-") as tmp:
        server, admin, db = start_server(Path(tmp))
        try:
            return run(args, server)
        except Exception:
            print("server log (tail):\n" + "\n".join(server.log().splitlines()[-30:]), file=sys.stderr)
            raise
        finally:
            server.stop()
            drop_database(admin, db)


def run(args: argparse.Namespace, server: FerryServer) -> int:
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    url = server.url.replace("http://", "ws://") + "/ws"
    tokens = login_devices(server, args.devices)
    rss_before = proc.memory_info().rss
    t0 = time.monotonic()
    shares = [
        args.connections // args.workers + (i < args.connections % args.workers) for i in range(args.workers)
    ]
    workers = []
    for i, n in enumerate(shares):
        w = subprocess.Popen([sys.executable, __file__, "--worker", url, str(n), str(sum(shares[:i]))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert w.stdin is not None
        w.stdin.write(json.dumps(tokens) + "\n")
        w.stdin.flush()
        workers.append(w)
    retried = 0
    for w in workers:
        assert w.stdout is not None
        ready = w.stdout.readline().split()
        assert ready[:1] == ["READY"], "a worker failed to connect"
        retried += int(ready[1])
    opened = time.monotonic() - t0
    time.sleep(5)  # let the connection burst settle
    cpu = proc.cpu_times()
    time.sleep(args.idle)  # idle but for the pings: what does holding the sessions cost?
    idle_cpu = sum(proc.cpu_times()[:2]) - sum(cpu[:2])
    rss_open = proc.memory_info().rss
    sessions = sum(1 for c in proc.net_connections(kind="tcp") if c.laddr.port == server.port and c.raddr)
    cpu_before_push = sum(proc.cpu_times()[:2])
    sent, replied = asyncio.run(commit_one(url, tokens[0]))
    arrivals: list[float] = []
    for w in workers:
        assert w.stdout is not None
        line = w.stdout.readline()
        assert line.startswith("ARRIVALS "), line
        arrivals += json.loads(line[len("ARRIVALS ") :])
    push_cpu = sum(proc.cpu_times()[:2]) - cpu_before_push  # the commit, its session and the fan-out
    rss_after = proc.memory_info().rss
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("\n")
        w.stdin.flush()
        w.wait(60)
    delays = sorted(a - sent for a in arrivals)
    result = {
        "connections": args.connections,
        "server_sockets": sessions,
        "opened_in_s": round(opened, 1),
        "upgrades_retried": retried,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_open_mib": round(rss_open / 2**20, 1),
        "rss_after_push_mib": round(rss_after / 2**20, 1),
        "kib_per_session": round((rss_open - rss_before) / 1024 / args.connections, 1),
        "idle_server_cpu_percent": round(100 * idle_cpu / args.idle, 1),
        "commit_reply_s": round(replied - sent, 3),
        "pushes_received": len(delays),
        "push_first_s": round(delays[0], 3),
        "push_median_s": round(statistics.median(delays), 3),
        "push_p99_s": round(delays[int(len(delays) * 0.99) - 1], 3),
        "push_last_s": round(delays[-1], 3),
        "push_spread_s": round(delays[-1] - delays[0], 3),
        "push_server_cpu_s": round(push_cpu, 2),
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
    }
    for k, v in result.items():
        print(f"{k:>20}: {v}")
    print(json.dumps(result))
    ok = len(delays) == args.connections and rss_open < 2**30 and delays[-1] <= 2.0
    print("aims met" if ok else "aims NOT met (under 1 GiB RSS, every push within 2 s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
