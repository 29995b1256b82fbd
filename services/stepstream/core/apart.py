"""A delivery whose recorded steps add up to more than one Kafka record holds travels in parts. Pure.

A replay delivery carries every result the run has recorded, because the SDK replays the workflow
from them (Upstash's protocol). Each result fits in a record (it was recorded as one), but a run of
thousands of steps has more results than one record holds. So such a delivery is written as
``DeliverySteps`` records, each holding as many results as fit, followed by the ``Delivery`` itself,
which counts them in ``steps_apart``: all on the same partition of ``deliveries``, in one transaction,
so the executor reads all or none of them, in order, and puts them together again (:func:`join`).

A delivery that waits in the scheduler first (a retry's backoff, a flow-control queue) is held there
without its results (:func:`elided`): the scheduler's memory, its file and its changelog hold small
requests only. When it is let through, the scheduler hands it to the projector, which holds the run's
state and adds the results (:func:`filled`), in parts if need be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from stepstream.core.effects import Delivery
from stepstream.core.state import RecordedStep, RunState


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySteps:
    """Some of a delivery's recorded steps, on ``deliveries`` just before the delivery."""

    run_id: str
    delivery_id: str
    attempt: int
    steps: tuple[RecordedStep, ...]


def split(delivery: Delivery, room: int, size: Callable[[RecordedStep], int]) -> tuple[list[DeliverySteps], Delivery]:
    """``delivery`` as parts of at most ``room`` bytes of steps each (by ``size``, a step's encoded
    size) and the delivery without them. A step larger than ``room`` goes in a part of its own."""
    parts: list[DeliverySteps] = []
    chunk: list[RecordedStep] = []
    used = 0
    for step in delivery.steps:
        step_size = size(step)
        if chunk and used + step_size > room:
            parts.append(_part(delivery, chunk))
            chunk, used = [], 0
        chunk.append(step)
        used += step_size
    if chunk:
        parts.append(_part(delivery, chunk))
    return parts, replace(delivery, steps=(), steps_apart=len(delivery.steps))


def join(delivery: Delivery, parts: Sequence[DeliverySteps]) -> Delivery | None:
    """``delivery`` with the steps its parts carried; None if they are not all there (counted by
    ``steps_apart``), or belong to another delivery or attempt."""
    if any((part.delivery_id, part.attempt) != (delivery.delivery_id, delivery.attempt) for part in parts):
        return None
    apart = tuple(step for part in parts for step in part.steps)
    if len(apart) != delivery.steps_apart:
        return None
    return replace(delivery, steps=apart + delivery.steps, steps_apart=0)


def elided(delivery: Delivery) -> Delivery:
    """``delivery`` without its results, to wait in the scheduler; the projector adds them back."""
    return replace(delivery, steps=(), steps_apart=len(delivery.steps) + delivery.steps_apart)


def filled(delivery: Delivery, state: RunState | None) -> Delivery | None:
    """``delivery`` with the run's results, as the projector makes it when the scheduler lets it
    through; None when the run no longer awaits it (cancelled, failed or gone on since), so nothing
    is sent."""
    if state is None:
        return None
    awaited = {(pending.delivery_id, pending.attempt) for pending in state.in_flight}
    if state.failure_delivery is not None:
        awaited.add((state.failure_delivery.delivery_id, state.failure_delivery.attempt))
    if (delivery.delivery_id, delivery.attempt) not in awaited:
        return None
    # A failure handler's delivery may have been sent without the results when they did not fit
    # (the projector's lean fallback): it stays so.
    steps = state.steps if delivery.steps_apart else delivery.steps
    return replace(delivery, steps=steps, steps_apart=0)


def _part(delivery: Delivery, steps: list[RecordedStep]) -> DeliverySteps:
    return DeliverySteps(
        run_id=delivery.run_id, delivery_id=delivery.delivery_id, attempt=delivery.attempt, steps=tuple(steps)
    )
