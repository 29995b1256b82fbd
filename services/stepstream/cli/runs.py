"""Starting runs and reading them: ``trigger``, ``runs list|get|steps|history``, and watching or
waiting for a run to end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from stepstream import client
from stepstream.cli.output import clock, print_event, print_runs, print_steps
from stepstream.core.state import RunStatus

ENDING_EVENTS = {"RunCompleted": 0, "RunFailed": 1, "RunCancelled": 1}
ENDED_STATUSES = {"completed": 0, "failed": 1, "cancelled": 1}
# The longest a request may wait for a run (the api's bound); a longer --timeout waits again.
MAX_WAIT_S = 300
# A stream that says nothing for this long is taken for broken (the api sends a keep-alive every 15 s).
STREAM_SILENCE_S = 30


def _header(value: str) -> tuple[str, str]:
    name, separator, header_value = value.partition(":")
    if not separator:
        name, separator, header_value = value.partition("=")
    if not separator or not name.strip():
        client.fail(f"--header: expected 'Name: value', but got {value!r}")
    return name.strip(), header_value.strip()


def cmd_trigger(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"workflow": args.workflow, "payload": client.json_option(args.payload, "--payload")}
    for name in ("url", "run_id", "label", "retries", "retry_delay", "failure_url", "delay", "delay_ms"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.not_before is not None:
        body["not_before"] = client.instant(args.not_before, "--not-before")
    if args.header:
        body["headers"] = dict(_header(value) for value in args.header)
    limits = {name: value for name in ("rate", "period", "parallelism") if (value := getattr(args, name)) is not None}
    if args.flow_key is not None:
        body["flow_control"] = {"key": args.flow_key, **limits}
    elif limits:
        given = ", ".join(f"--{name}" for name in limits)
        client.fail(f"{given} limit the runs under a flow-control key: give one with --flow-key")
    deadline = time.monotonic() + args.timeout
    params = {"wait": _wait_param(args.timeout)} if args.wait else {}
    response = client.request("POST", "/v1/runs", json=body, params=params, timeout=_wait_timeout(params))
    answer = response.json()
    print(answer["run_id"])
    if answer.get("duplicate"):
        status = (answer.get("run") or answer).get("status", "known")
        print(f"run {answer['run_id']} already exists ({status}): nothing new was started", file=sys.stderr)
    if answer.get("not_before_ms"):
        print(f"its first step is due at {clock(answer['not_before_ms'], date=True)}", file=sys.stderr)
    if args.watch:
        _watch(answer["run_id"], timeout_s=args.timeout)
    elif args.wait:
        run = answer if response.status_code == 200 else _wait_for_end(answer["run_id"], deadline, args.timeout)
        _print_result(run)


def cmd_runs(args: argparse.Namespace) -> None:
    if args.action == "list":
        query = page_query(args)
        if args.status:
            query["status"] = args.status
        if args.dead_letter:
            query["dead_letter"] = "true"
        print_runs(client.api("GET", "/v1/runs", params=query))
    elif args.action == "get":
        print(json.dumps(client.api("GET", f"/v1/runs/{client.segment(args.run_id)}"), indent=2))
    elif args.action == "steps":
        steps = client.api("GET", f"/v1/runs/{client.segment(args.run_id)}/steps")["steps"]
        if steps:
            print_steps(steps)
        else:
            print(f"run {args.run_id} has no steps yet", file=sys.stderr)
    elif args.follow:
        _watch(args.run_id, timeout_s=args.timeout)
    else:
        for event in client.api("GET", f"/v1/runs/{client.segment(args.run_id)}/history")["events"]:
            print_event(event)


# -- which runs -------------------------------------------------------------------------------


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The options that choose runs by what they are and when they were created, and page through them."""
    parser.add_argument("--workflow")
    parser.add_argument("--label")
    parser.add_argument("--since", help="created at or after: '2h' (ago), epoch ms or ISO-8601")
    parser.add_argument("--until", help="created before: '30m' (ago), epoch ms or ISO-8601")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--cursor", help="the next page, as a previous page said")


def _run_filters(args: argparse.Namespace) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name in ("workflow", "label"):
        if getattr(args, name, None):
            query[name] = getattr(args, name)
    if getattr(args, "since", None):
        query["created_after"] = client.instant(args.since, "--since", ago=True)
    if getattr(args, "until", None):
        query["created_before"] = client.instant(args.until, "--until", ago=True)
    return query


def page_query(args: argparse.Namespace) -> dict[str, Any]:
    """The api's query for a page of the runs :func:`add_filters` chose."""
    query = {**_run_filters(args), "limit": args.limit}
    if args.cursor:
        query["cursor"] = args.cursor
    return query


# -- watching and waiting ---------------------------------------------------------------------


def _watch(run_id: str, timeout_s: float) -> None:
    """Print the run's history as it grows, until it ends: exit 0 if it completed, 1 if it failed or was cancelled.

    Reads the api's history stream; a connection that breaks is opened again after the last event seen.
    """
    import httpx

    base = client.base()
    path = f"{base}/v1/runs/{client.segment(run_id)}/history/stream"
    seen = 0
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        timeout = httpx.Timeout(10, read=min(remaining, STREAM_SILENCE_S))
        try:
            with httpx.stream(
                "GET", path, params={"after_seq": seen}, timeout=timeout, headers=client.auth_headers()
            ) as response:
                if response.status_code == 404:  # the api waited a while for the run to appear
                    time.sleep(min(0.5, remaining))  # an api that answers at once is not asked in a loop
                    continue
                if response.status_code >= 400:
                    response.read()
                    client.fail(f"{response.status_code}: {client.detail(response)}")
                for kind, event in _server_sent(response.iter_lines(), deadline):
                    if kind == "end":  # the run has ended (its ending event came first, unless it was seen)
                        raise SystemExit(ENDED_STATUSES.get(event["status"], 1))
                    print_event(event)
                    seen = event["seq"]
                    if event["type"] in ENDING_EVENTS:
                        if ENDING_EVENTS[event["type"]]:
                            raise SystemExit(ENDING_EVENTS[event["type"]])
                        return
        except httpx.ConnectError as error:
            client.fail(f"cannot reach the api at {base}: {error}")
        except (httpx.TimeoutException, httpx.TransportError):
            continue  # silent too long, or broken: open it again after the last event seen
    client.fail(f"gave up watching {run_id} after {timeout_s:.0f} s; it may still be running", code=1)


def _server_sent(lines: Iterable[str], deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """The messages of a history stream as (``message`` or ``end``, its data), until ``deadline``. (The api
    sends each message's data as one ``data:`` line; lines starting with ``:`` are keep-alives.)"""
    name, data = "message", None
    for line in lines:
        if time.monotonic() >= deadline:
            return
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif not line and data is not None:
            yield name, json.loads(data)
            name, data = "message", None


def _wait_param(timeout_s: float) -> str:
    """How long one request waits for a run, as the api takes it: the --timeout, at most the api's bound."""
    return f"{max(0, round(min(timeout_s, MAX_WAIT_S) * 1000))}ms"


def _wait_timeout(params: dict[str, str]) -> float:
    """The client's own timeout for a request that may wait ``params['wait']``."""
    return 10 + (int(params["wait"].removesuffix("ms")) / 1000 if "wait" in params else 0)


def _wait_for_end(run_id: str, deadline: float, timeout_s: float) -> dict[str, Any]:
    """The run once it has ended, asking the api to wait (at most 5 minutes a request) until ``deadline``."""
    while (remaining := deadline - time.monotonic()) > 0:
        params = {"wait": _wait_param(remaining)}
        response = client.request(
            "GET", f"/v1/runs/{client.segment(run_id)}", params=params, timeout=_wait_timeout(params)
        )
        if response.status_code == 200:
            run: dict[str, Any] = response.json()
            return run
    client.fail(
        f"gave up waiting for {run_id} after {timeout_s:.0f} s; it is still going: "
        f"follow it with `stepstream runs history {run_id} --follow`",
        code=1,
    )


def _print_result(run: dict[str, Any]) -> None:
    """A run that has ended: its output on stdout (exit 0), or why it did not complete (exit 1)."""
    if run["status"] == "completed":
        print(json.dumps(run["output"], indent=2))
        return
    if run["status"] == "failed":
        error = run.get("error") or {}
        print(f"run {run['run_id']} failed: {error.get('type')}: {error.get('message')}", file=sys.stderr)
    else:
        reason = f": {run['cancel_reason']}" if run.get("cancel_reason") else ""
        print(f"run {run['run_id']} was cancelled{reason}", file=sys.stderr)
    raise SystemExit(ENDED_STATUSES.get(run["status"], 1))


# -- the command line -------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    trigger = commands.add_parser("trigger", help="start a run through the api")
    trigger.add_argument("workflow")
    trigger.add_argument("--payload", help="the run's payload as JSON")
    trigger.add_argument("--url", help="the workflow endpoint, if the api has none registered for it")
    trigger.add_argument("--run-id", help="choose the run id (a second trigger with it starts nothing)")
    trigger.add_argument("--label")
    trigger.add_argument(
        "--retries",
        type=int,
        help="retries of a failed step (default: the engine's); a 4xx answer other than 408, 409, 425, 429 is final",
    )
    trigger.add_argument("--retry-delay", help="a delay rule for retries, such as '1000 * pow(2, retried)'")
    trigger.add_argument("--failure-url", help="where the failure handler is called (default: the workflow's url)")
    trigger.add_argument(
        "--header", action="append", default=[], help="'Name: value', sent with every delivery (repeatable)"
    )
    when = trigger.add_mutually_exclusive_group()
    when.add_argument("--delay", help="start after a duration such as '10s', '5m' or '1h30m'")
    when.add_argument("--delay-ms", type=int, help="start after this many milliseconds")
    when.add_argument("--not-before", help="start no earlier than this time: epoch ms or ISO-8601 (local if no zone)")
    flow = trigger.add_argument_group("flow control", "limits shared by every run triggered under the same key")
    flow.add_argument("--flow-key", help="the flow-control key the run's deliveries wait under")
    flow.add_argument("--rate", type=int, help="at most this many starts per period")
    flow.add_argument("--period", help="the rate's window, a duration such as '10s' or '1m' (default 1s)")
    flow.add_argument("--parallelism", type=int, help="at most this many deliveries in flight at once")
    until = trigger.add_mutually_exclusive_group()
    until.add_argument("--watch", action="store_true", help="print the run's history as it happens")
    until.add_argument("--wait", action="store_true", help="wait for the run to end and print its output")
    trigger.add_argument("--timeout", type=float, default=600, help="how long --watch or --wait waits (seconds)")
    trigger.set_defaults(handler=cmd_trigger)

    runs = commands.add_parser("runs", help="list runs, show one, its steps or its history")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="runs, newest first")
    listing.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in RunStatus],
        help="repeatable: runs in any of these",
    )
    listing.add_argument("--dead-letter", action="store_true", help="only failed runs in the dead-letter list")
    add_filters(listing)
    for name, text in (("get", "one run as JSON"), ("steps", "a run's steps"), ("history", "a run's events")):
        action = actions.add_parser(name, help=text)
        action.add_argument("run_id")
        if name == "history":
            action.add_argument("--follow", action="store_true", help="keep printing until the run ends")
            action.add_argument("--timeout", type=float, default=600)
    runs.set_defaults(handler=cmd_runs)
