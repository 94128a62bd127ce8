"""Fuzzing the LAN handshake (issue 8, part 4): a real serving peer on a TLS
port gets seeded random bytes, random frames and mutations of a genuine
``hello`` on many connections at once. Each connection must be answered or
closed by the peer (never left hanging past its handshake timeout), the peer
must survive every one, and a genuine requester must still get its block.

``FERRY_FUZZ_SEED`` picks the seed, ``FERRY_FUZZ_LAN_CONNECTIONS`` the count."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from client.lan.identity import client_context, load_identity
from client.lan.link import HANDSHAKE_TIMEOUT
from protocol import PROTOCOL_VERSIONS, framing
from protocol import messages as m
from protocol.hashing import block_hash
from server.lan import LanAuthority
from tests.support.lan import ask, start_peer

SEED = int(os.environ.get("FERRY_FUZZ_SEED", "1"))
CONNECTIONS = int(os.environ.get("FERRY_FUZZ_LAN_CONNECTIONS", "60"))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        match rng.randrange(4):
            case 0 if out:  # flip a byte
                out[rng.randrange(len(out))] = rng.randrange(256)
            case 1 if out:  # cut a piece out
                at = rng.randrange(len(out))
                del out[at : at + rng.randint(1, 40)]
            case 2:  # insert junk
                at = rng.randrange(len(out) + 1)
                out[at:at] = rng.randbytes(rng.randint(1, 40))
            case _:  # swap a field's value for another type
                out = bytearray(
                    bytes(out).replace(
                        b'"ticket":"', b'"ticket":' + rng.choice([b"1,", b"null,", b'[],"x":"'])
                    )
                )
    return bytes(out)


def _payload(rng: random.Random, genuine: str) -> bytes:
    match rng.randrange(5):
        case 0:  # bytes that are not a frame at all
            return rng.randbytes(rng.randint(1, 300))
        case 1:  # a well-formed frame of random text or binary
            body = rng.randbytes(rng.randint(0, 200))
            return framing.stream_frame(body.decode("latin-1") if rng.random() < 0.5 else body)
        case 2:  # a frame header announcing more than a frame may hold
            return bytes([rng.choice([1, 2])]) + (2**31 - 1).to_bytes(4, "big") + b"x"
        case 3:  # another request before the hello
            return framing.stream_frame(framing.encode(m.GetBlock(1, os.urandom(32))))
        case _:  # a mutated genuine hello
            return framing.stream_frame(_mutate(rng, genuine.encode()).decode("utf-8", "replace"))


async def _poke(port: int, payload: bytes) -> str:
    """Send ``payload`` on a new TLS connection; how the peer answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT + 10):  # its own bound, plus room for a slow machine
            return "answered" if await reader.read(65536) else "closed"
    except (ConnectionError, OSError):
        return "closed"
    finally:
        writer.close()


async def test_lan_handshake_survives_random_and_mutated_frames(tmp_path: Path) -> None:
    authority = LanAuthority(tmp_path / "server")
    serving, asking = load_identity(tmp_path / "id-serving"), load_identity(tmp_path / "id-asking")
    serving_reply = authority.issue(1, serving.fingerprint, [7])
    asking_reply = authority.issue(1, asking.fingerprint, [7])
    data = os.urandom(20_000)
    h = block_hash(data)

    async def read_block(wanted: bytes, tags: frozenset[str], asker: bytes) -> bytes | None:
        return data if wanted == h else None

    peer = await start_peer(serving, serving_reply, read_block)
    port = peer.sockets[0].getsockname()[1]
    try:
        genuine = framing.encode(m.Hello(list(PROTOCOL_VERSIONS), "fuzz", asking_reply.ticket, asking.cert_b64,
                                         asking.prove(serving.fingerprint)))  # fmt: skip
        rng = random.Random(SEED)
        payloads = [_payload(rng, genuine) for _ in range(CONNECTIONS)]
        outcomes = await asyncio.gather(*(_poke(port, p) for p in payloads))  # a hang fails on its timeout
        assert set(outcomes) <= {"answered", "closed"}, outcomes
        print(f"LAN handshake fuzz: seed {SEED}, {CONNECTIONS} connections: "
              f"{outcomes.count('answered')} answered, {outcomes.count('closed')} closed")  # fmt: skip
        # the peer is still up and still serves a genuine requester
        got = await ask(port, asking, asking_reply.ticket, asking_reply.server_key, h)
        assert got == data, got
    finally:
        peer.close()
        await peer.wait_closed()
