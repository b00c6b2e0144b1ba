"""The fail points' lint: every step of the RPCs that change state has a fail point after it, and the code and the
one list (runtime/failpoints.py) name the same points."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import failpoints

ROOT = Path(__file__).resolve().parents[2]
EXEMPT = "# no fail point:"
POINT_CALLS = {"point", "point_in_thread"}


def _point_name(node: ast.AST) -> str | None:
    """The point a call names, for `<anything>.point("name")` and `<anything>.point_in_thread("name")`."""
    if isinstance(node, ast.Await):
        node = node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in POINT_CALLS
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value
    return None


def _awaits(node: ast.AST) -> bool:
    """Whether a statement awaits something (nested functions and lambdas run later: not counted)."""
    if isinstance(node, ast.Await):
        return True
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
        return False
    return any(_awaits(child) for child in ast.iter_child_nodes(node))


def _simple_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a body in the order they are written, compound statements opened."""
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        blocks: list[list[ast.stmt]] = []
        if isinstance(stmt, ast.If | ast.For | ast.AsyncFor | ast.While):
            blocks = [stmt.body, stmt.orelse]
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            blocks = [stmt.body]
        elif isinstance(stmt, ast.Try | ast.TryStar):
            blocks = [stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody]
        if blocks:
            for block in blocks:
                yield from _simple_statements(block)
        else:
            yield stmt


def steps_without_point(source: str) -> list[str]:
    """Every step (a statement that awaits, unless its first line says `# no fail point: <why>`) of the coroutine
    in `source` that is not followed by a fail point before the next step or the end."""
    lines = source.splitlines()
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.AsyncFunctionDef), "a step function is a coroutine"
    missing: list[str] = []
    pending: ast.stmt | None = None
    for stmt in _simple_statements(function.body):
        if isinstance(stmt, ast.Expr) and _point_name(stmt.value) is not None:
            pending = None
            continue
        if not _awaits(stmt) or EXEMPT in lines[stmt.lineno - 1]:
            continue  # not a step (a statement that says why it needs no point is not one either)
        if pending is not None:
            missing.append(lines[pending.lineno - 1].strip())
        pending = stmt
    if pending is not None:
        missing.append(lines[pending.lineno - 1].strip())
    return missing


def _source_of(target: str) -> str:
    module_name, qualname = target.split(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]


STEP_FUNCTIONS = [(op, f) for op, functions in failpoints.STEP_FUNCTIONS.items() for f in functions]


@pytest.mark.parametrize(("operation", "target"), STEP_FUNCTIONS, ids=[f for _, f in STEP_FUNCTIONS])
def test_every_step_has_a_fail_point(operation: str, target: str) -> None:
    source = _source_of(target)
    assert steps_without_point(source) == []
    # and the points it calls are its operation's
    names = {_point_name(node) for node in ast.walk(ast.parse(source))} - {None}
    assert names and names <= set(failpoints.STEPS[operation]), names


def _points_in_code() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package in ("cri", "runtime", "shim"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = _point_name(node) if isinstance(node, ast.Call) else None
                if name is not None:
                    found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_code_and_the_list_name_the_same_points() -> None:
    in_code = _points_in_code()
    assert sorted(set(in_code) - failpoints.ALL) == []  # a point nobody listed
    assert sorted(failpoints.ALL - set(in_code)) == []  # a listed point the code never reaches
    assert {name: places for name, places in in_code.items() if len(places) > 1} == {}  # one place each
    assert len(failpoints.ALL) == sum(len(points) for points in failpoints.STEPS.values())  # no name twice
    # every RPC's steps are read (crispd's start and the shim's callbacks are not coroutines of steps)
    assert set(failpoints.STEP_FUNCTIONS) == set(failpoints.STEPS) - {"crispd", "shim"}


def test_the_lint_finds_a_step_without_a_point() -> None:
    source = textwrap.dedent('''
        async def make(self):
            await self.points.point("a")
            await mkdir()
            await self.points.point("b")
            if x:
                await mount()
            with suppress(E):
                await kill()  # no fail point: nothing to undo
            await write()
            try:
                await unpin()
            finally:
                await self.points.point("c")
            await record()
    ''')
    assert steps_without_point(source) == ["await mount()", "await write()", "await record()"]
