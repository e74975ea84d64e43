"""Live analysis: video judged while it plays, frame by frame.

WebSocket /api/live: binary messages are JPEG frames (numbered 0, 1, 2… in arrival
order: the client's sequence numbers), text messages JSON control. POST /api/live reads a
stream URL and answers the same messages as NDJSON. Every judged frame answers its faces,
each person's (track's) score over a sliding window of their last frames (the confident
strategy, as for files) and a running verdict.

Scoring never queues: one frame waits at most, and a newer one replaces it (the older is
counted in `dropped`), so a client sending faster than the models score gets answers about
its newest frames, with a lag bounded by one scoring, not a growing backlog.

Stream URLs are read by threads of their own pool (StreamReaders, live_max_stream_readers),
one reader per session at most: a source that never answers holds one of them for up to
live_stream_timeout_s, never a thread the rest of the gateway needs. Every message of a
socket counts against its key's rate limit, as a request would; control messages also
against the session's own.
"""

import asyncio
import contextlib
import io
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import numpy as np
from fastapi import WebSocket
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect

from gateway.server import metrics
from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError, from_media_error
from gateway.server.options import parse_models
from gateway.server.security import RateLimiter, key_id, key_matches, presented_key
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import Strategy, vote
from gateway.server.verdict.selection import Selection, select_models
from preprocess.faces import Face
from preprocess.media import MediaError, MediaLimits
from preprocess.stream import StreamPolicy, StreamRead, read_stream
from preprocess.tracks import Tracker
from preprocess.video import Frame

log = logging.getLogger("gateway")
JPEG_MAGIC = b"\xff\xd8\xff"

# WebSocket close codes (4000-4999 are the application's; the last three digits echo HTTP).
CLOSE_NORMAL = 1000  # after {"stop": true}, the stream's end or the session time limit
CLOSE_SLOW_CLIENT = 1008  # answers unread for live_send_timeout_s
# 1009 (message too big): sent by uvicorn itself, as soon as a message's header announces
# more than Settings.live_max_message_bytes; the message is never buffered.
CLOSE_UNAUTHORIZED = 4401  # missing or wrong API key: closed before any frame is read
CLOSE_FORBIDDEN_ORIGIN = 4403  # a browser page of another origin (not in cors_origins)
CLOSE_IDLE = 4408  # no message (and no stream being read) for live_idle_timeout_s
CLOSE_BUSY = 4429  # too many live sessions, in all or for this key


class StartOptions(BaseModel):
    """`{"start": {...}}`, or the body of POST /api/live (where `url` is required)."""

    model_config = ConfigDict(extra="forbid")

    models: Annotated[
        list[str] | str | None, Field(description="members to call; default the ensemble")
    ] = None
    threshold: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    window: Annotated[int | None, Field(ge=1, le=300, description="frames per track")] = None
    url: Annotated[str | None, Field(max_length=2048, description="rtsp, rtmp, HLS, http")] = None
    fps: Annotated[float | None, Field(gt=0, le=30, description="stream URLs: frames/s")] = None
    duration_s: Annotated[float | None, Field(gt=0, description="stream URLs: how long")] = None


class UrlOptions(StartOptions):
    """The body of POST /api/live: the same options, the URL required (so documented)."""

    url: Annotated[str, Field(max_length=2048, description="rtsp, rtmp, HLS, http")]


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: StartOptions | None = None
    stop: bool = False


def error_message(code: str, message: str, frame: int | None = None) -> dict:
    event = {"event": "error", "error": {"code": code, "message": message}}
    return event if frame is None else event | {"frame": frame}


class SlowClient(Exception):
    """The client did not take an answer within live_send_timeout_s."""


# --- judging: faces -> tracks -> sliding windows -> running verdict -----------------------


@dataclass
class LiveJudge:
    """Per person, the confident strategy over their last `window` frames, per model, and
    the models' vote; the running verdict is the most fake person's, as for a file."""

    selection: Selection
    threshold: float
    window: int
    strategy: Strategy = field(default_factory=Strategy)
    tracker: Tracker = field(default_factory=Tracker)
    windows: dict[int, deque[tuple[int, dict[str, float]]]] = field(default_factory=dict)
    position: int = 0  # frames judged: the tracker's clock (dropped frames are not gaps)

    def judge(self, frame: int, faces: list[Face], scores: dict[str, np.ndarray]) -> dict:
        members, weights = self.selection.members, self.selection.weights
        ids = self.tracker.add(self.position, faces)
        self.tracker.forget_closed(self.position, keep=1)
        self.position += 1
        open_ids = {t.id for t in self.tracker.tracks}
        self.windows = {i: w for i, w in self.windows.items() if i in open_ids}
        answered = []
        for n, (face, track) in enumerate(zip(faces, ids, strict=True)):
            models = {m: float(scores[m][n]) for m in members}
            ensemble = scores.get("ensemble")
            p_fake = (
                float(ensemble[n])
                if ensemble is not None
                else vote(models, weights, self.selection.groups)
            )
            self.windows.setdefault(track, deque(maxlen=self.window)).append((frame, models))
            answered.append(
                {
                    "box": [round(float(v), 1) for v in face.box],
                    "track": track,
                    "p_fake": p_fake,
                    "models": models,
                }
            )
        tracks = [self.track_score(i, w) for i, w in sorted(self.windows.items())]
        decisive = max(tracks, key=lambda t: t["score"], default=None)
        if decisive is None:
            verdict, score = "no_face", None
        else:
            score = decisive["score"]
            verdict = "fake" if score >= self.threshold else "real"
        return {"faces": answered, "tracks": tracks, "verdict": verdict, "score": score}

    def track_score(self, track: int, window: deque[tuple[int, dict[str, float]]]) -> dict:
        models = {
            m: self.strategy(np.array([s[m] for _, s in window])) for m in self.selection.members
        }
        return {
            "id": track,
            "score": vote(models, self.selection.weights, self.selection.groups),
            "models": models,
            "frames": [f for f, _ in window],
        }


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


def check_jpeg(data: bytes, max_bytes: int, limits: MediaLimits) -> None:
    """Raises ApiError unless `data` is a JPEG within the caps; reads only its header."""
    if len(data) > max_bytes:
        raise ApiError(
            413, "frame_too_large", f"frame of {len(data)} bytes is over the cap of {max_bytes}"
        )
    if not data.startswith(JPEG_MAGIC):
        raise ApiError(415, "not_jpeg", "binary messages must be JPEG frames")
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "media_limit_exceeded", f"frame too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(422, "undecodable_frame", f"could not read the JPEG: {exc}") from None
    try:
        limits.check_size(*size)
    except MediaError as exc:
        raise from_media_error(exc) from None


def decode_jpeg(frame: int, data: bytes) -> Frame:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Frame(frame, 0.0, np.array(image.convert("RGB")))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(422, "undecodable_frame", f"could not decode the JPEG: {exc}") from None


# --- stream readers: threads of their own, bounded ----------------------------------------

T = TypeVar("T")
READER_STOP_GRACE_S = 0.5  # a reader between frames notices its stop Event well within this


class StreamReaders:
    """The threads that read stream URLs (`read_stream` blocks): a pool of their own, so a
    source that never answers holds one of these, never a thread of the default executor
    (the job store, upload sniffing and URL checks use that). A reader is claimed before a
    stream is started and refused, not queued, when all are taken."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="live-reader")
        self.lock = threading.Lock()
        self.running = 0  # claimed and not yet returned

    def claim(self) -> "ReaderSlot | None":
        with self.lock:
            if self.running >= self.size:
                return None
            self.running += 1
        return ReaderSlot(self)

    def release(self) -> None:
        with self.lock:
            self.running -= 1


class ReaderSlot:
    """One claimed reader: free again when its thread returns (however long the source
    keeps it), or at once if it was never run (its task cancelled before it began)."""

    def __init__(self, readers: StreamReaders) -> None:
        self.readers = readers
        self.future: Future | None = None
        self.freed = False
        self.lock = threading.Lock()

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """`call(*args)` on the slot's thread. Cancelling the caller leaves the thread to
        end by itself (its stop Event, its timeouts); the slot stays taken until it does."""
        self.future = self.readers.executor.submit(self.call, call, *args)
        # cancelled before a thread took it: call never runs, so nothing else frees the slot
        self.future.add_done_callback(lambda f: self.free() if f.cancelled() else None)
        return await asyncio.wrap_future(self.future)

    def call(self, call: Callable[..., T], *args: object) -> T:
        try:
            return call(*args)
        finally:
            self.free()

    def task_done(self) -> None:
        if self.future is None:
            self.free()

    def free(self) -> None:
        with self.lock:
            if self.freed:
                return
            self.freed = True
        self.readers.release()

    async def stopped(self, grace_s: float) -> bool:
        """Whether the reader has returned, waiting up to `grace_s` (its thread cannot be
        awaited: polled)."""
        deadline = time.monotonic() + grace_s
        while not self.freed and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.freed


def stream_busy(message: str, retry_s: float) -> ApiError:
    return ApiError(503, "stream_busy", message, {"Retry-After": str(math.ceil(retry_s))})


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
                429,
                "rate_limited",
                f"too many requests for this API key; retry in {math.ceil(wait)} s",
            )
        if control and (wait := self.controls.wait_s("session")) > 0:
            return ApiError(
                429,
                "rate_limited",
                f"too many control messages on this session; retry in {math.ceil(wait)} s",
            )
        return None


# --- a session ---------------------------------------------------------------------------

Send = Callable[[dict], Awaitable[None]]


class LiveSession:
    """One client's live analysis, whatever carries it (a WebSocket or NDJSON)."""

    def __init__(
        self, analyzer: Analyzer, settings: Settings, send: Send, readers: StreamReaders
    ) -> None:
        self.analyzer = analyzer
        self.settings = settings
        self.send = send
        self.readers = readers
        self.slot: ReaderSlot | None = None  # the last stream's reader: one at a time
        self.latest = Latest()
        self.judge: LiveJudge | None = None
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

    @property
    def reading(self) -> bool:
        return self.stream is not None and not self.stream.done()

    async def start(self, options: StartOptions) -> None:
        """Raises ApiError or MediaError on bad options; a new start replaces the last."""
        models = options.models
        requested = parse_models(",".join(models) if isinstance(models, list) else models)
        selection = select_models(await self.analyzer.server.ensemble(), requested)
        server = self.analyzer.server
        score = server.score_with_ensemble if selection.via_ensemble else server.score_with_members
        url = None
        if options.url is not None:
            url = await asyncio.to_thread(self.policy.resolve, options.url)  # a checked Target
        self.halt_stream()
        slot = None if url is None else await self.claim_reader()
        self.scores = lambda crops: score(crops, selection.members)
        self.judge = LiveJudge(
            selection,
            self.settings.threshold if options.threshold is None else options.threshold,
            options.window or self.settings.live_window,
            self.analyzer.strategy,
        )
        started = {
            "event": "started",
            "models": selection.members,
            "skipped": selection.skipped,  # members that cannot vote, not run
            "threshold": self.judge.threshold,
            "window": self.judge.window,
        }
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
        slot = self.readers.claim()
        if slot is None:
            raise stream_busy(
                f"all {self.readers.size} stream readers of the gateway are busy; retry shortly",
                timeout_s,
            )
        return slot

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
        if self.judge is None or self.scores is None:
            await self.start(StartOptions())  # frames before any start: the defaults
        assert self.judge is not None and self.scores is not None
        executor, extractor = self.analyzer.executor, self.analyzer.extractor
        image = pending.image
        if image is None:
            assert pending.jpeg is not None
            image = await loop.run_in_executor(executor, decode_jpeg, pending.frame, pending.jpeg)
        found = await loop.run_in_executor(executor, extractor.extract_frame, image)
        scores = await self.scores(np.stack(found.crops)) if found.crops else {}
        judged = self.judge.judge(pending.frame, found.faces, scores)
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
            "threshold": self.judge.threshold,
            "dropped": self.latest.dropped,
            "lag_ms": round(lag * 1000, 1),
        }

    async def close(self) -> None:
        self.halt_stream()
        if self.stream is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.stream


# --- admission: sessions in all and per client -------------------------------------------


class LiveSessions:
    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.by_client: Counter[str] = Counter()

    def enter(self, client: str) -> bool:
        if sum(self.by_client.values()) >= self.limit:
            return False
        if self.by_client[client] >= self.per_client:
            return False
        self.by_client[client] += 1
        metrics.LIVE_SESSIONS.inc()
        return True

    def leave(self, client: str) -> None:
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
        metrics.LIVE_SESSIONS.dec()

    def busy(self) -> ApiError:
        return ApiError(
            429, "too_many_sessions", "too many live sessions; retry later", {"Retry-After": "5"}
        )


def socket_client(websocket: WebSocket, keys: list[str]) -> str | None:
    """Who is calling, or None for a missing or wrong key. Browsers cannot set headers on
    a WebSocket, so the key may also come as the `api_key` query parameter."""
    key = presented_key(Headers(scope=websocket.scope)) or websocket.query_params.get("api_key")
    if keys:
        if key is None or not key_matches(key, keys):
            return None
        return key_id(key)
    return "ip:" + (websocket.client.host if websocket.client else "unknown")


async def serve_socket(
    websocket: WebSocket,
    analyzer: Analyzer,
    settings: Settings,
    readers: StreamReaders,
    quota: SocketQuota,
) -> tuple[int, str]:
    """Run one session on an accepted socket; the close code and reason to end it with."""

    async def send(message: dict) -> None:
        try:
            async with asyncio.timeout(settings.live_send_timeout_s):
                await websocket.send_text(json.dumps(message, separators=(",", ":")))
        except TimeoutError:
            raise SlowClient from None

    session = LiveSession(analyzer, settings, send, readers)
    scorer = asyncio.create_task(session.score_forever())
    receiver = asyncio.create_task(receive(websocket, session, settings, quota))
    ended = asyncio.create_task(session.ended.wait())
    try:
        done, _ = await asyncio.wait(
            {scorer, receiver, ended},
            timeout=settings.live_max_session_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            await send({"event": "end", "reason": "session_time_limit"})
            return CLOSE_NORMAL, "session time limit"
        if ended in done:
            return CLOSE_NORMAL, "stream ended"
        task = scorer if scorer in done else receiver
        if isinstance(task.exception(), SlowClient):
            return CLOSE_SLOW_CLIENT, "answers not read in time"
        if task.exception() is not None:
            if not isinstance(task.exception(), WebSocketDisconnect):
                log.error("live session failed", exc_info=task.exception())
            return 1011, "internal error"
        return task.result()
    except SlowClient:
        return CLOSE_SLOW_CLIENT, "answers not read in time"
    finally:
        for task in (scorer, receiver, ended):
            task.cancel()
        await asyncio.gather(scorer, receiver, ended, return_exceptions=True)
        await session.close()


async def receive(
    websocket: WebSocket, session: LiveSession, settings: Settings, quota: SocketQuota
) -> tuple[int, str]:
    """Read the client's messages until it stops, leaves or falls idle. A message over a
    rate limit is answered with a rate_limited error (a frame's numbered) and not acted on."""
    while True:
        try:
            async with asyncio.timeout(settings.live_idle_timeout_s):
                message = await websocket.receive()
        except TimeoutError:
            if session.reading:
                continue  # a stream URL is being read: the client only listens
            return CLOSE_IDLE, "idle"
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("bytes") is not None:
            refused = quota.refusal(control=False)
            if (error := session.add_jpeg(message["bytes"], refused)) is not None:
                await session.send(error)
            continue
        try:
            control, problem = Control.model_validate_json(message.get("text") or ""), ""
        except ValidationError as exc:
            control, problem = None, control_problem(exc)
        stopping = control is not None and control.stop  # a stop is never refused
        if not stopping and (refused := quota.refusal(control=True)) is not None:
            await session.send(error_message(refused.code, refused.message))
            continue
        if control is None:
            await session.send(error_message("bad_control", problem))
            continue
        if control.stop:
            await session.send(
                {"event": "end", "reason": "stopped", "dropped": session.latest.dropped}
            )
            return CLOSE_NORMAL, "stopped"
        if control.start is not None:
            try:
                await session.start(control.start)
            except (ApiError, MediaError) as exc:
                error = from_media_error(exc) if isinstance(exc, MediaError) else exc
                await session.send(error_message(error.code, error.message))


def control_problem(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )
    return 'control messages are JSON: {"start": {...}} or {"stop": true}; ' + problems


async def start_ndjson(
    analyzer: Analyzer,
    settings: Settings,
    readers: StreamReaders,
    options: StartOptions,
    release: Callable[[], None],
) -> AsyncIterator[bytes]:
    """POST /api/live: the session started (bad options and URLs raise here, before the
    answer begins), then its messages as NDJSON lines until the stream ends. The session
    (its slot, its reader thread) ends with the stream, or when a client leaves answers
    unread for live_send_timeout_s, whether or not the client ever reads again."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=4)

    async def send(message: dict) -> None:
        try:
            async with asyncio.timeout(settings.live_send_timeout_s):
                await queue.put(message)
        except TimeoutError:
            raise SlowClient from None

    session = LiveSession(analyzer, settings, send, readers)
    scorer = asyncio.create_task(session.score_forever())
    try:
        await session.start(options)
    except BaseException:
        scorer.cancel()
        await session.close()
        raise
    assert session.stream is not None

    async def run() -> None:
        ended = asyncio.create_task(session.ended.wait())
        try:
            await asyncio.wait({ended, scorer, session.stream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ended, scorer):
                task.cancel()
            await session.close()
            release()
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    runner = asyncio.create_task(run())

    async def lines() -> AsyncIterator[bytes]:
        try:
            while (message := await queue.get()) is not None:
                yield (json.dumps(message, separators=(",", ":")) + "\n").encode()
                if runner.done() and queue.empty():
                    break
        finally:
            runner.cancel()
            await asyncio.gather(runner, scorer, return_exceptions=True)

    return lines()
