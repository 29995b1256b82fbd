"""``WorkflowContext``: what a workflow function receives, and its durable steps."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from stepstream.protocol import DeliveryRequest
from stepstream.sdk._machine import Execute, ReplayMachine

PayloadT = TypeVar("PayloadT")
ParametersT = ParamSpec("ParametersT")
ResultT = TypeVar("ResultT")


def type_adapter(target: Any) -> TypeAdapter[Any]:
    """An adapter for ``target``, cached: building one costs far more than replaying a step should."""
    try:
        return _cached_type_adapter(target)
    except TypeError:  # an unhashable type, such as Annotated with a list in its metadata
        return TypeAdapter(target)


@functools.lru_cache(maxsize=512)
def _cached_type_adapter(target: Any) -> TypeAdapter[Any]:
    return TypeAdapter(target)


class WorkflowContext(Generic[PayloadT]):
    """The run a workflow function is executing, and its steps.

    Every step has a name that must be the same each time the code reaches it: the engine replays
    recorded results by index and checks the name and kind, so a workflow whose steps change under
    a running run fails with a :class:`~stepstream.sdk.NondeterminismError` instead of mixing up
    results. Await steps one at a time.
    """

    def __init__(self, request: DeliveryRequest, payload: PayloadT, machine: ReplayMachine) -> None:
        self._request = request
        self._payload = payload
        self._machine = machine
        self._running_step: asyncio.Task[Any] | None = None

    @property
    def run_id(self) -> str:
        return self._request.run_id

    @property
    def workflow(self) -> str:
        return self._request.workflow

    @property
    def payload(self) -> PayloadT:
        """The run's payload, validated into the workflow's payload type if it declared one."""
        return self._payload

    @property
    def attempt(self) -> int:
        """1 for the first delivery of the current step, 2 and up for its retries."""
        return self._request.attempt

    @property
    def delivery_id(self) -> str:
        """Stable across retries of the same delivery: use it as an idempotency key."""
        return self._request.delivery_id

    # With result_type the other arguments cannot be checked: a ParamSpec allows no keyword-only
    # parameter beside it. The overlap is deliberate: result_type decides the result's type.
    @overload
    async def run(  # type: ignore[overload-overlap]
        self,
        name: str,
        function: Callable[..., object],
        /,
        *args: Any,
        result_type: type[ResultT],
        **kwargs: Any,
    ) -> ResultT: ...

    @overload
    async def run(
        self,
        name: str,
        function: Callable[ParametersT, Awaitable[BaseModel]] | Callable[ParametersT, BaseModel],
        /,
        *args: ParametersT.args,
        **kwargs: ParametersT.kwargs,
    ) -> dict[str, Any]: ...

    @overload
    async def run(
        self,
        name: str,
        function: Callable[ParametersT, Awaitable[ResultT]],
        /,
        *args: ParametersT.args,
        **kwargs: ParametersT.kwargs,
    ) -> ResultT: ...

    @overload
    async def run(
        self,
        name: str,
        function: Callable[ParametersT, ResultT],
        /,
        *args: ParametersT.args,
        **kwargs: ParametersT.kwargs,
    ) -> ResultT: ...

    async def run(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        result_type: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``function(*args, **kwargs)`` as the durable step ``name``, once per run.

        The first time the run reaches this step, the function runs (a sync function in a worker
        thread, so it cannot block the event loop) and its result is recorded; on every later
        delivery the recorded result comes back without running it. The result is the JSON round
        trip of what the function returned (a pydantic model becomes its ``model_dump(mode="json")``),
        the same on the first execution and on replays; pass ``result_type`` to validate it into a
        type. If the function raises, the delivery fails: :class:`~stepstream.sdk.NonRetryableError`
        fails the run, :class:`~stepstream.sdk.RetryAfterError` retries after its delay, anything
        else retries with backoff. Catching the exception does not change that.
        """
        decision = self._machine.start_run(name)
        if isinstance(decision, Execute):
            value = await self._execute(decision.index, function, args, kwargs)
        else:
            value = decision.output
        if result_type is None:
            return value
        return type_adapter(result_type).validate_python(value)

    async def sleep(self, name: str, duration: timedelta | float) -> None:
        """Sleep for ``duration`` (a ``timedelta`` or seconds) as the durable step ``name``.

        The run holds no compute while it sleeps: the delivery ends here and the engine delivers
        again when the time is up.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if seconds < 0:
            raise ValueError(f"Expected a sleep of zero or more seconds, but got {duration!r} for step '{name}'")
        self._machine.sleep(name, duration_ms=round(seconds * 1000))

    async def sleep_until(self, name: str, wake_at: datetime | float) -> None:
        """Sleep until ``wake_at`` (a timezone-aware ``datetime`` or epoch seconds) as the durable step ``name``."""
        if isinstance(wake_at, datetime):
            if wake_at.tzinfo is None or wake_at.utcoffset() is None:
                raise ValueError(
                    f"Expected a timezone-aware datetime for step '{name}', but got the naive {wake_at!r}: "
                    "say which zone it is in, for example datetime(..., tzinfo=timezone.utc)"
                )
            seconds = wake_at.timestamp()
        else:
            seconds = float(wake_at)
        self._machine.sleep(name, wake_at_ms=round(seconds * 1000))

    async def _execute(
        self, index: int, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._running_step = asyncio.current_task()
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(*args, **kwargs)
            else:
                result = await asyncio.to_thread(function, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except BaseException as exc:
            self._running_step = None
            self._machine.run_failed(index, exc)
            raise
        self._running_step = None
        return self._machine.run_succeeded(index, result)

    def _cancel_running_step(self) -> None:
        """Cancel a step still running in another task once the delivery is answered without it."""
        task = self._running_step
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
