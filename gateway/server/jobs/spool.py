"""What is a job's own in receiving its files: its form (many files, each under
/api/detect's cap, all under the job's caps, a file too many refused) and its folder, each
file numbered in it. gateway/server/uploads.py's `receive_files` does the receiving: any
error removes the folder, so nothing is queued."""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.server.errors import ApiError
from gateway.server.uploads import FILE_FIELDS, Form

FILES_FIELDS = (*FILE_FIELDS, "files")


def job_form(file_bytes: int, files: int, total_bytes: int) -> Form:
    """A job's form: read to its end, `job_too_large` past its caps."""

    def too_much() -> ApiError:
        return ApiError(
            "job_too_large",
            f"a job takes at most {files} files and {total_bytes >> 20} MB in all",
        )

    return Form(file_bytes, files, total_bytes, FILES_FIELDS, read_all=True, too_much=too_much)


@dataclass(frozen=True)
class JobFolder:
    """The job's files, numbered in its folder; a refused upload removes the folder."""

    folder: Path

    def open(self, index: int) -> BinaryIO:
        self.folder.mkdir(parents=True, exist_ok=True)
        return (self.folder / f"{index}.upload").open("xb")

    def discard(self, written: list[Path]) -> None:
        discard(self.folder)


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
