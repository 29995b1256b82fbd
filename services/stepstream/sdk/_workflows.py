"""``Workflows``: the registry of workflow functions, and running one delivery of one of them."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from pydantic import TypeAdapter

from stepstream.protocol import CompleteNext, DeliveryRequest, DeliveryResponse
from stepstream.sdk._asgi import WorkflowsApp
from stepstream.sdk._context import WorkflowContext, type_adapter
from stepstream.sdk._destination import BaseUrl
from stepstream.sdk._driver import Driver
from stepstream.sdk._errors import ConfigurationError
from stepstream.sdk._machine import ReplayMachine, history_problem
from stepstream.sdk._nonces import NonceCache
from stepstream.sdk._results import FailureInfo
from stepstream.sdk._sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL_S, Session, Sessions, answer

SIGNING_KEYS_VARIABLE = "STEPSTREAM_SIGNING_KEYS"
BASE_URL_VARIABLE = "STEPSTREAM_BASE_URL"
# A replay request carries every result of the run (Upstash's protocol), so this bounds what a run's
# results add up to at its next replay; a session's requests carry none.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# One step's result, as JSON: below the engine's default record limit (STEPSTREAM_MAX_RECORD_BYTES,
# 1,000,000) less what a record holds besides it, so a result the SDK lets through is one the engine
# can record. Larger data belongs in a store of its own, a reference to it in the result.
DEFAULT_MAX_OUTPUT_BYTES = 900_000
# About 300 bytes each: 30 MB at most, reached only past 330 deliveries a second (at a 300 s tolerance).
DEFAULT_NONCE_CACHE_SIZE = 100_000

PayloadT = TypeVar("PayloadT")
OutputT = TypeVar("OutputT")
FunctionT = TypeVar("FunctionT", bound=Callable[[WorkflowContext[Any]], Awaitable[Any]])

WorkflowFunction = Callable[[WorkflowContext[PayloadT]], Awaitable[OutputT]]
FailureHandler = Callable[[WorkflowContext[PayloadT], FailureInfo], Awaitable[Any]]


class WorkflowDecorator(Protocol[PayloadT]):
    """What ``@workflows.workflow(...)`` returns: registers the function and gives it back unchanged."""

    def __call__(self, function: WorkflowFunction[PayloadT, OutputT], /) -> WorkflowFunction[PayloadT, OutputT]: ...


def _unknown_function(function: object) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class WorkflowDefinition(Generic[PayloadT]):
    """A registered workflow: its name, its function, how to read its payload, and its failure handler.

    ``workflow_names`` gives the name a workflow function is registered under (for ``ctx.invoke``).
    """

    name: str
    function: WorkflowFunction[PayloadT, Any]
    payload_adapter: TypeAdapter[PayloadT] | None
    on_failure: FailureHandler[PayloadT] | None = None
    workflow_names: Callable[[object], str | None] = field(default=_unknown_function, repr=False, compare=False)

    def parse_payload(self, raw: Any) -> PayloadT:
        """The payload in the workflow's declared type; raises ``pydantic.ValidationError`` if it does not fit."""
        if self.payload_adapter is None:
            payload: PayloadT = raw
            return payload
        return self.payload_adapter.validate_python(raw)

    async def execute(
        self,
        request: DeliveryRequest,
        payload: PayloadT,
        *,
        clock: Callable[[], float],
        started_at: float,
        sessions: Sessions | None = None,
        max_output_bytes: int | None = None,
    ) -> DeliveryResponse:
        """Answer one delivery: run the workflow function from the top, or, when the request carries
        a ``failure``, the failure handler (a run without one has nothing to do: ``complete``).

        With ``sessions`` and a request that opens one, the workflow may be kept running after the
        answer, waiting at its next step for the session's ``resume`` (:mod:`._sessions`)."""
        if sessions is not None and request.session is not None and request.failure is None:
            return await self._execute_in_session(
                request, payload, clock, started_at, sessions, request.session, max_output_bytes
            )
        machine = ReplayMachine(request, clock=clock, started_at=started_at, max_output_bytes=max_output_bytes)
        driver = Driver(machine)
        context = WorkflowContext(request, payload, driver, workflow_names=self.workflow_names)
        if request.failure is None:
            await driver.drive(lambda: self.function(context))
            return machine.response()
        handler = self.on_failure
        if handler is None:
            return DeliveryResponse(next=CompleteNext(output=None))
        error = FailureInfo(type=request.failure.type, message=request.failure.message)
        await driver.drive(lambda: handler(context, error))
        return machine.response()

    async def _execute_in_session(
        self,
        request: DeliveryRequest,
        payload: PayloadT,
        clock: Callable[[], float],
        started_at: float,
        sessions: Sessions,
        session_id: str,
        max_output_bytes: int | None,
    ) -> DeliveryResponse:
        """Run the workflow in a task of its own, which may outlive this request (:mod:`._sessions`)."""
        machine = ReplayMachine(
            request, clock=clock, started_at=started_at, keeps_session=True, max_output_bytes=max_output_bytes
        )
        session = Session(run_id=request.run_id, delivery_id=request.delivery_id, workflow=request.workflow)
        driver = Driver(machine, on_pause=session.on_pause, clock=clock)
        context = WorkflowContext(request, payload, driver, workflow_names=self.workflow_names)

        async def drive() -> DeliveryResponse:
            await driver.drive(lambda: self.function(context))
            return machine.response()

        session.start(drive)
        return await answer(session, session_id, sessions)


def _base_urls(base_url: str | Sequence[str] | None, environ: Mapping[str, str]) -> tuple[BaseUrl, ...]:
    if base_url is None:
        texts, name = environ.get(BASE_URL_VARIABLE, "").split(","), BASE_URL_VARIABLE
    else:
        texts, name = ([base_url] if isinstance(base_url, str) else list(base_url)), "base_url"
    try:
        return tuple(BaseUrl.parse(text, name=name) for text in texts if text.strip())
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


class Workflows:
    """The workflows one service serves, and the ASGI app that serves them.

    Signing keys come from ``signing_keys`` or else from the comma-separated environment variable
    ``STEPSTREAM_SIGNING_KEYS`` (the first is the current key; any key listed verifies, so list the
    next key too while rotating). ``allow_unsigned=True`` turns verification off: for tests only.

    ``base_url`` (else the comma-separated ``STEPSTREAM_BASE_URL``) is the public URL the engine
    reaches the app at, before the mount point, such as ``https://shop.example.com``; several if it
    is reached at several. A delivery is accepted only if it was signed for that URL plus the path it
    arrived at. Without one, the request's own ``Host`` header stands in, which a replayer can
    forge: set it in production. The nonces of accepted deliveries are remembered (at most
    ``nonce_cache_size``, each until its signature goes stale, in this process), and a delivery with
    a nonce seen before is refused with 409 without running anything.

    When the engine goes on with a delivery step after step, a workflow is kept running between its
    requests (a session) for at most ``session_ttl_s``, and at most ``max_sessions`` at once (0: none
    is kept, and every request replays the run from the top).

    ``max_body_bytes`` bounds a request's body (413 past it): a replay carries every result the run
    has, so it bounds their sum. ``max_output_bytes`` bounds one step's result as JSON: a step that
    returns more fails the run with the reason, not retried.
    """

    def __init__(
        self,
        *,
        signing_keys: Sequence[str] | None = None,
        allow_unsigned: bool = False,
        base_url: str | Sequence[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        signature_tolerance_s: int = 300,
        nonce_cache_size: int = DEFAULT_NONCE_CACHE_SIZE,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        if signing_keys is not None and allow_unsigned:
            raise ConfigurationError(
                "Expected either signing_keys or allow_unsigned=True, but got both: "
                "allow_unsigned turns signature checks off"
            )
        if isinstance(signing_keys, str):
            raise ConfigurationError("Expected signing_keys to be a list of keys, but got one string")
        if signing_keys is None and not allow_unsigned:
            raw = environ.get(SIGNING_KEYS_VARIABLE, "")
            signing_keys = [key.strip() for key in raw.split(",") if key.strip()]
        keys = tuple(signing_keys or ())
        if not keys and not allow_unsigned:
            raise ConfigurationError(
                f"Expected signing keys to verify deliveries with, but {SIGNING_KEYS_VARIABLE} is unset or empty "
                "and none were passed: set it to the engine's keys (comma-separated), pass "
                "Workflows(signing_keys=[...]), or, in tests only, Workflows(allow_unsigned=True)"
            )
        if any(not key for key in keys):
            raise ConfigurationError("Expected every signing key to be a non-empty string, but one is empty")
        if max_body_bytes <= 0:
            raise ConfigurationError(f"Expected max_body_bytes to be positive, but got {max_body_bytes}")
        if max_output_bytes <= 0:
            raise ConfigurationError(f"Expected max_output_bytes to be positive, but got {max_output_bytes}")
        if nonce_cache_size <= 0:
            raise ConfigurationError(f"Expected nonce_cache_size to be positive, but got {nonce_cache_size}")
        self.signing_keys: tuple[str, ...] = keys
        self.allow_unsigned = allow_unsigned
        self.base_urls: tuple[BaseUrl, ...] = _base_urls(base_url, environ)
        self.max_body_bytes = max_body_bytes
        self.max_output_bytes = max_output_bytes
        self.signature_tolerance_s = signature_tolerance_s
        self.nonces = NonceCache(nonce_cache_size)
        if session_ttl_s <= 0 or max_sessions < 0:
            raise ConfigurationError(
                f"Expected session_ttl_s > 0 and max_sessions >= 0, but got {session_ttl_s} and {max_sessions}"
            )
        # Workflows kept running between the requests of a delivery the engine goes on with; 0: none.
        self.sessions: Sessions | None = Sessions(ttl_s=session_ttl_s, limit=max_sessions) if max_sessions > 0 else None
        self._definitions: dict[str, WorkflowDefinition[Any]] = {}
        # Each function's registered name; None for one registered under several names.
        self._names: dict[object, str | None] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The registered workflow names, sorted."""
        return tuple(sorted(self._definitions))

    @overload
    def workflow(self, function: FunctionT, /) -> FunctionT: ...

    @overload
    def workflow(
        self,
        name: str | None = None,
        /,
        *,
        payload: type[PayloadT],
        on_failure: FailureHandler[PayloadT] | None = None,
    ) -> WorkflowDecorator[PayloadT]: ...

    @overload
    def workflow(
        self, name: str | None = None, /, *, on_failure: FailureHandler[Any] | None = None
    ) -> WorkflowDecorator[Any]: ...

    def workflow(self, name: Any = None, /, *, payload: Any = None, on_failure: Any = None) -> Any:
        """Register an async workflow function, served at ``POST <mount point>/<name>``.

        ``name`` defaults to the function's name. With ``payload``, the run's payload is validated into
        that type (a pydantic model, a dataclass, any type pydantic knows) before the function runs;
        without it, ``ctx.payload`` is the raw JSON value. Usable bare (``@workflows.workflow``) too.

        ``on_failure``, an ``async def handler(ctx, error: FailureInfo)``, is called once when a run
        of this workflow has failed for good (its retries spent, or a terminal error). It may not call
        steps. The engine records that the failure was handled; if the handler raises, the engine
        retries it as it retries a step (a ``NonRetryableError`` is not retried).
        """
        if callable(name):
            return self._register(name, None, None, None)

        def decorator(function: WorkflowFunction[Any, Any], /) -> WorkflowFunction[Any, Any]:
            return self._register(function, name, payload, on_failure)

        return decorator

    def _register(
        self, function: WorkflowFunction[Any, Any], name: str | None, payload: Any, on_failure: Any
    ) -> WorkflowFunction[Any, Any]:
        workflow_name = name if name is not None else getattr(function, "__name__", "")
        if not workflow_name or "/" in workflow_name or workflow_name.strip() != workflow_name:
            raise ConfigurationError(
                f"Expected a workflow name usable as one URL path segment, but got {workflow_name!r}"
            )
        if workflow_name in self._definitions:
            raise ConfigurationError(f"Expected one workflow per name, but '{workflow_name}' is registered twice")
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                f"Expected workflow '{workflow_name}' to be an async function (async def), but got {function!r}"
            )
        if on_failure is not None and not inspect.iscoroutinefunction(on_failure):
            raise ConfigurationError(
                f"Expected the failure handler of workflow '{workflow_name}' to be an async function "
                f"(async def handler(ctx, error)), but got {on_failure!r}"
            )
        adapter = None if payload is None else type_adapter(payload)
        self._definitions[workflow_name] = WorkflowDefinition(
            workflow_name, function, adapter, on_failure, workflow_names=self._name_of
        )
        self._names[function] = workflow_name if function not in self._names else None
        return function

    def _name_of(self, function: object) -> str | None:
        try:
            return self._names.get(function)
        except TypeError:  # unhashable: not a function anyone registered
            return None

    def definition(self, name: str) -> WorkflowDefinition[Any]:
        """The workflow registered as ``name``; raises ``LookupError`` naming the known ones."""
        try:
            return self._definitions[name]
        except KeyError:
            known = ", ".join(f"'{known}'" for known in self.names) or "none"
            raise LookupError(f"Expected one of the registered workflows ({known}), but got '{name}'") from None

    async def deliver(
        self, request: DeliveryRequest, *, clock: Callable[[], float] = time.monotonic
    ) -> DeliveryResponse:
        """Handle one delivery without HTTP: what the ASGI app does after checking the request.

        Useful to test a workflow: build a ``DeliveryRequest`` with the history you want and assert on
        the answer. Raises ``LookupError`` for an unknown workflow, ``ValueError`` for a history whose
        indexes are not strictly increasing, and ``pydantic.ValidationError`` for a payload that does not fit its type.
        """
        started_at = clock()
        definition = self.definition(request.workflow)
        problem = history_problem(request)
        if problem is not None:
            raise ValueError(problem)
        payload = definition.parse_payload(request.payload)
        return await definition.execute(
            request, payload, clock=clock, started_at=started_at, max_output_bytes=self.max_output_bytes
        )

    def asgi(self) -> WorkflowsApp:
        """The ASGI app serving these workflows: mount it, e.g. ``app.mount("/workflows", workflows.asgi())``."""
        return WorkflowsApp(self)
