"""What every request handler needs: settings, metadata, blocks, notices.

Also the one place where store errors become protocol errors, so nothing
above sees asyncpg, botocore or OS error types.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import asyncpg

from protocol import failpoints
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import HASH_BYTES
from server.blockstore import BadBlock, BlockNotFound, BlockStore, BlockStoreError, StoreUnavailable
from server.config import Settings
from server.lan import LanAuthority
from server.metastore import MetaStore, Principal
from server.metrics import COUNTERS
from server.notifier import Notifier

log = logging.getLogger("ferry.services")


@dataclass
class Services:
    settings: Settings
    meta: MetaStore
    blocks: BlockStore
    notifier: Notifier
    lan: LanAuthority | None = None  # None: this server issues no LAN tickets

    async def put_block(self, who: Principal, h: bytes, data: memoryview | bytes) -> None:
        """Store a block the user sent. The bytes must hash to ``h`` even when
        the block is already stored: that proves the sender has the content."""
        if len(h) != HASH_BYTES:
            raise ProtocolError(ErrorCode.BAD_BLOCK, "a block must be named by a 32-byte SHA-256")
        if len(data) > self.settings.max_block:
            raise ProtocolError(
                ErrorCode.BAD_BLOCK,
                f"block of {len(data)} bytes exceeds the {self.settings.max_block}-byte limit",
            )
        with translate_errors():
            if await self.meta.block_stored(h):
                if await asyncio.to_thread(lambda: hashlib.sha256(data).digest()) != h:
                    raise BadBlock("block bytes do not match their SHA-256")
                if await self.meta.claim_stored_block(who, h):
                    return
                # GC collected it since we looked: store it again (see server.gc)
            await self.blocks.put(h, data)  # verifies, then durable
            failpoints.hit("server.block.stored")
            await self.meta.record_upload(who, h, len(data))
            failpoints.hit("server.block.recorded")
            COUNTERS.block_bytes_received_total += len(data)

    async def authenticate(self, authorization: str) -> Principal:
        """Who sends this ``Authorization: Bearer <device token>`` header: the
        one check the WebSocket upgrade and every HTTP API route make."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if not token:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing device token; run `ferry login` first")
        with translate_errors():
            return await self.meta.authenticate(token)

    async def check_readable(self, who: Principal, h: bytes) -> None:
        with translate_errors():
            if not await self.meta.can_read_block(who, h):
                # same answer as for a block nobody has
                raise BlockNotFound(f"no block {h.hex()}")

    async def read_block(self, h: bytes) -> bytes:
        """A block's bytes, for a caller that has checked the reader may have them."""
        with translate_errors():
            data = await self.blocks.get(h)
        COUNTERS.block_requests_total += 1
        COUNTERS.block_bytes_sent_total += len(data)
        return data

    async def get_block(self, who: Principal, h: bytes) -> bytes:
        await self.check_readable(who, h)
        return await self.read_block(h)


class translate_errors:
    """Map store and database errors to :class:`ProtocolError`."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, ProtocolError):
            return
        if isinstance(exc, BadBlock):
            raise ProtocolError(ErrorCode.BAD_BLOCK, str(exc)) from None
        if isinstance(exc, BlockNotFound):
            raise ProtocolError(ErrorCode.NOT_FOUND, str(exc)) from None
        if isinstance(exc, StoreUnavailable | BlockStoreError):
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        # 57xxx: the database is shutting down, restarting or starting up (its connections get
        # "terminating connection due to ... shutdown", new ones "the database system is starting
        # up"); 53300: it has no connection slot free. All pass: the client retries.
        if isinstance(
            exc,
            OSError
            | asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.TooManyConnectionsError,
        ):
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, f"database unavailable, retry shortly: {exc}"
            ) from None
        if isinstance(exc, asyncpg.PostgresError):
            log.exception("database error")
            raise ProtocolError(ErrorCode.INTERNAL, "internal database error; see the server log") from None
