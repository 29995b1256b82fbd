"""The engine's Kafka topics: their names, and creating them with the configs they need."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

from stepstream.errors import KafkaProvisioningError

DEFAULT_PREFIX = "stepstream."

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicNames:
    """The full names of the engine's topics: ``TopicNames("staging.").runs == "staging.runs"``.

    One prefix per deployment lets several engines share a cluster without seeing each other's runs.
    """

    # The one field may be positional: ``TopicNames(settings.topic_prefix)`` reads naturally.
    prefix: str = field(default=DEFAULT_PREFIX, kw_only=False)

    @property
    def triggers(self) -> str:
        return self.prefix + "triggers"

    @property
    def commands(self) -> str:
        return self.prefix + "commands"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def runs(self) -> str:
        return self.prefix + "runs"

    @property
    def waiters(self) -> str:
        return self.prefix + "waiters"

    @property
    def schedule(self) -> str:
        return self.prefix + "schedule"

    @property
    def deliveries(self) -> str:
        return self.prefix + "deliveries"

    @property
    def timers(self) -> str:
        return self.prefix + "timers"

    @property
    def flow(self) -> str:
        """The state of each flow-control key, as its scheduler last published it (compacted)."""
        return self.prefix + "flow"

    @property
    def deadletter(self) -> str:
        return self.prefix + "deadletter"

    def all(self) -> tuple[str, ...]:
        return (
            self.triggers,
            self.commands,
            self.events,
            self.runs,
            self.waiters,
            self.schedule,
            self.deliveries,
            self.timers,
            self.flow,
            self.deadletter,
        )


def topic_configs(names: TopicNames, *, events_retention_ms: int = -1) -> dict[str, dict[str, str]]:
    """The topic-level configs each topic is created with; topics not named keep the broker's defaults.
    ``events_retention_ms``: how long ``events`` keeps a record, -1 for ever (the default)."""
    compacted = {"cleanup.policy": "compact"}  # the latest record per key is the state; older ones may go
    kept_forever = {"retention.ms": "-1"}
    return {
        names.runs: compacted,
        names.timers: compacted,
        names.waiters: compacted,
        names.flow: compacted,
        # Runs' histories, for audit, replay and rebuilding query stores: for ever unless the operator
        # chooses otherwise (the engine itself never reads it back: its state is in runs and timers).
        names.events: {"retention.ms": str(events_retention_ms)},
        names.deadletter: kept_forever,  # kept until an operator has looked at it
    }


async def ensure_topics(
    bootstrap_servers: str,
    names: TopicNames,
    partitions: int = 12,
    replication_factor: int = 1,
    client_options: dict[str, Any] | None = None,
    *,
    timeout_s: float = 60.0,
    events_retention_ms: int = -1,
) -> None:
    """Create whichever of the engine's topics are missing, and return once every topic has a leader.

    Existing topics are left as they are. A broker that is still starting (no controller yet,
    connection refused) is retried for up to ``timeout_s``. ``client_options`` are passed to the
    aiokafka client as they are: security settings such as ``security_protocol``, ``sasl_mechanism``,
    ``sasl_plain_username``, ``ssl_context``.
    """
    deadline = time.monotonic() + timeout_s
    options = client_options or {}
    last_problem: str | BaseException = "no attempt finished"
    while True:
        try:
            not_ready = await _create_missing(
                bootstrap_servers, names, partitions, replication_factor, options, events_retention_ms
            )
            if not not_ready:
                return
            last_problem = f"topics without a leader yet: {', '.join(not_ready)}"
        except (TimeoutError, KafkaError, OSError) as error:
            if not _worth_retrying(error):
                raise KafkaProvisioningError(
                    f"Could not create the topics on {bootstrap_servers}: {error!r}"
                ) from error
            last_problem = error
            logger.info("Kafka at %s cannot create topics yet (%r); retrying", bootstrap_servers, error)
        if time.monotonic() + 0.2 > deadline:
            raise KafkaProvisioningError(
                f"Could not set up the topics on {bootstrap_servers} within {timeout_s:.0f} s; "
                f"the last problem was {last_problem!r}"
            ) from (last_problem if isinstance(last_problem, BaseException) else None)
        await asyncio.sleep(0.2)


def _worth_retrying(error: BaseException) -> bool:
    if isinstance(error, KafkaError):
        # aiokafka's timeout is marked terminal, but while a broker starts up it is not.
        return bool(error.retriable) or isinstance(error, KafkaTimeoutError)
    return True  # OSError, TimeoutError: the broker is not listening or not answering yet


async def _create_missing(
    bootstrap_servers: str,
    names: TopicNames,
    partitions: int,
    replication_factor: int,
    client_options: dict[str, Any],
    events_retention_ms: int,
) -> list[str]:
    """Create the missing topics; return the topics not yet usable (just created, or without leaders)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    try:
        await admin.start()
        # All topics, not just ours: aiokafka asks for named topics with auto-creation allowed, and a
        # broker with auto.create.topics.enable would then create ours without their configs.
        existing = {topic["topic"]: topic for topic in await admin.describe_topics()}
        configs = topic_configs(names, events_retention_ms=events_retention_ms)
        missing = []
        without_leader = []
        for name in names.all():
            topic = existing.get(name)
            if topic is None:
                missing.append(NewTopic(name, partitions, replication_factor, topic_configs=configs.get(name, {})))
                continue
            if any(partition["leader"] < 0 for partition in topic["partitions"]):
                without_leader.append(name)
            if len(topic["partitions"]) != partitions:
                # Changing a topic's partition count would move keys between partitions; an operator decides.
                logger.warning(
                    "Topic %s has %d partitions, not the %d asked for; leaving it as it is",
                    name,
                    len(topic["partitions"]),
                    partitions,
                )
        if missing:
            response = await admin.create_topics(missing)
            _raise_topic_errors(response.to_object())
            logger.info("Created Kafka topics %s", ", ".join(topic.name for topic in missing))
    finally:
        await admin.close()
    # A created topic reaches the brokers' metadata a moment after CreateTopics answers; callers that
    # produce right away need it there, so the caller looks again.
    return [topic.name for topic in missing] + without_leader


def _raise_topic_errors(response: dict[str, Any]) -> None:
    for topic_error in response["topic_errors"]:
        error_class = for_code(topic_error["error_code"])
        if topic_error["error_code"] == 0 or error_class is TopicAlreadyExistsError:
            continue  # created, or by someone else in the meantime: either way it exists
        raise error_class(f"{topic_error['topic']}: {topic_error.get('error_message')}")
