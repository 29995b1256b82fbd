"""The query store's flow-control keys, and the indexer that fills them from the compacted ``flow``
topic: each key's latest state as its scheduler published it, in topic order, a tombstone forgetting it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from stepstream.api import indexer as indexer_module
from stepstream.api.changes import RunChanges
from stepstream.api.indexer import Indexer, flow_change
from stepstream.avro import Codec, DecodeError
from stepstream.config import KafkaSettings
from stepstream.core import FlowKeyState, StepCompleted, StepKind
from stepstream.kafka.topics import TopicNames
from stepstream.store import FlowKeyRow, QueryStore, open_query_store
from tests.unit.test_query_store import T0, Run

TOPICS = TopicNames(KafkaSettings().topic_prefix)


def state(key: str = "mailer", *, queued: int = 0, updated_ms: int = T0, **changes: Any) -> FlowKeyState:
    values: dict[str, Any] = {
        "in_flight": 0,
        "starts_in_window": 0,
        "rate": 10,
        "period_ms": 60_000,
        "parallelism": 3,
        **changes,
    }
    return FlowKeyState(key=key, queued=queued, updated_ms=updated_ms, **values)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueryStore]:
    """On SQLite and on a real PostgreSQL server (tests/postgres.py)."""
    if request.param == "postgresql":
        store = open_query_store(request.getfixturevalue("postgres_url"))
    else:
        store = QueryStore(tmp_path / "query.db")
    yield store
    store.close()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def shown(store: QueryStore) -> dict[str, int]:
    return {row.key: row.queued for row in store.flow_keys(limit=100)}


# ---------------------------------------------------------------------------------------------
# The store


def test_a_key_shows_every_field_of_its_state(store: QueryStore) -> None:
    store.apply_flow(
        [("mailer", state(queued=42, in_flight=3, starts_in_window=10, rate=10, period_ms=60_000, parallelism=3))]
    )

    assert store.flow_key("mailer") == FlowKeyRow(
        key="mailer",
        queued=42,
        in_flight=3,
        starts_in_window=10,
        rate=10,
        period_ms=60_000,
        parallelism=3,
        updated_at_ms=T0,
    )


def test_a_key_without_limits_keeps_them_as_none(store: QueryStore) -> None:
    store.apply_flow([("grouped", state("grouped", rate=None, parallelism=None, period_ms=1_000))])

    row = store.flow_key("grouped")

    assert row is not None
    assert (row.rate, row.parallelism, row.period_ms) == (None, None, 1_000)


def test_the_later_state_of_a_key_replaces_the_earlier_and_other_keys_stay(store: QueryStore) -> None:
    store.apply_flow([("mailer", state(queued=5)), ("billing", state("billing", queued=7))])
    store.apply_flow([("mailer", state(queued=4, updated_ms=T0 + 1_000)), ("mailer", state(queued=2))])

    assert shown(store) == {"billing": 7, "mailer": 2}
    assert store.flow_keys(limit=100)[1].updated_at_ms == T0  # the last one written, whatever its time


def test_reading_the_topic_again_after_a_crash_ends_in_the_same_rows(store: QueryStore) -> None:
    changes = [("mailer", state(queued=5)), ("billing", state("billing", queued=7)), ("mailer", state(queued=1))]
    store.apply_flow(changes)

    store.apply_flow(changes)

    assert shown(store) == {"billing": 7, "mailer": 1}


def test_a_tombstone_forgets_the_key(store: QueryStore) -> None:
    store.apply_flow([("mailer", state(queued=5)), ("billing", state("billing", queued=7))])

    store.apply_flow([("mailer", None), ("nobody", None)])

    assert store.flow_key("mailer") is None
    assert shown(store) == {"billing": 7}


def test_an_unknown_key_has_no_row(store: QueryStore) -> None:
    store.apply_flow([("mailer", state())])

    assert store.flow_key("mail") is None
    assert store.flow_key("mailer ") is None


def test_keys_are_listed_by_key_and_paged_after_the_last_key(store: QueryStore) -> None:
    store.apply_flow([(key, state(key)) for key in ["b", "a", "é", "Z", "a/b"]])

    assert [row.key for row in store.flow_keys(limit=100)] == ["Z", "a", "a/b", "b", "é"]
    assert [row.key for row in store.flow_keys(limit=2)] == ["Z", "a"]
    assert [row.key for row in store.flow_keys(limit=2, after="a")] == ["a/b", "b"]
    assert [row.key for row in store.flow_keys(limit=2, after="b")] == ["é"]
    assert store.flow_keys(limit=2, after="é") == []


def test_keys_survive_a_reopened_store(tmp_path: Path) -> None:
    with closing(QueryStore(tmp_path / "query.db")) as store:
        store.apply_flow([("mailer", state(queued=9))])

    with closing(QueryStore(tmp_path / "query.db")) as reopened:
        assert shown(reopened) == {"mailer": 9}


def test_a_store_written_before_flow_control_gains_the_table_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(QueryStore(path)) as store:
        store.apply(Run().events)
    with closing(sqlite3.connect(path)) as old:
        old.execute("DROP TABLE flow_keys")
        old.commit()

    with closing(QueryStore(path)) as store:
        assert store.flow_keys() == []
        store.apply_flow([("mailer", state(queued=1))])
        assert shown(store) == {"mailer": 1}
        assert store.get_run("run_A") is not None


# ---------------------------------------------------------------------------------------------
# The indexer


def record(topic: str, offset: int, key: str | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=T0,
        timestamp_type=0,
        key=None if key is None else key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def test_a_flow_record_is_its_keys_state_and_a_tombstone_forgets_its_key(codec: Codec) -> None:
    busy = state(queued=3)

    assert flow_change(codec, record(TOPICS.flow, 0, "mailer", codec.encode(busy))) == ("mailer", busy)
    assert flow_change(codec, record(TOPICS.flow, 1, "mailer", None)) == ("mailer", None)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("mailer", b"not avro", "Expected at least 10 bytes"),
        ("mailer", "a run event", "Expected FlowKeyState on this topic, but the record is a stepstream.RunStarted"),
        (None, None, "Expected a flow-control key on a tombstone, but the record has none"),
    ],
)
def test_a_flow_record_that_cannot_be_read_says_why(codec: Codec, key: str | None, value: object, reason: str) -> None:
    data = codec.encode(Run().events[0]) if value == "a run event" else value
    with pytest.raises(DecodeError, match=reason):
        flow_change(codec, record(TOPICS.flow, 7, key, data))  # type: ignore[arg-type]


class Stop(Exception):
    """Ends the indexer's loop after the batches given."""


class FakeConsumer:
    """A consumer without a group over one partition of each topic: it gives ``batches`` in turn,
    and its positions move past each batch (or to ``moves``, as past a transaction marker)."""

    def __init__(
        self, ends: dict[TopicPartition, int], *batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        self.ends = ends
        self.batches = list(batches)
        self.assigned: list[TopicPartition] = []
        self.seeks: dict[TopicPartition, int | None] = {}  # None: to the beginning
        self.seek_calls = 0  # calls of seek_to_beginning: each waits for the fetch in flight
        self.positions: dict[TopicPartition, int] = {}
        self.lags: list[str | None] = []  # the indexer's lag at each poll
        self.indexer: Indexer | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.ends if tp.topic == topic}

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.seek_calls += 1
        for tp in partitions:
            self.seeks[tp], self.positions[tp] = None, 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp], self.positions[tp] = offset, offset

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, **options: Any) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        assert self.indexer is not None
        self.lags.append(self.indexer.lag())
        if not self.batches:
            raise Stop
        batch = self.batches.pop(0)
        for tp, records in batch.items():
            self.positions[tp] = records[-1].offset + 1 if records else self.ends[tp]
        return batch


EVENTS, FLOW = TopicPartition(TOPICS.events, 0), TopicPartition(TOPICS.flow, 0)


def fake(monkeypatch: pytest.MonkeyPatch, consumer: FakeConsumer) -> None:
    monkeypatch.setattr(indexer_module, "make_consumer", lambda *args, **options: consumer)

    async def topic_partitions(given: FakeConsumer, topic: str) -> set[int]:
        return given.partitions(topic)

    monkeypatch.setattr(indexer_module, "topic_partitions", topic_partitions)


def run_indexer(consumer: FakeConsumer, store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch) -> Indexer:
    fake(monkeypatch, consumer)
    indexer = consumer.indexer = Indexer(KafkaSettings(), store, codec=codec)
    with pytest.raises(Stop):
        asyncio.run(indexer.run())
    return indexer


def test_the_indexer_reads_every_partition_of_events_and_flow_and_keeps_its_positions_in_the_store(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run()
    events_end = 10 + len(run.events)
    consumer = FakeConsumer(
        {EVENTS: events_end, FLOW: 8},
        {
            EVENTS: [record(TOPICS.events, 10 + n, "run_A", codec.encode(event)) for n, event in enumerate(run.events)],
            FLOW: [
                record(TOPICS.flow, 4, "mailer", codec.encode(state(queued=5))),
                record(TOPICS.flow, 5, "billing", codec.encode(state("billing", queued=7))),
                record(TOPICS.flow, 6, "mailer", codec.encode(state(queued=2))),
            ],
        },
        {FLOW: [record(TOPICS.flow, 7, "billing", None)]},
    )

    run_indexer(consumer, store, codec, monkeypatch)

    assert set(consumer.assigned) == {EVENTS, FLOW}
    assert consumer.seeks == {EVENTS: None, FLOW: None}  # a new store: both from their beginning
    assert consumer.seek_calls == 1  # in one call
    assert shown(store) == {"mailer": 2}
    assert store.get_run("run_A") is not None
    assert store.positions() == {(TOPICS.events, 0): events_end, (TOPICS.flow, 0): 8}


def test_a_restarted_indexer_goes_on_where_its_store_left_off(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save_positions({(TOPICS.events, 0): 5, (TOPICS.flow, 0): 3})
    consumer = FakeConsumer({EVENTS: 5, FLOW: 4}, {FLOW: [record(TOPICS.flow, 3, "mailer", codec.encode(state()))]})

    run_indexer(consumer, store, codec, monkeypatch)

    assert consumer.seeks == {EVENTS: 5, FLOW: 3}
    assert store.positions() == {(TOPICS.events, 0): 5, (TOPICS.flow, 0): 4}


def test_the_indexer_is_ready_once_it_reaches_the_ends_the_topics_had_when_it_started(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = FakeConsumer(
        {EVENTS: 0, FLOW: 3},
        {FLOW: [record(TOPICS.flow, 0, "mailer", codec.encode(state()))]},
        {FLOW: []},  # a transaction marker at the end: the position moves, no record comes
        {FLOW: [record(TOPICS.flow, 3, "mailer", codec.encode(state(queued=1)))]},  # written after the start
    )
    fake(monkeypatch, consumer)
    indexer = consumer.indexer = Indexer(KafkaSettings(), store, codec=codec)

    assert indexer.lag() == "the indexer has not started reading the events and flow topics yet"
    with pytest.raises(Stop):
        asyncio.run(indexer.run())

    assert consumer.lags == [
        "the query store is catching up: 3 records behind the events and flow topics",
        "the query store is catching up: 2 records behind the events and flow topics",
        None,
        None,
    ]


def test_a_restarted_indexer_whose_store_has_everything_is_ready_before_it_reads(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save_positions({(TOPICS.events, 0): 5, (TOPICS.flow, 0): 3})
    consumer = FakeConsumer({EVENTS: 5, FLOW: 3})

    run_indexer(consumer, store, codec, monkeypatch)

    assert consumer.lags == [None]  # at its first poll


class FakeDeadLetters:
    """Collects what the indexer sets aside (the real writer is covered in tests/integration/test_poison.py)."""

    def __init__(self) -> None:
        self.letters: list[tuple[str, int, str]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, record: ConsumerRecord[bytes, bytes], reason: str, now_ms: int) -> None:
        self.letters.append((record.topic, record.offset, reason))


def test_records_the_indexer_cannot_read_or_apply_are_dead_lettered_and_the_rest_indexed(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run()
    good = [record(TOPICS.events, 3 + n, "run_A", codec.encode(event)) for n, event in enumerate(run.events)]
    unusable = StepCompleted(  # its output is not JSON text: the store cannot apply it
        run_id="run_B", seq=1, at_ms=T0, step_index=0, name="x", kind=StepKind.RUN, output="{not", delivery_id=""
    )
    consumer = FakeConsumer(
        {EVENTS: 3 + len(good), FLOW: 2},
        {
            EVENTS: [
                record(TOPICS.events, 0, "run_X", None),
                record(TOPICS.events, 1, "run_X", b"\xc3\x01garbage!"),
                record(TOPICS.events, 2, "run_B", codec.encode(unusable)),
                *good,
            ],
            FLOW: [record(TOPICS.flow, 0, None, None), record(TOPICS.flow, 1, "mailer", codec.encode(state()))],
        },
    )
    fake(monkeypatch, consumer)
    letters = FakeDeadLetters()
    indexer = consumer.indexer = Indexer(KafkaSettings(), store, codec=codec, dead_letters=letters)  # type: ignore[arg-type]
    with pytest.raises(Stop):
        asyncio.run(indexer.run())

    reasons = {(topic, offset): reason for topic, offset, reason in letters.letters}
    assert sorted(reasons) == sorted([(TOPICS.events, 0), (TOPICS.events, 1), (TOPICS.events, 2), (TOPICS.flow, 0)])
    assert "a null value, or tombstone" in reasons[TOPICS.events, 0]
    assert "is not written by any known schema" in reasons[TOPICS.events, 1]
    assert reasons[TOPICS.events, 2].startswith("the indexer cannot apply StepCompleted: JSONDecodeError(")
    assert reasons[TOPICS.flow, 0] == "Expected a flow-control key on a tombstone, but the record has none"
    assert store.get_run("run_A") is not None
    assert shown(store) == {"mailer": 0}


class Announced(RunChanges):
    """Notes, for each announcement, each run's last seq in the store at that moment."""

    def __init__(self, store: QueryStore) -> None:
        super().__init__()
        self.store = store
        self.seen: list[dict[str, int | None]] = []

    def changed(self, run_ids: Iterable[str]) -> None:
        rows = {run_id: self.store.get_run(run_id) for run_id in run_ids}
        self.seen.append({run_id: row.last_seq if row else None for run_id, row in rows.items()})
        super().changed(run_ids)


def test_the_indexer_announces_the_runs_of_each_batch_once_the_store_has_them(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Run("run_A"), Run("run_B")
    batch = [(first.run_id, event) for event in first.events] + [(second.run_id, event) for event in second.events]
    consumer = FakeConsumer(
        {EVENTS: len(batch) + 1, FLOW: 1},
        {EVENTS: [record(TOPICS.events, n, key, codec.encode(event)) for n, (key, event) in enumerate(batch)]},
        {FLOW: [record(TOPICS.flow, 0, "mailer", codec.encode(state()))]},  # no run changed: nothing to say
        {EVENTS: [record(TOPICS.events, len(batch), "run_A", codec.encode(first.cancel(now=T0 + 1)[0]))]},
    )
    fake(monkeypatch, consumer)
    announced = Announced(store)
    indexer = consumer.indexer = Indexer(KafkaSettings(), store, codec=codec, changes=announced)
    with pytest.raises(Stop):
        asyncio.run(indexer.run())

    assert announced.seen == [
        {"run_A": len(first.events) - 1, "run_B": len(second.events)},
        {"run_A": len(first.events)},
    ]


def test_the_indexer_forgets_runs_that_ended_before_the_stores_retention_window(
    store: QueryStore, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a run that ended long ago (its times are T0's) and one still going
    ended, going = Run("run_A"), Run("run_B")
    ended.cancel(now=T0 + 1)
    batch = [(run.run_id, event) for run in (ended, going) for event in run.events]
    consumer = FakeConsumer(
        {EVENTS: len(batch), FLOW: 0},
        {EVENTS: [record(TOPICS.events, n, key, codec.encode(event)) for n, (key, event) in enumerate(batch)]},
    )
    fake(monkeypatch, consumer)
    # when the indexer keeps ended runs for a day
    indexer = consumer.indexer = Indexer(KafkaSettings(), store, codec=codec, retention_ms=86_400_000)
    with pytest.raises(Stop):
        asyncio.run(indexer.run())

    # then the ended run is gone from the store, and the one going is there
    assert store.get_run("run_A") is None
    assert store.history("run_A") == []
    assert store.get_run("run_B") is not None
