"""Acting on runs that are under way or have failed: ``notify``, ``waiters``, ``cancel``,
``deadletter``, and the flow-control keys they wait under (``flow``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stepstream import client
from stepstream.cli.output import Column, clock, print_flow_keys, print_runs, print_table
from stepstream.cli.runs import add_filters, page_query


def cmd_notify(args: argparse.Namespace) -> None:
    data = client.json_option(args.data, "--data")
    answer = client.api("POST", f"/v1/events/{client.segment(args.event_id)}/notify", json={"data": data})
    for run_id in answer["waiting"]:
        print(run_id)
    if not answer["waiting"]:
        print(answer["message"], file=sys.stderr)


def cmd_waiters(args: argparse.Namespace) -> None:
    waiters = client.api("GET", f"/v1/events/{client.segment(args.event_id)}/waiters")["waiters"]
    if not waiters:
        print(f"no run is waiting on event {args.event_id!r}", file=sys.stderr)
        return
    columns = [Column("RUN", folds=True), Column("STEP", number=True), Column("WAITING SINCE"), Column("TIMES OUT")]
    rows = [
        [
            waiter["run_id"],
            str(waiter["step_index"]),
            clock(waiter["since_ms"], date=True),
            clock(waiter["timeout_at_ms"], date=True),
        ]
        for waiter in waiters
    ]
    print_table(columns, rows)


def cmd_cancel(args: argparse.Namespace) -> None:
    criteria = {
        "workflow": args.workflow,
        "label": args.label,
        "created_after": None if args.created_after is None else client.instant(args.created_after, "--created-after"),
        "created_before": None
        if args.created_before is None
        else client.instant(args.created_before, "--created-before"),
    }
    chosen = {name: value for name, value in criteria.items() if value is not None}
    reason = {"reason": args.reason} if args.reason is not None else {}
    if args.run_id is not None:
        if chosen or args.all:
            client.fail(
                "give a run id, or filters (--workflow, --label, --created-after, --created-before, --all), not both"
            )
        answer = client.api("POST", f"/v1/runs/{client.segment(args.run_id)}/cancel", json=reason)
        print(answer["message"], file=sys.stderr)
        return
    if not chosen and not args.all:
        client.fail(
            "give a run id, or at least one of --workflow, --label, --created-after, --created-before, or --all"
        )
    answer = client.api("POST", "/v1/runs/cancel", json={**chosen, **reason, "all": args.all})
    for run_id in answer["cancelled"]:
        print(run_id)
    count = answer["count"]
    runs, them = ("1 run", "it") if count == 1 else (f"{count} runs", "them")
    print(
        f"Cancel of {runs} requested: nothing more is scheduled for {them}, and results that arrive later are ignored",
        file=sys.stderr,
    )


def cmd_deadletter(args: argparse.Namespace) -> None:
    if args.action == "list":
        print_runs(client.api("GET", "/v1/deadletter", params=page_query(args)), errors=True)
        return
    if args.run_id is None:
        client.fail(f"`stepstream deadletter {args.action}` needs a run id")
    path = f"/v1/deadletter/{client.segment(args.run_id)}"
    # The run's history keeps the reason beside the action, and who asked.
    body = {"reason": args.reason} if args.reason is not None else None
    if args.action == "delete":
        client.api("DELETE", path, json=body)
        print(f"run {args.run_id} is being taken off the dead-letter list (it and its history stay)", file=sys.stderr)
    else:
        client.api("POST", f"{path}/{args.action}", json=body)
        print(f"run {args.run_id}: {args.action} requested", file=sys.stderr)


def cmd_flow(args: argparse.Namespace) -> None:
    if args.key is not None:
        print_flow_keys([client.api("GET", f"/v1/flow-control/{client.segment(args.key)}")])
        return
    query: dict[str, Any] = {"limit": args.limit}
    if args.cursor:
        query["cursor"] = args.cursor
    answer = client.api("GET", "/v1/flow-control", params=query)
    if answer["flow_keys"]:
        print_flow_keys(answer["flow_keys"])
    else:
        print("no flow-control key is known yet (a key shows once the scheduler has work under it)", file=sys.stderr)
    if answer.get("next_cursor"):
        print(f"more: add --cursor {answer['next_cursor']}", file=sys.stderr)


def add_commands(commands: Any) -> None:
    notify = commands.add_parser("notify", help="notify an event id: wake the runs waiting on it")
    notify.add_argument("event_id")
    notify.add_argument("--data", help="the notification's data as JSON (default: null)")
    notify.set_defaults(handler=cmd_notify)
    waiters = commands.add_parser("waiters", help="the runs waiting on an event id")
    waiters.add_argument("event_id")
    waiters.set_defaults(handler=cmd_waiters)
    cancel = commands.add_parser("cancel", help="cancel a run, or every run matching filters that has not ended")
    cancel.add_argument("run_id", nargs="?")
    cancel.add_argument("--reason")
    cancel.add_argument("--workflow")
    cancel.add_argument("--label")
    cancel.add_argument("--created-after", help="epoch ms or ISO-8601 (local if no zone)")
    cancel.add_argument("--created-before", help="epoch ms or ISO-8601 (local if no zone)")
    cancel.add_argument("--all", action="store_true", help="every run that has not ended")
    cancel.set_defaults(handler=cmd_cancel)
    deadletter = commands.add_parser("deadletter", help="failed runs: list, resume, restart or delete them")
    deadletter.add_argument("action", choices=["list", "resume", "restart", "delete"])
    deadletter.add_argument("run_id", nargs="?")
    deadletter.add_argument("--reason", help="why, kept in the run's history with the action")
    add_filters(deadletter)
    deadletter.set_defaults(handler=cmd_deadletter)
    flow = commands.add_parser("flow", help="flow-control keys: work queued and in flight, starts, limits")
    flow.add_argument("key", nargs="?", help="show only this key")
    flow.add_argument("--limit", type=int, default=100)
    flow.add_argument("--cursor", help="the next page, as a previous page said")
    flow.set_defaults(handler=cmd_flow)
