"""The nonces of the deliveries an endpoint accepted, so that the same request sent again is refused.

A signed request stays valid for the signature's tolerance (300 s by default): whoever captures one
in that time could send it again and run the workflow's next step twice. The engine puts a new nonce
in every request it sends (a redelivery of the same delivery too), so a nonce seen twice is a replay
(or a request some proxy repeated), never the engine's own retry.

A nonce is kept until its signature's timestamp plus the tolerance: after that the signature itself
is refused as stale. Memory is bounded: past ``capacity`` nonces the least recently seen is
forgotten, and a replay of it would be accepted, so the first such eviction is logged. The memory is
per process: a replay that reaches another process (another worker or replica of the app) is not
caught there.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict

logger = logging.getLogger("stepstream.sdk")


class NonceCache:
    """Nonces and when each may be forgotten (unix seconds), least recently seen first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"Expected a nonce cache of at least 1 entry, but got {capacity}")
        self.capacity = capacity
        self.evicted = 0  # nonces forgotten before they expired, to stay within capacity
        self._expiry_of: OrderedDict[str, int] = OrderedDict()
        # When each nonce may be forgotten, soonest first; an entry whose nonce was evicted (or seen
        # again) is stale and skipped. Rebuilt when stale entries would double its size.
        self._by_expiry: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._expiry_of)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry_of

    def accept(self, nonce: str, *, expires_at: int, now: int) -> bool:
        """Remember ``nonce`` until ``expires_at``: True if it is new, False if it was accepted before."""
        self._expire(now)
        if nonce in self._expiry_of:
            self._expiry_of.move_to_end(nonce)
            return False
        self._expiry_of[nonce] = expires_at
        heapq.heappush(self._by_expiry, (expires_at, nonce))
        while len(self._expiry_of) > self.capacity:
            self._expiry_of.popitem(last=False)
            if self.evicted == 0:
                logger.warning(
                    "Stepstream SDK: more than %d deliveries within the signature tolerance; forgetting the "
                    "oldest nonces early, so replays of those are no longer refused (raise nonce_cache_size)",
                    self.capacity,
                )
            self.evicted += 1
        if len(self._by_expiry) > 2 * self.capacity:
            self._by_expiry = [(expires, nonce) for nonce, expires in self._expiry_of.items()]
            heapq.heapify(self._by_expiry)
        return True

    def _expire(self, now: int) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            expires_at, nonce = heapq.heappop(self._by_expiry)
            if self._expiry_of.get(nonce) == expires_at:
                del self._expiry_of[nonce]
