"""The server's part in LAN sync: it vouches for devices, and is not asked on the LAN.

An Ed25519 signing key lives in the data directory (``lan-signing-key.pem``,
created on first start, mode 0600); its public key is given to each device at
login. A device asks (over its authenticated WebSocket) for a *ticket*: the
server signs the device's TLS key fingerprint and the opaque tags of the
namespaces the user can read right now, valid for ``ttl`` seconds. Peers check
each other's tickets with the public key, so revoking a device (no new
tickets: its token is refused) or a share (new tickets leave that namespace
out) takes effect within one ticket lifetime. Tags and tag keys are HMACs of
the namespace id under a secret derived from the signing key: the same for
every member, meaningless to anyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import lan
from protocol import messages as m

KEY_FILE = "lan-signing-key.pem"
DEFAULT_TTL = 300  # s: revocations reach the LAN within this


class LanAuthority:
    def __init__(self, data_dir: Path, ttl: int = DEFAULT_TTL) -> None:
        self.key = _load_or_create(data_dir / KEY_FILE)
        self.ttl = ttl
        raw = self.key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self._secret = hashlib.sha256(b"ferry-lan-tags:" + raw).digest()
        self.public_hex = (
            self.key.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )

    def space(self, ns: int) -> m.LanSpace:
        tag = hmac.new(self._secret, f"tag:{ns}".encode(), hashlib.sha256).hexdigest()[:32]
        key = hmac.new(self._secret, f"key:{ns}".encode(), hashlib.sha256).hexdigest()
        return m.LanSpace(ns, tag, key)

    def issue(self, req_id: int, fingerprint: bytes, namespaces: list[int]) -> m.LanTicketsReply:
        spaces = [self.space(ns) for ns in namespaces]
        expires = int(time.time()) + self.ttl
        claims = lan.Claims(fingerprint, frozenset(s.tag for s in spaces), expires)
        signed = lan.claims_bytes(claims)
        ticket = lan.join_ticket(signed, self.key.sign(signed))
        return m.LanTicketsReply(req_id, ticket, expires, self.public_hex, spaces)


def _load_or_create(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another server process just made
        except FileExistsError:
            return _load_or_create(path)
        finally:
            os.unlink(tmp)
        return key
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key; move it away to make a new one")
    return key
