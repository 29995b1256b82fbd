"""The asyncio driver: runs one delivery's workflow function in rounds, as the replay machine decides.

Every step call, recorded or not, claims its index and then blocks on a future that only the driver
resolves. The driver lets the workflow's tasks run until they are quiet (no new claim for a few
turns of the event loop), asks the machine about the steps blocked at that moment, and then resumes
them all in index order, or executes the one new ``run`` step first, or ends the delivery. Because
nothing resumes while tasks are still claiming, the indexes that parallel branches
(``asyncio.gather``) claim are the same on every delivery, whatever the history holds.

When the delivery ends, every task still blocked is cancelled and awaited: nothing the workflow does
afterwards can change the answer, which the machine has already fixed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from stepstream.protocol import DeliveryResponse, PlannedRun
from stepstream.sdk import _tracing
from stepstream.sdk._errors import DeliverySuspended
from stepstream.sdk._machine import Execute, Pause, Plan, ReplayMachine, StepKind, patch_step_name

# How many turns of the event loop without a new claim count as quiet. Each level of nested
# asyncio.gather costs a turn or two between one step's result and the next claim.
QUIET_TURNS = 8

# Set in the task that runs a step's function (and so in tasks it starts): a step called there is
# nested in it. The driver is part of the value so that another delivery served from inside a
# step's function (an app calling itself in-process) is not mistaken for nesting.
_running_step: contextvars.ContextVar[tuple[Driver, int] | None] = contextvars.ContextVar(
    "stepstream_running_step", default=None
)

Work = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
# Hands the answer of a pause to the request, and returns once the session is resumed.
OnPause = Callable[[DeliveryResponse], Awaitable[None]]


@dataclass(slots=True)
class _Blocked:
    future: asyncio.Future[Any]
    work: Work | None  # a run step's function and arguments
    context: contextvars.Context | None  # the caller's context, for the function to run in
    name: str = ""  # the step's name


class Driver:
    """Drives one delivery: the workflow's tasks, the blocked step calls, the rounds."""

    def __init__(
        self, machine: ReplayMachine, *, on_pause: OnPause | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.machine = machine
        self._on_pause = on_pause
        self._clock = clock
        self._blocked: dict[int, _Blocked] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._claims = 0
        self._woken = asyncio.Event()

    async def step(self, name: str, kind: StepKind, plan: Plan, work: Work | None = None) -> Any:
        """A step call from workflow code: claim its index, then wait for the driver to hand over its result."""
        running = _running_step.get()
        if running is not None and running[0] is self:
            raise self.machine.nested(name, kind, running[1])
        index = self.machine.claim(name, kind, plan)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._blocked[index] = _Blocked(future, work, contextvars.copy_context() if work is not None else None, name)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._claims += 1
        self._woken.set()
        return await future

    async def patched(self, change_id: str) -> bool:
        """``ctx.patched``: false where the history was recorded before the change; else a ``run``
        step that records the marker (once per run) and true."""
        if not self.machine.takes_patch(change_id):
            return False
        name = patch_step_name(change_id)
        await self.step(name, "run", lambda index: PlannedRun(index=index, name=name), (_marked, (), {}))
        return True

    def cancel(self, reason: str | None) -> NoReturn:
        """The workflow cancels its run: decide, and unwind the caller."""
        self.machine.cancel(reason)
        self._woken.set()
        raise DeliverySuspended

    async def drive(self, workflow: Callable[[], Awaitable[Any]]) -> None:
        """Run ``workflow()`` until the machine has decided the delivery's answer."""
        main = asyncio.create_task(self._main(workflow))
        self._tasks.add(main)
        try:
            await self._rounds(main)
        finally:
            await self._stop()
        if not self.machine.decided:
            # Only when the workflow's own code cancelled its task: there is no result to report.
            self.machine.fail(asyncio.CancelledError("The workflow's task was cancelled by the workflow's own code"))

    async def _main(self, workflow: Callable[[], Awaitable[Any]]) -> None:
        try:
            output = await workflow()
        except DeliverySuspended:
            return
        except Exception as exc:
            self.machine.fail(exc)
            return
        self.machine.complete(output)

    async def _rounds(self, main: asyncio.Task[Any]) -> None:
        machine = self.machine
        while True:
            await self._settle(main)
            if machine.decided or main.done():
                return
            blocked = self._still_blocked()
            if not blocked:
                # The workflow awaits something other than a step: wait for it, not a fixed number of turns.
                await self._wait_for_claim(main)
                continue
            decision = machine.next_round(blocked)
            if decision is None:
                return
            if isinstance(decision, Pause):
                # The workflow waits at its next step, with its tasks as they are, while the engine makes
                # the steps answered so far durable; the same round goes on once it resumes.
                if self._on_pause is None or self._clock is None:
                    raise RuntimeError("Expected a session to pause in, but the driver has none")
                await self._on_pause(machine.paused())
                machine.resumed(self._clock())
                continue
            if isinstance(decision, Execute):
                await self._execute(decision.index)
                if machine.decided:
                    return
            for index in blocked:
                entry = self._blocked.pop(index)
                if not entry.future.done():
                    entry.future.set_result(machine.result(index))

    async def _settle(self, main: asyncio.Task[Any]) -> None:
        """Yield to the event loop until no step is claimed for ``QUIET_TURNS`` turns in a row."""
        quiet = 0
        seen = self._claims
        while quiet < QUIET_TURNS and not main.done() and not self.machine.decided:
            await asyncio.sleep(0)
            if self._claims != seen:
                seen = self._claims
                quiet = 0
            else:
                quiet += 1

    def _still_blocked(self) -> list[int]:
        # A call whose task was cancelled by the workflow itself (asyncio.wait_for, say) awaits nothing.
        for index in [index for index, entry in self._blocked.items() if entry.future.done()]:
            del self._blocked[index]
        return sorted(self._blocked)

    async def _wait_for_claim(self, main: asyncio.Task[Any]) -> None:
        self._woken.clear()
        woken = asyncio.create_task(self._woken.wait())
        try:
            await asyncio.wait({main, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _execute(self, index: int) -> None:
        entry = self._blocked[index]
        if entry.work is None or entry.context is None:
            raise RuntimeError(f"Expected step {index} to be a run step with a function, but it has none")
        function, args, kwargs = entry.work
        # The function runs in its own task with the caller's context (what the workflow set in context
        # variables is visible to it), marked as a step so that a step called inside it is refused.
        entry.context.run(_running_step.set, (self, index))
        task = asyncio.create_task(_call(function, args, kwargs, entry.name, index), context=entry.context)
        self._tasks.add(task)
        try:
            result = await task
        except DeliverySuspended:  # the step cancelled the run, or called a step: already decided
            self.machine.run_failed(index, DeliverySuspended())
            return
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the delivery itself is being cancelled
            self.machine.run_failed(index, exc)
            return
        except Exception as exc:
            self.machine.run_failed(index, exc)
            return
        self.machine.run_succeeded(index, result)

    async def _stop(self) -> None:
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in self._tasks:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _call(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str, index: int
) -> Any:
    # In a span of its own when the app traces (_tracing.py): the spans the function makes go under it.
    with _tracing.step(name, index):
        if inspect.iscoroutinefunction(function):
            return await function(*args, **kwargs)
        # A sync function runs in a worker thread, so that it cannot block the event loop (the thread
        # gets the task's context variables, the span with them).
        result = await asyncio.to_thread(function, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _marked() -> bool:
    # A coroutine function: a sync one would run in a worker thread, for nothing.
    return True
