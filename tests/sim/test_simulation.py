"""The deterministic simulation (see tests/sim/world.py and RELIABILITY.md,
"Deterministic simulation"): whole clients and an in-memory server in one
process, on a virtual clock, with faults, checked against the invariants.

CI runs :data:`SEEDS` seeds in :data:`CHUNKS` parametrized chunks (so pytest-xdist
workers share them). ``FERRY_SIM_SEEDS=N`` runs N seeds instead;
``FERRY_SIM_SEED=a,b:1`` replays given seeds (in scenario 1 after a colon) and
prints their whole operation log.
A failing seed is shrunk (operations dropped while it still fails) and its
minimal operation log printed with the seed; fixed, it joins :data:`REGRESSIONS`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client.engine import Engine
from tests.sim import world
from tests.sim.scenario import SCENARIO

SEEDS = int(os.environ.get("FERRY_SIM_SEEDS", "1000"))
CHUNKS = 12
# "seed" or "seed:scenario", comma-separated
REPLAY = [(int(s.split(":")[0]), int(s.split(":")[1]) if ":" in s else SCENARIO)
          for s in os.environ.get("FERRY_SIM_SEED", "").split(",") if s.strip()]  # fmt: skip

# seeds that found a defect, with the scenario they ran (tests/sim/world.py: SCENARIO) and the defect;
# each passes since its fix
REGRESSIONS = {
    (2, 1): "the .ferry-root marker was not durable: a crash lost it while the state said 'synced', "
    "and every later sync refused to run",
    (
        116,
        1,
    ): "a first sync on a full disk left an empty marker never made durable (same failure after a crash)",
    (296, 1): "a folder deleted on one device took with it a file another device had just put in it",
    (596, 1): "a second NFD twin renamed in the same second replaced the first one's conflicted copy",
    (945, 1): "on a case-insensitive disk a server move onto a name differing only in case from another "
    "file was skipped, yet recorded as done; the next cycle deleted the moved file on the server",
    (1280, 1): "the same as seed 945, which later engine changes (LAN, disk-full handling) steer past it",
    (29, 2): "a shared folder's mount point renamed locally: the refused move left the rest of the plan "
    "downloading into the renamed copy, one level deeper every cycle, without end",
    (131, 2): "a shared folder that went away: files other devices uploaded there as their own were "
    "pulled, then forgotten with the mount; every device kept uploading over them",
    (1000, 2): "a folder deleted, then a shared folder mounted at its path before a device pulled the "
    "deletion: the old files stayed in that device's remote tree for ever",
    (1883, 2): "a case clash resolved twice in one second: the second rename took the first one's name, "
    "was refused, and the clash was never resolved",
    (2011, 2): "(a defect of this branch, never on main) the refused-move re-planning looped for ever on a "
    "server move-aside inside a read-only share",
    (4654, 2): "on a case-insensitive disk a server move of x.txt to X.txt/café.md/x.txt failed (the way "
    "ran through the file itself) yet was recorded as made; the next cycle deleted the file on the server",
    (235, 2): "a mount point deleted locally was held back forever: the device never matched the server "
    "again",
}


def _report(seed: int, scenario: int = SCENARIO) -> str:
    """Shrink the failing seed and describe its smallest failing run."""
    smallest = world.shrink(
        seed, lambda ops: bool(world.run(seed, ops, scenario=scenario).violations), scenario
    )
    result = world.run(seed, smallest, log_engine=True, scenario=scenario)
    lines = [f"seed {seed} (scenario {scenario}) fails (replay: FERRY_SIM_SEED={seed}:{scenario} pytest -s tests/sim -k replay)",
             "violations:"]  # fmt: skip
    lines += [f"  {v}" for v in result.violations[:10]]
    lines += [f"minimal operation log ({len(smallest)} operations):", *result.log]
    return "\n".join(lines)


def _check(seeds: range | list[int], scenario: int = SCENARIO) -> dict[str, int]:
    totals: dict[str, int] = {}
    for seed in seeds:
        result = world.run(seed, scenario=scenario)
        if result.violations:
            pytest.fail(_report(seed, scenario), pytrace=False)
        for k, v in result.figures.items():
            totals[k] = totals.get(k, 0) + v
    return totals


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeds(chunk: int) -> None:
    seeds = range(chunk, SEEDS, CHUNKS)
    totals = _check(seeds)
    # not vacuous: these runs did sync, keep edits, crash and lose frames
    assert totals["finished_syncs"] > len(seeds) and totals["must_keep"] > len(seeds), totals
    assert totals["frames"] > 0 and (totals["crashes"] > 0 or len(seeds) < 20), totals


@pytest.mark.parametrize(("seed", "scenario"), sorted(REGRESSIONS))
def test_regression_seed(seed: int, scenario: int) -> None:
    _check([seed], scenario)


def test_regression_seeds_fail_without_their_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle has teeth: with a fix undone, its seed fails again."""
    with monkeypatch.context() as undo:
        undo.setattr(Engine, "_newest_within", lambda self, path: None)
        # seed 296 found it; since uploads commit two batches at a time and skip the
        # folders their commits create, 41 is the seed of the first 1,600 that hits it
        assert any("I5" in v for v in world.run(41, scenario=1).violations)
    moved = Engine._move_local

    def as_before(self: Engine, src: str, dst: str) -> bool:
        moved(self, src, dst)
        return True  # a skipped move counted as made

    with monkeypatch.context() as undo:
        undo.setattr(Engine, "_move_local", as_before)
        # seed 945 found it; since the LAN and disk-full merges it takes another path, 1280 still hits it
        assert any("I5" in v for v in world.run(1280, scenario=1).violations)


@pytest.mark.skipif(not REPLAY, reason="set FERRY_SIM_SEED=a,b to replay seeds")
def test_replay() -> None:
    for seed, scenario in REPLAY:
        result = world.run(seed, log_engine=True, scenario=scenario)
        print("\n".join(result.log + result.violations))
        assert not result.violations, _report(seed, scenario)


def test_same_seed_same_final_state() -> None:
    """I8: a seed run twice ends in the same state, here and in another process
    (with another string hash seed, so no set or dict order leaks into it)."""
    seeds = [3, 17, 296]
    here = [world.run(seed).state_hash for seed in seeds]
    assert here == [world.run(seed).state_hash for seed in seeds]
    code = "import sys; from tests.sim import world; print(*(world.run(int(s)).state_hash for s in sys.argv[1:]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code, *map(str, seeds)], env=env, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.split() == here
