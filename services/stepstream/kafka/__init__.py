"""Stepstream's Kafka adapter: a local broker for development and tests, and the engine's topics."""

from stepstream.kafka.local import LocalKafka, free_port
from stepstream.kafka.local_jars import KAFKA_VERSION, ensure_jars, jar_cache_dir, kafka_version
from stepstream.kafka.topics import TopicNames, ensure_topics

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "TopicNames",
    "ensure_jars",
    "ensure_topics",
    "free_port",
    "jar_cache_dir",
    "kafka_version",
]
