"""A run's snapshot written as deltas: its state without results after each change, each result once;
a restore puts them together again into the state the fold of the run's events gives."""

from __future__ import annotations

from dataclasses import replace

from stepstream.core import Continue, RecordedStep, Recovery, RunState, StepKind, fold
from stepstream.projector.snapshots import Assembly, parse_step_key, parts, step_key
from tests.unit.test_query_store import T0, Run

Write = tuple[str, RunState | RecordedStep | None]


def result(index: int) -> RecordedStep:
    return RecordedStep(index=index, name=f"step-{index}", kind=StepKind.RUN, output='"x"')


def restored(*writes: Write) -> dict[str, RunState]:
    """What a restore makes of ``writes`` (each a key and its record, None a tombstone), oldest first."""
    runs = Assembly()
    for key, value in writes:
        step = parse_step_key(key)
        if step is None:
            assert not isinstance(value, RecordedStep)
            runs.header(key, value)
        else:
            assert not isinstance(value, RunState)
            runs.step(*step, value)
    return {state.run_id: state for state in runs.states()}


def written(states: list[RunState]) -> list[Write]:
    """What the projector writes for a run that went through ``states``, one change after another."""
    writes: list[Write] = []
    previous: RunState | None = None
    for state in states:
        delta = parts(previous, state)
        writes += [(step_key(state.run_id, step.index), step) for step in delta.recorded]
        writes += [(step_key(state.run_id, index), None) for index in delta.removed]
        writes.append((state.run_id, delta.header))
        previous = state
    return writes


def test_each_change_writes_the_state_without_results_and_only_the_new_results() -> None:
    run = Run()
    before = run.current
    run.report(Continue(), outputs=('"a"', '"b"'))

    delta = parts(before, run.current)

    assert delta.header == replace(run.current, steps=())
    assert [step.index for step in delta.recorded] == [0, 1]
    assert delta.removed == ()
    assert parts(run.current, run.current).recorded == ()  # nothing new, nothing written again


def test_a_restore_of_the_parts_gives_the_state_the_events_fold_to() -> None:
    run = Run()
    for outputs in (('"a"',), ('"b"', '"c"'), ('"d"',)):
        run.report(Continue(), outputs=outputs)

    assert restored(*written(run.states)) == {run.run_id: fold(run.events)}


def test_results_set_aside_by_a_restart_are_tombstoned_and_stay_gone() -> None:
    run = Run()
    run.report(Continue(), outputs=('"a"',))
    run.fail(now=T0 + 1)
    run.recover(Recovery.RESTART, now=T0 + 2)

    writes = written(run.states)

    assert (step_key(run.run_id, 0), None) in writes
    assert restored(*writes) == {run.run_id: fold(run.events)}
    assert restored(*writes)[run.run_id].steps == ()


def test_a_snapshot_written_whole_by_an_earlier_version_reads_as_it_is_with_the_parts_written_since() -> None:
    whole = replace(Run().current, steps=(result(0), result(1)))

    states = restored((whole.run_id, whole), (step_key(whole.run_id, 2), result(2)))

    assert [step.index for step in states[whole.run_id].steps] == [0, 1, 2]


def test_a_result_without_its_run_is_not_a_run() -> None:
    assert restored((step_key("run_lost", 0), result(0))) == {}


def test_step_keys_name_the_run_and_the_index() -> None:
    assert parse_step_key(step_key("run_01.2:x-y", 17)) == ("run_01.2:x-y", 17)
    assert parse_step_key("run_01.2:x-y") is None
