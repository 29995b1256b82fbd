"""Starting services: each alone in its own process, or all together (``stepstream dev``).

A service runs until SIGTERM or SIGINT, then stops its clients cleanly (leaving its consumer group,
so its partitions move at once). Alone, the projector, scheduler and executor serve ``/healthz``,
``/readyz`` and ``/metrics`` on STEPSTREAM_HEALTH_PORT (:mod:`stepstream.health`); the api serves them
on its own port (all four services' metrics, when they share its process in ``stepstream dev``).
The api also runs the indexer of its query store, and is ready once the store has caught up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from stepstream import tracing
from stepstream.config import (
    ApiSettings,
    ExecutorSettings,
    KafkaSettings,
    ProjectorSettings,
    SchedulerSettings,
    health_address,
)
from stepstream.health import QuietServer, Readiness, serve_health
from stepstream.logs import configure_logging, name_service, report_outages

log = logging.getLogger("stepstream")


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
        events_retention_ms=kafka.events_retention_ms,
    )


@dataclass(slots=True)
class Service:
    """A service's work (coroutines to run until the process stops) and whether it is ready."""

    name: str
    tasks: list[Coroutine[Any, Any, None]]
    ready: Readiness


def projector_service(settings: ProjectorSettings) -> Service:
    from stepstream.projector.service import Projector

    projector = Projector(settings)
    return Service("projector", [projector.run()], projector.readiness)


def scheduler_service(settings: SchedulerSettings) -> Service:
    from stepstream.scheduler.service import Scheduler

    scheduler = Scheduler(settings)
    return Service("scheduler", [scheduler.run()], scheduler.readiness)


def executor_service(settings: ExecutorSettings) -> Service:
    from stepstream.executor.service import Executor

    executor = Executor(settings)
    return Service("executor", [executor.run()], executor.readiness)


def api_service(settings: ApiSettings) -> Service:
    """The api and the indexer of its own query store (at ``settings.database``)."""
    import uvicorn

    from stepstream.api.app import create_app
    from stepstream.api.changes import RunChanges
    from stepstream.api.indexer import Indexer
    from stepstream.avro import codec_for
    from stepstream.kafka.deadletter import DeadLetterWriter
    from stepstream.store import open_query_store

    codec = codec_for(settings.kafka)
    store = open_query_store(settings.database)
    changes = RunChanges()  # the indexer tells the requests waiting on runs when their runs change
    indexer = Indexer(
        settings.kafka,
        store,
        codec=codec,
        dead_letters=DeadLetterWriter(settings.kafka, codec, "indexer"),
        changes=changes,
        retention_ms=settings.query_store_retention_ms,
    )
    config = uvicorn.Config(
        create_app(settings, store=store, readiness=indexer.lag, changes=changes),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through the service's own handlers: one format (logs.py)
        lifespan="on",
    )

    class Server(QuietServer):
        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            # uvicorn waits for the requests in progress to finish: end the waits and history streams
            # now (they answer with what the store shows; a stream's client resumes elsewhere).
            changes.close()
            await super().shutdown(sockets)

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


def run_service(name: str, build: Callable[[], Service]) -> None:
    """Run the service ``name`` in this process until SIGTERM or SIGINT, with its health endpoints."""
    configure_logging()
    name_service(name)  # every line of the process names it, from the event loop's first
    tracing.configure(name)

    async def main() -> None:
        await _check_kafka_access()
        service = build()
        tasks = service.tasks
        address = health_address()
        if service.name != "api" and address is not None:
            tasks = [*tasks, _health(*address, service.ready)]
        tasks = [*tasks, report_outages()]
        log.info("%s started", service.name)
        await _until_signalled(tasks)
        log.info("%s stopped", service.name)

    # asyncio's own event loop, not uvloop's: on uvloop, the api made the broker spend twice the CPU
    # per run and the engine did a quarter fewer runs a second (make bench, side by side; decision 0008).
    try:
        asyncio.run(main())
    finally:
        tracing.shutdown()  # the spans still buffered


async def _check_kafka_access(kafka: KafkaSettings | None = None) -> None:
    """Stop at once, saying why, on credentials or certificates the cluster refuses (kafka/access.py)."""
    from stepstream.kafka.access import KafkaAccessError, check_access

    try:
        await check_access(kafka or KafkaSettings.from_env())
    except KafkaAccessError as error:
        log.critical("%s", error)
        raise SystemExit(3) from None


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
    await _check_kafka_access(projector.kafka)
    services = [
        projector_service(projector),
        scheduler_service(scheduler),
        executor_service(executor),
        api_service(api),
    ]
    # Each service's tasks name it in their log lines: the four share this process.
    tasks = [_named(service.name, task) for service in services for task in service.tasks]

    async def announce() -> None:
        if started is not None:
            await started()
        await asyncio.Event().wait()  # a task that ends would stop the others

    tracing.configure("dev")
    try:
        await _until_signalled([*tasks, announce(), report_outages()])
    finally:
        tracing.shutdown()


async def _named(service: str, work: Coroutine[Any, Any, None]) -> None:
    """``work``, in a task whose log lines name ``service`` (its context is its own)."""
    name_service(service)
    await work
