"""``Workflows``: the registry of workflow functions, and running one delivery of one of them."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

from pydantic import TypeAdapter

from stepstream.protocol import DeliveryRequest, DeliveryResponse
from stepstream.sdk._asgi import WorkflowsApp
from stepstream.sdk._context import WorkflowContext, type_adapter
from stepstream.sdk._errors import ConfigurationError, DeliverySuspended
from stepstream.sdk._machine import ReplayMachine, history_problem

SIGNING_KEYS_VARIABLE = "STEPSTREAM_SIGNING_KEYS"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

PayloadT = TypeVar("PayloadT")
OutputT = TypeVar("OutputT")
FunctionT = TypeVar("FunctionT", bound=Callable[[WorkflowContext[Any]], Awaitable[Any]])

WorkflowFunction = Callable[[WorkflowContext[PayloadT]], Awaitable[OutputT]]


class WorkflowDecorator(Protocol[PayloadT]):
    """What ``@workflows.workflow(...)`` returns: registers the function and gives it back unchanged."""

    def __call__(self, function: WorkflowFunction[PayloadT, OutputT], /) -> WorkflowFunction[PayloadT, OutputT]: ...


@dataclass(frozen=True, slots=True)
class WorkflowDefinition(Generic[PayloadT]):
    """A registered workflow: its name, its function and how to read its payload."""

    name: str
    function: WorkflowFunction[PayloadT, Any]
    payload_adapter: TypeAdapter[PayloadT] | None

    def parse_payload(self, raw: Any) -> PayloadT:
        """The payload in the workflow's declared type; raises ``pydantic.ValidationError`` if it does not fit."""
        if self.payload_adapter is None:
            payload: PayloadT = raw
            return payload
        return self.payload_adapter.validate_python(raw)

    async def execute(
        self, request: DeliveryRequest, payload: PayloadT, *, clock: Callable[[], float], started_at: float
    ) -> DeliveryResponse:
        """Run the workflow function from the top for one delivery and answer it."""
        machine = ReplayMachine(request, clock=clock, started_at=started_at)
        context = WorkflowContext(request, payload, machine)
        try:
            output = await self.function(context)
        except DeliverySuspended:
            pass
        except Exception as exc:
            machine.fail(exc)
        else:
            machine.complete(output)
        finally:
            # A step still running in another task (a parallel call) will never be reported.
            context._cancel_running_step()
        return machine.response()


class Workflows:
    """The workflows one service serves, and the ASGI app that serves them.

    Signing keys come from ``signing_keys`` or else from the comma-separated environment variable
    ``STEPSTREAM_SIGNING_KEYS`` (the first is the current key; any key listed verifies, so list the
    next key too while rotating). ``allow_unsigned=True`` turns verification off: for tests only.
    """

    def __init__(
        self,
        *,
        signing_keys: Sequence[str] | None = None,
        allow_unsigned: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        signature_tolerance_s: int = 300,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if signing_keys is not None and allow_unsigned:
            raise ConfigurationError(
                "Expected either signing_keys or allow_unsigned=True, but got both: "
                "allow_unsigned turns signature checks off"
            )
        if isinstance(signing_keys, str):
            raise ConfigurationError("Expected signing_keys to be a list of keys, but got one string")
        if signing_keys is None and not allow_unsigned:
            raw = (os.environ if environ is None else environ).get(SIGNING_KEYS_VARIABLE, "")
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
        self.signing_keys: tuple[str, ...] = keys
        self.allow_unsigned = allow_unsigned
        self.max_body_bytes = max_body_bytes
        self.signature_tolerance_s = signature_tolerance_s
        self._definitions: dict[str, WorkflowDefinition[Any]] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The registered workflow names, sorted."""
        return tuple(sorted(self._definitions))

    @overload
    def workflow(self, function: FunctionT, /) -> FunctionT: ...

    @overload
    def workflow(self, name: str | None = None, /, *, payload: type[PayloadT]) -> WorkflowDecorator[PayloadT]: ...

    @overload
    def workflow(self, name: str | None = None, /) -> WorkflowDecorator[Any]: ...

    def workflow(self, name: Any = None, /, *, payload: Any = None) -> Any:
        """Register an async workflow function, served at ``POST <mount point>/<name>``.

        ``name`` defaults to the function's name. With ``payload``, the run's payload is validated into
        that type (a pydantic model, a dataclass, any type pydantic knows) before the function runs;
        without it, ``ctx.payload`` is the raw JSON value. Usable bare (``@workflows.workflow``) too.
        """
        if callable(name):
            return self._register(name, None, None)

        def decorator(function: WorkflowFunction[Any, Any], /) -> WorkflowFunction[Any, Any]:
            return self._register(function, name, payload)

        return decorator

    def _register(
        self, function: WorkflowFunction[Any, Any], name: str | None, payload: Any
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
        adapter = None if payload is None else type_adapter(payload)
        self._definitions[workflow_name] = WorkflowDefinition(workflow_name, function, adapter)
        return function

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
        the answer. Raises ``LookupError`` for an unknown workflow, ``ValueError`` for a history that
        is not steps 0..n-1, and ``pydantic.ValidationError`` for a payload that does not fit its type.
        """
        started_at = clock()
        definition = self.definition(request.workflow)
        problem = history_problem(request)
        if problem is not None:
            raise ValueError(problem)
        payload = definition.parse_payload(request.payload)
        return await definition.execute(request, payload, clock=clock, started_at=started_at)

    def asgi(self) -> WorkflowsApp:
        """The ASGI app serving these workflows: mount it, e.g. ``app.mount("/workflows", workflows.asgi())``."""
        return WorkflowsApp(self)
