"""Find an asset file: the search path first, then (if allowed) download it.

The resolver that export/ (weights, export/assets.toml), preprocess/ (face
detectors, preprocess/assets.toml) and the gateway share; each manifest lives
beside its user, which passes its path to load_manifest().

The search path is $DEEPFAKE_ASSETS (colon-separated folders, searched
recursively) followed by the download cache. A file is accepted only when its
sha256 matches the manifest, wherever it came from, so a stale or tampered
copy is an error rather than a silently different model.
"""

import functools
import hashlib
import os
import shutil
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_SEARCH_PATH = "DEEPFAKE_ASSETS"
DOWNLOAD_TIMEOUT_S = 60  # per socket operation: a stalled server fails, a slow one does not
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepfake-detect"


class AssetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Asset:
    name: str
    file: str
    url: str
    sha256: str
    licence: str
    source: str


def load_manifest(path: Path) -> dict[str, Asset]:
    with path.open("rb") as f:
        return {name: Asset(name=name, **fields) for name, fields in tomllib.load(f).items()}


def search_path() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(ENV_SEARCH_PATH, "").split(":") if p]
    return [*dirs, CACHE_DIR]


def sha256_of(path: Path) -> str:
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Hashed once per version of a file (size and mtime in the key): one export run reads a
    member's graph several times (its int8 copy, its bf16 check, its cpu_fast config)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_local(asset: Asset, dirs: list[Path]) -> Path | None:
    """The first file named `asset.file` under `dirs` whose sha256 matches."""
    mismatched = []
    for root in dirs:
        for candidate in sorted(root.rglob(asset.file)) if root.is_dir() else []:
            if not asset.sha256 or sha256_of(candidate) == asset.sha256:
                return candidate
            mismatched.append(candidate)
    if mismatched:
        raise AssetError(f"{asset.name}: sha256 differs from the manifest for {mismatched}")
    return None


def download(asset: Asset, cache: Path = CACHE_DIR) -> Path:
    if not (asset.url and asset.sha256):
        raise AssetError(f"{asset.name}: no URL with a pinned sha256 to download from")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / asset.file
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with (
            urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise AssetError(f"{asset.name}: download from {asset.url} failed: {exc}") from exc
    if (got := sha256_of(partial)) != asset.sha256:
        partial.unlink()
        raise AssetError(f"{asset.name}: downloaded sha256 {got} != {asset.sha256}")
    return partial.rename(target)


def resolve(asset: Asset, allow_download: bool = True) -> Path:
    """A verified local copy of `asset`, downloading it only if none is found."""
    dirs = search_path()
    if found := find_local(asset, dirs):
        return found
    if allow_download and asset.url and asset.sha256:
        return download(asset)
    searched = ", ".join(str(d) for d in dirs)
    raise AssetError(f"{asset.name}: {asset.file} not found in {searched}")
