"""Waiting for a run (``?wait=``) and following its history as server-sent events, over HTTP in-process:
the indexer's part is played by applying events to a real store and announcing the runs they changed,
as the indexer does after each batch it has committed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from stepstream.api import follow
from stepstream.api import runs as runs_module
from stepstream.api.changes import RunChanges
from stepstream.api.indexer import index
from stepstream.avro import TriggerRequest
from stepstream.core import Complete, Event, PlanSleep, Recovery, StepKind
from stepstream.store import QueryStore
from tests.helpers import assert_eventually
from tests.unit.test_api import T0, FakePublisher, TestClient, completed, failed, sleeping
from tests.unit.test_query_store import Run

T = TypeVar("T")


def during(api: TestClient, scenario: Coroutine[Any, Any, T]) -> T:
    """Run ``scenario`` on the app's event loop, where requests and the indexer's announcements meet."""
    return api.loop.run_until_complete(scenario)


def land(store: QueryStore, changes: RunChanges, events: list[Event]) -> None:
    """What the indexer does with a batch: apply it to the store, then announce the runs it changed."""
    index(store, events)
    changes.changed({event.run_id for event in events})


async def watched(changes: RunChanges, run_id: str, count: int = 1) -> None:
    await assert_eventually(lambda: changes.watching(run_id) >= count)


def done(run_id: str) -> Run:
    run = Run(run_id, now=T0, label=None)
    run.report(Complete(output='{"total":42}'), now=T0 + 5)
    return run


# ---------------------------------------------------------------------------------------------
# POST /v1/runs?wait=


def test_a_trigger_that_waits_answers_200_with_the_run_once_it_ends(
    api: TestClient, store: QueryStore, changes: RunChanges, published: FakePublisher
) -> None:
    run = done("order-7")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(
            api.client.post("/v1/runs?wait=30s", json={"workflow": "orders", "run_id": "order-7"})
        )
        await watched(changes, "order-7")  # published, and waiting for a run the store does not know yet
        land(store, changes, run.events[:2])  # the run starts: not the end yet
        land(store, changes, run.events[2:])  # and completes
        return await answer

    response = during(api, scenario())

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["run_id"], body["status"], body["output"], body["error"]) == (
        "order-7",
        "completed",
        {"total": 42},
        None,
    )
    assert body["duplicate"] is False
    assert body["steps"] == []  # the shape of GET /v1/runs/{run_id}
    assert [record.run_id for record in published.records if isinstance(record, TriggerRequest)] == ["order-7"]
    assert changes.watching("order-7") == 0


def test_a_trigger_whose_run_fails_during_the_wait_answers_200_with_the_error(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = failed("order-8")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(
            api.client.post("/v1/runs?wait=1m", json={"workflow": "orders", "run_id": "order-8"})
        )
        await watched(changes, "order-8")
        land(store, changes, run.events)
        return await answer

    response = during(api, scenario())

    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"] == {"type": "CardDeclined", "message": "declined"}


def test_a_trigger_that_waits_in_vain_answers_202_with_the_run_as_far_as_known_and_how_to_follow_it(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = sleeping("order-9")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(
            api.client.post("/v1/runs?wait=200ms", json={"workflow": "orders", "run_id": "order-9"})
        )
        await watched(changes, "order-9")
        land(store, changes, run.events)  # it starts, and sleeps for a day
        return await answer

    response = during(api, scenario())

    assert response.status_code == 202
    body = response.json()
    assert (body["run_id"], body["duplicate"], body["not_before_ms"]) == ("order-9", False, None)
    assert body["run"]["status"] == "sleeping"
    assert body["run"]["steps"][0]["name"] == "nap"
    assert body["message"] == (
        "Run 'order-9' is still sleeping after waiting 0.2 s: follow it with GET /v1/runs/order-9/history/stream,"
        " or wait again with GET /v1/runs/order-9?wait=5m"
    )


def test_a_trigger_whose_run_never_appears_during_the_wait_says_so(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/runs?wait=0s", json={"workflow": "orders", "run_id": "order-10"})

    assert response.status_code == 202
    assert response.json()["run"] is None
    assert response.json()["message"].startswith("Run 'order-10' is not in the api's store yet after waiting 0 s")
    assert len(published.records) == 1  # accepted all the same: the trigger is in Kafka


def test_a_duplicate_trigger_that_waits_answers_with_the_run_when_it_has_ended(
    api: TestClient, store: QueryStore, changes: RunChanges, published: FakePublisher
) -> None:
    index(store, completed("order-11").events)

    response = api.post("/v1/runs?wait=30s", json={"workflow": "orders", "run_id": "order-11"})

    assert response.status_code == 200
    assert (response.json()["duplicate"], response.json()["status"], response.json()["output"]) == (
        True,
        "completed",
        "done",
    )
    assert published.records == []


def test_a_duplicate_trigger_of_a_run_still_going_waits_for_its_end(
    api: TestClient, store: QueryStore, changes: RunChanges, published: FakePublisher
) -> None:
    run = done("order-12")
    land(store, changes, run.events[:2])

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(
            api.client.post("/v1/runs?wait=30s", json={"workflow": "orders", "run_id": "order-12"})
        )
        await watched(changes, "order-12")
        land(store, changes, run.events[2:])
        return await answer

    response = during(api, scenario())

    assert (response.status_code, response.json()["duplicate"], response.json()["status"]) == (200, True, "completed")
    assert published.records == []


@pytest.mark.parametrize(
    ("wait", "message"),
    [
        ("6m", "Expected wait of at most 5m (300000 ms), but got '6m' (360000 ms)"),
        ("300001ms", "Expected wait of at most 5m (300000 ms), but got '300001ms' (300001 ms)"),
        ("soon", "wait: Expected a duration such as '10s', '5m' or '2h', but got 'soon'"),
        ("30", "wait: Expected a duration such as '10s', '5m' or '2h', but got '30'"),
        ("-1s", "wait: Expected a duration such as '10s', '5m' or '2h', but got '-1s'"),
        ("", "wait: Expected a duration such as '10s', '5m' or '2h', but got ''"),
    ],
)
def test_a_wait_out_of_bounds_is_a_422_and_nothing_is_published(
    api: TestClient, published: FakePublisher, wait: str, message: str
) -> None:
    response = api.post("/v1/runs", params={"wait": wait}, json={"workflow": "orders"})

    assert response.status_code == 422
    assert response.json() == {"error": "invalid_request", "message": message}
    assert published.records == []
    assert api.get("/v1/runs/order-1", params={"wait": wait}).status_code == 422


def test_five_minutes_is_the_longest_wait(api: TestClient, store: QueryStore) -> None:
    index(store, completed("order-13").events)

    assert api.post("/v1/runs?wait=5m", json={"workflow": "orders", "run_id": "order-13"}).status_code == 200
    assert api.get("/v1/runs/order-13?wait=300s").status_code == 200


def test_thousands_of_waiting_requests_are_all_answered_when_their_runs_end(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    runs = [done(f"order-{number}") for number in range(2_000)]

    index(store, [event for run in runs for event in run.events[:2]])  # each has started

    async def scenario() -> list[httpx.Response]:
        answers = [asyncio.create_task(api.client.get(f"/v1/runs/{run.run_id}?wait=1m")) for run in runs]
        await assert_eventually(lambda: len(changes) == len(runs), timeout=30)
        land(store, changes, [event for run in runs for event in run.events[2:]])  # one batch ends them all
        return await asyncio.gather(*answers)

    responses = during(api, scenario())

    assert {(response.status_code, response.json()["status"]) for response in responses} == {(200, "completed")}
    assert len(changes) == 0  # every watcher gone


def test_waiting_requests_answer_at_once_when_the_api_shuts_down(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    index(store, sleeping("order-14").events)

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-14?wait=5m"))
        await watched(changes, "order-14")
        changes.close()
        return await answer

    response = during(api, scenario())

    assert response.status_code == 202
    assert response.json()["run"]["status"] == "sleeping"
    assert response.json()["message"].startswith("Run 'order-14' is still sleeping when the api began to shut down")


# ---------------------------------------------------------------------------------------------
# GET /v1/runs/{run_id}?wait=


def test_getting_a_run_with_wait_answers_200_when_it_ends_and_202_when_the_wait_runs_out(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = done("order-15")
    land(store, changes, run.events[:2])

    still = api.get("/v1/runs/order-15?wait=100ms")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-15?wait=30s"))
        await watched(changes, "order-15")
        land(store, changes, run.events[2:])
        return await answer

    ended = during(api, scenario())

    assert still.status_code == 202
    assert (still.json()["run_id"], still.json()["run"]["status"]) == ("order-15", "running")
    assert "is still running after waiting 0.1 s" in still.json()["message"]
    assert ended.status_code == 200
    assert ended.json() == api.get("/v1/runs/order-15").json()


def test_getting_a_run_with_wait_waits_for_a_run_not_known_yet_and_then_404s(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = done("order-16")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-16?wait=30s"))
        await watched(changes, "order-16")
        land(store, changes, run.events)
        return await answer

    assert during(api, scenario()).json()["status"] == "completed"
    assert api.get("/v1/runs/order-17?wait=0s").json()["error"] == "unknown_run"


# ---------------------------------------------------------------------------------------------
# GET /v1/runs/{run_id}/history/stream


def messages(text: str) -> list[dict[str, str]]:
    """Server-sent events as their fields; a comment line as ``{"comment": …}``."""
    found: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        found.append(fields)
    return found


def seqs(found: list[dict[str, str]]) -> list[int]:
    return [json.loads(message["data"])["seq"] for message in found if "id" in message]


def test_the_stream_sends_the_history_so_far_then_each_new_event_then_the_end(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = Run("order-20", now=T0, label=None)
    run.suspend(PlanSleep(index=0, name="nap", kind=StepKind.SLEEP, duration_ms=1_000), now=T0 + 1)
    land(store, changes, run.events)
    so_far = len(run.events)

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-20/history/stream"))
        await watched(changes, "order-20")
        run.fire(0, now=T0 + 1_001)  # the sleep ends: a delivery is scheduled
        land(store, changes, run.events[so_far:])
        before_end = len(run.events)
        run.report(Complete(output='"ok"'), now=T0 + 1_002)
        land(store, changes, run.events[before_end:])
        return await answer

    response = during(api, scenario())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    found = messages(response.text)
    history = api.get("/v1/runs/order-20/history").json()["events"]
    assert [json.loads(message["data"]) for message in found[:-1]] == history
    assert [int(message["id"]) for message in found[:-1]] == list(range(1, len(history) + 1))
    assert found[-1]["event"] == "end"
    assert "id" not in found[-1]
    end = json.loads(found[-1]["data"])
    assert (end["run_id"], end["status"], end["output"], end["last_seq"]) == (
        "order-20",
        "completed",
        "ok",
        len(history),
    )
    assert changes.watching("order-20") == 0


def test_a_client_resumes_after_its_last_event_id_which_wins_over_after_seq(api: TestClient, store: QueryStore) -> None:
    index(store, done("order-21").events)
    total = len(api.get("/v1/runs/order-21/history").json()["events"])

    resumed = messages(api.get("/v1/runs/order-21/history/stream", headers={"Last-Event-ID": "2"}).text)
    both = messages(api.get("/v1/runs/order-21/history/stream?after_seq=1", headers={"Last-Event-ID": str(total)}).text)
    after = messages(api.get("/v1/runs/order-21/history/stream?after_seq=1").text)

    assert seqs(resumed) == list(range(3, total + 1))
    assert resumed[-1]["event"] == "end"
    assert both == [resumed[-1]]  # everything seen: only the end
    assert seqs(after) == list(range(2, total + 1))


@pytest.mark.parametrize("header", ["x", "-1", "2147483648", "99999999999999999999", "1.5"])
def test_a_last_event_id_that_is_not_a_seq_is_a_422(api: TestClient, store: QueryStore, header: str) -> None:
    index(store, done("order-22").events)

    response = api.get("/v1/runs/order-22/history/stream", headers={"Last-Event-ID": header})

    assert response.status_code == 422
    assert response.json()["message"].startswith("Expected Last-Event-ID to be a seq from 0 to 2147483647, but got")


def test_the_stream_of_a_failed_run_ends_after_its_failure_handler_is_scheduled(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = failed("order-23")
    failure = next(n for n, event in enumerate(run.events) if type(event).__name__ == "RunFailed")
    land(store, changes, run.events[: failure + 1])  # the indexer's batch ended between the two

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-23/history/stream"))
        await watched(changes, "order-23")
        land(store, changes, run.events[failure + 1 :])
        return await answer

    found = messages(during(api, scenario()).text)

    types = [json.loads(message["data"]).get("type") for message in found]
    assert types[-3:] == ["RunFailed", "FailureHandlerScheduled", None]
    assert json.loads(found[-1]["data"])["status"] == "failed"


def test_the_stream_of_a_run_resumed_after_it_failed_goes_on_until_its_new_end(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = failed("order-24")
    run.recover(Recovery.RESUME, now=T0 + 10)  # an operator resumed it, before the stream reads its end
    land(store, changes, run.events)

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-24/history/stream"))
        await watched(changes, "order-24")
        before_end = len(run.events)
        run.report(Complete(output='"second time lucky"'), now=T0 + 20)
        land(store, changes, run.events[before_end:])
        return await answer

    found = messages(during(api, scenario()).text)

    types = [json.loads(message["data"]).get("type") for message in found]
    assert "RunRecovered" in types
    assert types[-2:] == ["RunCompleted", None]
    assert json.loads(found[-1]["data"])["output"] == "second time lucky"


def test_the_stream_waits_a_little_for_a_run_not_known_yet_then_404s(
    api: TestClient, store: QueryStore, changes: RunChanges, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = done("order-25")

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-25/history/stream"))
        await watched(changes, "order-25")
        land(store, changes, run.events)
        return await answer

    appeared = during(api, scenario())
    monkeypatch.setattr(runs_module, "APPEAR_WITHIN_S", 0.05)
    unknown = api.get("/v1/runs/nope/history/stream")

    assert appeared.status_code == 200
    assert messages(appeared.text)[-1]["event"] == "end"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_run"


def test_a_long_history_is_sent_whole_in_pages(
    api: TestClient, store: QueryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "PAGE", 2)
    run = Run("order-26", now=T0, label=None)
    run.report(Complete(output="null"), outputs=tuple(f'"{n}"' for n in range(5)), now=T0 + 1)
    index(store, run.events)

    found = messages(api.get("/v1/runs/order-26/history/stream").text)

    assert seqs(found) == list(range(1, len(run.events) + 1))
    assert found[-1]["event"] == "end"


def test_the_stream_stops_without_its_end_when_the_api_shuts_down(
    api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    index(store, sleeping("order-27").events)

    async def scenario() -> httpx.Response:
        answer = asyncio.create_task(api.client.get("/v1/runs/order-27/history/stream"))
        await watched(changes, "order-27")
        changes.close()
        return await answer

    found = messages(during(api, scenario()).text)

    assert seqs(found) == [1, 2, 3]
    assert all("event" not in message for message in found)  # the client resumes from id 3 elsewhere


def test_a_quiet_stream_sends_a_keep_alive_comment(store: QueryStore, changes: RunChanges) -> None:
    index(store, sleeping("order-28").events)

    async def first_messages() -> list[str]:
        stream = follow.history_stream(store, changes, "order-28", 0, keepalive_s=0.01)
        taken = [await anext(stream) for _ in range(5)]
        await stream.aclose()
        return taken

    taken = asyncio.run(first_messages())

    assert [message.split("\n")[0] for message in taken[:3]] == ["id: 1", "id: 2", "id: 3"]
    assert taken[3:] == [": keep-alive\n\n", ": keep-alive\n\n"]
    assert changes.watching("order-28") == 0
