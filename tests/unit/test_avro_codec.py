"""The Avro codec: every record type round-trips; values are Avro single-object encoded; bad input is
a clear DecodeError; a schema and its dataclass cannot drift apart; records written by earlier
schemas (the golden files) still decode, by schema resolution or an upcaster."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import shutil
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

import stepstream.avro
from stepstream.avro import (
    EVENT_TYPES,
    MAGIC,
    RECORD_TYPES,
    TOPIC_TYPES,
    Codec,
    DecodeError,
    EncodeError,
    SchemaError,
    TriggerRequest,
)
from stepstream.avro.schemas import default_directory, freeze
from stepstream.core import (
    ErrorInfo,
    FireTimer,
    Outcome,
    ReportDelivery,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TriggerRun,
)
from stepstream.kafka.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
GOLDEN = Path(__file__).resolve().parent / "avro_golden"


def load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_module(GOLDEN / "generate.py", "avro_golden_generate")
SAMPLES: dict[str, object] = generate.SAMPLES


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def crc_64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint as the Avro specification defines it, to check the codec against."""
    empty = 0xC15D213AA4D7A795
    table = []
    for index in range(256):
        fingerprint = index
        for _ in range(8):
            fingerprint = (fingerprint >> 1) ^ (empty & -(fingerprint & 1))
        table.append(fingerprint)
    fingerprint = empty
    for byte in data:
        fingerprint = (fingerprint >> 8) ^ table[(fingerprint ^ byte) & 0xFF]
    return fingerprint


def single_object(schema: Any, datum: dict[str, Any]) -> bytes:
    """A value written the way any producer would: fastavro and a schema, no Stepstream code."""
    header = MAGIC + crc_64_avro(to_parsing_canonical_form(schema).encode()).to_bytes(8, "little")
    buffer = io.BytesIO(header)
    buffer.seek(len(header))
    schemaless_writer(buffer, schema, datum)
    return buffer.getvalue()


def nested_dataclasses(record_type: type, found: dict[str, type] | None = None) -> dict[str, type]:
    found = {} if found is None else found
    found[record_type.__name__] = record_type
    for hint in typing.get_type_hints(record_type).values():
        stack = [hint]
        while stack:
            inner = stack.pop()
            stack.extend(arg for arg in typing.get_args(inner) if arg is not Ellipsis)
            if dataclasses.is_dataclass(inner) and isinstance(inner, type) and inner.__name__ not in found:
                nested_dataclasses(inner, found)
    return found


ALL_DATACLASSES = {name: cls for record_type in RECORD_TYPES for name, cls in nested_dataclasses(record_type).items()}


def is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in typing.get_args(hint)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("stem", SAMPLES)
def test_every_record_round_trips_to_an_equal_record(codec: Codec, stem: str) -> None:
    # given a realistic record
    record = SAMPLES[stem]
    # when it is encoded and decoded
    decoded = codec.decode(codec.encode(record))
    # then it is the same record; repr also tells a StepKind from the equal plain str
    assert decoded == record
    assert repr(decoded) == repr(record)


def test_the_samples_cover_every_type_every_outcome_and_each_optional_field_set_and_unset() -> None:
    # given the samples the round-trip and golden tests use
    by_type: dict[type, list[object]] = {}
    for record in SAMPLES.values():
        by_type.setdefault(type(record), []).append(record)
    # then every record type has samples
    assert set(by_type) == set(RECORD_TYPES)
    # and every optional field is None in one sample and set in another
    for record_type, records in by_type.items():
        for name, hint in typing.get_type_hints(record_type).items():
            if is_optional(hint):
                values = [getattr(record, name) for record in records]
                assert None in values, f"{record_type.__name__}.{name} is never None in a sample"
                assert any(value is not None for value in values), f"{record_type.__name__}.{name} is never set"
    # and every delivery outcome is reported in one
    outcomes = {type(record.outcome) for record in by_type[ReportDelivery] if isinstance(record, ReportDelivery)}
    assert outcomes == set(typing.get_args(Outcome))


# ---------------------------------------------------------------------------------------------
# The byte layout


def test_the_reference_fingerprint_matches_the_avro_specification_test_vectors() -> None:
    # given the fingerprints listed in Avro's share/test/data/schema-tests.txt (Java's signed longs)
    vectors = {
        '"null"': 7195948357588979594,
        '"string"': -8142146995180207161,
        '{"name":"x.y.foo","type":"record","fields":[]}': 5916914534497305771,
    }
    for canonical, expected in vectors.items():
        # when the reference implementation used below computes them, then they agree
        assert crc_64_avro(canonical.encode()) == expected % 2**64


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda record_type: record_type.__name__)
def test_records_carry_the_little_endian_fingerprint_of_their_schema_file(codec: Codec, record_type: type) -> None:
    # given the schema file as any Avro library loads it
    schema = load_schema(str(SCHEMAS / f"stepstream.{record_type.__name__}.avsc"))
    expected = crc_64_avro(to_parsing_canonical_form(schema).encode()).to_bytes(8, "little")
    # when a record of the type is encoded
    record = next(record for record in SAMPLES.values() if type(record) is record_type)
    data = codec.encode(record)
    # then it starts with the single-object marker and that fingerprint
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected == codec.fingerprint(record_type)


def test_the_body_is_plain_avro_binary_after_the_ten_byte_header(codec: Codec) -> None:
    # given a timer firing
    record = FireTimer(run_id="run_1", step_index=2, now_ms=1_732_190_400_123)
    # when encoded
    data = codec.encode(record)
    # then the body is what any Avro library writes for that schema
    schema = load_schema(str(SCHEMAS / "stepstream.FireTimer.avsc"))
    assert data == single_object(schema, {"run_id": "run_1", "step_index": 2, "now_ms": 1_732_190_400_123})


# ---------------------------------------------------------------------------------------------
# Bad input


def _valid(codec: Codec) -> bytes:
    return codec.encode(SAMPLES["ReportDelivery.fail_full"])


@pytest.mark.parametrize(
    ("make_data", "reason"),
    [
        pytest.param(lambda codec: b"", "at least 10 bytes", id="empty"),
        pytest.param(lambda codec: b"\xc3\x01\x00\x01\x02", "at least 10 bytes", id="too short"),
        pytest.param(
            lambda codec: b'{"run_id": "run_1", "step_index": 2}',
            "starting C3 01, but the record starts 7b 22",
            id="json",
        ),
        pytest.param(lambda codec: b"\xc3\x01" + bytes(8) + b"\x02ab", "not written by any known schema", id="unknown"),
        pytest.param(lambda codec: _valid(codec) + b"\x00", "but the record has 1 more", id="trailing bytes"),
        pytest.param(lambda codec: _valid(codec)[:10] + b"\xff" * 12, "corrupt", id="garbage body"),
    ],
)
def test_undecodable_values_raise_a_decode_error_with_the_reason(
    codec: Codec, make_data: typing.Callable[[Codec], bytes], reason: str
) -> None:
    # given a value that is not a Stepstream record
    data = make_data(codec)
    # when decoded, then the error says why
    with pytest.raises(DecodeError, match=reason):
        codec.decode(data)


def test_every_truncation_of_a_record_is_a_decode_error(codec: Codec) -> None:
    # given a valid record
    data = codec.encode(SAMPLES["RunState.full"])
    for length in range(len(data)):
        # when cut short anywhere, then it is refused, never read as a shorter record
        with pytest.raises(DecodeError):
            codec.decode(data[:length])


def test_a_record_of_another_topic_is_refused_naming_both(codec: Codec) -> None:
    # given an event, read by a consumer of commands
    data = codec.encode(SAMPLES["RunStarted.full"])
    # when decoded as a command, then it is refused
    with pytest.raises(
        DecodeError, match=r"Expected TriggerRun, ReportDelivery, FireTimer on this topic, but .*RunStarted"
    ):
        codec.decode(data, expected=TOPIC_TYPES["commands"])
    # and as an event it is accepted
    assert isinstance(codec.decode(data, expected=TOPIC_TYPES["events"]), RunStarted)


def test_a_step_kind_this_version_does_not_know_decodes_in_avro_but_is_refused_by_name(codec: Codec) -> None:
    # given a StepCompleted from a newer producer with a kind this version lacks
    data = single_object(
        load_schema(str(SCHEMAS / "stepstream.StepCompleted.avsc")),
        {
            "run_id": "run_1",
            "seq": 3,
            "at_ms": 1,
            "step_index": 0,
            "name": "fetch",
            "kind": "call",
            "output": "1",
            "delivery_id": "d",
        },
    )
    # when decoded, then the error names the value (Avro itself read it: kind is a string, not an enum)
    with pytest.raises(DecodeError, match=r"Expected a StepKind this version knows .*, but got 'call'"):
        codec.decode(data)


def test_encoding_a_type_without_a_schema_is_a_type_error(codec: Codec) -> None:
    # given a core value that never travels alone; when encoded, then it is refused
    with pytest.raises(TypeError, match="Expected a record of a type with a schema, but got ErrorInfo"):
        codec.encode(ErrorInfo(type="E", message="m"))


def test_encoding_a_record_its_schema_rejects_is_an_encode_error(codec: Codec) -> None:
    # given a record with None in a required field
    record = FireTimer(run_id=None, step_index=1, now_ms=1)  # type: ignore[arg-type]
    # when encoded, then it is refused, naming the type
    with pytest.raises(EncodeError, match="Expected a FireTimer its schema accepts"):
        codec.encode(record)


# ---------------------------------------------------------------------------------------------
# Schemas and dataclasses cannot drift


def _schema_file(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"stepstream.{name}.avsc").read_text()))


@pytest.mark.parametrize("name", sorted(ALL_DATACLASSES))
def test_every_dataclass_field_is_in_its_schema_and_vice_versa(name: str) -> None:
    # given a dataclass that travels on a topic or inside such a record, and its schema file
    record_type = ALL_DATACLASSES[name]
    hints = typing.get_type_hints(record_type)
    schema_fields = {field["name"]: field for field in _schema_file(name)["fields"]}
    # then they have the same fields
    assert set(schema_fields) == {field.name for field in dataclasses.fields(record_type)}
    # and exactly the optional ones are ["null", T] with a null default
    for field_name, hint in hints.items():
        field = schema_fields[field_name]
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        assert nullable == is_optional(hint), f"{name}.{field_name}"
        if nullable:
            assert field["type"][0] == "null", f"{name}.{field_name}: null must come first for a null default"
            assert "default" in field, f"{name}.{field_name}"
            assert field["default"] is None, f"{name}.{field_name}"


def test_every_schema_file_belongs_to_a_record_type() -> None:
    # given the current schema files
    names = {path.name.removeprefix("stepstream.").removesuffix(".avsc") for path in SCHEMAS.glob("stepstream.*.avsc")}
    current = {name for name in names if "." not in name}
    # then each is a dataclass the codec handles, or the header pair
    assert current == set(ALL_DATACLASSES) | {"Header"}


def test_every_schema_and_field_is_documented() -> None:
    for path in sorted(SCHEMAS.glob("stepstream.*.avsc")):
        schema = json.loads(path.read_text())
        if path.name.count(".") == 3:  # stepstream.<Name>.v<N>.avsc
            continue  # frozen earlier shapes are canonical forms, which carry no docs
        assert schema.get("doc"), path.name
        for field in schema["fields"]:
            assert field.get("doc"), f"{path.name}: {field['name']}"


def test_a_codec_refuses_to_start_when_a_schema_lacks_a_field_of_its_dataclass(tmp_path: Path) -> None:
    # given a schema directory where FireTimer's schema lost a field
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    schema = _schema_file("FireTimer")
    schema["fields"] = [field for field in schema["fields"] if field["name"] != "now_ms"]
    (tmp_path / "stepstream.FireTimer.avsc").write_text(json.dumps(schema))
    # when a codec is created, then it fails at once, naming the field
    with pytest.raises(
        SchemaError, match=r"stepstream.FireTimer to have the fields of FireTimer, but it lacks \['now_ms'\]"
    ):
        Codec(tmp_path)


def test_the_package_ships_the_same_schemas_as_the_top_level_directory() -> None:
    # given the schemas an installed package reads
    shipped = {entry.name: entry.read_text() for entry in default_directory().iterdir() if entry.name.endswith(".avsc")}
    # then they are the files in schemas/
    assert shipped == {path.name: path.read_text() for path in SCHEMAS.glob("*.avsc")}


# ---------------------------------------------------------------------------------------------
# Compatibility: records written by earlier schemas


GOLDEN_FILES = sorted(GOLDEN.glob("*.bin"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: path.stem)
def test_records_written_by_earlier_schemas_still_decode_to_what_they_meant(codec: Codec, path: Path) -> None:
    # given a record as it was written when its golden file was made
    data = path.read_bytes()
    # when the current codec decodes it
    decoded = codec.decode(data)
    # then it is the record it was (a failure here is an incompatible schema change: see schemas/README.md)
    assert decoded == SAMPLES[path.stem]
    assert repr(decoded) == repr(SAMPLES[path.stem])


def test_every_sample_has_a_golden_file() -> None:
    # then generate.py has been run for every sample (it writes only what is missing)
    assert {path.stem for path in GOLDEN_FILES} == set(SAMPLES)


def test_a_record_of_an_earlier_compatible_shape_decodes_by_schema_resolution(tmp_path: Path) -> None:
    # given StepFailed as it was before retry_at_ms was added (with a null default), frozen as v1...
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    current = _schema_file("StepFailed")
    earlier = {**current, "fields": [field for field in current["fields"] if field["name"] != "retry_at_ms"]}
    (tmp_path / "stepstream.StepFailed.avsc").write_text(json.dumps(earlier))
    frozen = freeze("StepFailed", tmp_path)
    (tmp_path / "stepstream.StepFailed.avsc").write_text(json.dumps(current))
    # ...and a record an old projector wrote with it
    old_fields = {"run_id": "run_1", "seq": 4, "at_ms": 5, "step_index": 1, "name": None, "delivery_id": "run_1/2"}
    old_fields |= {"attempt": 3, "error": {"type": "HTTP 500", "message": "oops"}}
    data = single_object(parse_schema(json.loads(frozen.read_text())), old_fields)
    # when the current codec decodes it
    decoded = Codec(tmp_path).decode(data)
    # then the added field takes its schema default (the dataclass has none: only resolution supplies it)
    assert frozen.name == "stepstream.StepFailed.v1.avsc"
    assert decoded == StepFailed(
        run_id="run_1",
        seq=4,
        at_ms=5,
        step_index=1,
        name=None,
        delivery_id="run_1/2",
        attempt=3,
        error=ErrorInfo(type="HTTP 500", message="oops"),
        retry_at_ms=None,
    )
    # and without the frozen shape the same record would be unknown
    frozen.unlink()
    with pytest.raises(DecodeError, match="not written by any known schema"):
        Codec(tmp_path).decode(data)


def test_freezing_a_shape_that_has_not_changed_since_it_was_frozen_is_refused(tmp_path: Path) -> None:
    # given a schema directory where RunStarted was just frozen as v1
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    freeze("RunStarted", tmp_path)
    # when it is frozen again without a change, then it is refused and no v2 appears
    with pytest.raises(SchemaError, match=r"Expected stepstream\.RunStarted to have changed since v1"):
        freeze("RunStarted", tmp_path)
    assert not (tmp_path / "stepstream.RunStarted.v2.avsc").exists()
    # and the codec reads with an unchanged frozen copy beside the current file
    assert Codec(tmp_path).decode(Codec().encode(SAMPLES["RunStarted.full"])) == SAMPLES["RunStarted.full"]


def test_a_record_of_an_earlier_incompatible_shape_decodes_through_its_upcaster(tmp_path: Path) -> None:
    # given RunFailed as it was when the error was a bare reason string, frozen as v1
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    fields = [{"name": name, "type": "long" if name != "run_id" else "string"} for name in ("run_id", "seq", "at_ms")]
    earlier = {
        "name": "stepstream.RunFailed",
        "type": "record",
        "fields": [*fields, {"name": "reason", "type": "string"}],
    }
    (tmp_path / "stepstream.RunFailed.v1.avsc").write_text(json.dumps(earlier))
    data = single_object(parse_schema(earlier), {"run_id": "run_1", "seq": 7, "at_ms": 5, "reason": "boom"})

    def upcast(old: dict[str, Any]) -> dict[str, Any]:
        reason = old.pop("reason")
        return {**old, "error": {"type": "Error", "message": reason}}

    # when decoded by a codec that has the upcaster
    decoded = Codec(tmp_path, upcasters={"stepstream.RunFailed.v1": upcast}).decode(data)
    # then it is the record in today's shape
    assert decoded == RunFailed(run_id="run_1", seq=7, at_ms=5, error=ErrorInfo(type="Error", message="boom"))
    # and without it, resolution cannot invent the error: the record is refused
    with pytest.raises(DecodeError, match="corrupt"):
        Codec(tmp_path).decode(data)


# ---------------------------------------------------------------------------------------------
# Topics, the public surface, the example producer


def test_every_topic_has_its_record_types_and_every_record_type_a_topic() -> None:
    # the roles are the topics the engine creates, each reachable by its role: names.commands
    names = TopicNames()
    assert {getattr(names, role) for role in TOPIC_TYPES} == set(names.all())
    assert TOPIC_TYPES["events"] == EVENT_TYPES
    assert {record_type for types_ in TOPIC_TYPES.values() for record_type in types_} == set(RECORD_TYPES)
    assert StepCompleted in EVENT_TYPES
    assert TriggerRun in TOPIC_TYPES["commands"]


def test_the_public_names_are_sorted_and_exist() -> None:
    # sorted as ruff's RUF022 wants: CONSTANTS, then Classes, then functions, each alphabetically
    names = stepstream.avro.__all__
    assert names == sorted(names, key=lambda name: (not name.isupper(), not name[:1].isupper(), name))
    assert all(hasattr(stepstream.avro, name) for name in stepstream.avro.__all__)


@pytest.mark.parametrize("stem", ["TriggerRequest.full", "TriggerRequest.minimal"])
def test_the_example_producer_writes_exactly_what_the_codec_writes(codec: Codec, stem: str) -> None:
    # given the example that uses only aiokafka, fastavro and the schema file
    example = load_module(ROOT / "examples" / "publish_trigger.py", "publish_trigger_example")
    record = SAMPLES[stem]
    assert isinstance(record, TriggerRequest)
    # when it encodes a trigger
    data = example.encode_trigger(**{field.name: getattr(record, field.name) for field in dataclasses.fields(record)})
    # then the bytes are the codec's
    assert data == codec.encode(record)
