"""Structured logs (STEPSTREAM_LOG_FORMAT=json) from the real services: every line each service writes
parses as one JSON object naming the service, and the lines written while a service handles a run
name that run (and its workflow and delivery where the service knows them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import SERVICES, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # DEBUG: the executor's line per delivery made is a DEBUG line (the Kafka clients stay at WARNING).
    stack = Stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("logs"),
        STEPSTREAM_LOG_FORMAT="json",
        STEPSTREAM_LOG_LEVEL="DEBUG",
        STEPSTREAM_STEP_BUDGET_MS="0",
    )
    stack.create_topics()
    stack.start()
    yield stack
    stack.stop()


def lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    text = (stack.directory / f"{service}.log").read_text()
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{service}.log line {number} is not JSON: {line[:300]!r}")
    return parsed


def test_every_line_is_json_and_the_lines_about_a_run_name_it(stack: Stack) -> None:
    run_ids = [stack.trigger({"name": f"user{index}", "sleep_seconds": 0.2}) for index in range(3)]
    for run_id in run_ids:
        stack.wait_for_status(run_id, "completed")
    stack.stop()  # every line written, and the lines of stopping too

    for service in SERVICES:
        logged = lines(stack, service)
        assert logged, f"{service} logged nothing"
        assert all(line["service"] == service for line in logged), service
        assert all({"time", "level", "logger", "message"} <= line.keys() for line in logged), service

    # the executor names, on its line of each delivery it made, the run, its workflow and the delivery
    delivered = [line for line in lines(stack, "executor") if line["message"].startswith("delivered ")]
    for run_id in run_ids:
        about = [line for line in delivered if run_id in line["message"]]
        assert about, f"no line about a delivery of {run_id}"
        for line in about:
            assert (line["run_id"], line["workflow"]) == (run_id, "onboarding"), line
            assert line["delivery_id"] in line["message"], line
            assert isinstance(line["step"], str), line
    # and no line names a run it is not about
    for service in SERVICES:
        for line in lines(stack, service):
            if "run_id" in line:
                others = [run_id for run_id in run_ids if run_id != line["run_id"] and run_id in line["message"]]
                assert not others, line
