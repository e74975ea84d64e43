"""export/'s weights manifest (export/assets.toml), read with preprocess/'s resolver."""

from pathlib import Path

from preprocess.assets import Asset, load_manifest

MANIFEST = Path(__file__).with_name("assets.toml")


def weights_manifest() -> dict[str, Asset]:
    """Every weights asset export/ knows: name -> Asset."""
    return load_manifest(MANIFEST)
