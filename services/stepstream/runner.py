"""Starting services: each alone in its own process, or all together (``stepstream dev``).

A service runs until SIGTERM or SIGINT, then stops its clients cleanly (leaving its consumer group,
so its partitions move at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from stepstream.config import ApiSettings, ExecutorSettings, KafkaSettings, ProjectorSettings, SchedulerSettings

log = logging.getLogger("stepstream")


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("STEPSTREAM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_transient_coordinator_errors)


def _transient_coordinator_errors(record: logging.LogRecord) -> bool:
    """aiokafka logs ERROR while a fresh broker elects its group coordinator, then retries and
    succeeds; keep those out of the user's terminal (they stay visible at DEBUG)."""
    message = record.getMessage()
    transient = "GroupCoordinatorNotAvailableError" in message or "Marking the coordinator dead" in message
    return not transient or logging.getLogger("stepstream").isEnabledFor(logging.DEBUG)


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


def projector_tasks(settings: ProjectorSettings) -> list[Coroutine[Any, Any, None]]:
    from stepstream.projector.indexer import Indexer
    from stepstream.projector.service import Projector
    from stepstream.store import QueryStore

    return [Projector(settings).run(), Indexer(settings.kafka, QueryStore(settings.database)).run()]


def scheduler_tasks(settings: SchedulerSettings) -> list[Coroutine[Any, Any, None]]:
    from stepstream.scheduler.service import Scheduler

    return [Scheduler(settings).run()]


def executor_tasks(settings: ExecutorSettings) -> list[Coroutine[Any, Any, None]]:
    from stepstream.executor.service import Executor

    return [Executor(settings).run()]


def api_tasks(settings: ApiSettings) -> list[Coroutine[Any, Any, None]]:
    import uvicorn

    from stepstream.api.app import create_app

    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning", lifespan="on"
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would take SIGINT/SIGTERM while it serves; ours decide when the process stops.
            yield

    return [_serve_until_cancelled(Server(config))]


async def _serve_until_cancelled(server: Any) -> None:
    """Serve; when cancelled, let uvicorn finish its requests and lifespan instead of tearing it down."""
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


def run_service(name: str, build: Callable[[], list[Coroutine[Any, Any, None]]]) -> None:
    configure_logging()

    async def main() -> None:
        tasks = build()
        log.info("%s started", name)
        await _until_signalled(tasks)
        log.info("%s stopped", name)

    asyncio.run(main())


async def run_all(
    projector: ProjectorSettings,
    scheduler: SchedulerSettings,
    executor: ExecutorSettings,
    api: ApiSettings,
    *,
    started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    tasks = [*projector_tasks(projector), *scheduler_tasks(scheduler), *executor_tasks(executor), *api_tasks(api)]

    async def announce() -> None:
        if started is not None:
            await started()
        await asyncio.Event().wait()  # a task that ends would stop the others

    await _until_signalled([*tasks, announce()])
