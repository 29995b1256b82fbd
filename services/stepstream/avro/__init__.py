"""The Avro adapter: the records of every topic and the one codec that reads and writes them.

Schemas live in the top-level ``schemas/`` directory (shipped in the package as ``stepstream/schemas``);
``schemas/README.md`` says which record goes on which topic and how a schema may change.
"""

from stepstream.avro.codec import HEADER_SIZE, MAGIC, Codec, DecodeError, EncodeError, Upcaster
from stepstream.avro.records import EVENT_TYPES, RECORD_TYPES, TOPIC_TYPES, DeadLetter, TriggerRequest
from stepstream.avro.schemas import SchemaError

__all__ = [
    "EVENT_TYPES",
    "HEADER_SIZE",
    "MAGIC",
    "RECORD_TYPES",
    "TOPIC_TYPES",
    "Codec",
    "DeadLetter",
    "DecodeError",
    "EncodeError",
    "SchemaError",
    "TriggerRequest",
    "Upcaster",
]
