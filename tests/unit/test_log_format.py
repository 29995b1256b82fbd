"""Log lines as JSON (STEPSTREAM_LOG_FORMAT=json, logs.py): what a line holds, what it is about, and a
format that is neither text nor json refused by name."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pytest

from stepstream.logs import JsonLines, configure_logging, log_context, name_service


def formatted(message: str, *args: object, exc: bool = False, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("stepstream.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    if exc:
        try:
            raise RuntimeError("disk full")
        except RuntimeError:
            record.exc_info = sys.exc_info()
    parsed: dict[str, Any] = json.loads(JsonLines().format(record))
    return parsed


def test_a_line_is_one_json_object_with_its_time_level_logger_and_message() -> None:
    line = formatted("run %s fails: %s", "run_1", 'a "quoted"\nreason')

    assert line.keys() == {"time", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "stepstream.test",
        'run run_1 fails: a "quoted"\nreason',
    )
    assert line["time"].endswith("+00:00")


def test_a_line_names_what_its_task_is_about_until_the_block_ends() -> None:
    async def scenario() -> list[dict[str, Any]]:
        name_service("executor")
        seen = [formatted("starting")]
        with log_context(run_id="run_1", workflow="orders", step=3, delivery_id="run_1/2", trace_id=None):
            seen.append(formatted("delivered"))
            with log_context(step=4):
                seen.append(formatted("next"))
        seen.append(formatted("idle"))
        return seen

    starting, delivered, following, idle = asyncio.run(scenario())

    assert starting["service"] == "executor"
    assert "run_id" not in starting
    about = {"service": "executor", "run_id": "run_1", "workflow": "orders", "step": "3", "delivery_id": "run_1/2"}
    assert {name: delivered[name] for name in about} == about
    assert "trace_id" not in delivered  # None: not named
    assert following["step"] == "4"
    assert "run_id" not in idle


def test_names_given_as_extra_are_kept_and_a_traceback_is_one_field() -> None:
    line = formatted("served", run_id="run_9", workflow="w", exc=True)

    assert (line["run_id"], line["workflow"]) == ("run_9", "w")
    assert "RuntimeError: disk full" in line["exception"]


def test_an_unknown_format_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="Expected STEPSTREAM_LOG_FORMAT to be text or json, but got 'yaml'"):
        configure_logging()
