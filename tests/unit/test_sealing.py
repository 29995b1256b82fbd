"""Credential headers sealed before they reach Kafka (stepstream.sealing): what is sealed, that it
opens only with a key of the list and only for its own header, and what happens without a key."""

from __future__ import annotations

import base64

import pytest

from stepstream.core import CallSpec, Complete, Fail, PlanCall, PlanInvoke, PlanSleep, StepKind, Suspend
from stepstream.core.limits import MAX_HEADER_VALUE_LENGTH, header_problem
from stepstream.sealing import Sealer, SealError, new_key, parse_keys, sealed

OLD, NEW = parse_keys(new_key())[0], parse_keys(new_key())[0]


def test_credential_values_are_sealed_and_open_to_what_they_were() -> None:
    sealer = Sealer((NEW,))
    headers = (("Authorization", "Bearer s3cret"), ("X-Tenant", "acme"), ("cookie", "id=1; theme=dark"))

    kept = sealer.seal(headers)

    assert kept[1] == ("X-Tenant", "acme")
    for (_, value), (_, original) in zip(kept[::2], headers[::2], strict=True):
        assert value.startswith("sealed:v1:")
        assert original not in value
        assert base64.b64encode(original.encode()).decode() not in value
    assert sealer.open(kept) == headers
    # A value that looks sealed is sealed again: it opens to itself, never to the credential inside.
    assert sealer.open(sealer.seal(kept)) == kept
    assert sealer.seal(headers) != kept, "a new nonce each time"


def test_a_sealed_value_opens_only_for_its_own_header() -> None:
    sealer = Sealer((NEW,))
    ((_, value),) = sealer.seal((("Authorization", "Bearer s3cret"),))

    with pytest.raises(SealError, match="header 'X-Api-Key' to open, but it is altered"):
        sealer.open((("X-Api-Key", value),))
    altered = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    with pytest.raises(SealError, match="altered"):
        sealer.open((("Authorization", altered),))


def test_a_rotation_keeps_the_old_key_to_open_what_it_sealed() -> None:
    before = Sealer((OLD,)).seal((("Authorization", "Bearer old"),))
    rotating = Sealer((NEW, OLD))

    assert rotating.open(before) == (("Authorization", "Bearer old"),)
    after = rotating.seal((("Authorization", "Bearer new"),))
    assert Sealer((NEW,)).open(after) == (("Authorization", "Bearer new"),)
    with pytest.raises(SealError, match="keep an old key in the list until no run sealed with it is left"):
        Sealer((NEW,)).open(before)


def test_without_a_key_a_credential_is_refused_and_anything_else_passes() -> None:
    sealer = Sealer(())

    assert sealer.seal((("X-Tenant", "acme"),)) == (("X-Tenant", "acme"),)
    with pytest.raises(SealError, match=r"^Expected STEPSTREAM_HEADER_KEYS to be set, so that the value of header"):
        sealer.seal((("Proxy-Authorization", "Basic x"),))
    sealed_value = Sealer((NEW,)).seal((("Authorization", "x"),))
    with pytest.raises(SealError):
        sealer.open(sealed_value)


def test_the_operator_names_more_credential_headers() -> None:
    sealer = Sealer((NEW,), frozenset({"x-partner-secret"}))
    assert sealer.seal((("X-Partner-Secret", "p"),))[0][1].startswith("sealed:v1:")


def test_a_deliverys_outcome_seals_what_its_calls_and_child_runs_carry() -> None:
    call = CallSpec(method="GET", url="http://x", headers=(("Authorization", "t"),), body=None, timeout_ms=1, retries=0)
    outcome = Suspend(
        steps=(
            PlanCall(index=1, name="c", call=call),
            PlanInvoke(index=2, name="i", workflow="w", url=None, payload="null", headers=(("Cookie", "k"),)),
            PlanSleep(index=3, name="s", kind=StepKind.SLEEP, duration_ms=1),
        )
    )
    sealer = Sealer((NEW,))

    result = sealed(outcome, sealer)

    assert isinstance(result, Suspend)
    plan_call, plan_invoke, sleep = result.steps
    assert isinstance(plan_call, PlanCall)
    assert isinstance(plan_invoke, PlanInvoke)
    assert sealer.open(plan_call.call.headers) == (("Authorization", "t"),)
    assert plan_call.call.headers[0][1].startswith("sealed:v1:")
    assert sealer.open(plan_invoke.headers) == (("Cookie", "k"),)
    assert sleep == outcome.steps[2]
    assert sealed(Complete(output="1"), sealer) == Complete(output="1")

    refused = sealed(outcome, Sealer(()))
    assert isinstance(refused, Fail)
    assert (refused.retryable, refused.step_index, refused.step_name, refused.error.type) == (
        False,
        1,
        "c",
        "SealError",
    )


def test_the_longest_value_sealed_is_still_a_header_the_engine_accepts() -> None:
    ((name, value),) = Sealer((NEW,)).seal((("Authorization", "v" * MAX_HEADER_VALUE_LENGTH),))
    assert header_problem(name, value) is None


@pytest.mark.parametrize("text", ["short", "a" * 44, f"{new_key()},not-a-key"])
def test_keys_that_are_not_32_bytes_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError, match="32 bytes in base64url") as raised:
        parse_keys(text)
    assert text.split(",")[-1] not in str(raised.value)
