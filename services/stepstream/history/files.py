"""Exported histories: one file, JSON lines, any number of runs, readable by people and by ``jq``.

The first line names the format; then one line per event, in each run's order::

    {"format": "stepstream.history", "version": 1, "exported_at": "2026-12-06T17:00:00Z"}
    {"schema": "stepstream.RunStarted", "event": {"type": "RunStarted", "run_id": "…", "seq": 1, …}}
    {"schema": "stepstream.StepCompleted", "event": {"type": "StepCompleted", "run_id": "…", "seq": 2, …}}

``event`` is the event exactly as the api's history shows it (docs/api.md): user values inline as
JSON, header values redacted, so an export can go to an auditor without the credentials runs carried.
``schema`` names the event's Avro record (``schemas/``), whose fields ``event`` holds. JSON lines
rather than Avro container files: an auditor reads them with any tool, a file of several runs
appends, and replaying one needs nothing but the standard library (decision 0015).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from stepstream.errors import StepstreamError

EXPORT_FORMAT = "stepstream.history"
EXPORT_VERSION = 1


class ExportError(StepstreamError):
    """A file that is not an export this version reads: says which line and why."""


def write_export(out: IO[str], histories: Iterable[Iterable[Mapping[str, Any]]]) -> tuple[int, int]:
    """Write each run's history (its events as the api shows them) to ``out``: (runs, events) written."""
    exported_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    out.write(json.dumps({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": exported_at}) + "\n")
    runs = events = 0
    for history in histories:
        runs += 1
        for event in history:
            line = {"schema": f"stepstream.{event['type']}", "event": event}
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            events += 1
    return runs, events


def read_export(path: Path | str) -> dict[str, list[dict[str, Any]]]:
    """The histories in an export file, by run id, each in seq order.

    Raises :class:`ExportError` for a file that is not an export, naming the line.
    """
    histories: dict[str, list[dict[str, Any]]] = {}
    with Path(path).open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError as error:
                raise ExportError(f"{path}:{number}: expected a JSON object, but {error}") from None
            if number == 1:
                _check_header(path, line)
                continue
            event = line.get("event") if isinstance(line, dict) else None
            if not isinstance(event, dict) or not isinstance(event.get("run_id"), str) or "seq" not in event:
                raise ExportError(f"{path}:{number}: expected {{'schema': …, 'event': {{'run_id': …, 'seq': …}}}}")
            histories.setdefault(event["run_id"], []).append(event)
    if not histories and not Path(path).stat().st_size:
        raise ExportError(f"{path}: expected an export, but the file is empty")
    for events in histories.values():
        events.sort(key=lambda event: event["seq"])
    return histories


def _check_header(path: Path | str, line: Any) -> None:
    if not isinstance(line, dict) or line.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{path}:1: expected an export of Stepstream histories (a first line with "
            f'"format": "{EXPORT_FORMAT}"), but got {str(line)[:80]}'
        )
    if line.get("version") != EXPORT_VERSION:
        raise ExportError(f"{path}:1: expected export version {EXPORT_VERSION}, but got {line.get('version')!r}")
