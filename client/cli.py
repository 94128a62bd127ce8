"""The ``ferry`` command.

Every failure prints one line a person can act on and exits non-zero:
1 for an error the server or the input caused, 2 for bad usage, 3 when the
server could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import history, share
from client.home import (
    Credentials,
    NotLoggedIn,
    forget_credentials,
    home_dir,
    load_credentials,
    save_credentials,
)
from client.memory import limit_malloc_arenas
from client.output import human_size, print_json
from client.transfer import Remote, download, stat_or_none, upload
from client.transport import ConnectionLost
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import to_wire
from protocol.paths import name_of, validate_path

if TYPE_CHECKING:
    import httpx

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="client state and credentials folder (default $FERRY_HOME or the platform config dir)",
    )
    common.add_argument("--retry-for", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="keep retrying an unreachable server this long (default 60, or $FERRY_RETRY_SECONDS)")  # fmt: skip
    p = argparse.ArgumentParser(prog="ferry", parents=[common], description="Ferry: self-hosted file sync")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("server", help="run the sync server (see `ferry server --help`)", add_help=False)
    sub.add_parser("admin", help="manage users and devices on the server machine", add_help=False)

    login = sub.add_parser("login", parents=[common], help="log this device in to a server")
    login.add_argument("server", help="server URL, e.g. http://127.0.0.1:8765")
    login.add_argument("--user", required=True)
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.add_argument(
        "--device", default=socket.gethostname(), help="name of this device (default: host name)"
    )

    sub.add_parser("logout", parents=[common], help="log this device out: the server revokes its token, "
                   "and its credentials here are deleted")  # fmt: skip

    put = sub.add_parser("put", parents=[common], help="upload a local file")
    put.add_argument("local", type=Path)
    put.add_argument("remote", help="destination path on the server, e.g. /isos/big.iso")
    put.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    put.add_argument(
        "--json", action="store_true", help="print the result as JSON (path, version, size, sent, seconds)"
    )

    get = sub.add_parser("get", parents=[common], help="download a file")
    get.add_argument("remote")
    get.add_argument("local", type=Path, nargs="?", help="destination (default: the file's name here)")
    get.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    get.add_argument("--json", action="store_true", help="print the result as JSON")
    get.add_argument("--version", type=int, help="an older version (see `ferry history`)")

    ls = sub.add_parser("ls", parents=[common], help="list a folder")
    ls.add_argument("path", nargs="?", default="/")
    ls.add_argument("--json", action="store_true", help="one JSON document with every entry")

    mkdir = sub.add_parser("mkdir", parents=[common], help="create a folder (and missing parents)")
    mkdir.add_argument("path")
    mv = sub.add_parser("mv", parents=[common], help="move or rename a file or folder (no bytes are sent)")
    mv.add_argument("src")
    mv.add_argument("dst")
    rm = sub.add_parser("rm", parents=[common], help="delete a file or folder (kept in history)")
    rm.add_argument("path")

    sync = sub.add_parser("sync", parents=[common], help="keep a local folder in sync with your Ferry tree")
    sync.add_argument("folder", type=Path)
    sync.add_argument(
        "--once", action="store_true", help="sync both ways until nothing is pending, then exit"
    )
    sync.add_argument(
        "--confirm-deletes",
        action="store_true",
        default=os.environ.get("FERRY_CONFIRM_DELETES") == "1",
        help="let a scan that deleted over 25%% of the files (and 100+) delete them on the server",
    )
    sync.add_argument("--lan", choices=["on", "off"], default=os.environ.get("FERRY_LAN", "on"),
                      help="fetch blocks from other Ferry devices on the LAN before the server, and serve "
                           "ours to them (default on, or $FERRY_LAN)")  # fmt: skip
    sync.add_argument("--lan-port", type=_port, default=os.environ.get("FERRY_LAN_PORT", "17500"),
                      help="UDP port for discovery and TCP port for peer links (default 17500)")  # fmt: skip
    sync.add_argument("--lan-serve-rate", type=float, default=0.0, metavar="MB/S",
                      help="serve peers at most this many MB (10^6 bytes) per second (default: no limit)")  # fmt: skip
    sync.add_argument("--lan-timeout", type=float, default=os.environ.get("FERRY_LAN_TIMEOUT", "2"),
                      metavar="SECONDS", help="how long a peer may take over a block before the next "
                                              "peer or the server is asked (default 2)")  # fmt: skip
    sync.add_argument("--lan-peer", action="append", default=[], type=_peer, metavar="HOST:PORT",
                      help="a peer to ask even if it is not discovered (repeatable)")  # fmt: skip
    status = sub.add_parser("status", parents=[common], help="what each synced folder is doing")
    status.add_argument("--json", action="store_true")
    history.add_commands(sub, common)
    share.add_commands(sub, common)
    return p


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (1-65535)")
    return int(text)


def _peer(text: str) -> tuple[str, int]:
    from client.lan.node import parse_peer

    try:
        return parse_peer(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (not on Windows), as the server does: its sockets and
    TLS cost less CPU per byte than asyncio's, which matters for uploads and LAN peer links."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("server", "admin"):
        # the server is a separate package: run it as its own program
        os.execv(sys.executable, [sys.executable, "-m", "server", *argv])
    args = _parser().parse_args(argv)
    limit_malloc_arenas()
    try:
        return _event_loop_run(_run(args))
    except KeyboardInterrupt:
        print("ferry: interrupted", file=sys.stderr)
        return 130
    except ProtocolError as e:
        print(f"ferry: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except NotLoggedIn as e:
        print(f"ferry: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ConnectionLost as e:
        print(f"ferry: {e} (gave up after retrying; is the server running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as e:
        print(f"ferry: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR


def _home(args: argparse.Namespace) -> Path:
    return home_dir(getattr(args, "home", None))


def _retry_for(args: argparse.Namespace) -> float:
    explicit = getattr(args, "retry_for", None)
    return float(explicit if explicit is not None else os.environ.get("FERRY_RETRY_SECONDS", "60"))


async def _run(args: argparse.Namespace) -> int:
    if args.command == "login":
        return await _login(args)
    if args.command == "logout":
        return await _logout(args)
    if args.command == "status":
        return _status(args)
    if args.command == "sync":
        return await _sync(args)
    remote = Remote(load_credentials(_home(args)), _retry_for(args))
    try:
        return int(await COMMANDS[args.command](remote, args))
    finally:
        await remote.close()


async def _login(args: argparse.Namespace) -> int:
    import httpx  # here, not at the top: it is a sixth of every other command's start-up time

    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else getpass.getpass("Password: ")
    url = args.server.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            r = await http.post(f"{url}/api/v1/login",
                                json={"user": args.user, "password": password, "device": args.device})  # fmt: skip
    except httpx.HTTPError as e:
        raise ConnectionLost(f"cannot reach the server at {url}: {e}") from None
    if r.status_code != 200:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED if r.status_code == 401 else ErrorCode.BAD_REQUEST, _reply_message(r)
        )
    body = r.json()
    creds = Credentials(
        url, args.user, body["token"], body["device_id"], args.device, body.get("lan_key", "")
    )
    save_credentials(_home(args), creds)
    print(f"logged in to {url} as {args.user} (device {args.device!r})")
    return 0


def _reply_message(r: httpx.Response) -> str:
    """The message of an HTTP API error reply."""
    try:
        return str(r.json().get("message", r.text))
    except (ValueError, AttributeError):
        return r.text.strip() or f"HTTP {r.status_code}"


async def _logout(args: argparse.Namespace) -> int:
    """Revoke this device's token on the server, then delete its credentials here. An
    unreachable server leaves both as they are (the token would still work there)."""
    import httpx

    home = _home(args)
    creds = load_credentials(home)
    try:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            r = await http.post(
                f"{creds.server}/api/v1/logout", headers={"Authorization": f"Bearer {creds.token}"}
            )
    except httpx.HTTPError as e:
        print(f"ferry: cannot reach the server at {creds.server} ({e}); still logged in: run `ferry logout` "
              "again when it is up, or have an admin run `ferry admin device revoke`", file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    if r.status_code not in (200, 401):  # 401: the token no longer works there anyway
        raise ProtocolError(ErrorCode.UNAVAILABLE if r.status_code == 503 else ErrorCode.BAD_REQUEST,
                            f"{_reply_message(r)}; still logged in")  # fmt: skip
    forget_credentials(home)
    already = " (its token had already been revoked)" if r.status_code == 401 else ""
    print(f"logged out of {creds.server}: device {creds.device!r} (id {creds.device_id}){already}")
    return 0


@contextmanager
def _progress(label: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,  # fmt: skip
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=False) as bar:  # fmt: skip
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


async def _put(remote: Remote, args: argparse.Namespace) -> int:
    dst = validate_path(args.remote)
    size = os.stat(args.local).st_size
    started = time.monotonic()
    with _progress(f"put {name_of(dst)}", size, args.quiet) as progress:
        done, sent = await upload(remote, args.local, dst, progress)
    elapsed = time.monotonic() - started
    if args.json:
        print_json(
            {"path": dst, "version": done.entry.version, "size": size, "sent": sent, "seconds": elapsed}
        )
    else:
        print(
            f"{dst}: version {done.entry.version}, {human_size(size)} in {elapsed:.1f}s, {human_size(sent)} sent"
        )
    return 0


async def _get(remote: Remote, args: argparse.Namespace) -> int:
    src = validate_path(args.remote)
    entry = await remote.run(lambda c: history.fetchable(c, src, args.version))
    dest: Path = args.local or Path(name_of(src))
    if dest.is_dir():
        dest = dest / name_of(src)
    started = time.monotonic()
    with _progress(f"get {name_of(src)}", entry.size, args.quiet) as progress:
        await download(remote, entry, dest, progress)
    elapsed = time.monotonic() - started
    if args.json:
        print_json(
            {
                "path": src,
                "local": str(dest),
                "version": entry.version,
                "size": entry.size,
                "seconds": elapsed,
            }
        )
    else:
        print(f"{dest}: version {entry.version}, {human_size(entry.size)} in {elapsed:.1f}s")
    return 0


async def _stat(conn: Any, path: str) -> m.Entry:
    entry = await stat_or_none(conn, path)
    if entry is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder on the server")
    return entry


async def _ls(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)

    async def listing(conn: Any) -> list[m.Entry]:
        entries: list[m.Entry] = []
        after: str | None = None
        while True:
            try:
                page = await conn.call(lambda i, a=after: m.ListFolder(i, path, after=a), m.Listing)
            except ProtocolError as e:
                if e.code == ErrorCode.NOT_A_DIRECTORY:
                    return [await _stat(conn, path)]
                raise
            entries += page.entries
            if page.next is None:
                return entries
            after = page.next

    entries = await remote.run(listing)
    if args.json:
        print_json([{k: v for k, v in to_wire(e).items() if k != "blocks"} for e in entries])
        return 0
    for e in entries:
        when = datetime.fromtimestamp(e.mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M") if e.mtime_ns else "-"
        size = "-" if e.kind == "dir" else human_size(e.size)
        name = name_of(e.path) + ("/" if e.kind == "dir" else "")
        print(f"{size:>10}  {when}  {name}")
    return 0


def _change(make: Callable[[int, str], m.Message], verb: str) -> Callable[[Remote, argparse.Namespace], Any]:
    async def command(remote: Remote, args: argparse.Namespace) -> int:
        key = f"{verb}-{os.urandom(12).hex()}"  # same key on every retry: applied once
        done = await remote.run(lambda c: c.call(lambda i: make(i, key), m.Committed))
        print(f"{verb}: {done.entry.path}")
        return 0

    return command


async def _sync(args: argparse.Namespace) -> int:
    from client import engine  # the sync engine's imports are only paid by `ferry sync`
    from client.lan.node import LanOptions

    home = _home(args)
    creds = load_credentials(home)
    if args.lan not in ("on", "off"):  # from $FERRY_LAN, which argparse does not check
        print(f"ferry: --lan must be on or off, not {args.lan!r}", file=sys.stderr)
        return EXIT_USAGE
    if not args.lan_serve_rate >= 0:
        print("ferry: --lan-serve-rate must be 0 (no limit) or more", file=sys.stderr)
        return EXIT_USAGE
    if not args.lan_timeout > 0:  # (nan too)
        print("ferry: --lan-timeout must be more than 0 seconds", file=sys.stderr)
        return EXIT_USAGE
    lan = LanOptions(enabled=args.lan == "on", port=args.lan_port, peers=args.lan_peer,
                     rate=int(args.lan_serve_rate * 1e6), fallback_s=args.lan_timeout)  # fmt: skip
    try:
        if args.once:
            ok = await engine.sync_once(args.folder, home, creds, args.confirm_deletes, _retry_for(args), lan)
            folder = engine.read_status(home)["folders"].get(str(args.folder.resolve()), {})
            if not ok or folder.get("last_error"):
                print(
                    f"ferry: sync incomplete: {folder.get('last_error') or 'see ferry status'}",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            held = folder.get("not_uploaded") or {}
            for path, why in held.items():
                print(f"ferry: {path}: {why}", file=sys.stderr)
            waiting = folder.get("deletions_waiting")
            if waiting:
                print(f"ferry: {waiting} local deletions not applied on the server; "
                      "run `ferry sync --once --confirm-deletes` if they were meant", file=sys.stderr)  # fmt: skip
            if any("quota" in why for why in held.values()):
                return EXIT_ERROR  # the user must free space (or get more) for these to sync
            print(
                f"{args.folder}: up to date"
                + (f" ({len(held)} local changes kept here only)" if held else "")
            )
            return 0
        print(f"syncing {args.folder.resolve()} with {creds.server} (Ctrl-C to stop)", file=sys.stderr)
        await engine.sync_forever(args.folder, home, creds, args.confirm_deletes, lan)
        return 0
    except engine.SyncError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return EXIT_ERROR


def _status(args: argparse.Namespace) -> int:
    from client import engine

    folders = engine.read_status(_home(args))["folders"]
    if args.json:
        print_json(folders)
        return 0
    if not folders:
        print("no synced folders yet; start one with `ferry sync FOLDER`")
    for path, f in folders.items():
        line = f["state"]
        if f["state"] == "syncing":
            line = f"syncing {f['pending']} items, {human_size(f['bytes_left'])} left"
        print(f"{path}: {line} (as of {f.get('updated', '?')})")
        if f.get("deletions_waiting"):
            print(
                f"  paused: {f['deletions_waiting']} local deletions wait for `ferry sync --confirm-deletes`"
            )
        if f.get("last_error"):
            print(f"  last error: {f['last_error']}")
        for c in f.get("conflicts", []):
            print(f"  conflict: {c}")
        for k, why in f.get("skipped", {}).items():
            print(f"  skipped: {k}: {why}")
        for k, why in (f.get("not_uploaded") or {}).items():
            print(f"  kept here, {why}: {k}")
        for k, why in (f.get("not_downloaded") or {}).items():
            print(f"  {why}: {k}")
        if f.get("lan"):
            _print_lan(f["lan"])
    return 0


def _print_lan(lan: dict[str, Any]) -> None:
    peers = lan.get("peers", [])
    print(f"  LAN: port {lan.get('port')}, {len(peers)} peer{'s' if len(peers) != 1 else ''} in sight; "
          f"received {human_size(lan.get('from_peers', 0))} from peers, "
          f"{human_size(lan.get('from_server', 0))} from the server; "
          f"served {human_size(lan.get('served', 0))} to peers")  # fmt: skip
    if lan.get("note"):
        print(f"  LAN: {lan['note']}")
    for p in peers:
        trouble = (
            f" (last trouble: {p['last_trouble']})"
            if p.get("last_trouble") and "set aside" not in p["state"]
            else ""
        )
        print(f"  peer {p['address']}{' (static)' if p.get('static') else ''}: {p['state']}, "
              f"{human_size(p.get('received', 0))} received{trouble}")  # fmt: skip


def _mkdir(remote: Remote, args: argparse.Namespace) -> Any:
    path = validate_path(args.path)
    return _change(lambda i, k: m.Mkdir(i, k, path), "created")(remote, args)


def _mv(remote: Remote, args: argparse.Namespace) -> Any:
    src, dst = validate_path(args.src), validate_path(args.dst)
    return _change(lambda i, k: m.Move(i, k, src, dst), "moved to")(remote, args)


def _rm(remote: Remote, args: argparse.Namespace) -> Any:
    path = validate_path(args.path)
    return _change(lambda i, k: m.Delete(i, k, path), "deleted")(remote, args)


COMMANDS: dict[str, Callable[[Remote, argparse.Namespace], Any]] = {
    "put": _put, "get": _get, "ls": _ls, "mkdir": _mkdir, "mv": _mv, "rm": _rm, **history.COMMANDS,
    **share.COMMANDS,
}  # fmt: skip
