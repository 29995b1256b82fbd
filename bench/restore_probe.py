"""Why a restarted scheduler's RSS is higher than a live one's with the same queue: a probe, no Kafka.

``bench/flow_memory.py`` finds the scheduler's RSS about three times higher after it restores N queued
deliveries from its changelog than after it queued the same N live. This rebuilds both paths in a fresh
process each, with the engine's own ``PendingWork``, ``FlowLedger`` and ``Codec``, on records like the
ones flow_memory.py produces, and reports per queued delivery: the process's RSS growth, and the bytes of
the objects still alive at the end (``tracemalloc``, in a second process: tracing costs memory itself).

* live (``Scheduler._step``): each record decoded and queued at once, its Delivery re-encoded;
* restore (``Scheduler._restore``, then its first ``_step``): every changelog record read into a list,
  the latest per request id into a dict, each decoded into ``PendingWork``, then all moved into the
  ledger (re-encoded) and the list and dict dropped.

    .venv/bin/python bench/restore_probe.py              # 100,000 deliveries, ~2 min
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import NamedTuple

from stepstream.avro import Codec
from stepstream.core import Delivery, DeliveryRequested, FlowControl, FlowLedger, Queued, delivery_id
from stepstream.scheduler.pending import PendingWork

KEY = "flowmem-00000000"


class Record(NamedTuple):
    """What the restore holds per changelog record (aiokafka's ConsumerRecord has these and more)."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def request(index: int) -> DeliveryRequested:
    """A first delivery of run ``index`` of the benchmark workflow, under ``KEY`` (as flow_memory.py)."""
    run_id = f"{KEY}-{index:06d}"
    delivery = Delivery(
        run_id=run_id,
        workflow="steps",
        url="http://127.0.0.1:40000/workflows/steps",
        delivery_id=delivery_id(run_id, 1),
        attempt=1,
        step_index=0,
        payload='{"steps": 10, "sleep_ms": 500}',
        steps=(),
        headers=(),
    )
    return DeliveryRequested(
        request_id=delivery.request_id, not_before_ms=0, delivery=delivery, flow=FlowControl(key=KEY, parallelism=1)
    )


def queue(ledger: FlowLedger, codec: Codec, request: DeliveryRequested) -> None:
    assert request.flow is not None
    ledger.queue(
        Queued(
            request_id=request.request_id,
            flow=request.flow,
            partition=0,
            run_id=request.delivery.run_id,
            value=codec.encode(request.delivery),
        )
    )


def live(codec: Codec, values: list[bytes]) -> FlowLedger:
    ledger = FlowLedger()
    for value in values:
        queue(ledger, codec, codec.decode(value, expected=(DeliveryRequested,)))
    return ledger


def restore(codec: Codec, values: list[bytes]) -> FlowLedger:
    records = [
        Record("timers", 0, offset, codec.decode(value, expected=(DeliveryRequested,)).request_id.encode(), value)
        for offset, value in enumerate(values)
    ]
    latest: dict[str, tuple[int, bytes]] = {}
    for record in records:
        request_id = record.key.decode()
        latest.pop(request_id, None)
        latest[request_id] = (record.partition, record.value)
    pending = PendingWork()
    for partition, value in latest.values():
        pending.add(partition, codec.decode(value, expected=(DeliveryRequested,)))
    del records, latest
    ledger = FlowLedger()
    for held in pending.pop_due(sys.maxsize):
        assert isinstance(held.record, DeliveryRequested)
        queue(ledger, codec, held.record)
    return ledger


def measure(path: str, count: int, trace: bool) -> float:
    """Per queued delivery: the RSS growth (``trace`` False) or the live bytes at the end (True)."""
    codec = Codec()
    # Encoded afresh here, as the consumer's fetches would bring them: not counted, they exist before.
    values = [codec.encode(request(index)) for index in range(count)]
    gc.collect()
    if trace:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if trace else rss_bytes()
    ledger = (live if path == "live" else restore)(codec, values)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if trace else rss_bytes()
    if len(ledger) != count:
        raise RuntimeError(f"the ledger holds {len(ledger)} items, expected {count}")
    return (after - before) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100_000, help="deliveries (default 100,000)")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "WHAT"), help=argparse.SUPPRESS)  # a child's job
    args = parser.parse_args(argv)
    if args.one:
        path, what = args.one
        print(measure(path, args.queued, trace=what == "live-bytes"))
        return 0
    print(f"per queued delivery, {args.queued:,} queued, each number from a fresh process:")
    print("path     | RSS growth | live objects (tracemalloc)")
    for path in ("live", "restore"):
        numbers = [
            float(
                subprocess.run(
                    [sys.executable, __file__, "--queued", str(args.queued), "--one", path, what],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for what in ("rss", "live-bytes")
        ]
        print(f"{path:<8} | {numbers[0]:>8,.0f} B | {numbers[1]:>8,.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
