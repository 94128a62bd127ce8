"""Put and get of one big random file over loopback: MB/s and peak RSS of
the client and the server, beside this machine's single-core SHA-256 speed.

    .venv/bin/python bench/transfer.py [--size 1GiB] [--backend file|s3] [--work DIR]

Starts a real `ferry server` (fresh database on the PostgreSQL at
127.0.0.1:5432 or $FERRY_TEST_DATABASE_URL, else the embedded one) and drives
the real `ferry` CLI. Prints one JSON line of figures and a short table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.config import parse_size
from tests.support.moto_server import moto_server
from tests.support.servers import FERRY, Device, FerryServer, admin_url, create_database, drop_database

MB = 1e6


def sha256_speed() -> float:
    data = os.urandom(256 * 1024 * 1024)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / (time.perf_counter() - start) / MB


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 * 1024 * 1024))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


class PeakRSS:
    """Polls a process's RSS every 10 ms; ``peak`` is the highest seen (MB)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss / MB)
            except psutil.Error:
                return
            time.sleep(0.01)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(device: Device, server: FerryServer, *args: str) -> tuple[float, float, float, dict]:
    """Run one `ferry` command; returns (seconds, client peak MB, server peak MB, JSON output)."""
    env = {**os.environ, "FERRY_HOME": str(device.home)}
    server_rss = PeakRSS(server.proc.pid)  # type: ignore[union-attr]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*FERRY, *args, "--json", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    client_rss = PeakRSS(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"ferry {' '.join(args)} failed: {err.decode()}")
    return seconds, client_rss.stop(), server_rss.stop(), json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--backend", choices=["file", "s3"], default="file")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir under /tmp)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir=args.work))
    admin = admin_url(work)
    db = create_database(admin)
    moto = moto_server() if args.backend == "s3" else None
    endpoint = moto.__enter__() if moto else None
    server = FerryServer(work / "server", db, "s3://bench" if moto else None, endpoint).start()
    try:
        server.admin("user", "add", "bench", "--password-stdin", stdin="pw\n")
        device = Device(work / "home", server).login("bench", "pw")
        src, dst = work / "src.bin", work / "copy.bin"
        sha = sha256_speed()
        digest = make_file(src, args.size)
        # the source's pages are still cached; that is the common case for a file just written
        put_s, put_client, put_server, put = timed(device, server, "put", str(src), "/bench/big.bin")
        get_s, get_client, get_server, _ = timed(device, server, "get", "/bench/big.bin", str(dst))
        assert file_hash(dst) == digest, "downloaded file differs"
        assert put["sent"] == args.size
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {psutil.cpu_count()} cores {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "backend": args.backend,
            "size_bytes": args.size,
            "sha256_single_core_MBps": round(sha),
            "put_MBps": round(args.size / put_s / MB),
            "get_MBps": round(args.size / get_s / MB),
            "put_client_peak_rss_MB": round(put_client),
            "put_server_peak_rss_MB": round(put_server),
            "get_client_peak_rss_MB": round(get_client),
            "get_server_peak_rss_MB": round(get_server),
        }
        print(json.dumps(figures))
        print(
            f"\n{args.size / 2**30:.2f} GiB over loopback ({args.backend} blocks); SHA-256 single core {sha:.0f} MB/s"
        )
        print(
            f"  put  {figures['put_MBps']:>5} MB/s   client peak {put_client:.0f} MB   server peak {put_server:.0f} MB"
        )
        print(
            f"  get  {figures['get_MBps']:>5} MB/s   client peak {get_client:.0f} MB   server peak {get_server:.0f} MB"
        )
    finally:
        server.stop()
        if moto:
            moto.__exit__(None, None, None)
        drop_database(admin, db)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
