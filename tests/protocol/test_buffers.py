"""The keeper of big receive buffers (protocol.buffers): a buffer is handed
out again only once nothing refers to it, the keeper holds a bounded number,
and with an idle time it lets them go; a stream decoder given a keeper reads
big binary frames into its buffers and hands out frames that stay intact."""

from __future__ import annotations

import hashlib
import random
import threading

from protocol import framing
from protocol.buffers import Keeper

KEPT = 4
SIZE = 64 * 1024


def test_a_buffer_is_handed_out_again_only_once_nothing_refers_to_it() -> None:
    keeper = Keeper(bytearray, KEPT, SIZE)
    first = keeper.take(1000)
    assert first is not None and len(first) >= 1000
    other = keeper.take(1000)
    assert other is not None and other is not first  # ``first`` is still held here
    view = memoryview(first)[:10]
    first_id = id(first)
    del first
    third = keeper.take(1000)
    assert third is not None and id(third) != first_id  # a view of it is still alive
    view.release()
    del view, other, third
    again = keeper.take(1000)
    assert id(again) == first_id  # nothing refers to it any more: the same buffer
    assert keeper.taken == 4


def test_buffers_are_bounded_and_none_is_made_for_a_frame_bigger_than_they_are() -> None:
    keeper = Keeper(bytearray, KEPT, SIZE)
    assert keeper.take(SIZE + 1) is None
    held = [keeper.take(SIZE) for _ in range(KEPT)]
    assert all(b is not None for b in held)
    assert keeper.take(10) is None  # all busy: the caller makes its own
    held.pop()
    assert keeper.take(10) is not None  # one came free
    assert keeper.taken == KEPT + 1


def test_buffers_nobody_holds_are_let_go_once_idle_and_held_ones_are_not() -> None:
    keeper = Keeper(
        bytearray, KEPT, SIZE, idle_s=3600.0
    )  # (the timer would fire in an hour: driven by hand here)
    held = keeper.take(100)
    assert keeper.take(100) is not None  # taken and dropped at once: idle
    assert keeper.held() == 2
    keeper._on_timer()  # just taken: not idle long enough, nothing is let go
    assert keeper.held() == 2
    keeper._last -= 3600.0
    keeper._on_timer()
    assert keeper.held() == 1  # the idle one is gone; the one ``held`` refers to stays
    assert held is not None and keeper.take(100) is not held
    del held
    keeper._last -= 3600.0
    keeper._on_timer()
    assert keeper.held() == 0


def test_a_keeper_with_an_idle_time_lets_its_buffers_go_by_itself() -> None:
    keeper = Keeper(bytearray, KEPT, SIZE, idle_s=0.05)
    assert keeper.take(100) is not None
    gone = threading.Event()
    release = keeper.release_idle

    def watched() -> None:
        release()
        if keeper.held() == 0:
            gone.set()

    keeper.release_idle = watched  # type: ignore[method-assign]
    assert gone.wait(10), "the keeper's timer never let its idle buffer go"


def test_a_decoder_with_a_keeper_reads_big_binary_frames_into_its_buffers_and_each_stays_intact() -> None:
    rnd = random.Random(5)
    keeper = Keeper(bytearray, 3, 300_000)
    decoder = framing.StreamDecoder(400_000, keeper)
    sent: list[bytes | str] = []
    for _ in range(40):
        pick = rnd.random()
        if pick < 0.2:
            sent.append(f"text {rnd.random()}")
        elif pick < 0.4:
            sent.append(rnd.randbytes(rnd.randrange(0, 70_000)))  # small: its own bytearray
        else:
            sent.append(rnd.randbytes(rnd.randrange(64 * 1024, 400_000)))  # bigger than a kept buffer, too
    stream = b"".join(framing.stream_frame(p) for p in sent)
    got: list[str | bytearray | memoryview] = []
    at = 0
    while at < len(stream):  # as a transport writes into get_buffer(), in uneven reads
        buf = decoder.get_buffer()
        n = min(len(buf), rnd.randrange(1, 100_000), len(stream) - at)
        buf[:n] = stream[at : at + n]
        decoder.buffer_updated(n)
        at += n
        got.extend(decoder.frames_received())  # every frame is held to the end: none may be overwritten
    assert [p if isinstance(p, str) else hashlib.sha256(p).hexdigest() for p in got] == [
        p if isinstance(p, str) else hashlib.sha256(p).hexdigest() for p in sent
    ]
    assert keeper.taken == 3  # all three buffers went to the first big frames, then all were held

    del got, buf  # nobody holds a frame now: the buffers are used again, with no new ones
    again = [rnd.randbytes(100_000) for _ in range(6)]
    for p in again:
        decoder.receive_data(framing.stream_frame(p))
        (frame,) = decoder.frames_received()
        assert isinstance(frame, memoryview) and frame == p
    assert keeper.taken == 3 + 6 and keeper.held() == 3
