"""Starting services: each alone in its own process, or all together (``stepstream dev``).

A service runs until SIGTERM or SIGINT, then stops its clients cleanly (leaving its consumer group,
so its partitions move at once). Alone, the projector, scheduler and executor serve ``/healthz`` and
``/readyz`` on STEPSTREAM_HEALTH_PORT (:mod:`stepstream.health`); the api serves them on its own port.
The api also runs the indexer of its query store, and is ready once the store has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, UnknownTopicOrPartitionError

from stepstream.config import (
    ApiSettings,
    ExecutorSettings,
    KafkaSettings,
    ProjectorSettings,
    SchedulerSettings,
    health_address,
)
from stepstream.health import Readiness, serve_health

log = logging.getLogger("stepstream")

# Errors that mean a broker could not be reached: a refused or broken connection, records that could
# not be delivered in time. aiokafka wraps socket errors in these; Python's own ConnectionError or
# TimeoutError could come from anything (an HTTP client going away), so they do not count. A request
# that timed out is retriable, not an outage: the broker holds a JoinGroup until the group rebalances.
_UNREACHABLE = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError)


_outages: KafkaOutageLog | None = None  # this process's, once configure_logging() installed it


def configure_logging() -> None:
    global _outages
    logging.basicConfig(
        level=os.environ.get("STEPSTREAM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if _outages is None:
        _outages = KafkaOutageLog(debug=lambda: logging.getLogger("stepstream").isEnabledFor(logging.DEBUG))
    for handler in logging.getLogger().handlers:
        if _outages not in handler.filters:
            handler.addFilter(_outages)


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


async def _report_outages() -> None:
    """Log the end of each Kafka outage the log filter saw, within half a second of it being over."""
    while True:
        await asyncio.sleep(0.5)
        message = _outages.ended() if _outages is not None else None
        if message is not None:
            logging.getLogger("stepstream.kafka").info(message)


async def _until_signalled(tasks: list[Coroutine[Any, Any, None]]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = [asyncio.create_task(task) for task in tasks]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*running, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in running:
        task.cancel()
    results = await asyncio.gather(*running, return_exceptions=True)
    stopper.cancel()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


async def ensure_topics_for(kafka: KafkaSettings) -> None:
    from stepstream.kafka.topics import TopicNames, ensure_topics

    await ensure_topics(
        kafka.bootstrap_servers,
        TopicNames(kafka.topic_prefix),
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        client_options=kafka.client_options(),
    )


@dataclass(slots=True)
class Service:
    """A service's work (coroutines to run until the process stops) and whether it is ready."""

    name: str
    tasks: list[Coroutine[Any, Any, None]]
    ready: Readiness


def _joined(event: asyncio.Event) -> Readiness:
    return lambda: None if event.is_set() else "has not joined its consumer group and restored its partitions yet"


def projector_service(settings: ProjectorSettings) -> Service:
    from stepstream.projector.service import Projector

    projector = Projector(settings)
    return Service("projector", [projector.run()], _joined(projector.ready))


def scheduler_service(settings: SchedulerSettings) -> Service:
    from stepstream.scheduler.service import Scheduler

    scheduler = Scheduler(settings)
    return Service("scheduler", [scheduler.run()], _joined(scheduler.ready))


def executor_service(settings: ExecutorSettings) -> Service:
    from stepstream.executor.service import Executor

    executor = Executor(settings)
    return Service("executor", [executor.run()], _joined(executor.ready))


def api_service(settings: ApiSettings) -> Service:
    """The api and the indexer of its own query store (at ``settings.database``)."""
    import uvicorn

    from stepstream.api.app import create_app
    from stepstream.api.indexer import Indexer
    from stepstream.store import QueryStore

    store = QueryStore(settings.database)
    indexer = Indexer(settings.kafka, store)
    config = uvicorn.Config(
        create_app(settings, store=store, readiness=indexer.lag),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would take SIGINT/SIGTERM while it serves; ours decide when the process stops.
            yield

    return Service("api", [_serve_until_cancelled(Server(config)), indexer.run()], indexer.lag)


async def _serve_until_cancelled(server: Any) -> None:
    """Serve; when cancelled, let uvicorn finish its requests and lifespan instead of tearing it down."""
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


def run_service(build: Callable[[], Service]) -> None:
    """Run one service in this process until SIGTERM or SIGINT, with its health endpoints."""
    configure_logging()

    async def main() -> None:
        service = build()
        tasks = service.tasks
        address = health_address()
        if service.name != "api" and address is not None:
            tasks = [*tasks, _health(*address, service.ready)]
        tasks = [*tasks, _report_outages()]
        log.info("%s started", service.name)
        await _until_signalled(tasks)
        log.info("%s stopped", service.name)

    asyncio.run(main())


async def _health(host: str, port: int, ready: Readiness) -> None:
    try:
        await serve_health(host, port, ready)
    except OSError as error:
        # The service runs on without them: a probe that fails says so where it matters.
        log.error(
            "health endpoints not served on %s:%d (%s); set STEPSTREAM_HEALTH_PORT to a free port, or to off",
            host,
            port,
            error,
        )
        await asyncio.Event().wait()  # a task that ends would stop the service


async def run_all(
    projector: ProjectorSettings,
    scheduler: SchedulerSettings,
    executor: ExecutorSettings,
    api: ApiSettings,
    *,
    started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    services = [
        projector_service(projector),
        scheduler_service(scheduler),
        executor_service(executor),
        api_service(api),
    ]
    tasks = [task for service in services for task in service.tasks]

    async def announce() -> None:
        if started is not None:
            await started()
        await asyncio.Event().wait()  # a task that ends would stop the others

    await _until_signalled([*tasks, announce(), _report_outages()])
