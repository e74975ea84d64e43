"""Concurrency of one analysis: its deadline and cancel flag (Stop), detection
running ahead of decoding (EarlyFaces) and faces scored in chunks as soon as they
are found (StreamedScoring), every thread joined before the analysis returns."""

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures import wait as wait_threads

import anyio
import numpy as np

from gateway.server.errors import ApiError
from gateway.server.verdict.answer import thumbnail
from preprocess.media import Frame, MediaLimitExceeded
from preprocess.pipeline import FaceExtractor, FrameFaces
from preprocess.sparse import EVERY_FRAME, SparseConfig, follow, interpolate, is_key


class Cancelled(Exception):
    """The analysis was stopped from outside: its client went away."""


def analysis_timeout(seconds: float) -> ApiError:
    return ApiError(
        "analysis_timeout",
        f"the analysis took over {seconds:g} s: send a shorter clip or ask for fewer frames",
    )


class Stop:
    """One request's deadline and cancel flag, checked by its threads before each frame:
    `check` raises what stopped it (a timeout, a cancel, a budget spent), so decoding and
    detection end within a frame."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._error: Exception | None = None
        self._lock = threading.Lock()

    def fail(self, error: Exception) -> None:
        with self._lock:
            self._error = self._error or error

    def cancel(self) -> None:
        self.fail(Cancelled("the analysis was cancelled"))

    def check(self) -> None:
        if self._error is None and time.monotonic() > self.deadline:
            self.fail(analysis_timeout(self.timeout_s))
        if self._error is not None:
            raise self._error

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


FaceKey = tuple[int, int]  # (frame index in the clip, face number in the frame)


FaceScores = dict[str, float]  # model (or "ensemble") -> P(fake)


class StreamedScoring:
    """Faces go to Triton in chunks as soon as they are found, so inference overlaps
    decoding and detection instead of waiting for the last frame."""

    def __init__(
        self,
        score: Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]],
        chunk: int,
        keep_crops: bool = False,
    ) -> None:
        self.score = score
        self.chunk = chunk
        self.keep_crops = keep_crops
        self.crops: dict[FaceKey, np.ndarray] = {}  # scored crops, kept only if keep_crops
        self.waiting: list[tuple[FaceKey, np.ndarray]] = []
        self.tasks: list[asyncio.Task[dict[FaceKey, FaceScores]]] = []
        self.done = 0  # faces scored so far
        self.progress: Callable[[int], Awaitable[None]] | None = None
        self.closed = False

    def add(self, found: FrameFaces) -> None:
        """One frame's faces (on the event loop); a full chunk is sent at once."""
        if self.closed:
            return
        self.waiting += [((found.index, i), crop) for i, crop in enumerate(found.crops)]
        if self.keep_crops:
            self.crops |= {(found.index, i): crop for i, crop in enumerate(found.crops)}
        while len(self.waiting) >= self.chunk:
            self._send(self.chunk)

    def _send(self, count: int) -> None:
        sent, self.waiting = self.waiting[:count], self.waiting[count:]
        self.tasks.append(asyncio.create_task(self._scored(sent)))

    async def _scored(self, sent: list[tuple[FaceKey, np.ndarray]]) -> dict[FaceKey, FaceScores]:
        result = await self.score(np.stack([crop for _, crop in sent]))
        self.done += len(sent)
        if self.progress is not None:
            await self.progress(self.done)
        return {key: {m: float(v[n]) for m, v in result.items()} for n, (key, _) in enumerate(sent)}

    async def results(
        self, progress: Callable[[int], Awaitable[None]]
    ) -> dict[FaceKey, FaceScores]:
        """Every face's scores, once all final frames' faces were added; reports progress.
        Faces of frames the reader dropped that arrive later are not scored."""
        self.progress, self.closed = progress, True
        if self.waiting:
            self._send(len(self.waiting))
        scored: dict[FaceKey, FaceScores] = {}
        for part in await asyncio.gather(*self.tasks):
            scored |= part
        return scored

    def cancel(self) -> None:
        """Stop what is still running; a failure nobody awaited is not worth a warning."""
        self.closed = True
        for task in self.tasks:
            if task.done() and not task.cancelled():
                task.exception()
            task.cancel()


class EarlyFaces:
    """Face detection started on each frame as the reader decodes it, so detection runs
    while the rest of the clip is decoding instead of after it; each frame's faces (with
    their crops) are handed to `found` on the event loop as soon as they are known, and
    only the faces (and thumbnails, if asked for) are kept: never the frame, nor a crop.

    At most `ahead` frames wait for a detection thread; beyond, the decoding thread detects
    the frame itself, so a fast decoder never piles up full-resolution frames."""

    def __init__(
        self,
        extractor: FaceExtractor,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
        found: Callable[[FrameFaces], None],
        stop: Stop,
        *,
        thumbnails: bool = False,
        max_faces: int = 512,
        ahead: int = 2,
        sparse: SparseConfig = EVERY_FRAME,
    ) -> None:
        self.extractor = extractor
        self.executor = executor
        self.loop = loop
        self.found = found
        self.stop = stop
        self.want_thumbnails = thumbnails
        self.max_faces = max_faces
        self.ahead = threading.BoundedSemaphore(ahead)
        self.threads: list[Future] = []  # every piece of work started: finish() awaits them
        self.started: dict[int, Future[FrameFaces]] = {}
        # The request's context (its trace span, its request id), for `found` and
        # the Triton calls it starts: worker threads do not carry it.
        self.context = contextvars.copy_context()
        self.thumbnails: dict[FaceKey, str] = {}
        self.face_count = 0
        self._lock = threading.Lock()
        self.sparse = sparse
        self.position = 0  # sampled frames handed over so far
        self.waiting: list[tuple[Frame, Future[FrameFaces]]] = []  # since the last key frame
        self.last_key: Future[FrameFaces] | None = None

    def submit(self, frame: Frame) -> None:
        """MediaReader's on_frame: called from the decoding thread. With sparse detection a
        frame between two key frames waits (at most `every - 1` of them) for the next key
        frame, whose thread gives it its faces."""
        self.stop.check()  # a stopped request starts nothing more
        if frame.index in self.started:  # a re-sampled truncated file hands it over again
            return
        position, self.position = self.position, self.position + 1
        if not is_key(position, self.sparse):
            waiting: Future[FrameFaces] = Future()
            self.waiting.append((frame, waiting))
            self.started[frame.index] = waiting
            return
        self._start_key(frame, inline_if_busy=True)

    def _start_key(self, frame: Frame, inline_if_busy: bool) -> None:
        between, self.waiting = self.waiting, []
        job = functools.partial(self._extract, frame, between=between, previous=self.last_key)
        if self.ahead.acquire(blocking=False):
            future = self.executor.submit(job, True)
        elif not inline_if_busy:
            future = self.executor.submit(job, False)
        else:
            future = Future()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(job(False))
            except Exception as exc:
                future.set_exception(exc)
        self.threads.append(future)
        self.started[frame.index] = future
        self.last_key = future

    def _extract(
        self,
        frame: Frame,
        queued: bool,
        between: Sequence[tuple[Frame, "Future[FrameFaces]"]] = (),
        previous: "Future[FrameFaces] | None" = None,
    ) -> FrameFaces:
        """One key frame's faces, then those of the frames waiting before it; each frame's
        crops go to `found` (the event loop, which owns the scoring); only the faces are
        returned, and kept."""
        try:
            try:
                self.stop.check()
                faces = self.extractor.extract_frame(frame)
            finally:
                if queued:
                    self.ahead.release()
            if between:
                self._fill(between, previous, faces)
            return self._found(faces)
        except BaseException as exc:
            for _, waiting in between:
                settle(waiting, exc)
            raise

    def _fill(
        self,
        between: Sequence[tuple[Frame, "Future[FrameFaces]"]],
        previous: "Future[FrameFaces] | None",
        key: FrameFaces,
    ) -> None:
        """The faces of the frames between two key frames: carried along the key frames'
        matched boxes, or detected where the two key frames disagree."""
        # The previous key frame was submitted first, so it is running or done: no deadlock.
        before = previous.result() if previous is not None else None
        pairs = None if before is None else follow(before.faces, key.faces, self.sparse.min_iou)
        for n, (frame, waiting) in enumerate(between, 1):
            self.stop.check()
            if pairs is None or before is None:
                faces = self.extractor.extract_frame(frame)
            else:
                span = key.timestamp_s - before.timestamp_s
                t = (frame.timestamp_s - before.timestamp_s) / span if span > 0 else 0.0
                t = t if 0 < t < 1 else n / (len(between) + 1)
                moved = interpolate(before.faces, key.faces, pairs, t)
                faces = self.extractor.crop_faces(frame, moved)
            settle(waiting, self._found(faces))

    def _found(self, faces: FrameFaces) -> FrameFaces:
        with self._lock:
            self.face_count += len(faces.faces)
            over = self.face_count > self.max_faces
        if over:
            self.stop.fail(
                MediaLimitExceeded(
                    f"more than {self.max_faces} faces in the frames sampled: ask for fewer "
                    "frames (or a lower max_faces per frame)"
                )
            )
            self.stop.check()
        if self.want_thumbnails:
            for i, crop in enumerate(faces.crops):
                self.thumbnails[(faces.index, i)] = thumbnail(crop)
        self.loop.call_soon_threadsafe(self.found, faces, context=self.context)
        return FrameFaces(faces.index, faces.timestamp_s, faces.faces, [])

    async def faces(self, indices: list[int]) -> list[FrameFaces]:
        """The faces of the reader's final frames, without their crops (sent to scoring)."""
        if self.waiting:  # the clip ended between key frames: its last frame is one
            last, _ = self.waiting.pop()
            self._start_key(last, inline_if_busy=False)
        found = [await asyncio.wrap_future(self.started[index]) for index in indices]
        self.stop.check()  # a budget spent by a frame the reader had dropped
        return found

    async def finish(self) -> None:
        """Until every thread this request started has returned, whatever happens to the
        caller meanwhile: the request's admission slot is free only once its CPU is."""
        for future in self.threads:
            future.cancel()  # those not started yet
        if all(f.done() for f in self.threads):
            return
        cancelled = False
        with anyio.CancelScope(shield=True):
            waiting = asyncio.ensure_future(asyncio.to_thread(self._wait_threads))
            while not waiting.done():
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    cancelled = True  # a second cancel: still wait, then pass it on
        if cancelled:
            raise asyncio.CancelledError

    def _wait_threads(self) -> None:
        # The reader may start one more piece of work before it sees the stop: wait for it too.
        while pending := [f for f in self.threads if not f.done()]:
            wait_threads(pending)


def settle(future: "Future[FrameFaces]", outcome: FrameFaces | BaseException) -> None:
    """Give a waiting frame its faces (or its key frame's failure), once."""
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass  # cancelled meanwhile: nobody waits for it
