"""Property-based fuzzing of what reads bytes from outside: the Avro codec (any producer can write any
topic) and the SDK's delivery parser (anyone who reaches the app's endpoint can post to it). Whatever
the input, the codec answers a record or a DecodeError, and the SDK a 4xx, never a crash or a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import MutableMapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepstream.avro import Codec, DecodeError
from stepstream.sdk import WorkflowContext, Workflows
from tests.unit.test_avro_codec import SAMPLES

CODEC = Codec()
ENCODED = [CODEC.encode(sample) for sample in SAMPLES.values()]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(DecodeError):  # refused with a reason: what a consumer dead-letters
        CODEC.decode(data)


@FUZZ
@given(st.binary(max_size=2_000))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    _decodes_or_refuses(data)
    _decodes_or_refuses(b"\xc3\x01" + data)  # past the marker: the fingerprint and body are what varies


@FUZZ
@given(st.sampled_from(ENCODED), st.data())
def test_a_real_record_altered_anywhere_decodes_or_is_refused(record: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(record) - 1))
    flipped = data.draw(st.integers(min_value=1, max_value=255))
    altered = record[:position] + bytes([record[position] ^ flipped]) + record[position + 1 :]
    _decodes_or_refuses(altered)
    _decodes_or_refuses(record[: data.draw(st.integers(min_value=0, max_value=len(record)))])
    _decodes_or_refuses(record + data.draw(st.binary(min_size=1, max_size=20)))


workflows = Workflows(allow_unsigned=True)


@workflows.workflow("orders")
async def orders(ctx: WorkflowContext[Any]) -> Any:
    await ctx.sleep("pause", 1)
    return await ctx.run("ship", lambda: "shipped")


APP = workflows.asgi()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
# Deliveries near the real shape, so the parser's deeper checks are reached, not only JSON syntax.
delivery_like = st.fixed_dictionaries(
    {
        "protocol": st.sampled_from([1, 2, "1", None]),
        "run_id": st.text(max_size=30),
        "workflow": st.sampled_from(["orders", "other", ""]),
        "delivery_id": st.text(max_size=30),
        "attempt": st.integers(min_value=-2, max_value=5),
        "payload": json_values,
        "steps": st.lists(
            st.fixed_dictionaries(
                {
                    "index": st.integers(min_value=-1, max_value=5),
                    "name": st.sampled_from(["pause", "ship", "other"]),
                    "kind": st.sampled_from(["run", "sleep", "call", "nope"]),
                    "output": json_values,
                }
            ),
            max_size=4,
        ),
        "budget_ms": st.integers(min_value=-1, max_value=100),
    },
    optional={
        "execute_index": st.integers(min_value=-1, max_value=5),
        "failure": st.fixed_dictionaries({"type": st.text(max_size=5), "message": st.text(max_size=5)}),
        "session": st.text(max_size=10),
        "resume": st.booleans(),
    },
)


async def _post(body: bytes) -> int:
    sent: list[MutableMapping[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/orders", "root_path": "", "headers": [], "query_string": b""}
    await APP(scope, receive, send)
    status: int = sent[0]["status"]
    return status


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=500),
        json_values.map(lambda v: json.dumps(v).encode()),
        delivery_like.map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_request_body_gets_an_answer_never_a_500(body: bytes) -> None:
    status = asyncio.run(_post(body))
    assert status in (200, 400, 404, 409, 413, 422), status
