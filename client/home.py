"""Where this device keeps its credentials: ``$FERRY_HOME``, ``--home``, or
the platform's config dir. Several homes let several clients share a machine."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import platformdirs


class NotLoggedIn(Exception):
    pass


@dataclass
class Credentials:
    server: str
    user: str
    token: str
    device_id: int
    device: str
    server_key: str = ""  # the server's Ed25519 key for LAN tickets (hex), given at login


def home_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("FERRY_HOME"):
        return Path(os.environ["FERRY_HOME"])
    return Path(platformdirs.user_config_dir("ferry"))


def save_credentials(home: Path, creds: Credentials) -> None:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = home / "credentials.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(asdict(creds), option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, home / "credentials.json")


def forget_credentials(home: Path) -> None:
    """Delete this device's credentials (after a logout)."""
    (home / "credentials.json").unlink(missing_ok=True)


def load_credentials(home: Path) -> Credentials:
    try:
        data = orjson.loads((home / "credentials.json").read_bytes())
        return Credentials(**data)
    except FileNotFoundError:
        raise NotLoggedIn(
            f"not logged in (no credentials in {home}); run `ferry login URL --user NAME`"
        ) from None
    except (orjson.JSONDecodeError, TypeError):
        raise NotLoggedIn(f"credentials in {home} are unreadable; run `ferry login` again") from None
