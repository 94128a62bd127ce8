"""Server settings: each flag is also an environment variable ``FERRY_<NAME>``."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from protocol.chunking import MAX_BLOCK
from protocol.framing import HEADER_SIZE

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}  # fmt: skip


def parse_size(text: str) -> int:
    """``"256MiB"`` → 268435456; plain numbers are bytes."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MiB or 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.I)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` → seconds; plain numbers are seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30m, 1h or 3600)")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "").lower()]


def parse_days(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r} (0 keeps versions forever)")
    return int(text)


@dataclass
class Settings:
    data_dir: Path = Path("ferry-data")
    host: str = "127.0.0.1"
    port: int = 8765
    database_url: str | None = None  # None: embedded PostgreSQL under data_dir/pg
    blocks: str | None = None  # None: file:<data_dir>/blocks
    s3_endpoint: str | None = None
    cache_bytes: int = 32 * 1024 * 1024
    max_block: int = MAX_BLOCK
    max_in_flight: int = 1024  # requests per connection (and IN_FLIGHT_BYTES of them: server.ws)
    handshake_timeout: float = 10.0  # for the HTTP upgrade head, and again for the hello frame
    idle_timeout: float = 90.0  # a session with no frame (not even a ping) for this long is closed
    send_timeout: float = 30.0  # a client that takes no reply for this long is cut off
    max_connections_per_user: int = 64  # live WebSocket sessions per user (0: no limit)
    max_connections_per_ip: int = 256  # ... and per client address (0: no limit)
    allowed_origins: tuple[str, ...] = ()  # browser origins besides the server's own
    log_level: str = "info"
    keep_versions_days: int = 180  # 0: forever
    gc_every: float = 3600.0  # seconds between background GC runs; 0: never
    gc_grace: float = 3600.0  # blocks uploaded this recently are never collected
    lan_ticket_ttl: int = 300  # s a LAN peer ticket is valid (server.lan)

    @property
    def max_frame(self) -> int:
        return self.max_block + HEADER_SIZE

    @property
    def block_spec(self) -> str:
        return self.blocks or f"file:{self.data_dir / 'blocks'}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("FERRY_" + name.upper().replace("-", "_"), default)


def add_server_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` and ``admin`` (which reach the same database)."""
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("data_dir", "ferry-data") or "ferry-data"),
        help="where the embedded database and local blocks live (default ./ferry-data)",
    )
    p.add_argument("--database-url", default=_env("database_url"),
                   help="PostgreSQL URL (default: embedded PostgreSQL under the data dir)")  # fmt: skip


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    add_server_flags(p)
    p.add_argument("--host", default=_env("host", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("port", "8765") or 8765))
    p.add_argument(
        "--blocks",
        default=_env("blocks"),
        help="block store: file:PATH (default <data-dir>/blocks) or s3://bucket[/prefix]",
    )
    p.add_argument(
        "--s3-endpoint",
        default=_env("s3_endpoint"),
        help="S3-compatible endpoint URL (default: AWS); credentials from AWS_* variables",
    )
    p.add_argument(
        "--cache-bytes",
        type=parse_size,
        default=parse_size(_env("cache_bytes", "32MiB") or "32MiB"),
        help="size of the in-memory hot-block cache (default 32MiB; 0 disables)",
    )
    p.add_argument("--log-level", default=_env("log_level", "info"), choices=["debug", "info", "warning", "error"])  # fmt: skip
    add_retention_flags(p, default=True)
    p.add_argument("--gc-every", type=parse_duration, default=parse_duration(_env("gc_every", "1h") or "1h"),
                   help="run retention pruning and GC in the background this often (default 1h; 0 never)")  # fmt: skip
    p.add_argument("--lan-ticket-ttl", type=parse_duration,
                   default=parse_duration(_env("lan_ticket_ttl", "5m") or "5m"),
                   help="how long a LAN peer ticket is valid: revoking a device or a share reaches "
                        "the LAN within this (default 5m)")  # fmt: skip
    add_bound_flags(p)


def add_bound_flags(p: argparse.ArgumentParser) -> None:
    """Bounds on what one client may hold (see server.bounds)."""
    for name, default, what in (
        ("handshake-timeout", "10s", "close a connection whose upgrade request or hello takes longer"),
        ("idle-timeout", "90s", "close a session that sends nothing (not even a ping) for this long"),
        ("send-timeout", "30s", "cut off a client that takes no reply for this long (it stopped reading)"),
    ):
        p.add_argument("--" + name, type=parse_duration, default=parse_duration(_env(name, default) or default),
                       help=f"{what} (default {default})")  # fmt: skip
    for name, count in (("max-connections-per-user", "64"), ("max-connections-per-ip", "256")):
        p.add_argument("--" + name, type=parse_count, default=parse_count(_env(name, count) or count),
                       help=f"refuse WebSocket sessions beyond this many (HTTP 429; default {count}; 0 no limit)")  # fmt: skip
    p.add_argument("--allowed-origins", type=parse_origins, default=parse_origins(_env("allowed_origins", "") or ""),
                   help="comma-separated browser origins allowed to open a WebSocket besides the server's own")  # fmt: skip


def parse_count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a whole number; 0 means no limit)")
    return int(text)


def parse_origins(text: str) -> tuple[str, ...]:
    """``"https://a.example, https://b.example"`` → both, without trailing slashes."""
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def add_retention_flags(p: argparse.ArgumentParser, default: bool) -> None:
    """Retention and GC flags; for ``admin gc`` (``default=False``) an unset
    flag means: what the running server was started with."""
    days, grace = (
        _env("keep_versions_days", "180" if default else None),
        _env("gc_grace", "1h" if default else None),
    )
    p.add_argument("--keep-versions-days", type=parse_days, default=parse_days(days) if days else None,
                   help="prune versions replaced more than this many days ago (default 180; 0 keeps them forever)")  # fmt: skip
    p.add_argument("--gc-grace", type=parse_duration, default=parse_duration(grace) if grace else None,
                   help="never collect blocks uploaded this recently (default 1h)")  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(data_dir=args.data_dir, database_url=args.database_url or None)
    for name in ("host", "port", "blocks", "s3_endpoint", "cache_bytes", "log_level",
                 "keep_versions_days", "gc_every", "gc_grace", "handshake_timeout", "idle_timeout",
                 "send_timeout", "max_connections_per_user", "max_connections_per_ip",
                 "allowed_origins", "lan_ticket_ttl"):  # fmt: skip
        if getattr(args, name, None) is not None:
            setattr(s, name, getattr(args, name))
    s.lan_ticket_ttl = max(1, int(s.lan_ticket_ttl))
    return s
