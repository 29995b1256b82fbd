"""Readiness that tells the truth: a partition whose input waits without progress past the stall bound
turns its service not ready, naming it and the last error, until it moves again."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from stepstream.clock import ManualClock
from stepstream.kafka.progress import Progress, readiness

T0 = 1_700_000_000_000
A, B = TopicPartition("stepstream.triggers", 0), TopicPartition("stepstream.commands", 7)


def test_input_done_in_time_is_no_problem() -> None:
    clock = ManualClock(T0)
    progress = Progress(clock, stall_ms=1_000)

    progress.waiting([A])
    clock.advance(900)
    progress.done([A])
    clock.advance(5_000)

    assert progress.problem() is None


def test_input_that_waits_past_the_bound_names_its_partitions_and_the_last_error() -> None:
    clock = ManualClock(T0)
    progress = Progress(clock, stall_ms=1_000)

    progress.waiting([A])
    clock.advance(600)
    progress.waiting([A, B])  # A keeps waiting from its first time
    progress.failed(RuntimeError("broker says no"))
    clock.advance(500)

    assert progress.problem() == (
        "input has waited 1 s without progress on stepstream.triggers[0]; last error: RuntimeError: broker says no"
    )
    clock.advance(600)
    assert progress.problem() == (
        "input has waited 2 s without progress on stepstream.commands[7], stepstream.triggers[0]; "
        "last error: RuntimeError: broker says no"
    )
    progress.done([A, B])
    assert progress.problem() is None


def test_work_still_in_hand_after_progress_waits_again_from_then() -> None:
    # the executor: its oldest delivery reported, the offset moved, later ones still in flight
    clock = ManualClock(T0)
    progress = Progress(clock, stall_ms=1_000)
    progress.waiting([A])
    clock.advance(900)

    progress.done([A], more=True)
    clock.advance(900)

    assert progress.problem() is None
    clock.advance(200)
    assert progress.problem() is not None


def test_partitions_handed_to_another_member_are_not_this_ones_to_report() -> None:
    clock = ManualClock(T0)
    progress = Progress(clock, stall_ms=1_000)
    progress.waiting([A, B])
    clock.advance(2_000)

    progress.forget([A, B])

    assert progress.problem() is None


def test_a_service_is_ready_once_joined_and_while_nothing_stalls() -> None:
    clock = ManualClock(T0)
    progress = Progress(clock, stall_ms=1_000)
    joined = asyncio.Event()

    assert readiness(joined, progress) == "has not joined its consumer group and restored its partitions yet"
    joined.set()
    assert readiness(joined, progress) is None
    progress.waiting([A])
    clock.advance(1_001)
    assert readiness(joined, progress) == "input has waited 1 s without progress on stepstream.triggers[0]"
