"""The executor never holds a partition on one record: a delivery it cannot make is reported as a
failure (with the reason, retried only if another attempt could go differently), and its offset is
done with; a header that would split the HTTP request is never sent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stepstream.core import Fail, FlowSettled, ReportDelivery
from tests.unit.test_executor_flow import DELIVERY, OFFSET, Answer, Make
from tests.unit.test_executor_flow import make as make  # the harness, a fixture


def failure_of(report: object) -> Fail:
    assert isinstance(report, ReportDelivery)
    assert isinstance(report.outcome, Fail)
    return report.outcome


@pytest.mark.asyncio
async def test_a_header_with_a_line_break_is_never_sent_and_fails_the_run_without_retries(make: Make) -> None:
    harness = await make(Answer(200, b"{}"))

    await harness.run(replace(DELIVERY, headers=(("X-Note", "a\r\nInjected: yes"),)))

    assert harness.http.requests == []  # nothing went out
    (report,) = harness.reports()
    failure = failure_of(report)
    assert (failure.error.type, failure.retryable) == ("InvalidRequest", False)
    assert failure.error.message == (
        "Expected header 'X-Note' to hold visible characters, spaces and tabs only (RFC 9110), but it holds '\\r'"
    )
    assert harness.progress.committable() == OFFSET + 1
    assert [type(sent.record) for sent in harness.flow_records()] == [FlowSettled]


@pytest.mark.asyncio
async def test_a_request_the_http_client_refuses_fails_the_run_without_retries(make: Make) -> None:
    harness = await make(ValueError("Invalid URL: no host"))

    await harness.run(DELIVERY)

    failure = failure_of(harness.reports()[0])
    assert (failure.error.type, failure.retryable, failure.error.message) == (
        "InvalidRequest",
        False,
        "Invalid URL: no host",
    )
    assert harness.progress.committable() == OFFSET + 1


@pytest.mark.asyncio
async def test_anything_unforeseen_is_reported_as_a_retryable_failure_and_the_offset_moves_on(make: Make) -> None:
    # given an error no handler foresaw (before: logged, and the partition's offset held for ever)
    harness = await make(RuntimeError("the unforeseen"))

    await harness.run(DELIVERY)

    failure = failure_of(harness.reports()[0])
    assert (failure.error.type, failure.retryable) == ("ExecutorError", True)
    assert failure.error.message == "RuntimeError: the unforeseen"
    assert harness.progress.committable() == OFFSET + 1
    assert [type(sent.record) for sent in harness.flow_records()] == [FlowSettled]  # its flow slot is freed
