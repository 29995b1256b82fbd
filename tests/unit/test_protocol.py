"""The wire models of ``stepstream.protocol``: what a planned step's ``flow_control`` accepts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stepstream.protocol import (
    MAX_FLOW_KEY_LENGTH,
    MAX_FLOW_LIMIT,
    MAX_FLOW_PERIOD_MS,
    DeliveryResponse,
    FlowControlSpec,
    PlannedCall,
    PlannedInvoke,
    SuspendNext,
)

CALL = {"kind": "call", "index": 0, "name": "c", "url": "https://x.example"}
INVOKE = {"kind": "invoke", "index": 1, "name": "i", "workflow": "child"}


def suspend(*steps: dict[str, Any]) -> list[Any]:
    response = DeliveryResponse.model_validate({"next": {"type": "suspend", "steps": list(steps)}})
    assert isinstance(response.next, SuspendNext)
    return list(response.next.steps)


def test_planned_steps_without_flow_control_as_sdks_before_it_answer_have_none() -> None:
    call, invoke = suspend(CALL, INVOKE)

    assert isinstance(call, PlannedCall)
    assert isinstance(invoke, PlannedInvoke)
    assert (call.flow_control, invoke.flow_control) == (None, None)


def test_flow_control_on_a_call_and_an_invoke_is_read_with_its_limits() -> None:
    flow = {"key": "payments-api", "rate": 10, "period_ms": 60_000, "parallelism": 2}

    call, invoke = suspend({**CALL, "flow_control": flow}, {**INVOKE, "flow_control": {**flow, "key": "receipts"}})

    assert call.flow_control == FlowControlSpec(key="payments-api", rate=10, period_ms=60_000, parallelism=2)
    assert invoke.flow_control == FlowControlSpec(key="receipts", rate=10, period_ms=60_000, parallelism=2)


def test_flow_control_with_only_a_key_has_no_limits_and_a_period_of_one_second() -> None:
    (call,) = suspend({**CALL, "flow_control": {"key": "k"}})

    assert call.flow_control == FlowControlSpec(key="k", rate=None, period_ms=1_000, parallelism=None)


def test_flow_control_null_is_no_flow_control() -> None:
    (call,) = suspend({**CALL, "flow_control": None})

    assert call.flow_control is None


def test_flow_control_fields_a_later_version_adds_are_ignored() -> None:
    (call,) = suspend({**CALL, "flow_control": {"key": "k", "rate": 1, "burst": 5}})

    assert call.flow_control == FlowControlSpec(key="k", rate=1)


def test_flow_control_at_its_bounds_is_accepted() -> None:
    flow = {
        "key": "k" * MAX_FLOW_KEY_LENGTH,
        "rate": MAX_FLOW_LIMIT,
        "period_ms": MAX_FLOW_PERIOD_MS,
        "parallelism": MAX_FLOW_LIMIT,
    }

    (call,) = suspend({**CALL, "flow_control": flow})

    assert call.flow_control == FlowControlSpec.model_validate(flow)
    assert MAX_FLOW_PERIOD_MS == 7 * 24 * 3_600_000


def test_the_serialised_flow_control_is_the_documented_object() -> None:
    call = PlannedCall(index=0, name="c", url="https://x.example", flow_control=FlowControlSpec(key="k", rate=5))

    assert call.model_dump(mode="json")["flow_control"] == {
        "key": "k",
        "rate": 5,
        "period_ms": 1_000,
        "parallelism": None,
    }


@pytest.mark.parametrize(
    ("flow", "field"),
    [
        pytest.param({}, "key", id="no-key"),
        pytest.param({"key": ""}, "key", id="empty-key"),
        pytest.param({"key": "k" * (MAX_FLOW_KEY_LENGTH + 1)}, "key", id="key-too-long"),
        pytest.param({"key": 7}, "key", id="key-not-a-string"),
        pytest.param({"key": "k", "rate": 0}, "rate", id="rate-0"),
        pytest.param({"key": "k", "rate": MAX_FLOW_LIMIT + 1}, "rate", id="rate-too-high"),
        pytest.param({"key": "k", "rate": 1.5}, "rate", id="rate-a-fraction"),
        pytest.param({"key": "k", "period_ms": 0}, "period_ms", id="period-0"),
        pytest.param({"key": "k", "period_ms": MAX_FLOW_PERIOD_MS + 1}, "period_ms", id="period-over-a-week"),
        pytest.param({"key": "k", "period_ms": "1s"}, "period_ms", id="period-as-text"),
        pytest.param({"key": "k", "parallelism": 0}, "parallelism", id="parallelism-0"),
        pytest.param({"key": "k", "parallelism": MAX_FLOW_LIMIT + 1}, "parallelism", id="parallelism-too-high"),
    ],
)
@pytest.mark.parametrize("step", [CALL, INVOKE], ids=["call", "invoke"])
def test_flow_control_out_of_bounds_is_refused(flow: dict[str, Any], field: str, step: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        suspend({**step, "flow_control": flow})

    assert [error["loc"][-1] for error in raised.value.errors()] == [field]
