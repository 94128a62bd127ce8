"""LAN wire pieces without sockets: announcements are ignored cheaply unless
well-formed; ticket claims parse strictly and expire; discovery tags rotate."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import lan


def test_announcement_round_trips() -> None:
    tags = [lan.discovery_tag("ab" * 32, 7), lan.discovery_tag("cd" * 32, 7)]
    got = lan.decode_announcement(lan.encode_announcement("inst", 17500, tags))
    assert got == lan.Announcement("inst", 17500, frozenset(tags))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"[1, 2]",
        b"{not json",
        orjson.dumps({"ferry": 2, "id": "x", "port": 1, "tags": []}),
        orjson.dumps({"ferry": 1, "id": 5, "port": 1, "tags": []}),
        orjson.dumps({"ferry": 1, "id": "x", "port": 0, "tags": []}),
        orjson.dumps({"ferry": 1, "id": "x", "port": 70000, "tags": []}),
        orjson.dumps({"ferry": 1, "id": "x", "port": "17500", "tags": []}),
        orjson.dumps({"ferry": 1, "id": "x", "port": 1, "tags": ["short"]}),
        orjson.dumps({"ferry": 1, "id": "x", "port": 1, "tags": ["0123456789abcdef"] * 65}),
        b"{" + b" " * 2000 + b"}",
    ],
)
def test_malformed_announcements_are_ignored(data: bytes) -> None:
    assert lan.decode_announcement(data) is None


@given(st.binary(max_size=2000))
def test_no_datagram_makes_the_decoder_raise(data: bytes) -> None:
    lan.decode_announcement(data)


def test_discovery_tags_depend_on_key_and_epoch() -> None:
    key, other = "11" * 32, "22" * 32
    assert lan.discovery_tag(key, 1) == lan.discovery_tag(key, 1)
    assert len({lan.discovery_tag(key, 1), lan.discovery_tag(key, 2), lan.discovery_tag(other, 1)}) == 3
    assert lan.epoch_of(lan.EPOCH_S * 5 + 1) == 5


def test_ticket_claims_parse_and_expire() -> None:
    claims = lan.Claims(b"\x01" * 32, frozenset({"t1", "t2"}), 1000)
    ticket = lan.join_ticket(lan.claims_bytes(claims), b"sig")
    signed, sig = lan.split_ticket(ticket)
    assert sig == b"sig"
    assert lan.parse_claims(signed, 999) == claims
    with pytest.raises(lan.BadTicket, match="expired"):
        lan.parse_claims(signed, 1000)


@pytest.mark.parametrize("ticket", ["", "a.b.c", "nodot", "!!!.???", "e30.c2ln"])
def test_malformed_tickets_are_refused(ticket: str) -> None:
    with pytest.raises(lan.BadTicket):
        signed, _ = lan.split_ticket(ticket)
        lan.parse_claims(signed, 0)
