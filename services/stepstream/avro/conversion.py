"""Dataclass ↔ Avro datum, built once per record type from its type hints and checked against its schema.

fastavro reads and writes dicts; the engine works with frozen dataclasses. Walking the type hints and
the schema together gives, for each field, the one conversion it needs (most need none) and fails at
start-up, naming the field, when a dataclass and its schema have drifted apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from stepstream.avro.schemas import NAMESPACE, PRIMITIVE_TYPES, SchemaError

Convert = Callable[[Any], Any]

_HEADERS = tuple[tuple[str, str], ...]
_SCALARS: Mapping[type, frozenset[str]] = {
    str: frozenset({"string"}),
    bool: frozenset({"boolean"}),
    int: frozenset({"long", "int"}),
    bytes: frozenset({"bytes"}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Conversion:
    to_avro: Convert
    from_avro: Convert


class ConversionBuilder:
    """Builds and caches the conversion of each dataclass, against the current schemas by full name."""

    def __init__(self, schemas: Mapping[str, dict[str, Any]]) -> None:
        self._schemas = schemas
        self._records: dict[type, Conversion] = {}

    def record(self, record_type: type) -> Conversion:
        conversion = self._records.get(record_type)
        if conversion is None:
            conversion = self._records[record_type] = self._build_record(record_type)
        return conversion

    def _build_record(self, record_type: type) -> Conversion:
        name = schema_name(record_type)
        schema = self._schemas.get(name)
        if schema is None or not dataclasses.is_dataclass(record_type):
            raise SchemaError(
                f"Expected a schema file {name}.avsc for dataclass {record_type.__name__}, but there is none"
            )
        hints = typing.get_type_hints(record_type)
        field_names = [field.name for field in dataclasses.fields(record_type)]
        schema_fields = {field["name"]: field["type"] for field in schema["fields"]}
        if set(field_names) != set(schema_fields):
            missing = sorted(set(field_names) - set(schema_fields))
            extra = sorted(set(schema_fields) - set(field_names))
            raise SchemaError(
                f"Expected schema {name} to have the fields of {record_type.__name__}, "
                f"but it lacks {missing} and has {extra} besides"
            )
        plain: list[str] = []
        to_converted: list[tuple[str, Convert]] = []
        from_converted: list[tuple[str, Convert]] = []
        for field_name in field_names:
            where = f"{record_type.__name__}.{field_name}"
            to_avro, from_avro = self._value(hints[field_name], schema_fields[field_name], where)
            if to_avro is None:
                plain.append(field_name)
            else:
                to_converted.append((field_name, to_avro))
            if from_avro is not None:
                from_converted.append((field_name, from_avro))

        # These two run for every record on every topic: plain loops over precomputed lists, no
        # per-call introspection.
        def to_avro_record(value: Any) -> dict[str, Any]:
            datum = {field_name: getattr(value, field_name) for field_name in plain}
            for field_name, convert in to_converted:
                datum[field_name] = convert(getattr(value, field_name))
            return datum

        def from_avro_record(datum: dict[str, Any]) -> Any:
            # fastavro hands over a fresh dict holding exactly the reader schema's fields: reuse it.
            for field_name, convert in from_converted:
                datum[field_name] = convert(datum[field_name])
            return record_type(**datum)

        return Conversion(to_avro=to_avro_record, from_avro=from_avro_record)

    def _value(self, hint: Any, node: Any, where: str) -> tuple[Convert | None, Convert | None]:
        """The conversions to and from Avro of one value; None where fastavro takes the value as it is."""
        node = self._resolve(node)
        if hint in _SCALARS:
            self._expect(node in _SCALARS[hint], where, " or ".join(sorted(_SCALARS[hint])), node)
            return None, None
        if isinstance(hint, type) and issubclass(hint, Enum):
            # Enums travel as their string value so a reader never fails on a value added later.
            self._expect(node == "string" and all(isinstance(m.value, str) for m in hint), where, "string", node)
            # A str-mixin member is its value as a str: fastavro writes it as it is, no call per value.
            return (None if issubclass(hint, str) else _enum_value), _enum_from(hint)
        if hint == _HEADERS:
            return self._headers(node, where)
        origin = typing.get_origin(hint)
        if origin is tuple:
            item_hint, ellipsis = typing.get_args(hint)
            self._expect(
                ellipsis is Ellipsis and isinstance(node, dict) and node.get("type") == "array", where, "array", node
            )
            to_item, from_item = self._value(item_hint, node["items"], f"{where}[]")
            return _array_to(to_item), _array_from(from_item)
        if origin in (types.UnionType, typing.Union):
            options = typing.get_args(hint)
            if type(None) in options:
                return self._optional(
                    next(option for option in options if option is not type(None)), options, node, where
                )
            return self._record_union(options, node, where)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            self._expect(node is self._schemas.get(schema_name(hint)), where, f"record {schema_name(hint)}", node)
            return self.record(hint).to_avro, self.record(hint).from_avro
        raise SchemaError(f"Expected {where} to have a type the codec supports, but it is {hint!r}")

    def _optional(
        self, inner_hint: Any, options: tuple[Any, ...], node: Any, where: str
    ) -> tuple[Convert | None, Convert | None]:
        self._expect(
            len(options) == 2 and isinstance(node, list) and len(node) == 2 and node[0] == "null",
            where,
            '["null", T] (null first, so the default can be null)',
            node,
        )
        inner_node = self._resolve(node[1])
        to_inner, from_inner = self._value(inner_hint, inner_node, where)
        if isinstance(inner_node, dict) and inner_node.get("type") == "record" and to_inner is not None:
            to_inner = _named_branch(schema_name(inner_hint), to_inner)
        return _optional(to_inner), _optional(from_inner)

    def _record_union(self, options: tuple[Any, ...], node: Any, where: str) -> tuple[Convert, Convert]:
        if not all(isinstance(option, type) and dataclasses.is_dataclass(option) for option in options):
            raise SchemaError(f"Expected {where} to be a union of dataclasses or X | None, but it is {options!r}")
        names = [schema_name(option) for option in options]
        self._expect(isinstance(node, list) and sorted(node) == sorted(names), where, f"the union {names}", node)
        to_by_type = {option: (schema_name(option), self.record(option).to_avro) for option in options}
        from_by_name = {schema_name(option): self.record(option).from_avro for option in options}

        def to_avro(value: Any) -> tuple[str, dict[str, Any]]:
            branch, convert = to_by_type[type(value)]
            return branch, convert(value)

        def from_avro(datum: tuple[str, dict[str, Any]]) -> Any:
            branch, record = datum  # a union of several records is read with its branch name
            return from_by_name[branch](record)

        return to_avro, from_avro

    def _headers(self, node: Any, where: str) -> tuple[Convert, Convert]:
        items = self._resolve(node["items"]) if isinstance(node, dict) and node.get("type") == "array" else None
        header_fields = [(field["name"], field["type"]) for field in items["fields"]] if isinstance(items, dict) else []
        self._expect(
            header_fields == [("name", "string"), ("value", "string")], where, "array of record {name, value}", node
        )
        return _headers_to, _headers_from

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node not in PRIMITIVE_TYPES:
            name = node if "." in node else f"{NAMESPACE}.{node}"
            if name not in self._schemas:
                raise SchemaError(f"Expected a schema file for {name}, but there is none")
            return self._schemas[name]
        if isinstance(node, dict) and set(node) <= {"type", "doc"} and node.get("type") in PRIMITIVE_TYPES:
            return node["type"]
        return node

    @staticmethod
    def _expect(condition: bool, where: str, expected: str, node: Any) -> None:
        if not condition:
            raise SchemaError(f"Expected the schema of {where} to be {expected}, but it is {node!r}")


def schema_name(record_type: type) -> str:
    return f"{NAMESPACE}.{record_type.__name__}"


def _enum_value(value: Enum) -> Any:
    return value.value


def _enum_from(enum_type: type[Enum]) -> Convert:
    members = {member.value: member for member in enum_type}

    def from_avro(value: str) -> Enum:
        try:
            return members[value]  # a dict lookup: several times faster than calling the enum
        except KeyError:
            raise ValueError(
                f"Expected a {enum_type.__name__} this version knows ({', '.join(members)}), but got {value!r}"
            ) from None

    return from_avro


def _headers_to(headers: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers]


def _headers_from(headers: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((header["name"], header["value"]) for header in headers)


def _array_to(convert: Convert | None) -> Convert:
    if convert is None:
        return list
    return lambda values: [convert(value) for value in values]


def _array_from(convert: Convert | None) -> Convert:
    if convert is None:
        return tuple
    return lambda values: tuple([convert(value) for value in values])


def _named_branch(branch: str, convert: Convert) -> Convert:
    # Tuple notation names the union branch, so fastavro need not validate the record against each one.
    return lambda value: (branch, convert(value))


def _optional(convert: Convert | None) -> Convert | None:
    if convert is None:
        return None
    return lambda value: None if value is None else convert(value)
