"""Making one delivery: a request to the workflow's endpoint or, while the workflow runs one ``run``
step after another, as many as it takes (:mod:`stepstream.executor.chain`), each step reported
(durable) before the next is asked for, the workflow the SDK keeps between them resumed where it can
(a session); and the report of a delivery the executor could not make.

Apart from the service, whose loop only decides when a delivery starts and when its record is done
with: it hands each delivery over with what the loop knows of it (what was reported of it before a
crash, and whether it may still go on past a step), and this module turns it into requests
(:mod:`stepstream.executor.requests`) and reports (:mod:`stepstream.executor.publisher`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp

from stepstream import tracing
from stepstream.clock import Clock
from stepstream.config import ExecutorSettings
from stepstream.core import Continue, Continuing, Delivery, ErrorInfo, Fail, ReportDelivery, StepResult
from stepstream.executor.chain import Chain, Recovered, may_chain
from stepstream.executor.destinations import destination
from stepstream.executor.outcome import unrecordable_delivery
from stepstream.executor.publisher import Publisher
from stepstream.executor.requests import new_session_id, post_delivery, signed_request
from stepstream.sealing import SealError, sealed

log = logging.getLogger(__name__)


async def deliver(
    delivery: Delivery,
    recovered: Recovered | None,
    *,
    http: aiohttp.ClientSession,
    may_go_on: Callable[[Delivery], bool],
    settings: ExecutorSettings,
    clock: Clock,
    publisher: Publisher,
) -> None:
    """Make ``delivery``: one request to the endpoint, or, while the workflow runs one ``run`` step
    after another, as many as it takes, each step reported (durable) before the next is asked
    for (:mod:`stepstream.executor.chain`).

    ``recovered``: what the reports written before a crash say of it (recovery.py); ``may_go_on``:
    whether the service lets it go on past a ``continue`` now."""
    started = time.perf_counter()
    if recovered is not None and recovered.ended:
        log.info("delivery %s#%d was reported before a crash: not made again", delivery.delivery_id, delivery.attempt)
        return
    chain = Chain.resuming(delivery, recovered)
    flight = publisher.begin(delivery.request_id, delivery.flow_key)
    # The SDK may keep the workflow running between the requests of a chain (a session), so that
    # the next request only resumes it: nothing replayed, nothing sent again.
    session = new_session_id() if settings.sessions and may_chain(delivery) else None
    resume = False
    while True:
        # A resume carries nothing of the run: the whole history is made only for a request that replays.
        current = delivery if resume else chain.current
        url = destination(current.url, settings.allowed_url_hosts)
        steps: tuple[StepResult, ...] = ()
        kept = False
        if isinstance(url, str):
            try:
                body, headers = signed_request(current, url, settings, session=session, resume=resume)
            except SealError as error:  # a sealed header no key here opens: the run fails, said why
                url = Fail(error=ErrorInfo(type="SealError", message=str(error)[:2_000]), retryable=False)
            else:
                headers.update(tracing.http_headers())  # the delivery's span, for the app's steps (not signed)
                reply = await post_delivery(http, url, body, headers, timeout_ms=settings.timeout_ms)
                if reply.unknown_session:
                    # Served by another process of the app, or expired: the whole delivery, and no more
                    # sessions for this one (behind several workers they would mostly miss).
                    session, resume = None, False
                    continue
                # The credentials the steps asked for are sealed before the report reaches Kafka.
                steps, outcome, kept = reply.steps, sealed(reply.outcome, settings.sealer), reply.session_kept
        if not isinstance(url, str):  # neither signed nor sent: the run fails with the reason
            log.warning("refused delivery %s to %r: %s", delivery.delivery_id, delivery.url, url.error.message)
            outcome = url
        going_on = isinstance(outcome, Continue) and bool(steps) and may_go_on(delivery)
        report = ReportDelivery(
            run_id=delivery.run_id,
            delivery_id=delivery.delivery_id,
            attempt=delivery.attempt,
            now_ms=clock.now_ms(),
            steps=steps,
            outcome=Continuing() if going_on else outcome,
        )
        written = await publisher.report(delivery.run_id, report, unrecordable_delivery)
        if not (going_on and written):
            break
        chain.record(steps)  # durable now: the next request replays them, or resumes past them
        resume = session is not None and kept
    await publisher.settle(flight)
    log.debug(
        "delivered %s#%d (%d steps gone on with) in %.1f ms",
        delivery.delivery_id,
        delivery.attempt,
        chain.length,
        (time.perf_counter() - started) * 1000,
    )


async def report_failure(delivery: Delivery, message: str, *, clock: Clock, publisher: Publisher) -> None:
    """Report ``delivery`` as failed by the executor itself (retryable), and settle it."""
    outcome = Fail(error=ErrorInfo(type="ExecutorError", message=message[:2_000]), retryable=True)
    report = ReportDelivery(
        run_id=delivery.run_id,
        delivery_id=delivery.delivery_id,
        attempt=delivery.attempt,
        now_ms=clock.now_ms(),
        steps=(),
        outcome=outcome,
    )
    await publisher.report(delivery.run_id, report, unrecordable_delivery)
    await publisher.settle(publisher.begin(delivery.request_id, delivery.flow_key))
