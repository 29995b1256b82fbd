"""News of runs for the requests that wait on them, inside one api process.

The indexer applies a batch of events to the query store, and once the store has committed it, tells
:class:`RunChanges` which runs it touched; every request watching one of them wakes and reads the store
again. So a request that waits for a run to end (``?wait=``) or follows its history (the history
stream) reads the store once per change of its run, never on a timer.

A watcher is an :class:`asyncio.Event` in a set under its run id: watching, waking and forgetting are a
dict and set operation each, so thousands of waiting requests cost thousands of small objects and
nothing while their runs do not change. A watch may name a run the store does not know yet (its
trigger is on the way): its first event wakes the watcher like any other change.

Everything here runs on the api's event loop: the indexer calls :meth:`RunChanges.changed` after its
``asyncio.to_thread`` that applied the batch has returned, so on the loop's thread.

The order that loses no news: watch, then read the store, then wait. A change committed before the
read is in what was read; one committed after it is announced after it, to a watcher already there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class RunChanges:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """The api is shutting down: waits end now, with what the store shows."""
        return self._closed

    @contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the store changes ``run_id`` (clear it before each read of the store),
        and at once if the api is shutting down."""
        event = asyncio.Event()
        if self._closed:
            event.set()
        watchers = self._watchers.setdefault(run_id, set())
        watchers.add(event)
        try:
            yield event
        finally:
            watchers.discard(event)
            if not watchers and self._watchers.get(run_id) is watchers:
                del self._watchers[run_id]

    def changed(self, run_ids: Iterable[str]) -> None:
        """The store has committed changes to these runs: wake their watchers."""
        for run_id in run_ids:
            for event in self._watchers.get(run_id, ()):
                event.set()

    def close(self) -> None:
        """Wake every watcher for good, so the requests waiting on runs answer and the api can stop."""
        self._closed = True
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def watching(self, run_id: str) -> int:
        """How many requests watch ``run_id`` now."""
        return len(self._watchers.get(run_id, ()))

    def __len__(self) -> int:
        """How many runs are watched now."""
        return len(self._watchers)
