"""Run LAN discovery alone (inside a network namespace, for tests): announce
``PORT`` with the discovery tags of ``TAG_KEY`` and print the first peer heard
as ``HOST PORT``. Exits 1 if none is heard within ``SECONDS``."""

from __future__ import annotations

import asyncio
import secrets
import sys

from client.lan.discovery import Discovery
from protocol import lan


async def main(tag_key: str, port: int, seconds: float) -> int:
    found: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    def on_found(host: str, peer_port: int) -> None:
        if not found.done():
            found.set_result((host, peer_port))

    discovery = Discovery(17500, secrets.token_hex(8),
                          lambda epoch: [lan.discovery_tag(tag_key, epoch)], lambda: port, on_found)  # fmt: skip
    await discovery.start()
    try:
        host, peer_port = await asyncio.wait_for(found, seconds)
    except TimeoutError:
        return 1
    finally:
        await discovery.stop()
    print(host, peer_port, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
