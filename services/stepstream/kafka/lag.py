"""Consumer lag as a metric: per partition a service owns, the records it has not fetched yet.

What the Java client reports as ``records-lag``: the partition's end as the last fetch saw it (the
last stable offset, for a consumer that reads only committed records; else the high watermark) less
the consumer's position. Both are known without asking the broker, so the gauge is set each time the
metrics page is made (:func:`stepstream.metrics.on_scrape`), at no cost in between. A lag that grows
is a service that does not keep up; one that stays above zero with no growth is a stuck partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from stepstream import metrics

_POSITION_WAIT_S = 0.5  # a partition just assigned has no position until its offset is fetched


def watch_lag(service: str, consumer: AIOKafkaConsumer) -> Callable[[], None]:
    """Report ``consumer``'s lag under ``service`` on every metrics page, until what this returns is called."""
    shown: set[tuple[str, str]] = set()

    async def refresh() -> None:
        now: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            if end is None:
                continue  # not fetched yet: nothing known
            with contextlib.suppress(Exception):  # unassigned meanwhile, or no position yet
                position = await asyncio.wait_for(consumer.position(tp), _POSITION_WAIT_S)
                labels = (tp.topic, str(tp.partition))
                metrics.CONSUMER_LAG.labels(service, *labels).set(max(0, end - position))
                now.add(labels)
        for topic, partition in shown - now:  # partitions that moved to another member: not ours to show
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(service, topic, partition)
        shown.clear()
        shown.update(now)

    return metrics.on_scrape(refresh)
