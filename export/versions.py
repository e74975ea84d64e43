"""Which version of a member Triton serves, and each version's provenance.

    python -m export.versions list meso4           # each version, the serving one, the candidate
    python -m export.versions serve meso4 2        # promote the candidate 2
    python -m export.versions serve meso4 1        # roll back to version 1
    python -m export.versions serve meso4 latest   # the newest again (Triton's default)
        [--triton-url http://127.0.0.1:8000]       # and reload it on a running Triton

A fine-tuned version is `members/<model>/<n>/model.onnx` (export.train writes
it). Triton's version policy decides what loads: by default the newest
version only; `serve` writes `version_policy { specific { versions: [n] } }`
into every config of the member (or removes it for latest), and with
--triton-url asks the running Triton (explicit model control) to reload the
model: Triton serves the old version until the new one is ready, so the
gateway keeps answering. The gateway reads the serving version from Triton.

A member's candidate is its newest version newer than the serving one (`candidate`):
export.train pins the serving version before it writes a new one, so the new one is a
candidate until `serve` promotes it; the policy block names it (parameter `candidate`).
"""

import argparse
import json
import re
import sys
from pathlib import Path

from export.repository import config_files
from preprocess.assets import sha256_of

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
VERSIONS = "# versions: written by `python -m export.train`, one parameter per version"
POLICY = "# version policy: written by `python -m export.versions serve`"
END_VERSIONS = "# end versions"
END_POLICY = "# end version policy"
CANDIDATE = "candidate"  # the config parameter naming the member's candidate version


def _block(begin: str, end: str) -> re.Pattern:
    return re.compile(rf"\n?{re.escape(begin)}\n.*?{re.escape(end)}\n", re.S)


BLOCKS = (_block(VERSIONS, END_VERSIONS), _block(POLICY, END_POLICY))


def carried_blocks(text: str) -> tuple[str, str]:
    """`text` without its versions and policy blocks, and those blocks (for a
    config rewritten from a template: they belong to the member, not the template)."""
    kept = []
    for block in BLOCKS:
        kept += [m.group(0).lstrip("\n") for m in block.finditer(text)]
        text = block.sub("", text)
    return text, "".join(kept)


def versions(repo: Path, model: str) -> list[int]:
    folder = repo / "members" / model
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def next_version(repo: Path, model: str) -> int:
    return max(versions(repo, model), default=0) + 1


def pinned(repo: Path, model: str) -> int | None:
    """The version the member's policy block pins (None: Triton's default, the newest)."""
    match = BLOCKS[1].search((repo / "members" / model / "config.pbtxt").read_text())
    found = re.search(r"versions: \[(\d+)\]", match.group(0)) if match else None
    return int(found.group(1)) if found else None


def serving(repo: Path, model: str) -> int:
    """The version Triton serves from this repository: the pinned one, else the newest."""
    return pinned(repo, model) or max(versions(repo, model))


def candidate(repo: Path, model: str) -> int | None:
    """The member's candidate: its newest version newer than the serving one (None: none).
    A version older than the serving one is a rollback target, never a candidate."""
    newer = [n for n in versions(repo, model) if n > serving(repo, model)]
    return max(newer, default=None)


def pin_serving(repo: Path, model: str) -> int:
    """Pin the version serving now, so that a version added next does not serve by
    Triton's default policy (export.train calls it before writing one); that version."""
    now = serving(repo, model)
    serve(repo, model, str(now))
    return now


def update_version(repo: Path, model: str, version: int, extra: dict) -> None:
    """Add `extra` (python -m export.compare's figures) to version `version`'s recorded
    provenance in every config of `model`."""
    for config in config_files(repo / "members" / model):
        recorded = version_parameters(config)
        if version not in recorded:
            raise SystemExit(f"{model}: version {version} has no recorded provenance")
        _write_versions(config, recorded | {version: recorded[version] | extra})


def _replace_block(config: Path, pattern: re.Pattern, block: str) -> None:
    text = pattern.sub("", config.read_text())
    config.write_text(text.rstrip("\n") + "\n" + block)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def version_parameters(config: Path) -> dict[int, dict]:
    """version -> its recorded provenance, from a config's versions block."""
    match = BLOCKS[0].search(config.read_text())
    found = re.findall(
        r'key: "version_(\d+)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \}',
        match.group(0) if match else "",
    )
    return {int(n): json.loads(v.encode().decode("unicode_escape")) for n, v in found}


def record_version(repo: Path, model: str, version: int, summary: dict, onnx: Path) -> None:
    """Add version `version`'s provenance (and its ONNX's sha256) to every config of `model`."""
    entry = {**summary, "sha256": sha256_of(onnx)}
    for config in config_files(repo / "members" / model):
        _write_versions(config, version_parameters(config) | {version: entry})


def _write_versions(config: Path, recorded: dict[int, dict]) -> None:
    lines = [VERSIONS]
    lines += [
        f'parameters {{ key: "version_{n}" value: {{ string_value: '
        f'"{_escape(json.dumps(recorded[n], sort_keys=True))}" }} }}'
        for n in sorted(recorded)
    ]
    _replace_block(config, BLOCKS[0], "\n".join([*lines, END_VERSIONS]) + "\n")


def serve(repo: Path, model: str, version: str) -> None:
    """Pin `model` to one version, or (\"latest\") back to Triton's default policy. The
    block also names the member's candidate (a newer version: `candidate`), which the
    gateway reads from Triton like every model fact."""
    available = versions(repo, model)
    if version != "latest" and int(version) not in available:
        raise SystemExit(f"{model}: no version {version}; the repository has {available}")
    newer = [n for n in available if version != "latest" and n > int(version)]
    for config in config_files(repo / "members" / model):
        if version == "latest":
            _replace_block(config, BLOCKS[1], "")
            continue
        lines = [POLICY, f"version_policy: {{ specific: {{ versions: [{int(version)}] }} }}"]
        if newer:
            lines.append(
                f'parameters {{ key: "{CANDIDATE}" value: {{ string_value: "{max(newer)}" }} }}'
            )
        _replace_block(config, BLOCKS[1], "\n".join([*lines, END_POLICY]) + "\n")


def reload(url: str, model: str) -> None:
    import tritonclient.http as http

    client = http.InferenceServerClient(url.removeprefix("http://"))
    client.load_model(model)
    print(f"{model}: reloaded; ready versions {client.get_model_metadata(model)['versions']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m export.versions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("model")
    serving = sub.add_parser("serve")
    serving.add_argument("model")
    serving.add_argument("version", help="a version number, or latest")
    serving.add_argument("--triton-url", help="reload the model on this Triton (HTTP)")
    args = parser.parse_args(argv)
    if args.command == "list":
        recorded = version_parameters(args.repository / "members" / args.model / "config.pbtxt")
        for n in versions(args.repository, args.model):
            print(n, json.dumps(recorded.get(n, {"provenance": "as exported"})))
        print(
            f"serving {serving(args.repository, args.model)}, "
            f"candidate {candidate(args.repository, args.model)}"
        )
        return
    serve(args.repository, args.model, args.version)
    if args.triton_url:
        reload(args.triton_url, args.model)


if __name__ == "__main__":
    sys.exit(main())
