"""The threads that read stream URLs: a pool of their own (live_max_stream_readers), one
reader per session at most. A source that never answers holds one of them for up to
live_stream_timeout_s, never a thread the rest of the gateway needs.
"""

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from gateway.server.admission import Bound, Place
from gateway.server.errors import ApiError

T = TypeVar("T")
READER_STOP_GRACE_S = 0.5  # a reader between frames notices its stop Event well within this


class StreamReaders(Bound):
    """The threads that read stream URLs (`read_stream` blocks): a pool of their own, so a
    source that never answers holds one of these, never a thread of the default executor
    (the job store, upload sniffing and URL checks use that). A reader is taken before a
    stream is started and refused (stream_busy, retry after `retry_s`), not queued, when
    all are taken."""

    def __init__(self, size: int, retry_s: float) -> None:
        self.size = size
        self.retry_s = retry_s
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="live-reader")
        self.lock = threading.Lock()  # given back from the reader threads
        self.running = 0  # taken and not yet returned

    async def enter(self, who: str = "") -> None:
        with self.lock:
            if self.running >= self.size:
                raise stream_busy(
                    f"all {self.size} stream readers of the gateway are busy; retry shortly",
                    self.retry_s,
                )
            self.running += 1

    def leave(self, who: str = "") -> None:
        with self.lock:
            self.running -= 1

    async def take(self, who: str = "") -> "ReaderSlot":
        await self.enter(who)
        return ReaderSlot(self)


class ReaderSlot(Place):
    """One taken reader: given back when its thread returns (however long the source
    keeps it), or at once if it was never run (its task cancelled before it began)."""

    def __init__(self, readers: StreamReaders) -> None:
        super().__init__(readers)
        self.readers = readers
        self.future: Future | None = None

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """`call(*args)` on the slot's thread. Cancelling the caller leaves the thread to
        end by itself (its stop Event, its timeouts); the slot stays taken until it does."""
        self.future = self.readers.executor.submit(self.call, call, *args)
        # cancelled before a thread took it: call never runs, so nothing else frees the slot
        self.future.add_done_callback(lambda f: self.give() if f.cancelled() else None)
        return await asyncio.wrap_future(self.future)

    def call(self, call: Callable[..., T], *args: object) -> T:
        try:
            return call(*args)
        finally:
            self.give()

    def task_done(self) -> None:
        if self.future is None:
            self.give()

    async def stopped(self, grace_s: float) -> bool:
        """Whether the reader has returned, waiting up to `grace_s` (its thread cannot be
        awaited: polled)."""
        deadline = time.monotonic() + grace_s
        while not self.given and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.given


def stream_busy(message: str, retry_s: float) -> ApiError:
    return ApiError("stream_busy", message, {"Retry-After": str(math.ceil(retry_s))})
