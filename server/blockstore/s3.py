"""Block store in an S3 bucket (AWS or any S3-compatible server: MinIO, Garage, moto, ...).

Key layout: ``<prefix>blocks/<ab>/<64 hex>`` where ``ab`` is the hash's first
byte in hex. One aioboto3 client is opened lazily on first use and kept for the
store's lifetime (opening a client costs milliseconds and a connection pool).

Every put is verified locally (:class:`BadBlock` before any network I/O) and
sent with ``ChecksumSHA256`` so S3 also verifies the bytes it received; S3 only
makes an object visible once it is complete. Region and credentials come from
the standard AWS environment (``AWS_DEFAULT_REGION`` defaults to ``us-east-1``).
With an explicit endpoint, path-style addressing is used (what self-hosted
S3-compatible servers expect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from server.blockstore import BadBlock, BlockNotFound, BlockStoreError, StoreUnavailable, check_hash

__all__ = ["S3BlockStore"]

# Hash bigger payloads in a worker thread rather than on the event loop.
_THREAD_HASH_BYTES = 256 * 1024

_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
    }
)
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
    }
)
_CHECKSUM_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"})


def _region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def _error_info(e: ClientError) -> tuple[str, int, str]:
    err = e.response.get("Error", {}) or {}
    code = str(err.get("Code", "") or "")
    message = str(err.get("Message", "") or "")
    status = int((e.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
    return code, status, message


class S3BlockStore:
    """Blocks as objects in ``bucket`` under ``prefix``. See the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
        max_connections: int = 64,
        list_page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region = _region()
        self.list_page_size = list_page_size  # keys per list_objects_v2 call (S3 caps it at 1000)
        self._keys_prefix = f"{self.prefix}blocks/"
        self._config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_connections,
            s3={"addressing_style": "path"} if endpoint_url else None,
            # We send our own SHA-256; don't add CRC32 headers some S3-compatible servers reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._session = aioboto3.Session(region_name=self.region)
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"S3BlockStore({self.url!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix.rstrip('/')}" if self.prefix else "")

    @property
    def endpoint(self) -> str:
        """The endpoint named in error messages."""
        return self.endpoint_url or f"https://s3.{self.region}.amazonaws.com"

    # -- plumbing ------------------------------------------------------------

    def _key(self, h: bytes) -> str:
        x = h.hex()
        return f"{self._keys_prefix}{x[:2]}/{x}"

    def _unavailable(self, reason: str) -> StoreUnavailable:
        return StoreUnavailable(f"block store s3://{self.bucket} unreachable at {self.endpoint}: {reason}")

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                if self._closed:
                    raise StoreUnavailable(f"block store {self.url} is closed")
                stack = contextlib.AsyncExitStack()
                with self._errors("open client"):
                    self._client = await stack.enter_async_context(
                        self._session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
                    )
                self._stack = stack
        return self._client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate botocore/aiohttp/OS errors into BlockStoreErrors."""
        try:
            yield
        except BlockStoreError:
            raise
        except ClientError as e:
            code, status, message = _error_info(e)
            detail = f"{code or status}: {message}" if message else (code or str(status))
            if status >= 500 or code in _UNAVAILABLE_CODES:
                raise self._unavailable(f"{action} failed with {detail}") from e
            if status == 403 or code in _ACCESS_CODES:
                raise StoreUnavailable(
                    f"block store s3://{self.bucket} at {self.endpoint} refused access ({detail}); "
                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy"
                ) from e
            if code == "NoSuchBucket":
                raise StoreUnavailable(
                    f"block store s3://{self.bucket} at {self.endpoint}: the bucket does not exist "
                    "(the server creates it at startup; was it deleted?)"
                ) from e
            raise BlockStoreError(f"block store {self.url}: {action} failed: {detail}") from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise StoreUnavailable(
                f"block store s3://{self.bucket}: no usable AWS credentials ({e}); "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from e
        except (BotoCoreError, aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = str(e) or type(e).__name__
            raise self._unavailable(reason) from e
        except ValueError as e:  # e.g. a malformed endpoint URL
            raise self._unavailable(str(e)) from e

    # -- BlockStore ----------------------------------------------------------

    async def put(self, h: bytes, data: bytes | memoryview) -> None:
        check_hash(h)
        body = data if isinstance(data, bytes) else bytes(data)
        if len(body) > _THREAD_HASH_BYTES:
            digest = await asyncio.to_thread(lambda: hashlib.sha256(body).digest())
        else:
            digest = hashlib.sha256(body).digest()
        if digest != h:
            raise BadBlock(
                f"block {h.hex()}: the {len(body)} bytes sent do not hash to that name (corrupt upload?)"
            )
        s3 = await self._s3()
        try:
            with self._errors(f"put block {h.hex()}"):
                await s3.put_object(
                    Bucket=self.bucket,
                    Key=self._key(h),
                    Body=body,
                    ChecksumSHA256=base64.b64encode(h).decode("ascii"),
                )
        except BlockStoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_info(cause)[0] in _CHECKSUM_CODES:
                raise BadBlock(
                    f"block {h.hex()}: S3 received bytes that do not match the hash (corrupted in transit)"
                ) from cause
            raise

    async def get(self, h: bytes) -> bytes:
        check_hash(h)
        s3 = await self._s3()
        try:
            with self._errors(f"get block {h.hex()}"):
                resp = await s3.get_object(Bucket=self.bucket, Key=self._key(h))
                async with resp["Body"] as stream:
                    data: bytes = await stream.read()
                return data
        except BlockStoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_info(cause)[0] in ("NoSuchKey", "404"):
                raise BlockNotFound(f"block {h.hex()} is not in {self.url}") from None
            raise

    async def has(self, h: bytes) -> bool:
        check_hash(h)
        s3 = await self._s3()
        try:
            with self._errors(f"stat block {h.hex()}"):
                await s3.head_object(Bucket=self.bucket, Key=self._key(h))
            return True
        except BlockStoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_info(cause)[0] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    async def delete(self, h: bytes) -> None:
        check_hash(h)
        s3 = await self._s3()
        with self._errors(f"delete block {h.hex()}"):
            await s3.delete_object(Bucket=self.bucket, Key=self._key(h))

    async def iter_hashes(self) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        start = len(self._keys_prefix)
        with self._errors("list blocks"):
            paginator = s3.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._keys_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            async for page in pages:
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][start:]
                    ab, _, x = rest.partition("/")
                    if len(x) != 64 or ab != x[:2]:
                        continue
                    try:
                        h = bytes.fromhex(x)
                    except ValueError:
                        continue
                    yield h

    async def check(self) -> None:
        """Reach the endpoint and make sure the bucket exists, creating it if not."""
        s3 = await self._s3()
        try:
            with self._errors("check bucket"):
                await s3.head_bucket(Bucket=self.bucket)
            return
        except BlockStoreError as e:
            cause = e.__cause__
            if not (isinstance(cause, ClientError) and _error_info(cause)[0] in ("404", "NoSuchBucket")):
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            with self._errors("create bucket"):
                await s3.create_bucket(**kwargs)
        except BlockStoreError as e:
            cause = e.__cause__
            code = _error_info(cause)[0] if isinstance(cause, ClientError) else ""
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StoreUnavailable(
                    f"block store s3://{self.bucket}: that bucket name belongs to another account; pick another"
                ) from cause
            if isinstance(e, StoreUnavailable):
                raise
            raise StoreUnavailable(
                f"block store s3://{self.bucket}: cannot create the bucket: {e}"
            ) from cause

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
