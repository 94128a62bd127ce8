"""Uploading a file a scan just chunked: blocks are read by offset and, while
the file is still as the scan saw it, not hashed a second time on the device.
The server hashes every block, so a file changed under the upload without its
stat showing it is still never stored as the scan's blocks."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from client import transfer
from client.home import load_credentials
from client.transport import Connection
from protocol import messages as m
from protocol.chunking import chunk_bytes
from protocol.errors import ErrorCode, ProtocolError
from tests.support.servers import Device


def _known(path: Path) -> transfer.KnownBlocks:
    blocks = list(chunk_bytes(path.read_bytes()))
    st = path.stat()
    return transfer.KnownBlocks((st.st_size, st.st_mtime_ns, st.st_ino), [b.offset for b in blocks],
                                [b.length for b in blocks], [b.hash for b in blocks])  # fmt: skip


@pytest.mark.parametrize("backend", ["file"])
def test_known_blocks_upload_unhashed_and_a_hidden_change_is_refused(alice: Device, tmp_path: Path) -> None:
    remote = transfer.Remote(load_credentials(alice.home), retry_for=5)
    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(3).randbytes(3 << 20))  # (a fixed 3 MiB in more than one block)
    known = _known(path)
    assert len(known.hashes) > 1
    hashed: list[int] = []
    real = transfer._read_block

    def counting(*args: object) -> bytes:
        hashed.append(1)
        return real(*args)  # type: ignore[arg-type]

    async def go() -> None:
        transfer._read_block = counting  # type: ignore[assignment]
        try:
            plan, _ = await transfer.send_file(remote, path, lambda n: None, known)
            assert plan.sent == path.stat().st_size and not hashed  # all sent, none hashed again
            # same size, same mtime, same inode, other bytes: only the server can tell
            other = tmp_path / "other.bin"
            other.write_bytes(random.Random(4).randbytes(3 << 20))
            changed = _known(other)
            st = other.stat()
            with open(other, "r+b") as f:
                f.seek(changed.offsets[1])
                f.write(b"\0" * 16)
            os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
            with pytest.raises(ProtocolError) as raised:
                await transfer.send_file(remote, other, lambda n: None, changed)
            assert (
                raised.value.code == ErrorCode.CONFLICT and "changed while uploading" in raised.value.message
            )
            assert not hashed

            # the server stored no block under a name its bytes do not have
            async def missing(conn: Connection) -> list[bytes]:
                reply = await conn.call(lambda i: m.QueryBlocks(i, changed.hashes), m.BlocksMissing)
                return list(reply.missing)

            assert changed.hashes[1] in await remote.run(missing)
        finally:
            transfer._read_block = real  # type: ignore[assignment]
            await remote.close()

    asyncio.run(asyncio.wait_for(go(), 60))
