"""Waiting for a condition in tests, instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# `timeout` is a polling deadline, not a bound on one awaited call: asyncio.timeout would cancel the
# predicate half-way, hence the ASYNC109 exceptions below.


@overload
async def assert_eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
) -> T: ...


@overload
async def assert_eventually(
    predicate: Callable[[], T],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
) -> T: ...


async def assert_eventually(
    predicate: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
) -> Any:
    """Call ``predicate`` (sync or async) until it returns something truthy, and return that.

    An exception from ``predicate`` (a failed ``assert`` inside it, say) counts as "not yet". On timeout
    this raises ``AssertionError`` naming the last value or exception, so a failure says what was seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_value: object = None
        last_error: Exception | None = None
        try:
            result = predicate()
            last_value = await result if inspect.isawaitable(result) else result
        except Exception as error:  # any failure of the predicate means "not yet"
            last_error = error
        else:
            if last_value:
                return last_value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(predicate, timeout, last_value, last_error)) from last_error
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """The synchronous twin of :func:`assert_eventually`, for sync tests and fixtures."""
    deadline = time.monotonic() + timeout
    while True:
        last_value: T | None = None
        last_error: Exception | None = None
        try:
            last_value = predicate()
        except Exception as error:  # any failure of the predicate means "not yet"
            last_error = error
        else:
            if last_value:
                return last_value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(predicate, timeout, last_value, last_error)) from last_error
        time.sleep(interval)


def _timeout_message(predicate: Callable[[], object], timeout: float, value: object, error: Exception | None) -> str:
    name = getattr(predicate, "__qualname__", repr(predicate))
    last = f"it last raised {error!r}" if error is not None else f"it last returned {value!r}"
    return f"Expected {name} to become true within {timeout} s, but {last}"
