"""A delivery the executor goes on with: the hot path of a run's consecutive steps. Pure.

The endpoint runs one step per request (or as many as the step budget allows) and answers
``continue`` while the workflow has more to run. Instead of ending the delivery there, which would
cost a projector transaction and two more Kafka hops before the next step, the executor reports the
steps done so far (``Continuing``: one produce, acknowledged by the brokers, so the steps are
durable) and only then asks the endpoint for the next. The delivery stays in flight; the projector
folds its reports into the run's history in batches, off the steps' path.

The chain ends where the workflow waits on anything but its next ``run`` step (a sleep, a call, a
wait, parallel steps: the projector and scheduler take those), where it ends or fails, and where the
executor must let go of it (a rebalance, a shutdown, a cancelled run): then its last report is an
ordinary ``continue`` and the projector schedules the next delivery as before. Only deliveries that
replay the run chain: not one under a flow-control key (every step start counts against the key's
limits, so each goes through the scheduler), not the delivery of one parallel branch, not a failure
handler's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from stepstream.core import Delivery, RecordedStep, StepResult


def may_chain(delivery: Delivery) -> bool:
    """Whether the executor may go on with ``delivery`` past the endpoint's ``continue``."""
    return delivery.flow_key is None and delivery.execute_index is None and delivery.failure is None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the reports of an earlier owner of a delivery (before a crash) say about it."""

    steps: tuple[StepResult, ...] = ()  # reported while it went on with it, in order
    ended: bool = False  # its last report is written: there is nothing left to do


@dataclass(slots=True)
class Chain:
    """The steps of one delivery recorded so far: what it came with, and what its reports added."""

    delivery: Delivery
    added: list[RecordedStep] = field(default_factory=list)
    _known: set[int] = field(default_factory=set)
    _current: Delivery | None = None  # made again only when a request needs the whole history

    def __post_init__(self) -> None:
        self._known = {step.index for step in self.delivery.steps}

    @classmethod
    def resuming(cls, delivery: Delivery, recovered: Recovered | None) -> Chain:
        """A chain for ``delivery``, with the steps an earlier owner reported already, if any."""
        chain = cls(delivery)
        if recovered is not None:
            chain.record(recovered.steps)
        return chain

    def record(self, steps: tuple[StepResult, ...]) -> None:
        """``steps`` are durable: the next request replays them (or resumes past them)."""
        for step in steps:
            if step.index not in self._known:
                self._known.add(step.index)
                self.added.append(RecordedStep(index=step.index, name=step.name, kind=step.kind, output=step.output))
                self._current = None

    @property
    def current(self) -> Delivery:
        """The delivery as a request that replays it is made: every step recorded so far."""
        if not self.added:
            return self.delivery
        if self._current is None:
            steps = (*self.delivery.steps, *self.added)
            self._current = replace(self.delivery, steps=steps, step_index=steps[-1].index + 1)
        return self._current

    @property
    def length(self) -> int:
        """How many steps the chain has added to the delivery."""
        return len(self.added)


class Cancelled:
    """Runs that ended lately while a delivery of theirs may have been in flight (``DeliveryCancelled``):
    the executor does not go on with a delivery of one. Each is remembered for ``kept_ms``, and at
    most ``limit`` (a delivery read later, from before the cancellation, stops too)."""

    def __init__(self, *, limit: int = 100_000, kept_ms: int = 600_000) -> None:
        self._limit = limit
        self._kept_ms = kept_ms
        self._at: dict[str, int] = {}

    def add(self, run_id: str, now_ms: int) -> None:
        self._at.pop(run_id, None)
        self._at[run_id] = now_ms
        if len(self._at) > self._limit:
            for old in [run for run, at in self._at.items() if at < now_ms - self._kept_ms]:
                del self._at[old]
            while len(self._at) > self._limit:
                del self._at[next(iter(self._at))]

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._at
