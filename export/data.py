"""Labelled media, as `make train` and `make calibrate` take it: a folder with `real/` and
`fake/` (videos or images, any depth; the folder is the label), and its digest."""

import hashlib
from pathlib import Path

from preprocess import assets

MEDIA_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".jpg", ".jpeg", ".png", ".webp"}
LABELS = {"real": 0, "fake": 1}


def labelled_files(data: Path) -> list[tuple[Path, int]]:
    files = [
        (path, label)
        for name, label in LABELS.items()
        for path in sorted((data / name).rglob("*"))
        if path.suffix.lower() in MEDIA_SUFFIXES
    ]
    if {label for _, label in files} != set(LABELS.values()):
        raise SystemExit(f"{data}: needs media in both real/ and fake/")
    return files


def data_digest(files: list[tuple[Path, int]], data: Path) -> str:
    """sha256 of the labelled file list (path under DIR, label, each file's sha256)."""
    lines = [
        f"{path.relative_to(data)}\t{label}\t{assets.sha256_of(path)}"
        for path, label in sorted(files)
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
