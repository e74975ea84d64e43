"""Spool a multipart body of several files to a job's folder, never holding one in memory.

The same streaming parser, deadline and minimum rate as gateway/server/uploads.py (its
`parse_body`), keeping every file part: each under the per-file cap of /api/detect, all
of them under the job's caps. Any error removes everything written so far: nothing is
queued.
"""

import hashlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser

from gateway.server.errors import ApiError
from gateway.server.uploads import (
    FILE_FIELDS,
    FORM_OVERHEAD,
    Pace,
    PartHeaders,
    declared_length,
    multipart_boundary,
    parse_body,
    too_large,
)

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
    pace: Pace,
) -> list[Spooled]:
    """Every file of the form, on disk in `folder`, received at `pace` (gateway/server/uploads.py's
    deadline and minimum rate, 408 otherwise); on any error `folder` is removed."""
    limit = caps.total_bytes + caps.files * FORM_OVERHEAD
    declared = declared_length(content_length)
    if declared is not None and declared > limit:
        raise job_too_large(caps)
    parts = _FileParts(caps, folder)
    parser = MultipartParser(multipart_boundary(content_type), parts.callbacks())
    try:
        await parse_body(chunks, parser, pace, limit, lambda: job_too_large(caps))
        if not parts.files:
            raise ApiError("missing_file", "no file in the form: send each in a field named 'file'")
    except BaseException:  # a cancelled request too: nothing is left behind
        discard(folder, parts)
        raise
    return parts.files


def discard(folder: Path, parts: "_FileParts | None" = None) -> None:
    if parts is not None:
        parts.close()
    shutil.rmtree(folder, ignore_errors=True)
