"""The services' logs: the format and level, and a Kafka outage told in two lines instead of thousands.

``STEPSTREAM_LOG_LEVEL`` sets the level (INFO). ``STEPSTREAM_LOG_FORMAT`` sets the format: ``text``
(the default, for people) or ``json``, one JSON object per line for a log pipeline, with the service's
name and, on lines logged while a service handles a run, the run's id, workflow, step and delivery
(:func:`log_context`). The Kafka clients' own lines about an unreachable broker, a coordinator or a
leader moving, and a produce retried while a transaction settles are kept at DEBUG, where they can
still be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from aiokafka.errors import (
    ConcurrentTransactions,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotEnoughReplicasError,
    UnknownTopicOrPartitionError,
)

# Errors that mean a broker could not be reached: a refused or broken connection, records that could
# not be delivered in time. aiokafka wraps socket errors in these; Python's own ConnectionError or
# TimeoutError could come from anything (an HTTP client going away), so they do not count. A request
# that timed out is retriable, not an outage: the broker holds a JoinGroup until the group rebalances.
_UNREACHABLE = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError)


_outages: KafkaOutageLog | None = None  # this process's, once configure_logging() installed it


def configure_logging() -> None:
    global _outages
    form = os.environ.get("STEPSTREAM_LOG_FORMAT", "text").strip().lower()
    if form not in ("text", "json"):
        raise ValueError(f"Expected STEPSTREAM_LOG_FORMAT to be text or json, but got {form!r}")
    logging.basicConfig(
        level=os.environ.get("STEPSTREAM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if form == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO: the schema registry's calls at start, a line per record type.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if _outages is None:
        _outages = KafkaOutageLog(debug=lambda: logging.getLogger("stepstream").isEnabledFor(logging.DEBUG))
    for handler in logging.getLogger().handlers:
        if _outages not in handler.filters:
            handler.addFilter(_outages)


# -- what a line is about, and lines as JSON ------------------------------------------------------

# Set per asyncio task (each service's loop, each delivery's task), so a line names what its task was
# doing: the service (all four share a process in `stepstream dev`) and the run it was handling.
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("stepstream_log_context", default={})  # noqa: B039
# What a line may name, in this order: the context's, or the same attributes given with ``extra=``
# (the SDK's lines in a user's app, which has no context of ours).
FIELDS = ("service", "run_id", "workflow", "step", "delivery_id", "trace_id")


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Lines logged inside this block (in this task, and tasks it starts) name ``fields`` (those not None)."""
    named = {name: str(value) for name, value in fields.items() if value is not None}
    token = _CONTEXT.set({**_CONTEXT.get(), **named})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def name_service(service: str) -> None:
    """Every line this task logs from now on (and the tasks it starts) names ``service``."""
    _CONTEXT.set({**_CONTEXT.get(), "service": service})


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then what the line is
    about (:data:`FIELDS`), and a traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _CONTEXT.get()
        for name in FIELDS:
            value = context.get(name, getattr(record, name, None))
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# Lines that say the clients cannot reach Kafka, by aiokafka's format strings where the record
# carries no exception.
_LOST_MESSAGES = (
    "Unable connect to node with id %s: %s",
    'Unable connect to "%s:%s": %s',
    "Unable to update metadata from %s",
    "Unable to request metadata from node with id %s: %r",
    'Unable to request metadata from "%s:%s": %s',
    "Heartbeat session expired - marking coordinator dead",
)
# aiokafka's lines about a coordinator or a leader moving, which it retries by itself.
_TRANSIENT_MESSAGES = (
    "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
    "Heartbeat failed for group %s because it is rebalancing",
    "Heartbeat failed for group %s: generation id is not  current.",
    "Heartbeat failed: local member_id was not recognized; resetting and re-joining group",
    "Marking the coordinator dead (node %s)for group %s.",
    "Error sending %s to node %s [%s] -- marking coordinator dead",
)
# What a fresh broker answers while it elects the group coordinator, at every start: never shown
# but at DEBUG (aiokafka retries and succeeds).
_START_UP_NOISE = ("GroupCoordinatorNotAvailableError", "Marking the coordinator dead")


class KafkaOutageLog(logging.Filter):
    """A broker outage in two lines, a WARNING when the Kafka clients start failing to reach it and an
    INFO with how long it lasted once they stopped failing, instead of the clients' own lines.

    aiokafka logs an ERROR at every attempt to reach a broker that is down (several a second per
    client; a 15-second outage wrote hundreds to thousands of lines per service), and a service logs a
    traceback for each transaction that fails meanwhile. This filter, on the process's log handlers,
    keeps those at DEBUG (shown only with STEPSTREAM_LOG_LEVEL=DEBUG) from the first one until none has
    come for ``quiet_s``, and for ``settle_s`` after that keeps at DEBUG too the lines about
    coordinators and leaders moving that follow a broker's restart. Every other line passes unchanged:
    an error that is not about reaching Kafka (a producer that cannot go on, a record that cannot be
    decoded) is logged as before, during an outage too.

    Lines are classified by the exceptions they carry (in their arguments, their exception and its
    causes) and by aiokafka's format strings (:func:`kafka_problem`). Call :meth:`ended` now and then
    (the services do, every half second): it closes an outage that is over and returns the INFO to log.
    """

    def __init__(
        self,
        *,
        quiet_s: float = 3.0,
        settle_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        debug: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.settle_s = settle_s
        self._clock = clock
        self._debug = debug
        self._lock = threading.Lock()  # records may come from other threads (asyncio.to_thread)
        self._first: float | None = None  # when the current outage's first failure was logged
        self._last = 0.0  # … and its latest
        self._kept = 0  # lines kept at DEBUG during it
        self._settled_at = 0.0

    @property
    def in_outage(self) -> bool:
        return self._first is not None

    def filter(self, record: logging.LogRecord) -> bool:
        if _settling_retry(record):
            # Normal operation, not an outage: a transactional produce that reached a partition while
            # the same producer's previous transaction was still settling there. The broker answers
            # NOT_ENOUGH_REPLICAS (its code for "retry" to clients without transactions v2, which no
            # Python client has: KAFKA-14561), and the client retries after its backoff.
            if not self._debug():
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        problem = kafka_problem(record)
        if problem is None:
            return True
        with self._lock:
            now = self._clock()
            if problem == "lost":
                if self._first is None:
                    self._first, self._last, self._kept = now, now, 0
                    _reword(record, logging.WARNING, _lost_message(record))
                    return True
                self._last = now
                return self._keep_at_debug(record)
            if self._first is not None or now < self._settled_at or _is_start_up_noise(record):
                return self._keep_at_debug(record)
        return True

    def ended(self) -> str | None:
        """If an outage is on and no client has failed to reach Kafka for ``quiet_s``, end it and return
        the line that says so; else None."""
        with self._lock:
            now = self._clock()
            if self._first is None or now - self._last < self.quiet_s:
                return None
            lasted, kept = self._last - self._first, self._kept
            self._first = None
            self._settled_at = now + self.settle_s
        return (
            f"Kafka is reachable again: the clients failed to reach it for {lasted:.1f} s "
            f"({kept} lines about it at DEBUG)"
        )

    def _keep_at_debug(self, record: logging.LogRecord) -> bool:
        self._kept += 1
        if not self._debug():
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_SETTLING_ERRORS = (NotEnoughReplicasError, ConcurrentTransactions)


def _settling_retry(record: logging.LogRecord) -> bool:
    """aiokafka's warning that a produce is retried because a transaction is settling."""
    return record.name == "aiokafka.producer.sender" and any(
        error in _SETTLING_ERRORS or isinstance(error, _SETTLING_ERRORS) for error in _errors_of(record)
    )


def kafka_problem(record: logging.LogRecord) -> str | None:
    """``"lost"`` for a line saying a Kafka broker cannot be reached, ``"transient"`` for one about a
    condition the clients retry by themselves (a coordinator or leader moving), None for any other."""
    if isinstance(record.msg, str) and "Unexpected error" in record.msg:
        return None  # aiokafka's own task died: never hidden, whatever the cause
    errors = _errors_of(record)
    if any(isinstance(error, _UNREACHABLE) for error in errors):
        return "lost"
    if record.name.startswith("aiokafka") and record.msg in _LOST_MESSAGES:
        return "lost"
    transient = any(_retriable(error) for error in errors) or (
        record.name.startswith("aiokafka") and record.msg in _TRANSIENT_MESSAGES
    )
    return "transient" if transient or _is_start_up_noise(record) else None


def _errors_of(record: logging.LogRecord) -> list[object]:
    """The exceptions (and exception classes) a record carries: in its arguments, and its exception,
    with the causes and contexts each was raised from."""
    arguments = record.args if isinstance(record.args, tuple) else ()
    found: list[object] = [a for a in arguments if isinstance(a, type) and issubclass(a, BaseException)]
    pending: list[BaseException | None] = [a for a in arguments if isinstance(a, BaseException)]
    if record.exc_info:
        pending.append(record.exc_info[1])
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        pending += [current.__cause__, current.__context__]
    return found


def _retriable(error: object) -> bool:
    kind = error if isinstance(error, type) else type(error)
    return bool(getattr(kind, "retriable", False)) and not issubclass(kind, UnknownTopicOrPartitionError)


def _is_start_up_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return record.name.startswith("aiokafka") and any(noise in message for noise in _START_UP_NOISE)


def _lost_message(record: logging.LogRecord) -> str:
    cause = record.getMessage().splitlines()[0][:200]
    return f"lost the connection to Kafka ({record.name}: {cause}); retrying until it is back, details at DEBUG"


def _reword(record: logging.LogRecord, level: int, message: str) -> None:
    record.name = "stepstream.kafka"
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.msg, record.args = message, ()
    record.exc_info, record.exc_text, record.stack_info = None, None, None


async def report_outages() -> None:
    """Log the end of each Kafka outage the log filter saw, within half a second of it being over."""
    while True:
        await asyncio.sleep(0.5)
        message = _outages.ended() if _outages is not None else None
        if message is not None:
            logging.getLogger("stepstream.kafka").info(message)
