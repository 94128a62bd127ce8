"""Version negotiation: both sides name what they speak; the highest common one wins."""

from __future__ import annotations

from collections.abc import Sequence

from protocol import PROTOCOL_VERSIONS
from protocol.errors import ErrorCode, ProtocolError


def negotiate(offered: Sequence[int], ours: Sequence[int] = PROTOCOL_VERSIONS) -> int:
    common = set(offered) & set(ours)
    if not common:
        theirs = ", ".join(map(str, offered)) or "none"
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"unsupported protocol version ({theirs}); this server speaks {', '.join(map(str, ours))}",
            {"supported": list(ours)},
        )
    return max(common)
