"""Passwords (Argon2) and device tokens (random, stored as SHA-256)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
TOKEN_PREFIX = "fy_"
# Argon2 takes ~0.3 s of CPU and 64 MiB per password on purpose. Run it off the
# event loop (a login flood would otherwise stall every connection) and two at
# a time (a flood then queues here instead of taking every core and GiBs).
_ARGON2 = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ferry-argon2")


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_ARGON2, _hasher.hash, password)


async def verify_password(stored: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_ARGON2, _verify, stored, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
