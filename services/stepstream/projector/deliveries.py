"""How the projector writes a delivery: whole when it fits in a Kafka record, else with its results
apart (:mod:`stepstream.core.apart`).

Only deliveries too large for one record take the longer ways, so the usual delivery is one record,
as before: on ``deliveries``, the results go first in ``DeliverySteps`` records of the same key (so
the same partition) and transaction; on ``schedule``, the request waits without them and the
projector adds them when the scheduler lets it through.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from stepstream.avro import Codec
from stepstream.core import Delivery, DeliveryRequested, RecordedStep
from stepstream.core.apart import elided, split

# What a DeliverySteps record holds besides its steps: the encoding's header, the run and delivery
# ids (at most ~200 characters each) and the array's framing. A part's steps get the rest of a record.
PART_OVERHEAD_BYTES: Final = 1_024


def delivery_records(delivery: Delivery, key: str, codec: Codec, limit: int) -> list[bytes]:
    """The values to write on ``deliveries`` under ``key``, in order: the delivery alone if it fits
    in ``limit`` bytes, else its results' parts, then the delivery without them."""
    value = codec.encode(delivery)
    if len(key.encode()) + len(value) <= limit:
        return [value]

    def size(step: RecordedStep) -> int:
        return len(codec.encode(step))

    parts, rest = split(delivery, limit - PART_OVERHEAD_BYTES - len(key.encode()), size)
    return [*(codec.encode(part) for part in parts), codec.encode(rest)]


def schedule_value(request: object, key: str, codec: Codec, limit: int) -> bytes:
    """``request`` encoded for ``schedule``; a delivery whose results would not fit there waits
    without them (the scheduler's memory, file and changelog hold small requests only)."""
    value = codec.encode(request)
    if isinstance(request, DeliveryRequested) and request.delivery.steps and len(key.encode()) + len(value) > limit:
        return codec.encode(replace(request, delivery=elided(request.delivery)))
    return value
