"""The Avro codec: every record type round-trips; values are Avro single-object encoded; bad input is
a clear DecodeError; a schema and its dataclass cannot drift apart; records written by earlier
schemas (the golden files) still decode, by schema resolution or an upcaster."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import io
import json
import shutil
import types
import typing
from collections.abc import Iterator
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
from stepstream.avro.schemas import default_directory, fingerprint, freeze, read_directory
from stepstream.avro.upcasters import UPCASTERS
from stepstream.core import (
    CallRequested,
    DeliveryRequested,
    ErrorInfo,
    FireTimer,
    Outcome,
    PendingDelivery,
    PendingSleep,
    Recovery,
    ReportDelivery,
    RunFailed,
    RunStarted,
    RunState,
    RunStatus,
    StepCompleted,
    StepFailed,
    StepKind,
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


def record_union(hint: Any) -> tuple[type, ...]:
    """The branches of a union of several records, alone or as the items of a tuple; () for anything else."""
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) not in typing.get_args(hint):
        return typing.get_args(hint)
    return ()


def walk(value: object) -> Iterator[object]:
    """The value and every value inside it: dataclass fields and tuple items, depth first."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from walk(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            yield from walk(item)


def union_branches_seen(records: typing.Iterable[object]) -> dict[tuple[type, str], set[type]]:
    """For every field holding a union of records: the branches the values hold, across ``records``."""
    seen: dict[tuple[type, str], set[type]] = {}
    for record in records:
        for value in walk(record):
            if not dataclasses.is_dataclass(value) or isinstance(value, type):
                continue
            for name, hint in typing.get_type_hints(type(value)).items():
                if record_union(hint):
                    inner = getattr(value, name)
                    items = inner if isinstance(inner, tuple) else (inner,)
                    seen.setdefault((type(value), name), set()).update(type(item) for item in items)
    return seen


# Every field of a record type (or of a record nested in one) that holds a union of several records.
RECORD_UNIONS = {
    (cls, name): set(record_union(hint))
    for cls in ALL_DATACLASSES.values()
    for name, hint in typing.get_type_hints(cls).items()
    if record_union(hint)
}


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


def test_the_samples_hold_every_branch_of_every_union_and_every_enum_value() -> None:
    # given every value inside every sample
    values = [value for record in SAMPLES.values() for value in walk(record)]
    # then every record that travels, nested or not, is in one
    assert {type(value) for value in values if dataclasses.is_dataclass(value)} == set(ALL_DATACLASSES.values())
    # and each union of records (the outcome, a suspend's steps, a run's pending steps) holds each branch
    assert RECORD_UNIONS, "expected unions of records, such as ReportDelivery.outcome"
    assert union_branches_seen(SAMPLES.values()) == RECORD_UNIONS
    # and every step kind, run status and recovery action travels in one
    for enum_type in (StepKind, RunStatus, Recovery):
        members: set[enum.Enum] = {value for value in values if isinstance(value, enum_type)}
        assert members == set(enum_type), enum_type.__name__


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
            r"starting 00\), but the record starts 7b 22",
            id="json",
        ),
        pytest.param(lambda codec: b"\x00\x00\x01", "at least 5 bytes", id="confluent too short"),
        pytest.param(
            lambda codec: b"\x00\x00\x00\x00\x07\x02ab", "no schema registry is set", id="confluent without registry"
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
        DecodeError,
        match=r"Expected TriggerRun, ReportDelivery, FireTimer, .*, Delivery on this topic, but .*RunStarted",
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
            "kind": "teleport",
            "output": "1",
            "delivery_id": "d",
        },
    )
    # when decoded, then the error names the value (Avro itself read it: kind is a string, not an enum)
    with pytest.raises(DecodeError, match=r"Expected a StepKind this version knows .*, but got 'teleport'"):
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
    # then they have the same fields, in the same order
    assert list(schema_fields) == [field.name for field in dataclasses.fields(record_type)]
    # and exactly the optional ones are ["null", T] with a null default
    for field_name, hint in hints.items():
        field = schema_fields[field_name]
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        assert nullable == is_optional(hint), f"{name}.{field_name}"
        if nullable:
            assert field["type"][0] == "null", f"{name}.{field_name}: null must come first for a null default"
            assert "default" in field, f"{name}.{field_name}"
            assert field["default"] is None, f"{name}.{field_name}"


@pytest.mark.parametrize("name", sorted(ALL_DATACLASSES))
def test_a_field_with_a_dataclass_default_has_the_same_schema_default(name: str) -> None:
    # given a dataclass and its schema file (a default is what an older record resolves a newer field to)
    schema_fields = {field["name"]: field for field in _schema_file(name)["fields"]}
    for field in dataclasses.fields(ALL_DATACLASSES[name]):
        if field.default is dataclasses.MISSING:
            continue
        # then the schema has the same default (a tuple is an Avro array)
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert schema_fields[field.name].get("default", "absent") == default, f"{name}.{field.name}"


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


def test_every_shape_of_every_record_type_has_a_golden_file_written_with_it() -> None:
    # given the fingerprints the golden files were written with
    written = {path.read_bytes()[2:10] for path in GOLDEN_FILES}
    schema_files = read_directory(default_directory())
    codec = Codec()
    # then each current shape has one...
    missing = [record_type.__name__ for record_type in RECORD_TYPES if codec.fingerprint(record_type) not in written]
    assert not missing, f"no golden file written by the current schema of {missing}: run generate.py"
    # ...and each earlier, frozen shape too: its records decode by resolution or an upcaster, and are tested so
    untested = [
        f"{name}.v{version}"
        for (name, version), earlier in schema_files.earlier.items()
        if fingerprint(earlier) not in written
    ]
    assert not untested, f"no golden file written by {untested}"


def test_run_state_v1_files_are_read_through_the_built_in_upcaster(codec: Codec) -> None:
    # given RunState records the first schema wrote: one delivery in flight and one sleep, or neither
    v1 = fingerprint(read_directory(default_directory()).earlier[("stepstream.RunState", 1)])
    full, minimal = (GOLDEN / "RunState.full.bin").read_bytes(), (GOLDEN / "RunState.minimal.bin").read_bytes()
    assert full[2:10] == minimal[2:10] == v1 != codec.fingerprint(RunState)
    # when the default codec decodes them
    decoded_full, decoded_minimal = codec.decode(full, (RunState,)), codec.decode(minimal, (RunState,))
    # then pending_delivery is the one (replay) delivery in flight, pending_sleep the one step waiting
    assert decoded_full.in_flight == (
        PendingDelivery(
            delivery_id=f"{generate.RUN_ID}/4",
            step_index=3,
            attempt=2,
            not_before_ms=generate.NOW_MS,
            execute_only=False,
        ),
    )
    assert decoded_full.waiting == (
        PendingSleep(step_index=2, name="until-opening", kind=StepKind.SLEEP_UNTIL, wake_at_ms=generate.NOW_MS),
    )
    assert decoded_minimal.in_flight == ()
    assert decoded_minimal.waiting == ()
    # and the fields added since take their defaults
    added: dict[str, object] = {
        "retry_delay": None,
        "failure_url": None,
        "parent_run_id": None,
        "parent_step_index": None,
        "depth": 0,
        "failure_delivery": None,
        "dead_letter": False,
        "flow": None,
    }
    for decoded in (decoded_full, decoded_minimal):
        assert {name: getattr(decoded, name) for name in added} == added
    # and the upcaster is the one registered for the frozen shape, applied by every default codec
    assert set(UPCASTERS) == {"stepstream.RunState.v1"}


@pytest.mark.parametrize("stem", ["DeliveryRequested.full", "DeliveryRequested.failure_handler", "CallRequested.full"])
def test_requests_written_with_the_removed_flow_key_field_read_as_not_flow_controlled(codec: Codec, stem: str) -> None:
    # given a request an earlier shape wrote with a flow_key (the field is gone; flow_key is now flow's key)
    data = (GOLDEN / f"{stem}.bin").read_bytes()
    assert b"tenant:acme" in data or b"host:payments" in data
    # when the current codec decodes it
    decoded = codec.decode(data, TOPIC_TYPES["timers"])
    # then resolution dropped the field: no flow control, so the scheduler emits it once due
    assert isinstance(decoded, DeliveryRequested | CallRequested)
    assert decoded.flow is None
    assert decoded.flow_key is None


def test_upcasters_given_to_a_codec_add_to_the_built_in_ones(tmp_path: Path) -> None:
    # given a codec made with an upcaster of its own (for a RunFailed v1 only this test has)
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    earlier = {"name": "stepstream.RunFailed", "type": "record", "fields": [{"name": "run_id", "type": "string"}]}
    (tmp_path / "stepstream.RunFailed.v1.avsc").write_text(json.dumps(earlier))
    codec = Codec(tmp_path, upcasters={"stepstream.RunFailed.v1": lambda old: old})
    # when it decodes a RunState the first schema wrote, then the built-in upcaster still applies
    data = (GOLDEN / "RunState.full.bin").read_bytes()
    assert codec.decode(data) == SAMPLES["RunState.full"]


def test_an_upcaster_without_its_frozen_schema_is_refused_at_start_up() -> None:
    # given an upcaster for a shape no schema file has; when a codec is made, then it fails, naming it
    with pytest.raises(SchemaError, match=r"there is none for \['stepstream.RunState.v9'\]"):
        Codec(upcasters={"stepstream.RunState.v9": lambda old: old})


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
    assert frozen.name == "stepstream.StepFailed.v2.avsc"  # numbered after the real v1 (before ``retryable``)
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
    # given a schema directory where FireTimer (never changed) was just frozen as v1
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    assert not (tmp_path / "stepstream.FireTimer.v1.avsc").exists()
    freeze("FireTimer", tmp_path)
    # when it is frozen again without a change, then it is refused and no v2 appears
    with pytest.raises(SchemaError, match=r"Expected stepstream\.FireTimer to have changed since v1"):
        freeze("FireTimer", tmp_path)
    assert not (tmp_path / "stepstream.FireTimer.v2.avsc").exists()
    # and the codec reads with an unchanged frozen copy beside the current file
    assert Codec(tmp_path).decode(Codec().encode(SAMPLES["FireTimer.full"])) == SAMPLES["FireTimer.full"]


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
    # when it encodes a trigger (with the fields the sample sets; the others take their defaults)
    fields = dataclasses.fields(record)
    data = example.encode_trigger(
        **{field.name: getattr(record, field.name) for field in fields if getattr(record, field.name) != field.default}
    )
    # then the bytes are the codec's
    assert data == codec.encode(record)
