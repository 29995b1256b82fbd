"""The Avro adapter: the records of every topic and the one codec that reads and writes them.

Schemas live in the top-level ``schemas/`` directory (shipped in the package as ``stepstream/schemas``);
``schemas/README.md`` says which record goes on which topic and how a schema may change.
"""

from stepstream.avro.codec import HEADER_SIZE, MAGIC, Codec, DecodeError, EncodeError, codec_for
from stepstream.avro.records import (
    EVENT_TYPES,
    RECORD_TYPES,
    RUN_COMMAND_TYPES,
    TOPIC_TYPES,
    WAITER_COMMAND_TYPES,
    CancelRequest,
    DeadLetter,
    NotifyRequest,
    RecoverRequest,
    TriggerRequest,
)
from stepstream.avro.registry import RegistryUnavailable, SchemaRegistry
from stepstream.avro.schemas import SchemaError
from stepstream.avro.upcasters import Upcaster

__all__ = [
    "EVENT_TYPES",
    "HEADER_SIZE",
    "MAGIC",
    "RECORD_TYPES",
    "RUN_COMMAND_TYPES",
    "TOPIC_TYPES",
    "WAITER_COMMAND_TYPES",
    "CancelRequest",
    "Codec",
    "DeadLetter",
    "DecodeError",
    "EncodeError",
    "NotifyRequest",
    "RecoverRequest",
    "RegistryUnavailable",
    "SchemaError",
    "SchemaRegistry",
    "TriggerRequest",
    "Upcaster",
    "codec_for",
]
