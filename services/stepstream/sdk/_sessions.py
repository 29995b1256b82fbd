"""Sessions: a workflow kept running between the requests of one delivery the engine goes on with.

Without them every request replays the run from the top, so step *n* costs *n* replayed steps and a
request carrying *n* results. With them the SDK answers ``continue`` with the step it just ran and
keeps the workflow waiting at its next step; the engine makes that step durable and sends a small
``resume`` request, and the same coroutine goes on. A session lives in the process that answered,
for a while (``ttl_s``); a ``resume`` that finds none (another worker, a restart, expiry) is
answered 409 ``unknown_session``, and the engine sends the whole delivery again: correct, only
slower.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stepstream.protocol import DeliveryRequest, DeliveryResponse

log = logging.getLogger("stepstream.sdk")

DEFAULT_SESSION_TTL_S = 60.0
DEFAULT_MAX_SESSIONS = 10_000


@dataclass(slots=True)
class Session:
    """One delivery's workflow, running in a task, and the answers it has for the requests to come."""

    run_id: str
    delivery_id: str
    workflow: str
    answers: asyncio.Queue[DeliveryResponse | BaseException] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    _resumed: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, drive: Callable[[], Awaitable[DeliveryResponse]]) -> None:
        """Run the workflow: ``drive`` returns its last answer; each pause gives one before it."""

        async def run() -> None:
            try:
                self.answers.put_nowait(await drive())
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # the request that waits for an answer reports it
                self.answers.put_nowait(error)

        self.task = asyncio.create_task(run())

    async def on_pause(self, response: DeliveryResponse) -> None:
        """The driver's pause: hand ``response`` to the request, then wait to be resumed."""
        self._resumed.clear()
        self.answers.put_nowait(response)
        await self._resumed.wait()

    def resume(self) -> None:
        self._resumed.set()

    async def answer(self) -> DeliveryResponse:
        """The next answer: at the next pause, or the last one."""
        answer = await self.answers.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def matches(self, request: DeliveryRequest) -> bool:
        return (request.run_id, request.delivery_id, request.workflow) == (self.run_id, self.delivery_id, self.workflow)

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Sessions:
    """The sessions this process keeps, by id: each until it is resumed, for at most ``ttl_s``, and at
    most ``limit`` (the oldest are dropped first: their workflows are cancelled, and the engine sends
    their deliveries whole)."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_SESSION_TTL_S,
        limit: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._kept: OrderedDict[str, tuple[float, Session]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, session_id: str, session: Session) -> None:
        self._kept[session_id] = (self._clock() + self._ttl_s, session)
        self._kept.move_to_end(session_id)
        self._drop_stale()

    def take(self, session_id: str) -> Session | None:
        """The session ``session_id``, no longer kept (the request that resumes it keeps it again)."""
        self._drop_stale()
        entry = self._kept.pop(session_id, None)
        return None if entry is None else entry[1]

    def _drop_stale(self) -> None:
        now = self._clock()
        while self._kept:
            session_id, (expires_at, session) = next(iter(self._kept.items()))
            if expires_at > now and len(self._kept) <= self._limit:
                return
            del self._kept[session_id]
            session.close()
            log.debug("session %s of run %s dropped (expired or over the limit)", session_id, session.run_id)


async def resume(request: DeliveryRequest, sessions: Sessions) -> DeliveryResponse | None:
    """Answer a ``resume``: the session's workflow goes on to its next answer. None: no such session
    here (another process served it, or it expired), or one for another delivery."""
    assert request.session is not None
    session = sessions.take(request.session)
    if session is None:
        return None
    if not session.matches(request):
        session.close()
        return None
    session.resume()
    return await answer(session, request.session, sessions)


async def answer(session: Session, session_id: str, sessions: Sessions) -> DeliveryResponse:
    """The session's next answer; kept for its next request if it paused, else done with."""
    try:
        response = await session.answer()
    except BaseException:
        session.close()
        raise
    if response.session == "kept":
        sessions.keep(session_id, session)
    return response
