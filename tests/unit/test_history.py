"""The history's pure parts: events read back from the api's JSON, folds, differences, export files,
and what a replay takes from a run's events (tests/integration/test_history.py: through the engine)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from stepstream.avro import EVENT_TYPES
from stepstream.core import RunStatus
from stepstream.core.events import RunFailed, RunStarted, StepCompleted, StepFailed, StepScheduled
from stepstream.core.messages import ErrorInfo, StepKind
from stepstream.history import ExportError, diff, events_of, fold_to, read_export, replay_input, write_export
from stepstream.store import REDACTED
from stepstream.store.history import event_from_dict, event_to_dict
from tests.unit.test_avro_codec import SAMPLES

EVENTS = {name: sample for name, sample in SAMPLES.items() if isinstance(sample, EVENT_TYPES)}


def _redacted(event: Any) -> Any:
    """The event as the history shows it back: header values redacted, wherever they are."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            if field.name == "headers":
                changes[field.name] = tuple((name, REDACTED) for name, _ in value)
            elif dataclasses.is_dataclass(value):
                changes[field.name] = _redacted(value)
        return dataclasses.replace(event, **changes)
    return event


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_event_reads_back_from_the_history_as_it_was_but_its_header_values(name: str) -> None:
    event = EVENTS[name]
    shown = event_to_dict(event)

    back = event_from_dict(json.loads(json.dumps(shown)))

    assert event_to_dict(back) == shown
    # JSON texts may come back in another spacing; as values they are the same
    assert _normalized(back) == _normalized(_redacted(event))


def _normalized(event: Any) -> Any:
    shown = event_to_dict(event)
    return json.loads(json.dumps(shown, sort_keys=True))


def test_an_event_of_no_known_type_or_a_field_that_does_not_fit_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Expected an event type, one of RunStarted"):
        event_from_dict({"type": "RunExploded", "run_id": "r"})
    with pytest.raises(ValueError, match="Expected a valid StepCompleted"):
        event_from_dict({"type": "StepCompleted", "run_id": "r", "seq": "one"})
    with pytest.raises(ValueError, match=r"event 1 \(seq 2\)"):
        events_of([event_to_dict(_started()), {"type": "StepCompleted", "seq": 2}])


def _started(**more: Any) -> RunStarted:
    fields: dict[str, Any] = {
        "run_id": "r",
        "seq": 1,
        "at_ms": 1_000,
        "workflow": "w",
        "url": "http://app/w",
        "payload": '{"a":1}',
        "headers": (),
        "label": None,
        "retries": 0,
        "retry_base_ms": 100,
    }
    return RunStarted(**{**fields, **more})


def _history() -> list[Any]:
    return [
        _started(),
        StepScheduled(run_id="r", seq=2, at_ms=1_001, step_index=0, delivery_id="r/1", attempt=1, not_before_ms=0),
        StepCompleted(
            run_id="r", seq=3, at_ms=1_050, step_index=0, name="a", kind=StepKind.RUN, output='"x"', delivery_id="r/1"
        ),
        StepScheduled(run_id="r", seq=4, at_ms=1_051, step_index=1, delivery_id="r/2", attempt=1, not_before_ms=0),
    ]


def test_a_fold_stops_at_a_seq_or_a_time() -> None:
    events = _history()

    assert fold_to(events, seq=2) == fold_to(events[:2])
    assert fold_to(events, at_ms=1_049) == fold_to(events[:2])
    assert fold_to(events, at_ms=999) is None
    assert fold_to(events).seq == 4  # type: ignore[union-attr]


def test_a_difference_names_each_leaf_that_changed_by_its_path() -> None:
    before = {"status": "running", "steps": [{"index": 0, "output": 1}], "error": None, "gone": 1}
    after = {"status": "failed", "steps": [{"index": 0, "output": 1}, {"index": 1, "output": 2}], "error": {"t": "X"}}

    changes = [change.to_dict() for change in diff(before, after)]

    assert changes == [
        {"path": "status", "before": "running", "after": "failed"},
        {"path": "steps[1]", "before": None, "after": {"index": 1, "output": 2}},
        {"path": "error", "before": None, "after": {"t": "X"}},
        {"path": "gone", "before": 1, "after": None},
    ]
    assert diff(after, after) == []


def test_a_replay_takes_the_steps_with_results_and_the_step_a_failed_run_failed_at() -> None:
    events = [
        *_history()[:3],
        StepScheduled(run_id="r", seq=4, at_ms=1_051, step_index=1, delivery_id="r/2", attempt=1, not_before_ms=0),
        StepFailed(
            run_id="r",
            seq=5,
            at_ms=1_060,
            step_index=1,
            name="charge",
            delivery_id="r/2",
            attempt=1,
            error=_error(),
            retry_at_ms=None,
        ),
    ]
    events.append(RunFailed(run_id="r", seq=6, at_ms=1_061, error=_error()))

    given = replay_input(events)

    assert fold_to(events).status is RunStatus.FAILED  # type: ignore[union-attr]
    assert [(step.index, step.name, step.output) for step in given.steps] == [(0, "a", "x")]
    assert [(step.index, step.name, step.kind) for step in given.started] == [(1, "charge", "run")]
    assert (given.ended, given.error_type, given.payload) == ("failed", "CardRefused", {"a": 1})


def _error() -> ErrorInfo:
    return ErrorInfo(type="CardRefused", message="no")


def test_an_export_holds_each_runs_events_in_order_and_reads_back(tmp_path: Path) -> None:
    first = [event_to_dict(event) for event in _history()]
    second = [event_to_dict(_started(run_id="s"))]
    out = io.StringIO()

    assert write_export(out, [first, second]) == (2, 5)

    path = tmp_path / "runs.jsonl"
    path.write_text(out.getvalue())
    assert read_export(path) == {"r": first, "s": second}
    assert json.loads(out.getvalue().splitlines()[1])["schema"] == "stepstream.RunStarted"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ('{"format": "something else"}\n', r":1: expected an export of Stepstream histories"),
        ('{"format": "stepstream.history", "version": 9}\n', ":1: expected export version 1"),
        ('{"format": "stepstream.history", "version": 1}\nnot json\n', ":2: expected a JSON object"),
        ('{"format": "stepstream.history", "version": 1}\n{"event": {"seq": 1}}\n', ":2: expected"),
    ],
)
def test_a_file_that_is_not_an_export_is_refused_naming_the_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)

    with pytest.raises(ExportError, match=reason):
        read_export(path)
