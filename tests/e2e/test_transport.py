"""The desktop client's connection to a real `ferry server`: blocks of every
size go up and come back intact, read through the client's one-copy frame
reader (client.wsframes)."""

from __future__ import annotations

import json
import os

from client.transport import open_connection
from client.wsframes import FrameReader
from protocol.hashing import block_hash
from tests.support.servers import Device


async def test_blocks_up_and_down_through_the_clients_frame_reader(alice: Device) -> None:
    creds = json.loads((alice.home / "credentials.json").read_text())
    conn = await open_connection(creds["server"], creds["token"])
    try:
        assert isinstance(conn.ws.protocol.reader, FrameReader)
        blocks = [os.urandom(n) for n in (1, 4096, 300_000, 4 * 1024 * 1024 - 7)]
        for data in blocks:
            await conn.put_block(block_hash(data), data)
        for data in blocks:
            assert bytes(await conn.get_block(block_hash(data))) == data
    finally:
        await conn.close()
