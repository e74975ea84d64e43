"""preprocess/assets.py, the resolver export/ and preprocess/ share: search path
first, sha256 always, real downloads over HTTP."""

import functools
import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.weights import weights_manifest
from preprocess import assets
from preprocess.faces import MANIFEST as DETECTORS
from tests.conftest import ASSETS
from tests.stack import serve_http

MESO4 = ASSETS / "weights/mesonet/Meso4_DF.h5"


def asset_for(path: Path, url: str = "", sha256: str | None = None) -> assets.Asset:
    return assets.Asset(
        name="test",
        file=path.name,
        url=url,
        sha256=assets.sha256_of(path) if sha256 is None else sha256,
        licence="test",
        source="test",
    )


def test_manifest_pins_the_shared_mesonet_files() -> None:
    manifest = weights_manifest()
    for name in ("meso4_df", "meso4_f2f", "mesoinception4_df", "mesoinception4_f2f"):
        entry = manifest[name]
        assert entry.url.startswith("https://") and entry.licence == "Apache-2.0"
        assert assets.sha256_of(ASSETS / "weights/mesonet" / entry.file) == entry.sha256


def test_search_path_is_searched_recursively_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.ENV_SEARCH_PATH, f"{tmp_path / 'absent'}:{ASSETS}")
    found = assets.resolve(weights_manifest()["meso4_df"], allow_download=False)
    assert found == MESO4


def test_a_file_with_the_wrong_sha256_is_an_error(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    data = bytearray(MESO4.read_bytes())
    data[-1] ^= 0xFF
    (nested / MESO4.name).write_bytes(bytes(data))
    with pytest.raises(assets.AssetError, match="sha256 differs"):
        assets.find_local(asset_for(MESO4), [tmp_path])


def test_not_found_names_the_folders_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.ENV_SEARCH_PATH, str(tmp_path))
    monkeypatch.setattr(assets, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(assets.AssetError, match=str(tmp_path)):
        assets.resolve(asset_for(MESO4, url="http://127.0.0.1:9/x"), allow_download=False)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with serve_http(handler) as port:
        yield f"http://127.0.0.1:{port}", served


def test_download_verifies_sha256_into_the_cache(tmp_path: Path, http_server: tuple) -> None:
    base, served = http_server
    (served / MESO4.name).write_bytes(MESO4.read_bytes())
    cache = tmp_path / "cache"
    got = assets.download(asset_for(MESO4, url=f"{base}/{MESO4.name}"), cache)
    assert got == cache / MESO4.name and assets.sha256_of(got) == assets.sha256_of(MESO4)


def test_a_tampered_download_is_refused_and_removed(tmp_path: Path, http_server: tuple) -> None:
    base, served = http_server
    (served / MESO4.name).write_bytes(b"not the weights")
    cache = tmp_path / "cache"
    with pytest.raises(assets.AssetError, match="downloaded sha256"):
        assets.download(asset_for(MESO4, url=f"{base}/{MESO4.name}"), cache)
    assert list(cache.iterdir()) == []


def test_an_unpinned_asset_is_never_downloaded(tmp_path: Path) -> None:
    b7 = weights_manifest()["dfdc_b7_selimsef"]
    assert b7.url and not b7.sha256
    with pytest.raises(assets.AssetError, match="pinned sha256"):
        assets.download(b7, tmp_path)


def test_each_manifest_lives_beside_its_user_and_resolves_from_the_shared_assets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """export/ keeps the weights' manifest, preprocess/ the face detectors'; the
    one resolver finds both on the search path, sha256-checked."""
    monkeypatch.setenv(assets.ENV_SEARCH_PATH, str(ASSETS))
    monkeypatch.setattr(assets, "CACHE_DIR", tmp_path / "cache")
    yunet = assets.resolve(assets.load_manifest(DETECTORS)["yunet"], allow_download=False)
    assert assets.sha256_of(yunet) == assets.load_manifest(DETECTORS)["yunet"].sha256
    assert set(weights_manifest()).isdisjoint(assets.load_manifest(DETECTORS))
