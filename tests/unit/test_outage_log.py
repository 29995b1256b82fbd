"""A broker outage in the logs: one WARNING when the clients lose Kafka, one INFO with how long it
lasted, the clients' own lines about it at DEBUG, every other line as it was (runner.KafkaOutageLog)."""

from __future__ import annotations

import logging
import sys

import pytest
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)

from stepstream.logs import KafkaOutageLog, kafka_problem


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, level: int, msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def unable_to_connect() -> logging.LogRecord:
    error = OSError(111, "Connect call failed ('127.0.0.1', 9092)")
    return record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1, error)


def metadata_failed() -> logging.LogRecord:
    return record("aiokafka", logging.ERROR, "Unable to update metadata from %s", [1])


def fetch_failed() -> logging.LogRecord:
    error = NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1).")
    return record("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from %s: %s", 1, error)


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """``error`` as it is after ``raise error from cause``, with a traceback."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


def transaction_failed(cause: BaseException) -> logging.LogRecord:
    error = raised(KafkaError("Unexpected error during batch delivery"), raised(cause))
    return record(
        "stepstream.projector.service", logging.ERROR, "projector transaction failed; re-reading the batch", exc=error
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outages(clock: Clock) -> KafkaOutageLog:
    return KafkaOutageLog(quiet_s=3.0, settle_s=10.0, clock=clock)


# -- what a line is about ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [unable_to_connect(), metadata_failed(), fetch_failed(), transaction_failed(KafkaConnectionError("closed"))],
    ids=["connect refused", "metadata", "fetch", "transaction failed on a closed connection"],
)
def test_lines_about_an_unreachable_broker_are_about_a_lost_connection(line: logging.LogRecord) -> None:
    assert kafka_problem(line) == "lost"


def test_a_join_the_broker_held_past_the_request_timeout_is_transient_not_an_outage() -> None:
    line = record(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "JoinGroupRequest_v5",
        1,
        RequestTimedOutError(),
    )

    assert kafka_problem(line) == "transient"


def test_a_leader_moving_is_transient() -> None:
    line = record(
        "aiokafka.producer.sender",
        logging.WARNING,
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "events-0",
        NotLeaderForPartitionError,
    )

    assert kafka_problem(line) == "transient"


@pytest.mark.parametrize(
    "line",
    [
        record("stepstream.scheduler.service", logging.ERROR, "cannot restore pending request %s: %s", "r", "bad"),
        record(
            "stepstream.projector.service",
            logging.ERROR,
            "projector transaction failed",
            exc=raised(
                AssertionError(
                    "Invalid state transition TransactionState.FATAL_ERROR -> TransactionState.IN_TRANSACTION"
                )
            ),
        ),
        record(
            "aiokafka.producer.sender",
            logging.ERROR,
            "Unexpected error in sender routine",
            exc=raised(KafkaError("x"), raised(KafkaConnectionError("closed"))),
        ),
        record("aiokafka", logging.ERROR, "Topic %s not found in cluster metadata", "x"),
        record("stepstream.api.indexer", logging.WARNING, "indexer waits: %s", UnknownTopicOrPartitionError()),
        record("uvicorn.error", logging.ERROR, "Exception in ASGI application", exc=raised(ValueError("bug"))),
        record("uvicorn.error", logging.ERROR, "Exception in ASGI application", exc=raised(ConnectionResetError())),
    ],
    ids=[
        "a service's own error",
        "a producer that cannot go on",
        "an aiokafka task that died",
        "a missing topic",
        "an unknown topic",
        "a bug",
        "a client of the api going away",
    ],
)
def test_real_errors_are_not_about_kafka_outages(line: logging.LogRecord) -> None:
    assert kafka_problem(line) is None


# -- an outage --------------------------------------------------------------------------------


def test_the_first_lost_connection_is_one_warning_saying_so(outages: KafkaOutageLog) -> None:
    line = unable_to_connect()

    assert outages.filter(line)
    assert (line.levelname, line.name) == ("WARNING", "stepstream.kafka")
    assert line.getMessage().startswith("lost the connection to Kafka (aiokafka: Unable connect to node with id 1")
    assert line.exc_info is None


def test_during_an_outage_the_clients_lines_about_it_are_kept_back(outages: KafkaOutageLog, clock: Clock) -> None:
    outages.filter(unable_to_connect())

    shown: list[str] = []
    for _ in range(500):
        clock.now += 0.02
        lines = (unable_to_connect(), metadata_failed(), fetch_failed(), transaction_failed(NodeNotReadyError()))
        shown += [line.getMessage() for line in lines if outages.filter(line)]

    assert shown == []


def test_coordinators_moving_during_an_outage_are_kept_back_too(outages: KafkaOutageLog) -> None:
    outages.filter(unable_to_connect())
    moving = record(
        "asyncio", logging.ERROR, "Task exception was never retrieved", exc=raised(GroupCoordinatorNotAvailableError())
    )

    assert not outages.filter(moving)


def test_a_real_error_during_an_outage_is_shown(outages: KafkaOutageLog) -> None:
    outages.filter(unable_to_connect())
    dead = record(
        "stepstream.projector.service",
        logging.ERROR,
        "projector transaction failed",
        exc=raised(AssertionError("FATAL_ERROR -> IN_TRANSACTION")),
    )

    assert outages.filter(dead)
    assert dead.levelname == "ERROR"


def test_the_outage_ends_once_no_client_failed_for_the_quiet_time_with_how_long_it_lasted(
    outages: KafkaOutageLog, clock: Clock
) -> None:
    outages.filter(unable_to_connect())
    for _ in range(15):  # failures for 15 s
        clock.now += 1.0
        outages.filter(metadata_failed())

    clock.now += 2.9
    assert outages.ended() is None  # not quiet for long enough yet
    clock.now += 0.1
    message = outages.ended()

    assert message is not None
    assert message.startswith("Kafka is reachable again: the clients failed to reach it for 15.0 s")
    assert "(15 lines about it at DEBUG)" in message
    assert outages.ended() is None  # said once


def test_no_outage_no_line(outages: KafkaOutageLog, clock: Clock) -> None:
    clock.now += 60

    assert outages.ended() is None


def test_after_an_outage_coordinators_settling_are_kept_back_for_a_while_then_shown(
    outages: KafkaOutageLog, clock: Clock
) -> None:
    outages.filter(unable_to_connect())
    clock.now += 3
    assert outages.ended() is not None

    def leader_moved() -> logging.LogRecord:
        return record(
            "aiokafka.producer.sender",
            logging.WARNING,
            "Got error produce response on topic-partition %s, retrying. Error: %s",
            "events-0",
            NotLeaderForPartitionError,
        )

    clock.now += 9.9
    assert not outages.filter(leader_moved())
    clock.now += 0.1
    assert outages.filter(leader_moved())


def test_a_second_outage_gets_its_own_warning(outages: KafkaOutageLog, clock: Clock) -> None:
    outages.filter(unable_to_connect())
    clock.now += 3
    outages.ended()
    clock.now += 60

    again = unable_to_connect()

    assert outages.filter(again)
    assert again.levelname == "WARNING"


def test_outside_an_outage_transient_lines_pass_as_they_are(outages: KafkaOutageLog) -> None:
    retry = record(
        "aiokafka.producer.sender",
        logging.WARNING,
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "events-0",
        NotLeaderForPartitionError,
    )

    assert outages.filter(retry)
    assert retry.levelname == "WARNING"


def test_the_group_coordinator_not_being_ready_at_start_up_is_kept_back_always(outages: KafkaOutageLog) -> None:
    line = record(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Group Coordinator Request failed: %s",
        GroupCoordinatorNotAvailableError(),
    )

    assert not outages.filter(line)


def test_with_debug_on_the_kept_back_lines_are_shown_at_debug(clock: Clock) -> None:
    outages = KafkaOutageLog(clock=clock, debug=lambda: True)
    outages.filter(unable_to_connect())
    line = metadata_failed()

    assert outages.filter(line)
    assert line.levelname == "DEBUG"


def test_configure_logging_installs_one_filter_on_the_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    import stepstream.logs as runner

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(runner, "_outages", None)

    runner.configure_logging()
    runner.configure_logging()

    assert [type(f) for f in handler.filters] == [KafkaOutageLog]


@pytest.mark.parametrize("debug", [False, True], ids=["at INFO", "at DEBUG"])
def test_a_produce_retried_while_a_transaction_settles_is_not_a_warning(debug: bool) -> None:
    # aiokafka's own line, as the single-broker stack logged it in normal operation

    retried = record(
        "aiokafka.producer.sender",
        logging.WARNING,
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "TopicPartition(topic='stepstream.events', partition=1)",
        NotEnoughReplicasError,
    )
    outages = KafkaOutageLog(debug=lambda: debug)

    assert outages.filter(retried) is debug
    assert retried.levelname == ("DEBUG" if debug else "WARNING")
    assert not outages.in_outage  # normal operation, not an outage


def test_other_produce_errors_still_show() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    refused = record(
        "aiokafka.producer.sender",
        logging.WARNING,
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "TopicPartition(topic='stepstream.events', partition=1)",
        MessageSizeTooLargeError,
    )

    assert KafkaOutageLog().filter(refused) is True
    assert refused.levelname == "WARNING"
