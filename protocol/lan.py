"""What LAN peers say to each other besides the block messages: tickets and
discovery announcements (sans-I/O: signing and sockets live in ``server.lan``
and ``client.lan``).

ticket
    ``<claims>.<signature>``, both base64url. The claims (JSON) name the
    device's TLS certificate fingerprint (``fp``), the opaque tags of the
    namespaces it may read (``ns``) and an expiry (``exp``, unix seconds); the
    server signs the claims' bytes with its Ed25519 key. No user, device or
    namespace id is in it.
tag
    An opaque namespace id (``LanSpace.tag``), the same for every member.
discovery tag
    HMAC(tag key, time epoch) cut to 8 bytes: what announcements carry, so a
    stranger on the LAN cannot link them to a namespace or across epochs.
announcement
    One UDP datagram: ``{"ferry": 1, "id": <random instance id>, "port": <TLS port>, "tags": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

TICKET_VERSION = 1
EPOCH_S = 300  # discovery tags change this often
MAX_ANNOUNCEMENT = 1400  # one unfragmented datagram; anything bigger is ignored unread
MAX_TAGS = 64


class BadTicket(ValueError):
    """A ticket that is malformed, expired or not for this key (the message says which)."""


@dataclass(frozen=True, slots=True)
class Claims:
    fingerprint: bytes  # SHA-256 of the device's TLS certificate (DER)
    tags: frozenset[str]
    expires_s: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadTicket("ticket is not base64") from None


def claims_bytes(claims: Claims) -> bytes:
    body = {"v": TICKET_VERSION, "fp": claims.fingerprint.hex(), "ns": sorted(claims.tags),
            "exp": claims.expires_s}  # fmt: skip
    return orjson.dumps(body)


def join_ticket(signed: bytes, signature: bytes) -> str:
    return f"{_b64(signed)}.{_b64(signature)}"


def split_ticket(ticket: str) -> tuple[bytes, bytes]:
    """(signed bytes, signature); the signature is checked by the caller."""
    if not isinstance(ticket, str) or ticket.count(".") != 1 or len(ticket) > 16384:
        raise BadTicket("malformed ticket")
    signed, signature = ticket.split(".")
    return _unb64(signed), _unb64(signature)


def parse_claims(signed: bytes, now_s: float) -> Claims:
    """The claims of a ticket whose signature was already verified; BadTicket if expired."""
    try:
        body = orjson.loads(signed)
        if body.get("v") != TICKET_VERSION:
            raise BadTicket(f"ticket version {body.get('v')!r} is not {TICKET_VERSION}")
        fp, tags, exp = bytes.fromhex(body["fp"]), body["ns"], body["exp"]
        if len(fp) != 32 or type(exp) is not int or not all(isinstance(t, str) for t in tags):
            raise BadTicket("malformed ticket claims")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, BadTicket):
            raise
        raise BadTicket("malformed ticket claims") from None
    if exp <= now_s:
        raise BadTicket("ticket expired")
    return Claims(fp, frozenset(tags), exp)


def proof_message(serving_fingerprint: bytes) -> bytes:
    """What a requester signs with its TLS key: binds its ticket to a connection
    to this one serving peer, so a peer that saw it cannot replay it elsewhere."""
    return b"ferry-lan-proof-v1:" + serving_fingerprint


# --- discovery ------------------------------------------------------------------


def discovery_tag(tag_key: str, epoch: int) -> str:
    return hmac.new(bytes.fromhex(tag_key), f"ferry-lan:{epoch}".encode(), hashlib.sha256).hexdigest()[:16]


def epoch_of(now_s: float) -> int:
    return int(now_s // EPOCH_S)


def encode_announcement(instance: str, port: int, tags: list[str]) -> bytes:
    return orjson.dumps({"ferry": 1, "id": instance, "port": port, "tags": tags[:MAX_TAGS]})


@dataclass(frozen=True, slots=True)
class Announcement:
    instance: str
    port: int
    tags: frozenset[str]


def decode_announcement(data: bytes) -> Announcement | None:
    """The announcement in a datagram, or None for anything else (ignored cheaply)."""
    if len(data) > MAX_ANNOUNCEMENT or not data.startswith(b"{"):
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("ferry") != 1:
        return None
    instance, port, tags = body.get("id"), body.get("port"), body.get("tags")
    if not (isinstance(instance, str) and type(port) is int and 0 < port < 65536 and isinstance(tags, list)):
        return None
    if len(tags) > MAX_TAGS or not all(isinstance(t, str) and len(t) == 16 for t in tags):
        return None
    return Announcement(instance, port, frozenset(tags))
