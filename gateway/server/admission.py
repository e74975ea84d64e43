"""How many analyses run at once: the admission bound every upload, stream and PDF
passes (429 beyond it), so a burst is refused early instead of timing out."""

import asyncio

from gateway.server import metrics
from gateway.server.errors import ApiError


class Admission:
    """At most `limit` uploads analysed at once and `queue` more waiting for a
    slot (up to `timeout_s`); beyond that, 429 at once, so a burst is refused
    early rather than piling up until every request times out."""

    def __init__(self, limit: int, queue: int = 0, timeout_s: float = 30.0) -> None:
        self.limit = limit
        self.queue = queue
        self.timeout_s = timeout_s
        self.active = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit)  # FIFO: the longest waiting goes first

    async def enter(self) -> None:
        if self._slots.locked() and self.waiting >= self.queue:
            raise self._busy()
        self.waiting += 1
        metrics.WAITING.set(self.waiting)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise self._busy() from None
        finally:
            self.waiting -= 1
            metrics.WAITING.set(self.waiting)
        self.active += 1
        metrics.IN_FLIGHT.set(self.active)

    def leave(self) -> None:
        self.active -= 1
        self._slots.release()
        metrics.IN_FLIGHT.set(self.active)

    def _busy(self) -> ApiError:
        metrics.REJECTED.inc()
        return ApiError(
            "too_many_requests", "the service is busy; retry shortly", {"Retry-After": "2"}
        )
