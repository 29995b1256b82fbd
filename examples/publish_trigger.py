"""Start a Stepstream run from any service: publish a TriggerRequest to the triggers topic.

Uses only aiokafka, fastavro and the schema files in ``schemas/`` (not the stepstream package), to
show that any Kafka producer can start a run. The value is Avro single-object encoded: the marker
C3 01, the writer schema's 8-byte fingerprint, then the Avro body.

    python examples/publish_trigger.py --workflow checkout \\
        --url http://127.0.0.1:8000/api/workflows/checkout --payload '{"order_id": "ord_1"}'

The url's host must be one the engine delivers to (STEPSTREAM_ALLOWED_URL_HOSTS, by default the
hosts of STEPSTREAM_WORKFLOWS): skipping the api skips its check, not the executor's, which fails
the run with UrlNotAllowed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from fastavro import schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

SCHEMA_DIRECTORY = Path(__file__).resolve().parent.parent / "schemas"
MAGIC = b"\xc3\x01"  # Avro single-object encoding, version 1


@cache
def trigger_schema(schema_directory: Path = SCHEMA_DIRECTORY) -> tuple[Any, bytes]:
    """The parsed TriggerRequest schema and the header every record written with it starts with."""
    # load_schema finds the records it refers to (stepstream.Header) in files beside it.
    schema = load_schema(str(schema_directory / "stepstream.TriggerRequest.avsc"))
    # fastavro's hex string is already little-endian, the byte order single-object encoding wants.
    schema_fingerprint = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    return schema, MAGIC + schema_fingerprint


def encode_trigger(
    *,
    workflow: str,
    url: str,
    payload: str,
    run_id: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    label: str | None = None,
    retries: int | None = None,
    retry_base_ms: int | None = None,
    not_before_ms: int | None = None,
    requested_at_ms: int | None = None,
    retry_delay: str | None = None,
    failure_url: str | None = None,
    schema_directory: Path = SCHEMA_DIRECTORY,
) -> bytes:
    """A TriggerRequest as a Kafka record value. ``payload`` is JSON text; None fields take the engine's defaults."""
    schema, header = trigger_schema(schema_directory)
    record = {
        "workflow": workflow,
        "url": url,
        "payload": payload,
        "run_id": run_id,
        "headers": [{"name": name, "value": value} for name, value in headers],
        "label": label,
        "retries": retries,
        "retry_base_ms": retry_base_ms,
        "not_before_ms": not_before_ms,
        "requested_at_ms": requested_at_ms,
        "retry_delay": retry_delay,
        "failure_url": failure_url,
    }
    buffer = io.BytesIO()
    buffer.write(header)
    schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


async def publish(bootstrap: str, topic: str, key: bytes | None, value: bytes) -> tuple[int, int]:
    # acks="all" and idempotence: a trigger that was acknowledged is not lost and not doubled by a retry.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()
    return metadata.partition, metadata.offset


def header_pair(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, but got {text!r}")
    return name.strip(), value.strip()


def json_text(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected JSON, but {error}") from error
    return text  # sent as given: the workflow receives exactly this text


def main() -> None:
    parser = argparse.ArgumentParser(description="Start a Stepstream run by publishing a TriggerRequest to Kafka.")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--topic", default="stepstream.triggers", help="default: stepstream.triggers")
    parser.add_argument("--workflow", required=True, help="the workflow's name")
    parser.add_argument("--url", required=True, help="the endpoint URL that serves the workflow")
    parser.add_argument("--payload", type=json_text, default="null", help="the run's input, as JSON (default: null)")
    parser.add_argument(
        "--run-id", help="choose the run id, which makes the trigger idempotent (default: the engine's)"
    )
    parser.add_argument(
        "--header",
        type=header_pair,
        action="append",
        default=[],
        help="NAME:VALUE sent with every delivery; repeatable",
    )
    options = parser.parse_args()

    value = encode_trigger(
        workflow=options.workflow,
        url=options.url,
        payload=options.payload,
        run_id=options.run_id,
        headers=tuple(options.header),
        requested_at_ms=int(time.time() * 1000),
    )
    key = options.run_id.encode() if options.run_id else None
    partition, offset = asyncio.run(publish(options.bootstrap, options.topic, key, value))
    run = f"run {options.run_id}" if options.run_id else "a run (the engine assigns its id)"
    print(f"triggered {run} of {options.workflow}: {options.topic}[{partition}]@{offset}")


if __name__ == "__main__":
    main()
