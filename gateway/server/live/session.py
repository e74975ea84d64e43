"""A live session: video judged while it plays, frame by frame, whatever carries it.

Scoring never queues: one frame waits at most, and a newer one replaces it (the older is
counted in `dropped`), so a client sending faster than the models score gets answers about
its newest frames, with a lag bounded by one scoring, not a growing backlog. The judging
itself is gateway/server/verdict/judge.py's (Running), the same path as a file's.

Every message of a socket counts against its key's rate limit, as a request would; control
messages also against the session's own (SocketQuota).
"""

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gateway.server import metrics
from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError, from_media_error
from gateway.server.live.protocol import StartOptions, check_jpeg, decode_jpeg, error_message
from gateway.server.live.readers import READER_STOP_GRACE_S, ReaderSlot, StreamReaders, stream_busy
from gateway.server.options import options_for
from gateway.server.reviews.record import FaceCrop
from gateway.server.reviews.store import new_id
from gateway.server.security import RateLimiter
from gateway.server.settings import Settings
from gateway.server.verdict.judge import Judge, Running
from gateway.server.verdict.selection import select_models
from preprocess.media import MediaError, MediaLimits
from preprocess.stream import StreamPolicy, StreamRead, read_stream
from preprocess.video import Frame

# --- one frame waiting at most: the newest wins ------------------------------------------


@dataclass
class Pending:
    frame: int  # the client's sequence number, or the stream's frame index
    received: float  # time.perf_counter() on arrival
    jpeg: bytes | None = None  # a client's frame, decoded only if it is scored
    image: Frame | None = None  # a stream's frame, already decoded


class Latest:
    """The next frame to score: putting one while another waits drops the older."""

    def __init__(self) -> None:
        self.item: Pending | None = None
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: Pending) -> None:
        if self.item is not None:
            self.dropped += 1
            metrics.LIVE_FRAMES.labels("dropped").inc()
        self.item = item
        self.ready.set()

    async def take(self) -> Pending:
        await self.ready.wait()
        self.ready.clear()
        item, self.item = self.item, None
        assert item is not None
        return item


# --- what a socket's messages cost -------------------------------------------------------


@dataclass
class SocketQuota:
    """Every message is a request of the key's rate limit (the HTTP API's own buckets);
    a control message is also one of the session's own limit (a start resolves a host and
    may open a stream). {"stop": true} is never refused."""

    client: str
    per_key: RateLimiter | None
    controls: RateLimiter

    def refusal(self, control: bool) -> ApiError | None:
        if self.per_key and (wait := self.per_key.wait_s(self.client)) > 0:
            return ApiError(
                "rate_limited",
                f"too many requests for this API key; retry in {math.ceil(wait)} s",
            )
        if control and (wait := self.controls.wait_s("session")) > 0:
            return ApiError(
                "rate_limited",
                f"too many control messages on this session; retry in {math.ceil(wait)} s",
            )
        return None


# --- a session ---------------------------------------------------------------------------

Send = Callable[[dict], Awaitable[None]]


class LiveSession:
    """One client's live analysis, whatever carries it (a WebSocket or NDJSON)."""

    def __init__(
        self,
        analyzer: Analyzer,
        settings: Settings,
        send: Send,
        readers: StreamReaders,
        owner: str | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.settings = settings
        self.send = send
        self.readers = readers
        self.slot: ReaderSlot | None = None  # the last stream's reader: one at a time
        self.latest = Latest()
        self.running: Running | None = None  # the judging, from the first start on
        self.scores: Callable | None = None
        self.received = 0  # binary frames so far: the next one's sequence number
        self.stop_stream = threading.Event()
        self.stream: asyncio.Task | None = None
        self.ended = asyncio.Event()  # the stream was read to its end and judged
        self.idle_scorer = asyncio.Event()  # set while no frame is being judged
        self.idle_scorer.set()
        self.limits = MediaLimits(settings.live_max_width, settings.live_max_height)
        self.policy = StreamPolicy(
            frozenset(s.lower() for s in settings.live_url_schemes),
            frozenset(h.lower() for h in settings.live_url_hosts),
            **settings.egress_options(settings.live_allow_private),
            timeout_s=settings.live_stream_timeout_s,
        )
        # Reviews on: the running verdict is kept for `owner` to review, under the
        # answer_id each start announces, when the session stops, ends or starts again.
        self.owner = owner if analyzer.keeper is not None else None
        self.answer_id: str | None = None
        self.faces: dict[int, deque[FaceCrop]] = {}  # per open track, its window's crops
        self.last: dict | None = None  # the last running verdict

    @property
    def reading(self) -> bool:
        return self.stream is not None and not self.stream.done()

    async def start(self, options: StartOptions) -> None:
        """Raises ApiError or MediaError on bad options; a new start replaces the last."""
        models = options.models
        asked = options_for(
            self.settings,
            ",".join(models) if isinstance(models, list) else models,
            threshold=options.threshold,
        )
        selection = select_models(await self.analyzer.server.ensemble(), asked.models)
        server = self.analyzer.server
        score = server.score_with_ensemble if selection.via_ensemble else server.score_with_members
        url = None
        if options.url is not None:
            url = await asyncio.to_thread(self.policy.resolve, options.url)  # a checked Target
        self.halt_stream()
        slot = None if url is None else await self.claim_reader()
        await self.keep_for_review()  # the last start's verdict, before this one's begins
        self.scores = lambda crops: score(crops, selection.members)
        self.running = Running(
            Judge(selection, self.analyzer.strategy, asked.threshold, self.analyzer.doubts),
            options.window or self.settings.live_window,
        )
        started = {
            "event": "started",
            "models": selection.members,
            "skipped": selection.skipped,  # members that cannot vote, not run
            "threshold": asked.threshold,
            "window": self.running.window,
        }
        if self.owner is not None:
            self.answer_id = new_id()
            started["answer_id"] = self.answer_id
        if url is not None:
            read = StreamRead(
                fps=options.fps or self.settings.live_fps,
                max_s=min(options.duration_s or 1e9, self.settings.live_stream_max_s),
                timeout_s=self.settings.live_stream_timeout_s,
                limits=self.limits,
            )
            self.stop_stream = threading.Event()
            self.ended.clear()
            assert slot is not None
            self.slot = slot
            self.stream = asyncio.create_task(self.read(url, read, self.stop_stream, slot))
            self.stream.add_done_callback(lambda _: slot.task_done())
            started |= {"source": "url", "fps": read.fps, "duration_s": read.max_s}
        else:
            started |= {"source": "frames"}
        await self.send(started)

    async def claim_reader(self) -> ReaderSlot:
        """A reader for a new stream: the session's last one stopped first (it was told to;
        one that is still opening a silent source is held up to live_stream_timeout_s,
        and this start is refused meanwhile), then a free one of the gateway's."""
        timeout_s = self.settings.live_stream_timeout_s
        if self.slot is not None and not await self.slot.stopped(READER_STOP_GRACE_S):
            raise stream_busy(
                "the previous stream of this session is still being closed (a source that "
                f"does not answer holds its reader up to {timeout_s:g} s); retry shortly",
                timeout_s,
            )
        return await self.readers.take()

    async def read(
        self, url: str, read: StreamRead, stop: threading.Event, slot: ReaderSlot
    ) -> None:
        """The stream's frames into the newest-wins slot, from a reader thread (`slot`)."""
        loop = asyncio.get_running_loop()

        def hand_over(frame: Frame) -> None:
            metrics.LIVE_FRAMES.labels("received").inc()
            pending = Pending(frame.index, time.perf_counter(), image=frame)
            loop.call_soon_threadsafe(self.latest.put, pending)

        try:
            frames = await slot.run(read_stream, url, self.policy, read, hand_over, stop)
        except MediaError as exc:
            await self.send(error_message(exc.code, exc.message))
            frames = 0
        await self.latest_judged()
        if not stop.is_set():
            await self.keep_for_review()
            await self.send({"event": "end", "reason": "stream_ended", "frames": frames})
            self.ended.set()

    async def latest_judged(self) -> None:
        """Until the slot is empty: the stream's last frame was judged (or dropped)."""
        while self.latest.item is not None:
            await asyncio.sleep(0.05)
        await self.idle_scorer.wait()

    def halt_stream(self) -> None:
        self.stop_stream.set()  # the reader thread notices within one frame or its timeout
        if self.stream is not None:
            self.stream.cancel()

    def add_jpeg(self, data: bytes, refused: ApiError | None = None) -> dict | None:
        """A client's frame: checked now (header only), scored when its turn comes.
        An error message for a bad (or `refused`) one; the session goes on."""
        frame, self.received = self.received, self.received + 1
        metrics.LIVE_FRAMES.labels("received").inc()
        try:
            if refused is not None:
                raise refused
            check_jpeg(data, self.settings.live_max_frame_kb * 1024, self.limits)
        except ApiError as exc:
            metrics.LIVE_FRAMES.labels("rejected").inc()
            return error_message(exc.code, exc.message, frame)
        self.latest.put(Pending(frame, time.perf_counter(), jpeg=data))
        return None

    async def score_forever(self) -> None:
        """Take the newest frame, judge it, answer; again. Errors of one frame are
        answered as messages; SlowClient (the send timed out) ends the session."""
        loop = asyncio.get_running_loop()
        while True:
            pending = await self.latest.take()
            self.idle_scorer.clear()
            try:
                try:
                    message = await self.score(pending, loop)
                except (ApiError, MediaError) as exc:
                    error = from_media_error(exc) if isinstance(exc, MediaError) else exc
                    message = error_message(error.code, error.message, pending.frame)
                await self.send(message)
            finally:
                self.idle_scorer.set()

    async def score(self, pending: Pending, loop: asyncio.AbstractEventLoop) -> dict:
        if self.running is None or self.scores is None:
            await self.start(StartOptions())  # frames before any start: the defaults
        assert self.running is not None and self.scores is not None
        executor, extractor = self.analyzer.executor, self.analyzer.extractor
        image = pending.image
        if image is None:
            assert pending.jpeg is not None
            image = await loop.run_in_executor(executor, decode_jpeg, pending.frame, pending.jpeg)
        found = await loop.run_in_executor(executor, extractor.extract_frame, image)
        scores = await self.scores(np.stack(found.crops)) if found.crops else {}
        judged = self.running.judge_frame(pending.frame, found.faces, scores)
        if self.answer_id is not None:
            self.remember(pending.frame, found.crops, judged)
        lag = time.perf_counter() - pending.received
        metrics.LIVE_FRAMES.labels("scored").inc()
        metrics.LIVE_LAG.observe(lag)
        return {
            "event": "frame",
            "frame": pending.frame,
            "timestamp_s": image.timestamp_s if pending.image is not None else None,
            "width": image.image.shape[1],
            "height": image.image.shape[0],
            **judged,
            "threshold": self.running.judge.threshold,
            "dropped": self.latest.dropped,
            "lag_ms": round(lag * 1000, 1),
        }

    def remember(self, frame: int, crops: list[np.ndarray], judged: dict) -> None:
        """The frame's crops in their tracks' windows (as long as the judging's), and the
        running verdict: what keep_for_review stores."""
        assert self.running is not None
        for n, (crop, face) in enumerate(zip(crops, judged["faces"], strict=True)):
            window = self.faces.setdefault(face["track"], deque(maxlen=self.running.window))
            window.append(FaceCrop(frame, n, face["track"], face["p_fake"], face["models"], crop))
        self.faces = {t: w for t, w in self.faces.items() if t in self.running.windows}
        self.last = {k: v for k, v in judged.items() if k != "faces"}

    async def keep_for_review(self) -> None:
        """The running verdict kept under the announced answer_id, once, if a face was
        judged since the start (a live session's answer is its last verdict)."""
        answer_id, self.answer_id = self.answer_id, None
        last, faces, self.last, self.faces = self.last, self.faces, None, {}
        keeper = self.analyzer.keeper
        if answer_id is None or last is None or keeper is None or self.owner is None:
            return
        assert self.running is not None
        await keeper.live(last, faces, self.running.judge.threshold, self.owner, answer_id)

    async def close(self) -> None:
        self.halt_stream()
        await self.keep_for_review()
        if self.stream is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.stream
