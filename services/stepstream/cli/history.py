"""The history commands of ``stepstream``: a run's state at a point, replays, export and import.

stepstream state RUN_ID [--seq N | --at TIME] [--diff FROM_SEQ]
stepstream export [RUN_ID ...] [--workflow W] [--status S] [--label L] [--created-after T] … -o FILE
stepstream show FILE [RUN_ID] [--seq N]       what an export holds: its runs, or one run's state
stepstream replay --workflows MODULE:ATTR (RUN_ID ... | --file FILE ...)

``replay`` exits 1 when a history diverges from the code, so a deploy pipeline can stop on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepstream import client
from stepstream.cli.output import Column, print_table, status_cell
from stepstream.history.files import ExportError, read_export, write_export
from stepstream.history.points import events_of, fold_to, state_to_dict
from stepstream.history.replay import load_workflows, replay_history

if TYPE_CHECKING:
    from rich.text import Text

_PAGE = 200


def cmd_state(args: argparse.Namespace) -> None:
    path = f"/v1/runs/{client.segment(args.run_id)}/state"
    if args.diff is not None:
        params = {"from_seq": args.diff, **({"to_seq": args.seq} if args.seq is not None else {})}
        answer = client.api("GET", path + "/diff", params=params)
        print(f"run {args.run_id}: from after event {answer['from_seq']} to after event {answer['to_seq']}")
        for change in answer["changes"]:
            print(f"  {change['path']}: {_short(change['before'])} -> {_short(change['after'])}")
        if not answer["changes"]:
            print("  no change")
        return
    params = {name: value for name, value in (("seq", args.seq), ("at", args.at)) if value is not None}
    print(json.dumps(client.api("GET", path, params=params), indent=2))


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _run_ids(args: argparse.Namespace) -> Iterator[str]:
    """The runs named, or every run matching the filters, page by page."""
    if args.run_ids:
        yield from args.run_ids
        return
    params: dict[str, Any] = {"limit": _PAGE}
    for name in ("workflow", "label", "created_after", "created_before"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.status:
        params["status"] = args.status
    while True:
        page = client.api("GET", "/v1/runs", params=params)
        yield from (run["run_id"] for run in page["runs"])
        if not page.get("next_cursor"):
            return
        params["cursor"] = page["next_cursor"]


def cmd_export(args: argparse.Namespace) -> None:
    def histories() -> Iterator[list[dict[str, Any]]]:
        for count, run_id in enumerate(_run_ids(args), start=1):
            yield client.api("GET", f"/v1/runs/{client.segment(run_id)}/history")["events"]
            if count % 100 == 0:
                print(f"exported {count:,} runs", file=sys.stderr)

    output = Path(args.output)
    with output.open("w", encoding="utf-8") as out:
        runs, events = write_export(out, histories())
    print(f"exported {_count(runs, 'run')} ({_count(events, 'event')}) to {output}", file=sys.stderr)


def _count(number: int, thing: str) -> str:
    return f"{number:,} {thing}" + ("" if number == 1 else "s")


def _read(path: str) -> dict[str, list[dict[str, Any]]]:
    try:
        return read_export(path)
    except (OSError, ExportError) as error:
        client.fail(str(error))


def cmd_show(args: argparse.Namespace) -> None:
    histories = _read(args.file)
    if args.run_id is None:
        rows: list[list[str | Text]] = []
        for run_id, history in histories.items():
            state = fold_to(events_of(history))
            status = state.status.value if state is not None else "-"
            workflow = state.workflow if state is not None else "-"
            rows.append([run_id, workflow, status_cell(status), str(len(history))])
        columns = [
            Column("RUN", folds=True),
            Column("WORKFLOW", folds=True),
            Column("STATUS"),
            Column("EVENTS", number=True),
        ]
        print_table(columns, rows)
        return
    if args.run_id not in histories:
        client.fail(f"run {args.run_id!r} is not in {args.file} (it holds {len(histories)} runs)")
    state = fold_to(events_of(histories[args.run_id]), seq=args.seq)
    print(json.dumps(state_to_dict(state), indent=2))


def cmd_replay(args: argparse.Namespace) -> None:
    if not args.run_ids and not args.file:
        client.fail("give run ids to replay from the api, or --file with an export")
    try:
        workflows = load_workflows(args.workflows)
    except (ImportError, ValueError) as error:
        client.fail(f"--workflows: {error}")
    histories: list[list[dict[str, Any]]] = [
        client.api("GET", f"/v1/runs/{client.segment(run_id)}/history")["events"] for run_id in args.run_ids
    ]
    for file in args.file or ():
        histories.extend(_read(file).values())

    async def replay_all() -> list[Any]:
        return [await replay_history(workflows, history) for history in histories]

    reports = asyncio.run(replay_all())
    for report in reports:
        print(("ok        " if report.ok else "DIVERGES  ") + report.describe())
    diverged = sum(1 for report in reports if not report.ok)
    print(f"{len(reports) - diverged} of {_count(len(reports), 'run')} replay", file=sys.stderr)
    if diverged:
        raise SystemExit(1)


def add_commands(commands: Any) -> None:
    state = commands.add_parser("state", help="a run's state after an event or at a time, or what changed")
    state.add_argument("run_id")
    state.add_argument("--seq", type=int, help="after this event (its seq); with --diff, the later point")
    state.add_argument("--at", help="as of this time: epoch ms or ISO-8601")
    state.add_argument("--diff", type=int, metavar="FROM_SEQ", help="what changed from after event FROM_SEQ")
    state.set_defaults(handler=cmd_state)

    export = commands.add_parser("export", help="write runs' histories to a file (JSON lines)")
    export.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="these runs; none: every run matching the filters")
    export.add_argument("-o", "--output", required=True, help="the file to write")
    export.add_argument("--workflow")
    export.add_argument("--status", action="append", help="repeatable")
    export.add_argument("--label")
    export.add_argument("--created-after", help="epoch ms or ISO-8601")
    export.add_argument("--created-before", help="epoch ms or ISO-8601")
    export.set_defaults(handler=cmd_export)

    show = commands.add_parser("show", help="read an export: its runs, or one run's state")
    show.add_argument("file")
    show.add_argument("run_id", nargs="?")
    show.add_argument("--seq", type=int, help="the run's state after this event")
    show.set_defaults(handler=cmd_show)

    replay = commands.add_parser("replay", help="replay recorded runs through your current workflow code")
    replay.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to read from the api")
    replay.add_argument("--file", action="append", help="an export to replay every run of (repeatable)")
    replay.add_argument("--workflows", required=True, help="your Workflows object, as module.path:attribute")
    replay.set_defaults(handler=cmd_replay)
