"""Named crash points for the crash tests (``tests/crash/``).

``FERRY_FAILPOINT=name:count[,name:count...]``, read once when this module is
imported, arms points: the process kills itself with SIGKILL the ``count``-th
time it passes ``hit(name)`` — no clean-up, no flush, exactly as if the power
of that one process went. Unset (always, outside the tests), ``hit`` is one
truth test of an empty dict.

The points sit where a crash is most likely to break an invariant: a block
written but not yet named or recorded, inside the commit transaction before
and after ``COMMIT``, between a commit and its reply, in the middle of GC's
deletions; on the client, mid-download, between staging and rename, between
rename and the state update, and inside a state transaction. README
(Development) lists them.

It lives here because the server and the client both pass failpoints and may
not import each other; beyond reading one environment variable it does
nothing unless armed.
"""

from __future__ import annotations

import os
import signal


def _armed(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or "1")
    return points


_ARMED = _armed(os.environ.get("FERRY_FAILPOINT", ""))


def hit(name: str) -> None:
    """Die here (SIGKILL) if ``name`` is armed and this is its ``count``-th pass."""
    if _ARMED and name in _ARMED:
        _ARMED[name] -= 1
        if _ARMED[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
