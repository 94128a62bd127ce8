"""The rewind planner, without a database: random "then" and "now" trees,
the plan applied step by step, checked against the rules a syncing device
relies on (never two nodes at one path, never a node without its folder) and
against the result (exactly the target, same file ids wherever possible)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.rewind import Node, Op, plan

ROOT = "/f"
NAMES = ["a", "b", "c"]


@st.composite
def trees(draw: st.DrawFn, ids: list[int]) -> dict[str, tuple[int, str, int]]:
    """path -> (file id, kind, content) under ROOT, folders before what is in them."""
    out: dict[str, tuple[int, str, int]] = {ROOT: (1, "dir", 0)}
    used = {1}
    folders = [ROOT]
    for _ in range(draw(st.integers(0, 10))):
        parent = draw(st.sampled_from(folders))
        path = f"{parent}/{draw(st.sampled_from(NAMES))}"
        if path in out or path.count("/") > 4:
            continue
        free = [i for i in ids if i not in used]
        if not free:
            break
        fid = draw(st.sampled_from(free))
        used.add(fid)
        kind = "dir" if fid % 3 == 0 else "file"  # a file id keeps its kind
        out[path] = (fid, kind, draw(st.integers(0, 2)) if kind == "file" else 0)
        if kind == "dir":
            folders.append(path)
    return out


def nodes(tree: dict[str, tuple[int, str, int]]) -> list[Node]:
    return [Node(p, fid, fid * 100 + c, kind, (c,)) for p, (fid, kind, c) in tree.items()]


def apply(
    ops: list[Op], now: dict[str, tuple[int, str, int]], sources: dict[int, Node]
) -> dict[str, tuple[int, str, int]]:
    state = dict(now)
    where = {fid: p for p, (fid, _, _) in state.items()}
    fresh = 1000
    for op in ops:
        if op.deleted:
            assert state.get(op.path, (None,))[0] == op.file_id, f"tombstone of what is not there: {op}"
            assert not any(p.startswith(op.path + "/") for p in state), (
                f"folder deleted before its contents: {op}"
            )
            del state[op.path], where[op.file_id]
            continue
        src = sources[op.source]
        fid = op.file_id
        if fid is None:
            fresh += 1
            fid = fresh
        old = where.pop(fid, None)
        if old is not None:
            del state[old]
        assert op.path not in state, f"two nodes at {op.path}: {op}"
        parent = op.path.rsplit("/", 1)[0]
        assert op.path == ROOT or state.get(parent, (0, "file"))[1] == "dir", f"no folder for {op}"
        state[op.path] = (fid, src.kind, src.content[0])  # type: ignore[assignment]
        where[fid] = op.path
    return state


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_plan_reaches_the_target_keeping_file_ids(data: st.DataObject) -> None:
    then = data.draw(trees(list(range(2, 12))))
    now = data.draw(trees(list(range(2, 16))))
    now[ROOT] = then[ROOT]
    # some files of "then" live outside the folder now: they come back as copies
    movable = sorted({f for f, _, _ in then.values()} - {f for f, _, _ in now.values()})
    outside = set(data.draw(st.lists(st.sampled_from(movable), unique=True))) if movable else set()
    target, current = nodes(then), nodes(now)
    sources = {n.version: n for n in target + current}
    ops = plan(target, current, outside)
    result = apply(ops, now, sources)

    assert {p: (k, c) for p, (_, k, c) in result.items()} == {p: (k, c) for p, (_, k, c) in then.items()}
    for path, (fid, _, _) in then.items():
        if fid in outside:
            assert result[path][0] != fid
        else:
            assert result[path][0] == fid, path
    assert plan(current, current, set()) == []  # already as it was: nothing to write
    assert plan(nodes(result), nodes(result), set()) == []


def test_swapped_names_go_back_without_a_temporary_path() -> None:
    then = {ROOT: (1, "dir", 0), f"{ROOT}/a": (2, "file", 1), f"{ROOT}/b": (3, "file", 2)}
    now = {ROOT: (1, "dir", 0), f"{ROOT}/a": (3, "file", 2), f"{ROOT}/b": (2, "file", 1)}
    ops = plan(nodes(then), nodes(now), set())
    assert apply(ops, now, {n.version: n for n in nodes(then) + nodes(now)}) == then
    assert {op.path for op in ops} == {f"{ROOT}/a", f"{ROOT}/b"}


def test_rewinding_twice_changes_nothing_the_second_time() -> None:
    then = {ROOT: (1, "dir", 0), f"{ROOT}/moved-out": (2, "file", 1)}
    now = {ROOT: (1, "dir", 0), f"{ROOT}/new": (3, "file", 1)}
    sources = {n.version: n for n in nodes(then) + nodes(now)}
    first = apply(plan(nodes(then), nodes(now), {2}), now, sources)
    assert first[f"{ROOT}/moved-out"][0] not in (2, 3)  # a copy; "new" was deleted
    again = nodes(first)
    assert plan(nodes(then), again, {2}) == []


def test_undelete_writes_parents_first() -> None:
    then = {
        ROOT: (1, "dir", 0),
        f"{ROOT}/b": (3, "dir", 0),
        f"{ROOT}/b/c": (4, "file", 1),
        f"{ROOT}/a": (2, "file", 1),
    }
    ops = plan(nodes(then), [], set())
    assert [op.path for op in ops] == [ROOT, f"{ROOT}/a", f"{ROOT}/b", f"{ROOT}/b/c"]
    assert apply(ops, {}, {n.version: n for n in nodes(then)}) == then
