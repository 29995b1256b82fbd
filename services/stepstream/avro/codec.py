"""The one codec for every Kafka record value: Avro, schemas from ``schemas/``, in one of two framings.

By default every value is laid out as the Avro specification's single-object encoding::

    C3 01 | CRC-64-AVRO fingerprint of the writer schema's canonical form, 8 bytes little-endian | Avro binary body

With a schema registry (``STEPSTREAM_SCHEMA_REGISTRY_URL``) and ``STEPSTREAM_RECORD_FORMAT=confluent``,
values are written in the Confluent Schema Registry wire format instead, which Kafka Connect, ksqlDB,
Flink and Kafka UIs decode::

    00 | the writer schema's id in the registry, 4 bytes big-endian | Avro binary body

Either framing is read whatever the setting, so a cluster switches format with a restart and loses
nothing: records written before the switch stay readable (decision 0015).

Naming the writer schema in every record is what lets a reader decode records written before a
schema changed: it reads them with the writer schema the fingerprint names, resolved to the current
schema of that record (or passed through an upcaster where resolution cannot bridge the change).
It also lets any Kafka producer, in any language, write a record the engine accepts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.resources.abc import Traversable
from io import BytesIO
from typing import Any, Final, TypeVar, overload

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema
from fastavro.types import Schema

from stepstream.avro.conversion import ConversionBuilder, Convert, schema_name
from stepstream.avro.records import RECORD_TYPES
from stepstream.avro.registry import SchemaRegistry
from stepstream.avro.schemas import (
    NAMESPACE,
    SchemaError,
    default_directory,
    expand,
    fingerprint,
    full_name,
    read_directory,
)
from stepstream.avro.upcasters import UPCASTERS, Upcaster
from stepstream.config import KafkaSettings
from stepstream.errors import StepstreamError

MAGIC: Final = b"\xc3\x01"  # single-object encoding, version 1
HEADER_SIZE: Final = len(MAGIC) + 8
CONFLUENT_MAGIC: Final = b"\x00"  # the Confluent wire format, version 0
CONFLUENT_HEADER_SIZE: Final = len(CONFLUENT_MAGIC) + 4
_LOOKUPS_PER_MINUTE: Final = 20  # schema ids a codec looks up in the registry, at most

RecordT = TypeVar("RecordT")
OtherT = TypeVar("OtherT")
ThirdT = TypeVar("ThirdT")


class DecodeError(StepstreamError):
    """A record value the codec cannot turn into a record of the expected type.

    Not written by Stepstream, written by a schema this version does not know, corrupt, or a record
    of the wrong type for its topic. Terminal for that record: a consumer dead-letters it.
    """


class EncodeError(StepstreamError):
    """A record its schema rejects, such as None in a field that is not optional: a bug in its maker."""


@dataclass(frozen=True, slots=True)
class _Writer:
    header: bytes  # magic and fingerprint, the same for every record of the type
    schema: Schema
    to_avro: Convert


@dataclass(frozen=True, slots=True)
class _Reader:
    record_type: type
    name: str
    writer_schema: Schema
    reader_schema: Schema | None  # None: the writer schema is the current one, nothing to resolve
    from_avro: Convert


class Codec:
    """Encodes and decodes every record type of every topic; create one per process and share it.

    The schemas are read, parsed and fingerprinted once, here, and checked against the dataclasses,
    so a mismatch fails at start-up with :class:`SchemaError` rather than on the first record.

    Records of an earlier shape go through the built-in upcasters of :mod:`stepstream.avro.upcasters`
    where their frozen schema is in the directory; ``upcasters`` adds to them (or replaces one of the
    same name) and must each have their frozen schema file.
    """

    def __init__(
        self,
        schema_directory: Traversable | None = None,
        *,
        upcasters: Mapping[str, Upcaster] | None = None,
        registry: SchemaRegistry | None = None,
        confluent: bool = False,
    ) -> None:
        if confluent and registry is None:
            raise SchemaError(
                "Expected a schema registry (STEPSTREAM_SCHEMA_REGISTRY_URL) to write records in the Confluent "
                "format, but none is set"
            )
        schema_files = read_directory(schema_directory or default_directory())
        builder = ConversionBuilder(schema_files.current)
        self._writers: dict[type, _Writer] = {}
        self._readers: dict[bytes, _Reader] = {}
        current_by_name: dict[str, _Reader] = {}
        expanded_by_type: dict[type, dict[str, Any]] = {}
        for record_type in RECORD_TYPES:
            name = schema_name(record_type)
            expanded = expanded_by_type[record_type] = expand(name, schema_files.current)
            parsed = parse_schema(expanded)
            conversion = builder.record(record_type)
            record_fingerprint = fingerprint(expanded)
            self._writers[record_type] = _Writer(
                header=MAGIC + record_fingerprint, schema=parsed, to_avro=conversion.to_avro
            )
            reader = _Reader(record_type, name, parsed, None, conversion.from_avro)
            self._readers[record_fingerprint] = current_by_name[name] = reader

        given = dict(upcasters or {})
        available = {**UPCASTERS, **given}
        for (name, version), earlier in sorted(schema_files.earlier.items()):
            stem = f"{name}.v{version}"
            current = current_by_name.get(name)
            if current is None:
                raise SchemaError(f"Expected {stem}.avsc to be an earlier shape of a record type, but {name} is none")
            earlier_fingerprint = fingerprint(earlier)
            if earlier_fingerprint in self._readers:
                continue  # frozen but not yet changed: the current schema reads it already
            given.pop(stem, None)
            upcaster = available.get(stem)
            from_avro = current.from_avro if upcaster is None else _upcasting(upcaster, current.from_avro)
            self._readers[earlier_fingerprint] = _Reader(
                record_type=current.record_type,
                name=name,
                writer_schema=parse_schema(earlier),
                # An upcaster takes the record in its earlier shape, so it is read without resolution.
                reader_schema=current.writer_schema if upcaster is None else None,
                from_avro=from_avro,
            )
        if given:
            raise SchemaError(f"Expected a schema file for every upcaster, but there is none for {sorted(given)}")
        self._current_by_name = current_by_name
        self._registry = registry
        self._by_id: dict[int, _Reader] = {}  # the readers of the registry's schema ids, as they are learnt
        self._unreadable_ids: dict[int, str] = {}  # ids looked up and found unreadable, with why
        self._lookups: list[float] = []  # when ids were looked up in the last minute
        if registry is not None:
            self._register(registry, expanded_by_type, confluent=confluent)

    def _register(self, registry: SchemaRegistry, expanded: Mapping[type, dict[str, Any]], *, confluent: bool) -> None:
        """Register every current schema (subject: its record's full name); with ``confluent``, write
        with the ids the registry gave them. Other ids (earlier shapes, a newer engine's) are looked up
        when a record names one (:meth:`_confluent_reader`): a call each, once per process."""
        known = registry.subjects()
        for record_type, schema in expanded.items():
            name = schema_name(record_type)
            schema_id = registry.register(name, schema, new=name not in known)
            self._by_id[schema_id] = self._current_by_name[name]
            if confluent:
                writer = self._writers[record_type]
                self._writers[record_type] = replace(writer, header=CONFLUENT_MAGIC + schema_id.to_bytes(4, "big"))

    def _reader_of(self, schema: dict[str, Any], schema_id: int) -> _Reader:
        """The reader of records written with ``schema`` (id ``schema_id`` in the registry): the one of
        the same fingerprint (an earlier shape keeps its upcaster), else the current reader of its
        record, resolving (a newer engine's shape, during a rolling upgrade)."""
        known = self._readers.get(fingerprint(schema))
        if known is not None:
            return known
        name = full_name(schema, NAMESPACE)
        current = self._current_by_name.get(name)
        if current is None:
            raise DecodeError(f"Expected schema id {schema_id} to be a schema of a Stepstream record, but it is {name}")
        return replace(current, writer_schema=parse_schema(schema), reader_schema=current.writer_schema)

    def _confluent_reader(self, data: bytes) -> _Reader:
        if len(data) < CONFLUENT_HEADER_SIZE:
            raise DecodeError(
                f"Expected at least {CONFLUENT_HEADER_SIZE} bytes (the marker 00 and a 4-byte schema id), "
                f"but got {len(data)}"
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        reader = self._by_id.get(schema_id)
        if reader is not None:
            return reader
        if self._registry is None:
            raise DecodeError(
                f"Expected a record in single-object encoding, but it is in the Confluent format (schema id "
                f"{schema_id}) and no schema registry is set (STEPSTREAM_SCHEMA_REGISTRY_URL)"
            )
        refused = self._unreadable_ids.get(schema_id)
        if refused is not None:
            raise DecodeError(refused)
        # Each lookup is a blocking call on the service's loop, and any producer can name any id: a
        # few a minute are what an upgrade needs, more are refused (the record is dead-lettered, kept).
        now = time.monotonic()
        self._lookups = [at for at in self._lookups if now - at < 60.0]
        if len(self._lookups) >= _LOOKUPS_PER_MINUTE:
            raise DecodeError(
                f"Expected at most {_LOOKUPS_PER_MINUTE} new schema ids a minute, but schema id {schema_id} is "
                "one more: records naming ids the registry may not know arrive faster than they are looked up"
            )
        self._lookups.append(now)
        schema = self._registry.schema(schema_id)  # RegistryUnavailable: not the record's fault
        try:
            if schema is None:
                raise DecodeError(f"Expected a schema id the registry knows, but it has no schema {schema_id}")
            reader = self._reader_of(schema, schema_id)
        except Exception as error:  # a schema fastavro cannot parse, or no record of ours: the record's fault
            message = str(error)
            if not isinstance(error, DecodeError):
                message = f"Expected a readable schema {schema_id}, but {error!r}"
            if len(self._unreadable_ids) >= 10_000:
                self._unreadable_ids.clear()  # bounded: a producer naming ever new ids cannot grow it
            self._unreadable_ids[schema_id] = message
            raise DecodeError(message) from error
        self._by_id[schema_id] = reader
        return reader

    def encode(self, record: object) -> bytes:
        """The record as a Kafka record value, in its type's current schema."""
        writer = self._writers.get(type(record))
        if writer is None:
            raise TypeError(f"Expected a record of a type with a schema, but got {type(record).__qualname__}")
        buffer = BytesIO()
        buffer.write(writer.header)
        try:
            schemaless_writer(buffer, writer.schema, writer.to_avro(record))
        except Exception as error:  # fastavro raises many kinds; all mean the same: this record is invalid
            raise EncodeError(f"Expected a {type(record).__name__} its schema accepts, but {error!r}") from error
        return buffer.getvalue()

    @overload
    def decode(self, data: bytes | None) -> object: ...

    @overload
    def decode(self, data: bytes | None, expected: tuple[type[RecordT]]) -> RecordT: ...

    @overload
    def decode(self, data: bytes | None, expected: tuple[type[RecordT], type[OtherT]]) -> RecordT | OtherT: ...

    @overload
    def decode(
        self, data: bytes | None, expected: tuple[type[RecordT], type[OtherT], type[ThirdT]]
    ) -> RecordT | OtherT | ThirdT: ...

    @overload
    def decode(self, data: bytes | None, expected: tuple[type[Any], ...]) -> object: ...

    def decode(self, data: bytes | None, expected: tuple[type[Any], ...] | None = None) -> object:
        """The record a Kafka record value holds; with ``expected``, only a record of one of those types.

        Raises :class:`DecodeError` for anything else, with the reason, for the dead letter. A null
        value (a tombstone, which any producer can send to any topic) is one of those: where a topic
        gives tombstones a meaning, its reader looks for them before decoding.
        """
        if data is None:
            raise DecodeError("Expected a record value, but the record has none (a null value, or tombstone)")
        if data[:1] == CONFLUENT_MAGIC:
            reader, start = self._confluent_reader(data), CONFLUENT_HEADER_SIZE
        else:
            reader, start = self._single_object_reader(data), HEADER_SIZE
        if expected is not None and reader.record_type not in expected:
            names = ", ".join(record_type.__name__ for record_type in expected)
            raise DecodeError(f"Expected {names} on this topic, but the record is a {reader.name}")
        buffer = BytesIO(data)
        buffer.seek(start)
        try:
            datum = schemaless_reader(
                buffer,
                reader.writer_schema,
                reader.reader_schema,
                return_record_name=True,
                # ...but only for unions of several records (a delivery's outcome, a suspend's steps, a run's
                # pending steps, alone or as array items); an optional record reads as itself.
                return_record_name_override=True,
            )
            record = reader.from_avro(datum)
        except Exception as error:  # corrupt input can fail in many ways inside fastavro; all are the record's fault
            raise DecodeError(f"Expected a valid {reader.name} body, but it is corrupt: {error!r}") from error
        if buffer.tell() != len(data):
            raise DecodeError(
                f"Expected a {reader.name} body of {buffer.tell() - start} bytes, "
                f"but the record has {len(data) - buffer.tell()} more"
            )
        return record

    def _single_object_reader(self, data: bytes) -> _Reader:
        if len(data) < HEADER_SIZE:
            raise DecodeError(
                f"Expected at least {HEADER_SIZE} bytes (the marker C3 01 and an 8-byte schema fingerprint), "
                f"but got {len(data)}"
            )
        if data[:2] != MAGIC:
            raise DecodeError(
                f"Expected an Avro single-object encoding starting C3 01 (or the Confluent format, starting 00), "
                f"but the record starts {data[:2].hex(' ')}"
            )
        reader = self._readers.get(data[2:HEADER_SIZE])
        if reader is None:
            raise DecodeError(
                f"Expected a record written by a known schema, but fingerprint {data[2:HEADER_SIZE].hex()} "
                "is not written by any known schema (a newer producer, or another system's record)"
            )
        return reader

    def fingerprint(self, record_type: type) -> bytes:
        """The 8-byte fingerprint of the current schema of ``record_type``, as single-object records of it carry."""
        reader = self._current_by_name.get(schema_name(record_type))
        if reader is None:
            raise TypeError(f"Expected a record type with a schema, but got {record_type.__qualname__}")
        return next(key for key, value in self._readers.items() if value is reader)


def _upcasting(upcaster: Upcaster, from_avro: Convert) -> Convert:
    return lambda datum: from_avro(upcaster(datum))


def codec_for(kafka: KafkaSettings) -> Codec:
    """The codec a service uses with these settings: with a schema registry when one is set (registering
    the schemas there now, a blocking call at start), writing the Confluent format if asked."""
    if kafka.schema_registry_url is None:
        return Codec()
    registry = SchemaRegistry(kafka.schema_registry_url)
    return Codec(registry=registry, confluent=kafka.record_format == "confluent")
