"""The gateway's bounds, one family: how many analyses run at once (Admission), uploads are
received at once (UploadSlots), live sessions are open (LiveSessions); live/readers.py's
StreamReaders is one too. Each is taken as a `Place` (`take`, or `held` around a block) and
refused with its own 429 beyond it, so a burst is refused early instead of timing out.

A Place is given back once, by whoever ends first: the route, its stream's end, a reader
thread, or the dependency (gateway/server/deps.py) that took it."""

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable

from gateway.server import metrics
from gateway.server.errors import ApiError


class Bound:
    """A count of places and the refusal beyond it. Subclasses say how a place is entered
    (`enter`: raise the bound's ApiError when full, may wait) and left (`leave`: sync, so a
    teardown that must not be cancelled, or a reader thread, can give it back)."""

    async def enter(self, who: str) -> None:
        raise NotImplementedError

    def leave(self, who: str) -> None:
        raise NotImplementedError

    async def take(self, who: str = "") -> "Place":
        await self.enter(who)
        return Place(self, who)

    @contextlib.asynccontextmanager
    async def held(self, who: str = "") -> AsyncIterator["Place"]:
        place = await self.take(who)
        try:
            yield place
        finally:
            place.give()


class Place:
    """One place taken in a bound, given back once (from any thread)."""

    def __init__(self, bound: Bound, who: str = "") -> None:
        self.bound = bound
        self.who = who
        self.given = False
        self.lock = threading.Lock()

    def give(self) -> None:
        with self.lock:
            if self.given:
                return
            self.given = True
        self.bound.leave(self.who)


class Holding:
    """What a request holds (its places, its temp files), given back in reverse order when
    the dependency that made it ends (deps.py): as the route returns, or once its whole
    answer is sent, so no route needs a try/finally of its own for them."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    async def take(self, bound: Bound, who: str = "") -> Place:
        place = await bound.take(who)
        self.stack.callback(place.give)
        return place

    def later(self, give_back: Callable[[], object]) -> None:
        self.stack.callback(give_back)

    def give_back(self) -> None:
        self.stack.close()


class Admission(Bound):
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

    async def enter(self, who: str = "") -> None:
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

    def leave(self, who: str = "") -> None:
        self.active -= 1
        self._slots.release()
        metrics.IN_FLIGHT.set(self.active)

    def _busy(self) -> ApiError:
        metrics.REJECTED.inc()
        return ApiError(
            "too_many_requests", "the service is busy; retry shortly", {"Retry-After": "2"}
        )


class UploadSlots(Bound):
    """At most `limit` uploads received at once, /api/detect's and /api/jobs' together,
    apart from the analysis slots (an upload takes one of those only once complete);
    beyond, 429 at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    async def enter(self, who: str = "") -> None:
        if self.active >= self.limit:
            metrics.REJECTED.inc()
            raise ApiError(
                "too_many_uploads",
                "too many uploads are being received; retry shortly",
                {"Retry-After": "2"},
            )
        self.active += 1
        metrics.UPLOADS.set(self.active)

    def leave(self, who: str = "") -> None:
        self.active -= 1
        metrics.UPLOADS.set(self.active)


class LiveSessions(Bound):
    """At most `limit` live sessions open, `per_client` of them a client's (`who`)."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.by_client: Counter[str] = Counter()

    async def enter(self, who: str = "") -> None:
        if sum(self.by_client.values()) >= self.limit or self.by_client[who] >= self.per_client:
            raise ApiError(
                "too_many_sessions", "too many live sessions; retry later", {"Retry-After": "5"}
            )
        self.by_client[who] += 1
        metrics.LIVE_SESSIONS.inc()

    def leave(self, who: str = "") -> None:
        self.by_client[who] -= 1
        if self.by_client[who] <= 0:
            del self.by_client[who]
        metrics.LIVE_SESSIONS.dec()
