"""``WorkflowContext``: what a workflow function receives, and its durable steps."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from stepstream.protocol import (
    DeliveryRequest,
    PlannedCall,
    PlannedInvoke,
    PlannedNotify,
    PlannedRun,
    PlannedSleep,
    PlannedSleepUntil,
    PlannedWait,
)
from stepstream.sdk import _checks as checks
from stepstream.sdk._driver import Driver
from stepstream.sdk._flow import FlowControl, flow_control_spec
from stepstream.sdk._machine import patch_step_name, to_json_text
from stepstream.sdk._results import (
    CallResponse,
    InvokeResult,
    WaitResult,
    call_response,
    invoke_result,
    notified_runs,
    wait_result,
)

PayloadT = TypeVar("PayloadT")
ParametersT = ParamSpec("ParametersT")
ResultT = TypeVar("ResultT")

DEFAULT_CALL_TIMEOUT = timedelta(seconds=300)

Headers = Mapping[str, str] | Sequence[tuple[str, str]]
WorkflowNames = Callable[[object], str | None]


def type_adapter(target: Any) -> TypeAdapter[Any]:
    """An adapter for ``target``, cached: building one costs far more than replaying a step should."""
    try:
        return _cached_type_adapter(target)
    except TypeError:  # an unhashable type, such as Annotated with a list in its metadata
        return TypeAdapter(target)


@functools.lru_cache(maxsize=512)
def _cached_type_adapter(target: Any) -> TypeAdapter[Any]:
    return TypeAdapter(target)


def _no_workflow_names(function: object) -> str | None:
    return None


class WorkflowContext(Generic[PayloadT]):
    """The run a workflow function is executing, and its steps.

    Every step has a name that must be the same each time the code reaches it: the engine replays
    recorded results by index and checks the name and kind, so a workflow whose steps change under
    a running run fails with a :class:`~stepstream.sdk.NondeterminismError` instead of mixing up
    results. Await steps one after another, or several at once with ``asyncio.gather``: steps
    awaited together run in parallel.
    """

    def __init__(
        self,
        request: DeliveryRequest,
        payload: PayloadT,
        driver: Driver,
        *,
        workflow_names: WorkflowNames = _no_workflow_names,
    ) -> None:
        self._request = request
        self._payload = payload
        self._driver = driver
        self._workflow_names = workflow_names

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

        Several ``run`` steps awaited together (``asyncio.gather``) each run in a delivery of their
        own, in parallel. A step's function may not call steps itself.
        """
        checks.step_name(name)
        if not callable(function):
            raise TypeError(f"Expected a function to run for step '{name}', but got {type(function).__name__}")
        value = await self._driver.step(
            name, "run", lambda index: PlannedRun(index=index, name=name), (function, args, kwargs)
        )
        if result_type is None:
            return value
        return type_adapter(result_type).validate_python(value)

    async def sleep(self, name: str, duration: timedelta | float) -> None:
        """Sleep for ``duration`` (a ``timedelta`` or seconds) as the durable step ``name``.

        The run holds no compute while it sleeps: the delivery ends here and the engine delivers
        again when the time is up.
        """
        checks.step_name(name)
        duration_ms = checks.delay_ms(duration, "sleep", name)
        await self._driver.step(
            name, "sleep", lambda index: PlannedSleep(index=index, name=name, duration_ms=duration_ms)
        )

    async def sleep_until(self, name: str, wake_at: datetime | float) -> None:
        """Sleep until ``wake_at`` (a timezone-aware ``datetime`` or epoch seconds) as the durable step ``name``.

        A time in the past wakes the run at once.
        """
        checks.step_name(name)
        wake_at_ms = checks.wake_at_ms(wake_at, name)
        await self._driver.step(
            name, "sleep_until", lambda index: PlannedSleepUntil(index=index, name=name, wake_at_ms=wake_at_ms)
        )

    async def call(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        headers: Headers | None = None,
        body: str | bytes | None = None,
        json: Any = None,
        # The engine's timeout for the request, not one for this coroutine: asyncio.timeout cannot say it.
        timeout: timedelta | float = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109
        retries: int = 0,
        retry_delay: str | timedelta | float | None = None,
        flow_control: FlowControl | None = None,
    ) -> CallResponse:
        """Have the engine make an HTTP request as the durable step ``name``, and return its answer.

        The run holds no compute while the request is in flight, however long it takes (up to
        ``timeout`` per attempt). ``json=`` sends a JSON value (and ``content-type:
        application/json`` unless ``headers`` set one); ``body=`` sends text or UTF-8 bytes as is.
        With ``retries``, the engine repeats the request when no answer comes or the answer is 5xx,
        408, 425 or 429, waiting ``retry_delay`` between attempts: a fixed ``timedelta`` or seconds,
        or a rule in milliseconds over ``retried`` such as ``"1000 * pow(2, retried)"`` (default:
        exponential backoff). With ``flow_control``, each attempt waits until the limits of its
        :class:`~stepstream.sdk.FlowControl` key allow it, shared with every other request under that key.
        Any status is a result, not an exception: check ``response.status``; ``status`` 0 means no
        answer came at all, with the reason in ``response.error``.
        """
        checks.step_name(name)
        checked_url = checks.http_url(url, "url", name)
        checked_method = checks.http_method(method, name)
        checked_headers = checks.headers(headers, name)
        if body is not None and json is not None:
            raise ValueError(f"Expected body or json for step '{name}', but got both: json= sends a JSON value as body")
        text: str | None
        if json is not None:
            text = to_json_text(checks.json_value(json, "json", name))
            if not any(header.lower() == "content-type" for header, _ in checked_headers):
                checked_headers.append(("content-type", "application/json"))
        elif isinstance(body, bytes):
            try:
                text = body.decode()
            except UnicodeDecodeError:
                raise ValueError(f"Expected body bytes in UTF-8 for step '{name}', but they are not") from None
        elif body is None or isinstance(body, str):
            text = body
        else:
            raise TypeError(
                f"Expected body to be str or bytes for step '{name}', but got {type(body).__name__}: "
                "pass json= to send a JSON value"
            )
        timeout_ms = checks.delay_ms(timeout, "timeout", name, minimum_ms=1)
        checked_retries = checks.retries(retries, name, optional=False) or 0
        rule = checks.retry_delay(retry_delay, name)
        flow = flow_control_spec(flow_control, name)

        def plan(index: int) -> PlannedCall:
            return PlannedCall(
                index=index,
                name=name,
                url=checked_url,
                method=checked_method,
                headers=checked_headers,
                body=text,
                timeout_ms=timeout_ms,
                retries=checked_retries,
                retry_delay=rule,
                flow_control=flow,
            )

        return call_response(await self._driver.step(name, "call", plan))

    async def wait_for_event(
        self,
        name: str,
        event_id: str,
        *,
        timeout: timedelta | float,  # noqa: ASYNC109  # how long the engine waits: durable, not asyncio's
    ) -> WaitResult:
        """Wait until ``event_id`` is notified, or ``timeout`` passes, as the durable step ``name``.

        Returns the notification's data with ``timeout`` False, or ``timeout`` True and ``data`` None.
        The run holds no compute while it waits. Notify from another run (:meth:`notify`), the api or
        the CLI.
        """
        checks.step_name(name)
        checked_event_id = checks.event_id(event_id, name)
        timeout_ms = checks.delay_ms(timeout, "timeout", name)
        output = await self._driver.step(
            name,
            "wait_for_event",
            lambda index: PlannedWait(index=index, name=name, event_id=checked_event_id, timeout_ms=timeout_ms),
        )
        return wait_result(output)

    async def notify(self, name: str, event_id: str, data: Any = None) -> list[str]:
        """Notify ``event_id`` with ``data`` as the durable step ``name``: every run waiting on it wakes.

        Returns the ids of the runs that were waiting and were woken (empty if none was).
        """
        checks.step_name(name)
        checked_event_id = checks.event_id(event_id, name)
        value = checks.json_value(data, "data", name)
        output = await self._driver.step(
            name,
            "notify",
            lambda index: PlannedNotify(index=index, name=name, event_id=checked_event_id, data=value),
        )
        return notified_runs(output)

    @overload
    async def invoke(
        self,
        name: str,
        workflow: str | Callable[..., Awaitable[Any]],
        payload: Any = None,
        *,
        url: str | None = None,
        headers: Headers | None = None,
        label: str | None = None,
        retries: int | None = None,
        retry_delay: str | timedelta | float | None = None,
        flow_control: FlowControl | None = None,
        result_type: type[ResultT],
    ) -> InvokeResult[ResultT]: ...

    @overload
    async def invoke(
        self,
        name: str,
        workflow: str | Callable[..., Awaitable[Any]],
        payload: Any = None,
        *,
        url: str | None = None,
        headers: Headers | None = None,
        label: str | None = None,
        retries: int | None = None,
        retry_delay: str | timedelta | float | None = None,
        flow_control: FlowControl | None = None,
        result_type: None = None,
    ) -> InvokeResult[Any]: ...

    async def invoke(
        self,
        name: str,
        workflow: str | Callable[..., Awaitable[Any]],
        payload: Any = None,
        *,
        url: str | None = None,
        headers: Headers | None = None,
        label: str | None = None,
        retries: int | None = None,
        retry_delay: str | timedelta | float | None = None,
        flow_control: FlowControl | None = None,
        result_type: Any = None,
    ) -> InvokeResult[Any]:
        """Start a child run of ``workflow`` with ``payload`` as the durable step ``name``, and wait for it to end.

        ``workflow`` is a workflow's name, or a workflow function registered with the same
        :class:`~stepstream.sdk.Workflows`. Without ``url`` the child is served by this app, at the
        workflow's route next to this one's; ``headers`` are added to those of this run. Unset
        ``retries`` and ``retry_delay`` take the engine's defaults. With ``flow_control``, every
        delivery of the child run waits for the limits of that :class:`~stepstream.sdk.FlowControl`
        key; without it the child has none. Returns how the child ended:
        ``completed`` with its output (validated into ``result_type`` if given), ``failed`` with its
        error, or ``cancelled``; a failed child does not fail this run.
        """
        checks.step_name(name)
        if isinstance(workflow, str):
            workflow_name = workflow
        elif callable(workflow):
            registered = self._workflow_names(workflow)
            if registered is None:
                raise TypeError(
                    f"Expected a workflow name or a function registered with this Workflows for step '{name}', "
                    f"but {getattr(workflow, '__name__', workflow)!r} is not registered: pass the workflow's name"
                )
            workflow_name = registered
        else:
            raise TypeError(
                f"Expected a workflow name or a workflow function for step '{name}', but got {type(workflow).__name__}"
            )
        checks.workflow_name(workflow_name, name)
        checked_url = None if url is None else checks.http_url(url, "url", name)
        value = checks.json_value(payload, "payload", name)
        checked_headers = checks.headers(headers, name)
        checked_label = checks.label(label, name)
        checked_retries = checks.retries(retries, name, optional=True)
        rule = checks.retry_delay(retry_delay, name)
        flow = flow_control_spec(flow_control, name)

        def plan(index: int) -> PlannedInvoke:
            return PlannedInvoke(
                index=index,
                name=name,
                workflow=workflow_name,
                url=checked_url,
                payload=value,
                headers=checked_headers,
                label=checked_label,
                retries=checked_retries,
                retry_delay=rule,
                flow_control=flow,
            )

        result = invoke_result(await self._driver.step(name, "invoke", plan))
        if result_type is None or result.status != "completed":
            return result
        output = type_adapter(result_type).validate_python(result.output)
        return InvokeResult(run_id=result.run_id, status=result.status, output=output, error=result.error)

    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the new branch of a code change named ``change_id``.

        Change a workflow while runs are in flight in it by keeping both branches::

            if await ctx.patched("ship-with-tracking"):
                await ctx.run("ship", ship_tracked, order_id)
            else:
                await ctx.run("ship", ship, order_id)

        True for a run that reaches this point under the new code (the answer is recorded in its
        history as a step ``patched:<change_id>``, so its replays take the same branch); false for a
        run whose history already went on past this point under the old code. Once no run can need
        the old branch, delete it and the ``patched`` call: recorded markers are skipped. See
        docs/history.md, "Versioning a workflow".
        """
        if not isinstance(change_id, str) or not change_id:
            raise ValueError(f"Expected a change id (a non-empty str) for ctx.patched, but got {change_id!r}")
        checks.step_name(patch_step_name(change_id), marker=True)
        return await self._driver.patched(change_id)

    def cancel(self, reason: str | None = None) -> NoReturn:
        """End the run now as cancelled, with ``reason``; nothing after this line runs.

        Not an exception your code can catch with ``except Exception``: the run is cancelled whatever
        the code around it does. Steps completed earlier in this delivery are kept.
        """
        self._driver.cancel(checks.reason(reason))
