"""Stream a multipart upload to a temporary file, never reading past the cap.

Starlette's form parser reads the whole body before the endpoint runs, so a
1 GB upload would be read (and spooled to disk) before it could be refused.
This feeds the body to python-multipart chunk by chunk instead, writing the
file part straight to disk and stopping at the first byte over the cap.
"""

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.server import metrics
from gateway.server.errors import ApiError

FILE_FIELDS = ("file", "video")  # "video" is the prototype's field name: its clients keep working
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the file


@dataclass(frozen=True)
class Upload:
    path: Path
    filename: str
    size: int
    seconds: float  # receiving it: the answer's upload timing
    sha256: str = ""  # hashed as it is written: a report names the exact file


class UploadSlots:
    """At most `limit` uploads received at once, /api/detect's and /api/jobs' together,
    apart from the analysis slots (an upload takes one of those only once complete);
    beyond, 429 at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            metrics.REJECTED.inc()
            raise ApiError(
                "too_many_uploads",
                "too many uploads are being received; retry shortly",
                {"Retry-After": "2"},
            )
        self.active += 1
        metrics.UPLOADS.set(self.active)
        try:
            yield
        finally:
            self.active -= 1
            metrics.UPLOADS.set(self.active)


def too_large(cap: int) -> ApiError:
    return ApiError("file_too_large", f"the upload is larger than {cap >> 20} MB")


def multipart_boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            "unsupported_content_type",
            "send the file as multipart/form-data in a field named 'file'",
        )
    return options[b"boundary"]


def declared_length(content_length: str | None) -> int | None:
    """The body's size as the client declares it (None: not declared)."""
    if content_length is None:
        return None
    try:
        return int(content_length)
    except ValueError:
        # malformed_upload, a 400 (a header is no query value: invalid_request is the 422 of
        # FastAPI's validation).
        raise ApiError("malformed_upload", "Content-Length is not a number") from None


def check_declared_length(content_length: str | None, cap: int) -> None:
    """Refuse at once when the client says the body is too big."""
    declared = declared_length(content_length)
    if declared is not None and declared > cap + FORM_OVERHEAD:
        raise too_large(cap)


@dataclass(frozen=True)
class Pace:
    """How long an upload may take: 408 past `timeout_s`, or as soon as fewer than
    `min_bytes_per_s` have arrived on average since `grace_s` after the start (a client
    trickling bytes holds a connection, an upload slot and a file)."""

    timeout_s: float = 120.0
    min_bytes_per_s: float = 0.0
    grace_s: float = 10.0


async def parse_body(
    chunks: AsyncIterator[bytes],
    parser: MultipartParser,
    pace: Pace,
    limit: int,
    over_limit: Callable[[], ApiError],
    done: Callable[[], bool] = lambda: False,
) -> float:
    """Feed the body to `parser` chunk by chunk at `pace`, refusing it (`over_limit()`) past
    `limit` bytes, until its end or until `done()`; the seconds it took. The errors are the
    API's: 408 too slow, 400 malformed; the caller removes what its parser wrote."""
    received, start = 0, time.perf_counter()
    body = aiter(chunks)
    try:
        async with asyncio.timeout(pace.timeout_s):
            while True:
                try:
                    chunk = await _next_chunk(body, start, received, pace)
                except StopAsyncIteration:
                    break
                received += len(chunk)
                if received > limit:
                    raise over_limit()
                parser.write(chunk)
                if done():
                    break  # the rest is form fields nobody reads
        if not done():
            parser.finalize()
    except TimeoutError:
        raise ApiError("upload_timeout", f"the upload took over {pace.timeout_s:.0f} s") from None
    except ApiError:
        raise
    except Exception as exc:  # python-multipart's parse errors, a client gone: a malformed body
        raise ApiError("malformed_upload", f"the multipart body is malformed: {exc}") from None
    return time.perf_counter() - start


class PartHeaders:
    """python-multipart's callbacks up to each part's headers, which they collect;
    subclasses decide what a part's data is for (`_headers_finished`, `_part_data`,
    `_part_end`)."""

    def __init__(self) -> None:
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def disposition(self) -> tuple[str, str]:
        """The part's form field name and its file name (for display only)."""
        _, disposition = parse_options_header(self._headers.get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("latin-1")
        return name, safe_filename(disposition.get(b"filename", b"").decode("utf-8", "replace"))

    def _part_begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        raise NotImplementedError

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        raise NotImplementedError

    def _part_end(self) -> None:
        raise NotImplementedError


class _FilePart(PartHeaders):
    """Keeps the first file field, skips the rest."""

    def __init__(self, cap: int, tmp_dir: Path | None) -> None:
        super().__init__()
        self.cap = cap
        self.tmp_dir = tmp_dir
        self.file: tempfile._TemporaryFileWrapper | None = None
        self.filename = ""
        self.size = 0
        self.digest = hashlib.sha256()
        self.done = False
        self._writing = False

    def _headers_finished(self) -> None:
        name, filename = self.disposition()
        self._writing = name in FILE_FIELDS and self.file is None and not self.done
        if self._writing:
            self.filename = filename
            self.file = tempfile.NamedTemporaryFile(  # noqa: SIM115 — closed in receive()
                dir=self.tmp_dir, prefix="upload-", delete=False
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._writing or self.file is None:
            return
        self.size += end - start
        if self.size > self.cap:
            raise too_large(self.cap)
        self.file.write(data[start:end])
        self.digest.update(data[start:end])

    def _part_end(self) -> None:
        if self._writing:
            self._writing, self.done = False, True


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    cap: int,
    tmp_dir: Path | None = None,
    timeout_s: float = 120.0,
    min_bytes_per_s: float = 0.0,
    grace_s: float = 10.0,
) -> Upload:
    """The uploaded file on disk; the caller removes it. Errors leave nothing behind.

    408 past `timeout_s`, or below `min_bytes_per_s` after `grace_s` (Pace)."""
    check_declared_length(content_length, cap)
    part = _FilePart(cap, tmp_dir)
    parser = MultipartParser(multipart_boundary(content_type), part.callbacks())
    try:
        seconds = await parse_body(
            chunks,
            parser,
            Pace(timeout_s, min_bytes_per_s, grace_s),
            cap + FORM_OVERHEAD,
            lambda: too_large(cap),
            lambda: part.done,
        )
        if part.file is None or not part.done:
            raise ApiError("missing_file", "no file in the form: send it in a field named 'file'")
    except BaseException:  # a cancelled request too: nothing is left behind
        _discard(part)
        raise
    part.file.close()
    return Upload(Path(part.file.name), part.filename, part.size, seconds, part.digest.hexdigest())


async def _next_chunk(body: AsyncIterator[bytes], start: float, received: int, pace: Pace) -> bytes:
    """The next chunk, waited for only until the average rate would fall below the pace's."""
    if pace.min_bytes_per_s <= 0:
        return await anext(body)
    behind_at = start + pace.grace_s + received / pace.min_bytes_per_s  # `received` too little
    try:
        async with asyncio.timeout(max(0.0, behind_at - time.perf_counter())):
            return await anext(body)
    except TimeoutError:
        raise ApiError(
            "upload_too_slow",
            f"the upload is slower than {pace.min_bytes_per_s / 1024:g} KiB/s",
        ) from None


def safe_filename(name: str) -> str:
    """The client's file name for display only: no folders, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in base if c.isprintable())[:200]


def _discard(part: _FilePart) -> None:
    if part.file is not None:
        part.file.close()
        Path(part.file.name).unlink(missing_ok=True)
