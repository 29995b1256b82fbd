"""A dead letter keeps the record it sets aside byte for byte, unless that would not fit in a record."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from stepstream.avro import Codec, DeadLetter
from stepstream.kafka.deadletter import DeadLetters

CODEC = Codec()


def record(value: bytes | None, key: bytes | None = b"run-1") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="stepstream.triggers", partition=2, offset=41, timestamp=0, timestamp_type=0, key=key, value=value,
        checksum=None, serialized_key_size=0, serialized_value_size=0, headers=[],
    )  # fmt: skip


def test_a_dead_letter_keeps_the_record_and_says_why() -> None:
    letters = DeadLetters(CODEC, "projector", max_record_bytes=100_000)

    letter = CODEC.decode(letters.encode(record(b"\x00garbage"), "Expected Avro", 7), expected=(DeadLetter,))

    assert letter == DeadLetter(
        source_topic="stepstream.triggers", partition=2, offset=41, key=b"run-1", value=b"\x00garbage",
        reason="Expected Avro", consumer="projector", at_ms=7,
    )  # fmt: skip


def test_a_value_too_large_for_its_dead_letter_keeps_its_start_and_says_how_much() -> None:
    letters = DeadLetters(CODEC, "projector", max_record_bytes=100_000)
    value = bytes(range(256)) * 1_000  # 256,000 bytes

    encoded = letters.encode(record(value), "Expected records of at most 100,000 bytes", 7)
    letter = CODEC.decode(encoded, expected=(DeadLetter,))

    assert len(encoded) <= 100_000
    kept = 100_000 - 16_384 - len(b"run-1")
    assert letter.value == value[:kept]
    assert letter.reason == (
        f"Expected records of at most 100,000 bytes (value truncated: the first {kept} of its 256000 bytes are kept)"
    )


def test_a_tombstone_is_kept_as_one() -> None:
    letters = DeadLetters(CODEC, "executor", max_record_bytes=100_000)

    letter = letters.letter(record(None, key=None), "Expected a record value", 7)

    assert (letter.key, letter.value) == (None, None)
    assert DeadLetters.key(record(None, key=None)) == b""
