"""Protocol version negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import PROTOCOL_VERSIONS
from protocol.errors import ErrorCode, ProtocolError
from protocol.version import negotiate

VERSIONS = st.lists(st.integers(0, 50), max_size=8)


def test_this_code_speaks_version_1() -> None:
    assert 1 in PROTOCOL_VERSIONS
    assert list(PROTOCOL_VERSIONS) == sorted(set(PROTOCOL_VERSIONS))  # newest last, no repeats
    assert negotiate([1]) == 1
    assert negotiate(list(PROTOCOL_VERSIONS)) == PROTOCOL_VERSIONS[-1]


@pytest.mark.parametrize(
    ("offered", "ours", "expected"),
    [
        ([1], (1,), 1),
        ([1, 2, 3], (2, 3, 4), 3),
        ([3, 2, 1], (1, 2, 3), 3),  # order does not matter
        ([5, 1], (1, 2), 1),
        ([2, 2, 2], (1, 2), 2),
    ],
)
def test_picks_the_highest_common_version(offered: list[int], ours: tuple[int, ...], expected: int) -> None:
    assert negotiate(offered, ours) == expected


@given(offered=VERSIONS, ours=VERSIONS.filter(bool))
def test_negotiate_is_max_of_the_intersection(offered: list[int], ours: list[int]) -> None:
    common = set(offered) & set(ours)
    if common:
        chosen = negotiate(offered, ours)
        assert chosen == max(common)
        assert chosen in offered and chosen in ours
        assert negotiate(list(reversed(offered)), list(reversed(ours))) == chosen
    else:
        with pytest.raises(ProtocolError) as e:
            negotiate(offered, ours)
        assert e.value.code is ErrorCode.UNSUPPORTED_VERSION
        assert e.value.detail == {"supported": list(ours)}
        spoken = e.value.message.split("speaks", 1)[1]
        assert [int(v) for v in spoken.replace(",", " ").split()] == list(ours)


@pytest.mark.parametrize(("offered", "ours"), [([2, 3], (1,)), ([], (1,)), ([7], (4, 5, 6))])
def test_no_common_version_names_what_the_server_speaks(offered: list[int], ours: tuple[int, ...]) -> None:
    with pytest.raises(ProtocolError) as e:
        negotiate(offered, ours)
    assert e.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert "this server speaks " + ", ".join(map(str, ours)) in e.value.message
    for v in offered:
        assert str(v) in e.value.message  # and what the client offered


def test_default_server_versions_are_named_when_nothing_matches() -> None:
    with pytest.raises(ProtocolError) as e:
        negotiate([max(PROTOCOL_VERSIONS) + 1])
    assert e.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert e.value.message.endswith("speaks " + ", ".join(map(str, PROTOCOL_VERSIONS)))
