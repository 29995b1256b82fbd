"""Stepstream's Kafka adapter: a local broker for development and tests, and the engine's topics."""

from stepstream.kafka.local import KAFKA_VERSION, LocalKafka, ensure_jars, free_port, jar_cache_dir, kafka_version
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
