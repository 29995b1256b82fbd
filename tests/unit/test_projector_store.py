"""The projector's run store (projector/store.py): runs on disk as the runs topic holds them, the most
recently used in memory, positions per partition, and a file that does not match emptied."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepstream.avro import Codec
from stepstream.config import KafkaSettings
from stepstream.core import Continue, Recovery, RunState, Waiter, WaiterState, fold
from stepstream.projector.store import RunStore, WaiterStore
from stepstream.store.changelog import Written, state_file
from tests.unit.test_projector_snapshots import written
from tests.unit.test_query_store import T0, Run

CODEC = Codec()
TOPIC = "t.runs"


def store(path: Path, cache_runs: int = 2, topic: str = TOPIC) -> RunStore:
    return RunStore(path, CODEC, topic=topic, cache_runs=cache_runs)


def records(states: list[RunState], partition: int = 0, first_offset: int = 0) -> list[Written]:
    """What the runs topic holds after the projector wrote ``states`` of one run, in order."""
    return [
        Written(partition, first_offset + offset, key.encode(), None if value is None else CODEC.encode(value))
        for offset, (key, value) in enumerate(written(states))
    ]


def a_run(run_id: str, *outputs: str) -> Run:
    run = Run(run_id=run_id)
    for output in outputs:
        run.report(Continue(), outputs=(output,))
    return run


def test_a_run_is_put_together_from_its_records_on_disk(tmp_path: Path) -> None:
    run = a_run("run-1", '"a"', '"b"', '"c"')
    runs = store(tmp_path / "s.sqlite3")
    runs.written(records(run.states), now_ms=T0)

    assert runs.get("run-1") == fold(run.events)
    assert runs.get("nobody") is None
    assert runs.runs_on_disk(0) == 1


def test_results_set_aside_are_gone_from_disk_too(tmp_path: Path) -> None:
    run = a_run("run-1", '"a"')
    run.fail(now=T0 + 1)
    run.recover(Recovery.RESTART, now=T0 + 2)
    runs = store(tmp_path / "s.sqlite3")
    runs.written(records(run.states), now_ms=T0)

    assert runs.get("run-1") == fold(run.events)
    assert runs["run-1"].steps == ()


def test_memory_holds_the_most_recently_used_runs_and_only_after_a_trim(tmp_path: Path) -> None:
    runs = store(tmp_path / "s.sqlite3", cache_runs=2)
    all_runs = [a_run(f"run-{number}", '"x"') for number in range(5)]
    for offset, run in enumerate(all_runs):
        runs.written(records(run.states, first_offset=offset * 10), now_ms=T0)
    for run in all_runs:
        runs[run.run_id] = run.current  # a batch changed them all
    assert runs.in_memory() == 5  # nothing leaves before the batch's records are on disk

    runs.trim()
    assert runs.keys_in_memory() == ["run-3", "run-4"]
    assert runs.get("run-0") == all_runs[0].current  # from disk, and now in memory
    runs.trim()
    assert runs.keys_in_memory() == ["run-4", "run-0"]


def test_a_run_made_by_a_failed_batch_is_absent_again(tmp_path: Path) -> None:
    runs = store(tmp_path / "s.sqlite3")
    runs["run-1"] = a_run("run-1").current
    runs.pop("run-1")  # the transaction failed: the run was never written

    assert runs.get("run-1") is None
    runs.trim()
    assert runs.get("run-1") is None


def test_positions_move_past_what_was_written_and_what_a_restore_could_not_read(tmp_path: Path) -> None:
    runs = store(tmp_path / "s.sqlite3")
    assert runs.position(0) is None
    runs.written(records(a_run("run-1", '"a"').states, first_offset=7), now_ms=T0)
    assert runs.position(0) == 7 + len(written(a_run("run-1", '"a"').states))
    runs.written([], now_ms=T0, read_to={0: 40, 1: 3})
    assert (runs.position(0), runs.position(1)) == (40, 3)
    runs.written([], now_ms=T0, read_to={0: 5})  # never backwards
    assert runs.position(0) == 40


def test_the_file_keeps_runs_and_positions_across_a_restart(tmp_path: Path) -> None:
    run = a_run("run-1", '"a"', '"b"')
    first = store(tmp_path / "s.sqlite3")
    first.written(records(run.states, partition=2), now_ms=T0)
    first.close()

    again = store(tmp_path / "s.sqlite3")
    assert again.get("run-1") == fold(run.events)
    assert again.position(2) == len(written(run.states))
    assert again.seen_ms(2) == T0


def test_a_file_written_for_another_topic_is_emptied(tmp_path: Path) -> None:
    first = store(tmp_path / "s.sqlite3")
    first.written(records(a_run("run-1").states), now_ms=T0)
    first.close()

    other = store(tmp_path / "s.sqlite3", topic="another.runs")
    assert other.get("run-1") is None
    assert other.position(0) is None


def test_a_partition_reset_is_read_again_from_the_beginning(tmp_path: Path) -> None:
    runs = store(tmp_path / "s.sqlite3")
    runs.written(records(a_run("run-1").states, partition=0), now_ms=T0)
    runs.written(records(a_run("run-2").states, partition=1), now_ms=T0)
    runs.get("run-1")

    runs.reset(0)

    assert (runs.get("run-1"), runs.position(0)) == (None, None)
    assert runs.get("run-2") is not None  # the other partition is untouched


def test_without_a_folder_the_file_is_temporary_and_removed(tmp_path: Path) -> None:
    kafka = KafkaSettings(instance_id="pod/0")
    assert state_file("", kafka, "projector") is None
    runs = RunStore(None, CODEC, topic=TOPIC, cache_runs=1)
    path = runs.path
    assert path.exists()
    runs.close()
    assert not path.exists()

    named = state_file(str(tmp_path), kafka, "projector")
    assert named is not None
    assert named.parent == tmp_path
    assert "/" not in named.name  # an instance id cannot name a folder


@pytest.mark.parametrize("cache_runs", [0, -3])
def test_memory_holds_at_least_one_run(tmp_path: Path, cache_runs: int) -> None:
    assert store(tmp_path / "s.sqlite3", cache_runs=cache_runs).cache == 1


# ---------------------------------------------------------------------------------------------
# The waiter indexes, the same way (WaiterStore)


def index(event_id: str, *run_ids: str) -> WaiterState:
    return WaiterState(
        event_id=event_id,
        waiters=tuple(Waiter(run_id=run_id, step_index=0, timeout_at_ms=T0 + 60_000) for run_id in run_ids),
        buffered=(),
    )


def test_waiter_indexes_are_on_disk_the_most_recently_used_in_memory_and_a_tombstone_removes_one(
    tmp_path: Path,
) -> None:
    waiters = WaiterStore(tmp_path / "w.sqlite3", CODEC, topic="t.waiters", cache=2)
    given = {f"paid-{n}": index(f"paid-{n}", f"run-{n}") for n in range(4)}
    waiters.written(
        [Written(n % 2, n, key.encode(), CODEC.encode(state)) for n, (key, state) in enumerate(given.items())], T0
    )
    for key, state in given.items():
        waiters[key] = state
    waiters.trim()

    # then two stay in memory, all are on disk, and each reads back as it was
    assert waiters.in_memory() == 2
    assert (waiters.on_disk(0), waiters.on_disk(1)) == (2, 2)
    assert {key: waiters.get(key) for key in given} == given
    # and a tombstone removes one from disk; a reset empties a partition and its position
    waiters.written([Written(0, 10, b"paid-0", None)], T0)
    waiters.pop("paid-0")
    waiters.trim()
    assert waiters.get("paid-0") is None
    assert waiters.position(0) == 11
    waiters.reset(1)
    assert (waiters.on_disk(1), waiters.position(1), waiters.get("paid-1")) == (0, None, None)
    waiters.close()

    # and a file opened again keeps what it had
    again = WaiterStore(tmp_path / "w.sqlite3", CODEC, topic="t.waiters", cache=2)
    assert again.get("paid-2") == given["paid-2"]
    assert again.position(0) == 11
    again.close()
