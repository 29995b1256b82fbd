"""The scheduler's gauges (stepstream.metrics), read from its state when the metrics page is made.

Flow-control keys are unbounded (a key per customer is common), so a key is a label value only when
it is named in ``STEPSTREAM_METRICS_FLOW_KEYS`` or among the :data:`TOP_KEYS` with the longest
queues at the time; the totals over all keys are always there.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection

from stepstream import metrics
from stepstream.core import FlowLedger
from stepstream.scheduler.tiered import TieredPendingWork

TOP_KEYS = 10
COUNT_EVERY_S = 60.0  # the timers on disk are counted at most this often: a count reads the file


def watch(pending: TieredPendingWork, ledger: FlowLedger, named: Collection[str]) -> list[Callable[[], None]]:
    """Set the scheduler's gauges on every metrics page (the timers pending, at most once a minute: a
    million sleeping runs' timers are a scan of the file's index); returns what stops it."""
    return [
        metrics.on_scrape(lambda: metrics.TIMERS_PENDING.set(len(pending)), every_s=COUNT_EVERY_S),
        metrics.on_scrape(flow_refresher(ledger, named)),
    ]


def flow_refresher(ledger: FlowLedger, named: Collection[str]) -> Callable[[], None]:
    shown: set[str] = set()

    def refresh() -> None:
        depths = ledger.depths()
        metrics.FLOW_QUEUED.set(sum(queued for _, queued, _ in depths))
        metrics.FLOW_IN_FLIGHT.set(sum(in_flight for _, _, in_flight in depths))
        top = heapq.nlargest(TOP_KEYS, (depth for depth in depths if depth[1] > 0), key=lambda depth: depth[1])
        chosen = {name: (queued, in_flight) for name, queued, in_flight in top}
        chosen.update({name: (queued, in_flight) for name, queued, in_flight in depths if name in named})
        for name, (queued, in_flight) in chosen.items():
            metrics.FLOW_KEY_QUEUED.labels(name).set(queued)
            metrics.FLOW_KEY_IN_FLIGHT.labels(name).set(in_flight)
        for name in shown - chosen.keys():
            metrics.FLOW_KEY_QUEUED.remove(name)
            metrics.FLOW_KEY_IN_FLIGHT.remove(name)
        shown.clear()
        shown.update(chosen)

    return refresh
