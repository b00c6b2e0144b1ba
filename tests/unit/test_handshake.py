"""The parent's side of the executor's handshake (runtime.executor.launcher.Handshake), message by message.

Stage 1 sends ChildPid and the child sends RunHooks (create, with runtime hooks) and Ready, on one socket: the pid
may come anywhere among the child's messages. Every such order, in both modes (create: done at Ready; exec: done
at the end-of-file of the exec), Failure and end-of-file at every point. The callers' reading of it, with real
processes, is in tests/executor/test_handshake.py.
"""

from __future__ import annotations

import pytest

from runtime import errors
from runtime.executor import launcher, protocol
from runtime.executor.launcher import DIED, KEEP_READING, Done, Failed, Handshake, RunHooksFor

STAGE1 = 100
PID = 200


def _orders(child: list[protocol.Message]) -> list[list[protocol.Message]]:
    """`child`'s messages in their order, with stage 1's ChildPid at each position among them where it can be: a
    child that asked for hooks waits for HooksDone, which needs the pid, before it sends Ready."""
    last = len(child) - 1 if protocol.RunHooks() in child else len(child)
    return [[*child[:i], protocol.ChildPid(PID), *child[i:]] for i in range(last + 1)]


def _expected(order: list[protocol.Message], until_exec: bool) -> list[launcher.Step]:
    """The rule, spelled out: RunHooksFor once both RunHooks and the pid arrived; Done once Ready and the pid did
    (exec: at end-of-file after that)."""
    steps: list[launcher.Step] = []
    seen: set[type] = set()
    for message in order:
        seen.add(type(message))
        if isinstance(message, (protocol.RunHooks, protocol.ChildPid)) and \
                {protocol.RunHooks, protocol.ChildPid} <= seen and \
                not any(isinstance(s, RunHooksFor) for s in steps):
            steps.append(RunHooksFor(PID))
        elif {protocol.Ready, protocol.ChildPid} <= seen and not until_exec:
            steps.append(Done(PID))
        else:
            steps.append(KEEP_READING)
    if until_exec:
        steps.append(Done(PID))
    return steps


CHILDREN = {"ready": [protocol.Ready()], "hooks": [protocol.RunHooks(), protocol.Ready()]}
CASES = [pytest.param(order, until_exec, id=f"{name}-{'exec' if until_exec else 'create'}-pid{i}")
         for name, child in CHILDREN.items() for until_exec in (False, True)
         for i, order in enumerate(_orders(child))]


@pytest.mark.parametrize(("order", "until_exec"), CASES)
def test_every_order_of_the_messages(order: list[protocol.Message], until_exec: bool) -> None:
    handshake = Handshake(STAGE1, until_exec)
    steps = [handshake.feed(message) for message in order]
    if until_exec:
        steps.append(handshake.feed(None))
    assert steps == _expected(order, until_exec)
    assert sum(isinstance(s, Done) for s in steps) == 1 and isinstance(steps[-1], Done)
    assert sum(isinstance(s, RunHooksFor) for s in steps) == (protocol.RunHooks() in order)


def test_the_expected_steps_are_what_the_rule_says() -> None:
    """The hand-made rule above, checked on two orders written out (so it is not the code restated)."""
    assert _expected([protocol.RunHooks(), protocol.ChildPid(PID), protocol.Ready()], False) == \
        [KEEP_READING, RunHooksFor(PID), Done(PID)]
    assert _expected([protocol.Ready(), protocol.ChildPid(PID)], True) == [KEEP_READING, KEEP_READING, Done(PID)]


@pytest.mark.parametrize(("order", "until_exec"), CASES)
def test_end_of_file_too_early_is_a_death(order: list[protocol.Message], until_exec: bool) -> None:
    """End-of-file before the end (create: before Ready and the pid; exec: before both as well) is a child that
    died without saying why."""
    for cut in range(len(order)):
        handshake = Handshake(STAGE1, until_exec)
        steps = [handshake.feed(message) for message in order[:cut]]
        if any(isinstance(s, Done) for s in steps):
            continue  # create: over before the cut
        step = handshake.feed(None)
        assert isinstance(step, Failed) and type(step.error) is errors.CrispError, (cut, step)
        assert str(step.error) == DIED


@pytest.mark.parametrize(("order", "until_exec"), CASES)
def test_a_failure_at_any_point_is_typed(order: list[protocol.Message], until_exec: bool) -> None:
    steps_before_done = len(order) if until_exec else \
        next(i for i, s in enumerate(_expected(order, False)) if isinstance(s, Done))
    for cut in range(steps_before_done + 1):
        handshake = Handshake(STAGE1, until_exec)
        for message in order[:cut]:
            handshake.feed(message)
        step = handshake.feed(protocol.Failure(errors.kind_of(errors.NotFound()), "no such program"))
        assert isinstance(step, Failed) and isinstance(step.error, errors.NotFound)
        assert str(step.error) == "no such program"


def test_what_a_failure_kills() -> None:
    """Stage 1 always (it may be what hangs), the child once its pid is known."""
    handshake = Handshake(STAGE1, until_exec=True)
    assert handshake.to_kill == (STAGE1,)
    handshake.feed(protocol.RunHooks())
    assert handshake.to_kill == (STAGE1,)
    handshake.feed(protocol.ChildPid(PID))
    assert handshake.to_kill == (PID, STAGE1)


def test_a_timeout_is_deadline_exceeded() -> None:
    step = Handshake(STAGE1).timed_out()
    assert isinstance(step.error, errors.DeadlineExceeded)
    assert str(step.error) == launcher.TIMED_OUT


def test_messages_meant_for_the_children_are_ignored() -> None:
    handshake = Handshake(STAGE1)
    assert handshake.feed(protocol.Go()) == KEEP_READING
    assert handshake.feed(protocol.HooksDone()) == KEEP_READING
    assert handshake.feed(protocol.ChildPid(PID)) == KEEP_READING
    assert handshake.feed(protocol.Ready()) == Done(PID)
