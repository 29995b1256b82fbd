"""How the CLI prints: clocks and durations, a run's history one event a line, and the tables.

The tables (runs, dead letters, steps, flow-control keys) go through rich: on a terminal, statuses
in colour and long values folded inside their column; into a pipe or a file, plain text, one line a
row, columns aligned, nothing wrapped or cut (docs/decisions/0017-cli-tables.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepstream.core.retry import RETRYABLE_CLIENT_STATUSES
from stepstream.durations import format_duration

if TYPE_CHECKING:
    from rich.text import Text


def clock(at_ms: int | None, *, date: bool = False) -> str:
    if at_ms is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(at_ms / 1000))
    return f"{stamp}.{at_ms % 1000:03d}" if not date else stamp


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.1f} s"


# Control characters, and the Unicode controls that reorder text on screen (bidi overrides and
# isolates): shown as escapes, never sent to the terminal.
_HIDDEN = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def one_line(text: str) -> str:
    """``text`` on one line, as plain characters: an endpoint's multi-line error would break a
    one-line-per-row listing, and its escape sequences (colours, cursor moves, a terminal title) are
    the endpoint's, not ours to send to the reader's terminal; the CLI shows them as ``\\x1b``."""
    return " ".join(text.split()).translate(_HIDDEN)


# -- a run's history --------------------------------------------------------------------------


def _describe(event: dict[str, Any]) -> str:
    """One readable line for an event of the history."""
    kind = str(event["type"])
    step = f"step {event.get('step_index')}"
    if kind == "RunStarted":
        parent = f" (invoked by {event['parent_run_id']})" if event.get("parent_run_id") else ""
        return f"run of {event['workflow']!r} started with payload {json.dumps(event['payload'])}{parent}"
    if kind == "StepScheduled":
        if event.get("execute_only"):
            return (
                f"delivery {event['delivery_id']} scheduled for parallel {step} {event.get('name')!r} "
                f"(attempt {event['attempt']})"
            )
        return f"delivery {event['delivery_id']} scheduled ({step}, attempt {event['attempt']})"
    if kind == "StepCompleted":
        return f"{event['kind']} {step} {event['name']!r} completed → {json.dumps(event['output'])}"
    if kind == "StepFailed":
        return f"{step} attempt {event['attempt']} failed: {event['error']['message']}{_after_failure(event)}"
    if kind == "SleepStarted":
        wakes = _seconds(event["wake_at_ms"] - event["at_ms"])
        return f"{event['kind']} {step} {event['name']!r} started: wakes in {wakes}"
    if kind == "CallStarted":
        call = event["call"]
        return f"call {step} {event['name']!r} started: {call['method']} {call['url']}"
    if kind == "CallRetried":
        answer = f"answered {event['status']}" if event["status"] else "got no answer"
        if event["error"] != answer:
            answer += f" ({event['error']})"
        return f"call {step} attempt {event['attempt']} {answer}; retry at {clock(event['retry_at_ms'])}"
    if kind == "WaitStarted":
        timeout = _seconds(event["timeout_at_ms"] - event["at_ms"])
        return f"wait {step} {event['name']!r} waits for event {event['event_id']!r} (times out in {timeout})"
    if kind == "EventReceived":
        return f"wait {step} received event {event['event_id']!r} → {json.dumps(event['data'])}{_by(event)}"
    if kind == "WaitTimedOut":
        return f"wait {step} timed out waiting for event {event['event_id']!r}"
    if kind == "NotifyStarted":
        return f"notify {step} {event['name']!r} notifies event {event['event_id']!r} with {json.dumps(event['data'])}"
    if kind == "InvokeStarted":
        return f"invoke {step} {event['name']!r} started child run {event['child_run_id']} of {event['workflow']!r}"
    if kind == "RunCompleted":
        return f"run completed → {json.dumps(event['output'])}"
    if kind == "RunFailed":
        return f"run failed: {event['error']['type']}: {event['error']['message']}"
    if kind == "RunCancelled":
        return "run cancelled" + _by(event) + (f": {event['reason']}" if event.get("reason") else "")
    if kind == "ResultIgnored":
        return f"ignored, the run was cancelled: {event['what']}"
    if kind == "FailureHandlerScheduled":
        return (
            f"failure handler scheduled: {event['url']} (delivery {event['delivery_id']}, attempt {event['attempt']})"
        )
    if kind == "FailureHandled" and event.get("error") is None:
        return "failure handler answered"
    if kind in ("FailureHandlerFailed", "FailureHandled"):  # the latter: written before the former existed
        return f"failure handler attempt {event['attempt']} failed: {event['error']['message']}{_after_failure(event)}"
    if kind == "RunRecovered":
        done = {"resume": "resumed", "restart": "restarted", "delete": "deleted from the dead-letter list"}
        reason = f": {event['reason']}" if event.get("reason") else ""
        return f"run {done.get(event['action'], event['action'])}{_by(event) or ' by an operator'}{reason}"
    return kind


# The 4xx answers the engine does retry, as the core has them, and 409 for a delivery replayed on the way
# (executor/outcome.py): "408, 409, 425 and 429".
_RETRIED = [str(status) for status in sorted({*RETRYABLE_CLIENT_STATUSES, 409})]
_RETRIED_4XX = f"{', '.join(_RETRIED[:-1])} and {_RETRIED[-1]}"


def _after_failure(event: dict[str, Any]) -> str:
    """What follows a failed attempt: when the next one is due, or why there is none. A 4xx answer
    is not retried whatever the retries left; saying "no retry left" there reads like a bug."""
    if event.get("retry_at_ms"):
        return f", retry at {clock(event['retry_at_ms'])}"
    if event.get("retryable") is False:
        error_type = str(event["error"]["type"])
        if error_type.startswith("HTTP4"):
            return f"; not retried: a 4xx answer is final ({_RETRIED_4XX} are retried)"
        return f"; not retried: {error_type} is final"
    return ", no retry left"


def _by(event: dict[str, Any]) -> str:
    """Who asked for what the event records (the audit trail, docs/history.md), when it says."""
    return f" by {event['actor']}" if event.get("actor") else ""


# The longest event type, FailureHandlerScheduled: every history line's description starts aligned.
TYPE_WIDTH = 23


def print_event(event: dict[str, Any]) -> None:
    # Not a table: a followed history prints each event as it arrives, so its columns cannot be sized
    # to the longest value; the fixed widths keep them aligned.
    description = one_line(_describe(event))
    print(f"{event['seq']:>4}  {clock(event['at_ms'])}  {event['type']:<{TYPE_WIDTH}} {description}")


# -- tables -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    number: bool = False  # right-aligned
    # On a terminal too narrow for the table, a long value (an id, an error) folds onto more lines
    # inside its column; short fixed ones (a status, a time) never break.
    folds: bool = False


# Statuses of runs and steps on a terminal, in the dashboard's colours (api/ui/style.css).
_STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "bright_black",
    "scheduled": "bright_blue",
    "running": "blue",
    "sleeping": "cyan",
    "waiting": "yellow",
    "pending": "yellow",
}


def status_cell(value: str) -> Text:
    from rich.text import Text

    return Text(value, style=_STATUS_STYLES.get(value, ""))


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str | Text]]) -> None:
    """``rows`` under a header, each column as wide as its longest value, two spaces between."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(
            Text(column.header),
            justify="right" if column.number else "left",
            no_wrap=not column.folds,
            overflow="fold",
        )
    for row in rows:
        # Text, never a str: rich would read markup ("[bold]") and emoji codes in a run's own values.
        table.add_row(*(cell if isinstance(cell, Text) else Text(one_line(cell)) for cell in row))
    console = Console(highlight=False)  # colours as rich decides them: none into a pipe, or with NO_COLOR
    if not sys.stdout.isatty():
        # A pipe or a file (grep, head, a script) gets one line a row however long its values are.
        console.width = sys.maxsize
    # Rendered first and written with print(): a reader that goes away (`| head -5`) then ends the CLI
    # quietly through main() (rich would exit 1), and no line keeps the padding of its last cell.
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


def print_runs(answer: dict[str, Any], *, errors: bool = False) -> None:
    """A page of runs, newest first; ``errors``: with each one's error (the dead-letter list)."""
    runs = answer["runs"]
    columns = [
        Column("RUN", folds=True),
        Column("WORKFLOW", folds=True),
        Column("STATUS"),
        Column("STEPS", number=True),
        Column("CREATED"),
    ]
    if errors:
        columns.append(Column("ERROR", folds=True))
    rows: list[list[str | Text]] = []
    for run in runs:
        row: list[str | Text] = [
            run["run_id"],
            run["workflow"],
            status_cell(run["status"]),
            str(run["steps"]),
            clock(run["created_at_ms"], date=True),
        ]
        if errors:
            error = run.get("error")
            row.append(f"{error['type']}: {error['message']}" if error else "")  # print_table puts it on one line
        rows.append(row)
    if runs:
        print_table(columns, rows)
    else:
        print("no runs match", file=sys.stderr)
    if answer.get("next_cursor"):
        print(f"more: add --cursor {answer['next_cursor']}", file=sys.stderr)


def _step_detail(step: dict[str, Any]) -> str:
    detail = step.get("detail") or {}
    if step["status"] == "completed":
        return f"→ {json.dumps(step['output'])}"
    if step["kind"] in ("sleep", "sleep_until"):
        return f"wakes at {clock(detail.get('wake_at_ms'), date=True)}"
    if step["kind"] == "wait_for_event":
        return f"waits for event {detail.get('event_id')!r} until {clock(detail.get('timeout_at_ms'), date=True)}"
    if step["kind"] == "call":
        return f"{detail.get('method')} {detail.get('url')}, attempt {detail.get('attempt')}"
    if step["kind"] == "notify":
        return f"notifying event {detail.get('event_id')!r}"
    if step["kind"] == "invoke":
        return f"child run {detail.get('child_run_id')}"
    return "running"


def print_steps(steps: list[dict[str, Any]]) -> None:
    columns = [
        Column("STEP", number=True),
        Column("KIND"),
        Column("STATUS"),
        Column("NAME", folds=True),
        Column("DETAIL", folds=True),
    ]
    rows: list[list[str | Text]] = [
        [str(step["index"]), step["kind"], status_cell(step["status"]), repr(step["name"]), _step_detail(step)]
        for step in steps
    ]
    print_table(columns, rows)


def print_flow_keys(keys: list[dict[str, Any]]) -> None:
    """The keys, each as the scheduler last published it (the UPDATED column)."""
    columns = [
        Column("KEY", folds=True),
        Column("QUEUED", number=True),
        Column("IN FLIGHT", number=True),
        Column("STARTED", number=True),
        Column("PER"),
        Column("UPDATED"),
    ]
    rows = [
        [
            key["key"],
            str(key["queued"]),
            str(key["in_flight"]) + (f"/{key['parallelism']}" if key["parallelism"] is not None else ""),
            f"{key['starts_in_window']}/{key['rate']}" if key["rate"] is not None else str(key["starts_in_window"]),
            format_duration(key["period_ms"]),
            clock(key["updated_at_ms"], date=True),
        ]
        for key in keys
    ]
    print_table(columns, rows)
