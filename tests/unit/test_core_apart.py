"""A delivery whose results do not fit in one record, in parts and back (core/apart.py). Pure."""

from __future__ import annotations

from dataclasses import replace

from stepstream.core import Delivery, PendingDelivery, RecordedStep, RunState, RunStatus, StepKind
from stepstream.core.apart import DeliverySteps, elided, filled, join, split

STEPS = tuple(RecordedStep(index=i, name=f"s{i}", kind=StepKind.RUN, output='"' + "x" * 98 + '"') for i in range(10))
DELIVERY = Delivery(
    run_id="run-1",
    workflow="w",
    url="http://app/w",
    delivery_id="run-1/3",
    attempt=2,
    step_index=10,
    payload="{}",
    steps=STEPS,
    headers=(),
)


def size(step: RecordedStep) -> int:
    return len(step.output)  # 100 bytes each


def state(**changes: object) -> RunState:
    base = RunState(
        run_id="run-1",
        seq=7,
        workflow="w",
        url="http://app/w",
        payload="{}",
        headers=(),
        label=None,
        retries=3,
        retry_base_ms=1_000,
        status=RunStatus.RUNNING,
        created_at_ms=0,
        updated_at_ms=0,
        steps=STEPS,
        deliveries=3,
        in_flight=(PendingDelivery(delivery_id="run-1/3", step_index=10, attempt=2, not_before_ms=0),),
        waiting=(),
        output=None,
        error=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_delivery_splits_into_parts_that_fit_the_room_and_joins_back_to_itself() -> None:
    parts, rest = split(DELIVERY, room=350, size=size)

    # three steps of 100 bytes fit in 350: parts of 3, 3, 3 and 1, in index order
    assert [[step.index for step in part.steps] for part in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert all((part.delivery_id, part.attempt) == ("run-1/3", 2) for part in parts)
    assert (rest.steps, rest.steps_apart) == ((), 10)
    assert join(rest, parts) == DELIVERY


def test_a_step_larger_than_the_room_goes_in_a_part_of_its_own() -> None:
    parts, _ = split(DELIVERY, room=150, size=lambda step: 400 if step.index == 4 else 100)

    assert [[step.index for step in part.steps] for part in parts] == [[0], [1], [2], [3], [4], [5], [6], [7], [8], [9]]
    parts, _ = split(DELIVERY, room=250, size=lambda step: 400 if step.index == 4 else 100)
    assert [[step.index for step in part.steps] for part in parts] == [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]


def test_a_delivery_does_not_join_parts_that_are_missing_or_of_another_attempt() -> None:
    parts, rest = split(DELIVERY, room=350, size=size)

    assert join(rest, parts[1:]) is None
    assert join(rest, [*parts[:-1], replace(parts[-1], attempt=1)]) is None
    assert (
        join(rest, [*parts, DeliverySteps(run_id="run-1", delivery_id="run-1/3", attempt=2, steps=STEPS[:1])]) is None
    )


def test_a_delivery_held_without_its_results_gets_the_runs_results_back_while_the_run_awaits_it() -> None:
    held = elided(DELIVERY)
    assert (held.steps, held.steps_apart) == ((), 10)

    # while the run awaits it, it gets the run's results, which may have grown since
    more = (*STEPS, RecordedStep(index=10, name="s10", kind=StepKind.SLEEP, output="null"))
    assert filled(held, state(steps=more)) == replace(DELIVERY, steps=more)
    # a failure handler's delivery, too
    failure = PendingDelivery(delivery_id="run-1/3", step_index=10, attempt=2, not_before_ms=0)
    assert filled(held, state(in_flight=(), failure_delivery=failure, status=RunStatus.FAILED)) == DELIVERY
    # and nothing once the run no longer awaits that attempt, or is gone
    assert filled(held, state(in_flight=())) is None
    assert filled(replace(held, attempt=1), state()) is None
    assert filled(held, None) is None


def test_a_delivery_sent_without_results_on_purpose_stays_so() -> None:
    # a failure handler's delivery the projector sent lean, its results being too large
    lean = replace(DELIVERY, steps=())
    assert filled(lean, state()) == lean
