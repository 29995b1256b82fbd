"""Waiting for a run and following its history, without polling: each wait reads the store when the
indexer says its run changed (:mod:`stepstream.api.changes`), and at its deadline.

The history stream is server-sent events (``text/event-stream``, docs/api.md): each event of the
history as one message whose ``id`` is its ``seq`` (so a client resumes with ``Last-Event-ID``), a
comment every :data:`KEEPALIVE_S` seconds while nothing happens, and a last message ``event: end``
with the run once it has ended. It ends when the run has ended and the stream has sent every event
the store holds for it; for a failed run that includes the ``FailureHandlerScheduled`` written with
``RunFailed``, but not the ``FailureHandled`` (or ``FailureHandlerFailed``) that comes once the handler
has answered, which may take long (it is retried like a step). A run resumed or restarted before the
stream reads its end goes on, and so does the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from stepstream.api.changes import RunChanges
from stepstream.store import QueryStore, RunRow

# A comment line this often while a run is quiet: proxies and load balancers close connections idle
# for longer (often 30 or 60 s), and a client learns its connection is still alive.
KEEPALIVE_S = 15.0
# Events read from the store at once: a long history is sent in pages, never read whole.
PAGE = 500
KEEPALIVE = ": keep-alive\n\n"


async def wait_for_run(
    store: QueryStore,
    changes: RunChanges,
    run_id: str,
    timeout_s: float,
    until: Callable[[RunRow], bool],
) -> RunRow | None:
    """The run once ``until`` holds for it, else as the store shows it when ``timeout_s`` has passed (None
    if the store does not know it then). Reads the store at the start, at each change of the run and
    at the deadline; returns early, with what the store shows, if the api shuts down."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with changes.watch(run_id) as changed:
        while True:
            changed.clear()
            # A lookup by primary key on a connection that does not wait for the indexer: microseconds.
            run = store.get_run(run_id)
            remaining = deadline - loop.time()
            if (run is not None and until(run)) or remaining <= 0 or changes.closed:
                return run
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()


def ended(run: RunRow) -> bool:
    return run.ended


def known(run: RunRow) -> bool:
    return True


async def history_stream(
    store: QueryStore, changes: RunChanges, run_id: str, after_seq: int, *, keepalive_s: float = KEEPALIVE_S
) -> AsyncGenerator[str, None]:
    """The run's history after ``after_seq`` as server-sent events, then each new event as the store
    gets it, until the run has ended (see the module's docstring) or the api shuts down (then the
    stream stops without its ``end`` message, and the client resumes elsewhere)."""
    with changes.watch(run_id) as changed:
        while not changes.closed:
            changed.clear()
            page = await asyncio.to_thread(store.history_page, run_id, after_seq=after_seq, limit=PAGE)
            for event in page.events:
                yield event_message(event)
                after_seq = event["seq"]
            if len(page.events) == PAGE:
                continue  # more where these came from
            if page.run is not None and page.settled and after_seq >= page.run.last_seq:
                yield end_message(page.run)
                return
            try:
                async with asyncio.timeout(keepalive_s):
                    await changed.wait()
            except TimeoutError:
                yield KEEPALIVE


def event_message(event: dict[str, Any]) -> str:
    """One event of the history as a message: its ``seq`` as the id, the event as one line of JSON."""
    return f"id: {event['seq']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def end_message(run: RunRow) -> str:
    """The last message of a stream: the run as it ended (no id, so the client's last id stays its last
    event's)."""
    return f"event: end\ndata: {json.dumps(run.to_dict(), separators=(',', ':'))}\n\n"
