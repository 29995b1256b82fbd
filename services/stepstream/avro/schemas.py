"""The schema files: reading ``schemas/``, making each top-level schema self-contained, fingerprints.

``schemas/stepstream.<Name>.avsc`` is the current shape of record ``stepstream.<Name>``; it refers to
other named records by full name, one file each, as fastavro's ``load_schema`` expects.
``schemas/stepstream.<Name>.v<N>.avsc`` is an earlier shape, frozen: the self-contained Parsing
Canonical Form of what the current file was before its N-th change, kept so records written with it
still decode. ``python -m stepstream.avro freeze <Name>`` writes one; ``schemas/README.md`` says when.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

from stepstream.errors import StepstreamError

NAMESPACE: Final = "stepstream"
PRIMITIVE_TYPES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_TYPES: Final = frozenset({"record", "error", "enum", "fixed"})
_FILE_NAME: Final = re.compile(r"^(stepstream\.[A-Za-z_][A-Za-z0-9_]*)(?:\.v([1-9][0-9]*))?\.avsc$")


class SchemaError(StepstreamError):
    """The schema files are missing, malformed or do not match the record types.

    A build or deploy mistake, found when the codec is created, before any record is read.
    """


@dataclass(frozen=True, slots=True)
class SchemaFiles:
    """What a schema directory holds, keyed by full record name."""

    current: Mapping[str, dict[str, Any]]  # as written: other records referred to by name
    earlier: Mapping[tuple[str, int], dict[str, Any]]  # (name, version): frozen, self-contained


def default_directory() -> Traversable:
    """The schemas shipped inside the package (``stepstream/schemas``, the top-level ``schemas/``)."""
    return files("stepstream") / "schemas"


def read_directory(directory: Traversable) -> SchemaFiles:
    current: dict[str, dict[str, Any]] = {}
    earlier: dict[tuple[str, int], dict[str, Any]] = {}
    if not directory.is_dir():
        raise SchemaError(f"Expected a directory of Avro schemas at {directory}, but there is none")
    for entry in directory.iterdir():
        if not entry.name.endswith(".avsc"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            expected = "stepstream.<Name>.avsc or stepstream.<Name>.v<N>.avsc"
            raise SchemaError(f"Expected schema files named {expected}, but found {entry.name}")
        try:
            schema = json.loads(entry.read_text(encoding="utf-8"))
        except ValueError as error:
            raise SchemaError(f"Expected {entry.name} to be JSON, but {error}") from error
        name, version = match.group(1), match.group(2)
        declared = full_name(schema, NAMESPACE) if isinstance(schema, dict) else None
        if declared != name:
            raise SchemaError(f"Expected {entry.name} to define record {name}, but it defines {declared}")
        if version is None:
            current[name] = schema
        else:
            earlier[(name, int(version))] = schema
    if not current:
        raise SchemaError(f"Expected Avro schemas in {directory}, but found none")
    return SchemaFiles(current=current, earlier=earlier)


def expand(name: str, current: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Record ``name`` with every record it refers to defined inline at first use, as in its canonical form.

    A self-contained schema is what a fingerprint is computed over and what fastavro parses once.
    """
    if name not in current:
        raise SchemaError(f"Expected a schema file for {name}, but there is none")
    expanded = _expand(name, current, set(), NAMESPACE)
    if not isinstance(expanded, dict):
        raise SchemaError(f"Expected {name} to be a record schema, but it is {expanded!r}")
    return expanded


def _expand(node: Any, current: Mapping[str, dict[str, Any]], defined: set[str], namespace: str) -> Any:
    if isinstance(node, str):
        if node in PRIMITIVE_TYPES:
            return node
        name = node if "." in node else f"{namespace}.{node}"
        if name in defined:  # Avro forbids a second definition: refer to the first by name
            return name
        if name not in current:
            raise SchemaError(f"Expected a schema file for {name}, but there is none")
        return _expand(current[name], current, defined, NAMESPACE)
    if isinstance(node, list):
        return [_expand(branch, current, defined, namespace) for branch in node]
    if not isinstance(node, dict):
        raise SchemaError(f"Expected a type name, union or object, but found {node!r}")
    kind = node.get("type")
    if kind in _NAMED_TYPES:
        name = full_name(node, namespace)
        defined.add(name)
        inner_namespace = name.rpartition(".")[0]
        copy = dict(node)
        if "fields" in node:
            copy["fields"] = [
                {**field, "type": _expand(field["type"], current, defined, inner_namespace)} for field in node["fields"]
            ]
        return copy
    if kind == "array":
        return {**node, "items": _expand(node["items"], current, defined, namespace)}
    if kind == "map":
        return {**node, "values": _expand(node["values"], current, defined, namespace)}
    return {**node, "type": _expand(kind, current, defined, namespace)}


def full_name(schema: Mapping[str, Any], namespace: str) -> str:
    name = str(schema.get("name"))
    return name if "." in name else f"{schema.get('namespace', namespace)}.{name}"


def canonical_form(schema: dict[str, Any]) -> str:
    """The schema's Parsing Canonical Form: no docs or defaults, full names, a fixed key order."""
    return to_parsing_canonical_form(parse_schema(schema))


def fingerprint(schema: dict[str, Any]) -> bytes:
    """The CRC-64-AVRO fingerprint of the schema's canonical form, as the 8 bytes single-object encoding carries.

    The Avro specification stores it little-endian; fastavro's hex string already is in that byte order.
    """
    return bytes.fromhex(fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO"))


def freeze(name: str, directory: Path) -> Path:
    """Keep the current shape of ``stepstream.<name>`` as its next earlier version, before changing it."""
    full_name = name if name.startswith(f"{NAMESPACE}.") else f"{NAMESPACE}.{name}"
    schema_files = read_directory(directory)
    versions = [version for (earlier_name, version) in schema_files.earlier if earlier_name == full_name]
    current = expand(full_name, schema_files.current)
    if versions and fingerprint(schema_files.earlier[(full_name, max(versions))]) == fingerprint(current):
        raise SchemaError(f"Expected {full_name} to have changed since v{max(versions)}, but it is that shape still")
    path = directory / f"{full_name}.v{max(versions, default=0) + 1}.avsc"
    frozen = json.loads(canonical_form(current))
    path.write_text(json.dumps(frozen, indent=2) + "\n", encoding="utf-8")
    return path
