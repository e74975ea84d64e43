"""Spool a multipart body of several files to a job's folder, never holding one in memory.

The same streaming parser as gateway/uploads.py, keeping every file part:
each under the per-file cap of /api/detect, all of them under the job's caps.
Any error removes everything written so far: nothing is queued.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import ApiError
from gateway.uploads import FILE_FIELDS, FORM_OVERHEAD, multipart_boundary, safe_filename, too_large

FILES_FIELDS = (*FILE_FIELDS, "files")


@dataclass(frozen=True)
class Caps:
    file_bytes: int  # each file: /api/detect's cap
    files: int
    total_bytes: int


@dataclass(frozen=True)
class Spooled:
    path: Path
    filename: str
    size: int


def job_too_large(caps: Caps) -> ApiError:
    return ApiError(
        413,
        "job_too_large",
        f"a job takes at most {caps.files} files and {caps.total_bytes >> 20} MB in all",
    )


class _FileParts:
    """The parser's callbacks: each file field to its own numbered file in `folder`."""

    def __init__(self, caps: Caps, folder: Path) -> None:
        self.caps = caps
        self.folder = folder
        self.files: list[Spooled] = []
        self.total = 0
        self._out: BinaryIO | None = None
        self._name = ""
        self._size = 0
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
        _, disposition = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition.get(b"name", b"").decode("latin-1") not in FILES_FIELDS:
            return
        if len(self.files) >= self.caps.files:
            raise job_too_large(self.caps)
        self._name = safe_filename(disposition.get(b"filename", b"").decode("utf-8", "replace"))
        self._size = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._out = (self.folder / f"{len(self.files)}.upload").open("xb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self._size += end - start
        self.total += end - start
        if self._size > self.caps.file_bytes:
            raise too_large(self.caps.file_bytes)
        if self.total > self.caps.total_bytes:
            raise job_too_large(self.caps)
        self._out.write(data[start:end])

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self.files.append(Spooled(Path(self._out.name), self._name, self._size))
            self._out = None

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def spool_files(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    caps: Caps,
    folder: Path,
    timeout_s: float,
) -> list[Spooled]:
    """Every file of the form, on disk in `folder`; on any error `folder` is emptied."""
    declared = _declared(content_length)
    if declared is not None and declared > caps.total_bytes + caps.files * FORM_OVERHEAD:
        raise job_too_large(caps)
    parts = _FileParts(caps, folder)
    parser = MultipartParser(multipart_boundary(content_type), parts.callbacks())
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        discard(folder, parts)
        raise ApiError(408, "upload_timeout", f"the upload took over {timeout_s:.0f} s") from None
    except ApiError:
        discard(folder, parts)
        raise
    except Exception as exc:  # python-multipart's parse errors: a malformed body
        discard(folder, parts)
        raise ApiError(400, "malformed_upload", f"the multipart body is malformed: {exc}") from None
    if not parts.files:
        discard(folder, parts)
        raise ApiError(
            422, "missing_file", "no file in the form: send each in a field named 'file'"
        )
    return parts.files


def _declared(content_length: str | None) -> int | None:
    if content_length is None:
        return None
    try:
        return int(content_length)
    except ValueError:
        raise ApiError(400, "invalid_request", "Content-Length is not a number") from None


def discard(folder: Path, parts: "_FileParts | None" = None) -> None:
    if parts is not None:
        parts.close()
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        folder.rmdir()
