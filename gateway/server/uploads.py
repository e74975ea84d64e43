"""Stream a multipart upload's files to disk, never reading past the caps: /api/detect's
one file, a job's many (gateway/server/jobs/spool.py says where they go).

Starlette's form parser reads the whole body before the endpoint runs, so a
1 GB upload would be read (and spooled to disk) before it could be refused.
This feeds the body to python-multipart chunk by chunk instead, writing each
file part straight to disk and stopping at the first byte over a cap.
"""

import asyncio
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from python_multipart.multipart import MultipartParser, parse_options_header

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


def too_large(cap: int) -> ApiError:
    return ApiError("file_too_large", f"the upload is larger than {cap >> 20} MB")


def multipart_boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            "unsupported_content_type",
            "send the file as multipart/form-data in a field named 'file', or its URL as "
            "application/json (gateway/README.md, Media by URL)",
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
                    chunk = await next_chunk(body, start, received, pace)
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


class Spool(Protocol):
    """Where a form's files are written, and how they go again when the form is refused."""

    def open(self, index: int) -> BinaryIO: ...

    def discard(self, written: list[Path]) -> None: ...


@dataclass(frozen=True)
class TempFiles:
    """Each file a temporary file in `folder` (None: the system's), removed by the caller."""

    folder: Path | None = None

    def open(self, index: int) -> BinaryIO:
        return tempfile.NamedTemporaryFile(  # closed by the receiver
            dir=self.folder, prefix="upload-", delete=False
        )

    def discard(self, written: list[Path]) -> None:
        for path in written:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Form:
    """What one multipart form may carry: up to `files` files, each in one of `fields` and
    under `file_bytes`, all of them under `total_bytes` (0: `files` times `file_bytes`).
    /api/detect's is one file: reading stops once it is complete, the rest of the body is
    form fields nobody reads. A job's (`read_all`) is read to its end, and a file too many
    is refused with `too_much()`, as a body over its caps is (by default, the file's 413)."""

    file_bytes: int
    files: int = 1
    total_bytes: int = 0
    fields: tuple[str, ...] = FILE_FIELDS
    read_all: bool = False
    too_much: Callable[[], ApiError] | None = None

    @property
    def total(self) -> int:
        return self.total_bytes or self.files * self.file_bytes

    def body_limit(self) -> int:
        """The most bytes the body may have: the files and each one's multipart framing."""
        return self.total + self.files * FORM_OVERHEAD

    def refusal(self) -> ApiError:
        return self.too_much() if self.too_much else too_large(self.file_bytes)

    def missing(self) -> ApiError:
        which = "it" if self.files == 1 else "each"
        return ApiError(
            "missing_file", f"no file in the form: send {which} in a field named 'file'"
        )


@dataclass(frozen=True)
class _Received:
    path: Path
    filename: str
    size: int
    sha256: str


class _FileParts(PartHeaders):
    """The form's file parts, each to its own file of the spool, hashed as it is written."""

    def __init__(self, form: Form, spool: Spool) -> None:
        super().__init__()
        self.form = form
        self.spool = spool
        self.files: list[_Received] = []
        self.written: list[Path] = []
        self.total = 0
        self._out: BinaryIO | None = None
        self._name = ""
        self._size = 0
        self._digest = hashlib.sha256()

    def full(self) -> bool:
        return len(self.files) >= self.form.files

    def _headers_finished(self) -> None:
        name, filename = self.disposition()
        if name not in self.form.fields:
            return
        if self.full():
            if self.form.read_all:
                raise self.form.refusal()
            return  # a file after /api/detect's one, in the same chunk: not read
        self._name, self._size, self._digest = filename, 0, hashlib.sha256()
        self._out = self.spool.open(len(self.files))
        self.written.append(Path(self._out.name))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self._size += end - start
        self.total += end - start
        if self._size > self.form.file_bytes:
            raise too_large(self.form.file_bytes)
        if self.total > self.form.total:
            raise self.form.refusal()
        self._out.write(data[start:end])
        self._digest.update(data[start:end])

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            path = Path(self._out.name)
            self.files.append(_Received(path, self._name, self._size, self._digest.hexdigest()))
            self._out = None

    def close(self) -> None:
        """A part the body ended in the middle of: closed and removed (never a file)."""
        if self._out is not None:
            self._out.close()
            Path(self._out.name).unlink(missing_ok=True)
            self._out = None


async def receive_files(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    form: Form,
    spool: Spool,
    pace: Pace,
) -> list[Upload]:
    """Every file of the form on disk, received at `pace` (408 past its deadline or below
    its minimum rate); the caller removes them. On any error, nothing is left behind."""
    declared = declared_length(content_length)
    if declared is not None and declared > form.body_limit():
        raise form.refusal()
    parts = _FileParts(form, spool)
    parser = MultipartParser(multipart_boundary(content_type), parts.callbacks())
    done = (lambda: False) if form.read_all else parts.full
    try:
        seconds = await parse_body(chunks, parser, pace, form.body_limit(), form.refusal, done)
        if not parts.files:
            raise form.missing()
    except BaseException:  # a cancelled request too
        parts.close()
        spool.discard(parts.written)
        raise
    parts.close()
    return [Upload(f.path, f.filename, f.size, seconds, f.sha256) for f in parts.files]


async def next_chunk(body: AsyncIterator[bytes], start: float, received: int, pace: Pace) -> bytes:
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
