"""Spool a multipart body of several files to a job's folder, never holding one in memory.

The same streaming parser as gateway/uploads.py, keeping every file part:
each under the per-file cap of /api/detect, all of them under the job's caps.
Any error removes everything written so far: nothing is queued.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser

from gateway.errors import ApiError
from gateway.uploads import FILE_FIELDS, FORM_OVERHEAD, PartHeaders, multipart_boundary, too_large

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
    sha256: str  # hashed as it was written: the answer (and its report) names the exact file


def job_too_large(caps: Caps) -> ApiError:
    return ApiError(
        413,
        "job_too_large",
        f"a job takes at most {caps.files} files and {caps.total_bytes >> 20} MB in all",
    )


class _FileParts(PartHeaders):
    """Each file field to its own numbered file in `folder`, hashed as it is written."""

    def __init__(self, caps: Caps, folder: Path) -> None:
        super().__init__()
        self.caps = caps
        self.folder = folder
        self.files: list[Spooled] = []
        self.total = 0
        self._out: BinaryIO | None = None
        self._name = ""
        self._size = 0
        self._digest = hashlib.sha256()

    def _headers_finished(self) -> None:
        name, filename = self.disposition()
        if name not in FILES_FIELDS:
            return
        if len(self.files) >= self.caps.files:
            raise job_too_large(self.caps)
        self._name, self._size, self._digest = filename, 0, hashlib.sha256()
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
        self._digest.update(data[start:end])

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            spooled = Spooled(
                Path(self._out.name), self._name, self._size, self._digest.hexdigest()
            )
            self.files.append(spooled)
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
