"""Which version of a member Triton serves, and each version's provenance.

    python -m export.versions list meso4           # each version, the serving one, the candidate
    python -m export.versions serve meso4 2        # promote the candidate 2
    python -m export.versions serve meso4 1        # roll back to version 1
    python -m export.versions serve meso4 latest   # the newest again (Triton's default)
    python -m export.versions candidate meso4 2    # load 2 beside the serving one, for
                                                   # the gateway's shadow scoring only
        [--triton-url http://127.0.0.1:8000]       # and reload it on a running Triton

A fine-tuned version is `members/<model>/<n>/model.onnx` (export.train writes
it). Triton's version policy decides what loads: by default the newest
version only; `serve` writes `version_policy { specific { versions: [n] } }`
into every config of the member (or removes it for latest), and with
--triton-url asks the running Triton (explicit model control) to reload the
model: Triton serves the old version until the new one is ready, so the
gateway keeps answering. The gateway reads the serving version from Triton.

A member's candidate, as model_repository/README.md defines it, is written by
`candidate` (make_candidate; export.train calls it for the version it writes): a policy
block with both versions, `serving_version` and `candidate_version`, and the ensemble's
step pinned to the serving version. `serve` (a promotion, a rollback) drops it.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from export.repository import config_files
from preprocess.assets import sha256_of

if TYPE_CHECKING:
    from tritonclient.http import InferenceServerClient

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
VERSIONS = "# versions: written by `python -m export.train`, one parameter per version"
POLICY = "# version policy: written by `python -m export.versions serve`"
END_VERSIONS = "# end versions"
END_POLICY = "# end version policy"
SERVING_VERSION = "serving_version"  # the policy block's parameters: the version serving
CANDIDATE = "candidate_version"  # and the candidate loaded beside it


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


def _policy(repo: Path, model: str) -> str:
    match = BLOCKS[1].search((repo / "members" / model / "config.pbtxt").read_text())
    return match.group(0) if match else ""


def pinned(repo: Path, model: str) -> int | None:
    """The version the member's policy block serves: the first it lists (the only one, or
    the serving one beside a candidate); None: Triton's default, the newest."""
    found = re.search(r"specific: \{ versions: \[(\d+)", _policy(repo, model))
    return int(found.group(1)) if found else None


def serving(repo: Path, model: str) -> int:
    """The version Triton serves from this repository: the pinned one, else the newest."""
    return pinned(repo, model) or max(versions(repo, model))


def candidate(repo: Path, model: str) -> int | None:
    """The member's candidate: the version its policy block loads beside the serving one
    (parameter `candidate_version`); None: none."""
    found = re.search(rf'key: "{CANDIDATE}" value: \{{ string_value: "(\d+)"', _policy(repo, model))
    return int(found.group(1)) if found else None


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
    """Pin `model` to one version, or (\"latest\") back to Triton's default policy: a
    promotion or a rollback, which drops the candidate (and the ensemble's pin)."""
    available = versions(repo, model)
    if version != "latest" and int(version) not in available:
        raise SystemExit(f"{model}: no version {version}; the repository has {available}")
    for config in config_files(repo / "members" / model):
        if version == "latest":
            _replace_block(config, BLOCKS[1], "")
        else:
            policy = f"version_policy: {{ specific: {{ versions: [{int(version)}] }} }}"
            _replace_block(config, BLOCKS[1], f"{POLICY}\n{policy}\n{END_POLICY}\n")
    pin_ensembles(repo, model)  # no candidate now: the step names -1 again


ENSEMBLE = "deepfake_ensemble"


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def serving_pin(repo: Path, model: str) -> int:
    """The version the ensemble's step of `model` must name: the serving one while a
    candidate is loaded beside it, else -1 (the newest loaded: the only one)."""
    if not (repo / "members" / model / "config.pbtxt").exists():
        return -1
    return serving(repo, model) if candidate(repo, model) is not None else -1


def pin_ensembles(repo: Path, model: str) -> None:
    """Every profile's ensemble step of `model` names serving_pin's version."""
    pin = serving_pin(repo, model)
    step = re.compile(rf'(model_name: "{re.escape(model)}"\n\s*model_version: )-?\d+')
    for config in repo.glob(f"*/{ENSEMBLE}/config.pbtxt"):
        config.write_text(step.sub(rf"\g<1>{pin}", config.read_text()))


def _serving_version(repo: Path, model: str, candidate: int) -> int:
    """The version serving now: the pinned one, else the newest below the candidate."""
    if (pin := pinned(repo, model)) is not None:
        return pin
    below = [n for n in versions(repo, model) if n < candidate]
    if not below:
        raise SystemExit(f"{model}: no version below {candidate} serves; serve one first")
    return max(below)


def make_candidate(repo: Path, model: str, version: int) -> int:
    """Load `version` beside the serving version, which keeps serving; the serving one."""
    available = versions(repo, model)
    if version not in available:
        raise SystemExit(f"{model}: no version {version}; the repository has {available}")
    serving = _serving_version(repo, model, version)
    if serving == version:
        raise SystemExit(f"{model}: version {version} serves already")
    block = [
        POLICY,
        f"version_policy: {{ specific: {{ versions: [{serving}, {version}] }} }}",
        _parameter(SERVING_VERSION, str(serving)),
        _parameter(CANDIDATE, str(version)),
        END_POLICY,
    ]
    for config in config_files(repo / "members" / model):
        _replace_block(config, BLOCKS[1], "\n".join(block) + "\n")
    pin_ensembles(repo, model)
    return serving


def _ensemble_pin(client: "InferenceServerClient", model: str) -> int:
    """The version the loaded ensemble's step of `model` names now (-1: the newest)."""
    from tritonclient.utils import InferenceServerException

    try:
        steps = client.get_model_config(ENSEMBLE)["ensemble_scheduling"]["step"]
    except InferenceServerException:  # not loaded: no answers to keep
        return -1
    return next((int(s.get("model_version", -1)) for s in steps if s["model_name"] == model), -1)


def reload(url: str, repo: Path, model: str) -> None:
    """Triton reloads `model` and the ensemble (its step's pin) as the repository says.
    Triton swaps a model only once its new versions are ready, so the order keeps the
    ensemble's step on a loaded version that is meant to answer: the member first when the
    ensemble already pins the version serving (dropping a candidate: the pin stays valid
    until it is lifted), else the ensemble first (adding a candidate: it pins the version
    loaded now; promoting one: -1 takes the newest loaded, the promoted one)."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url.removeprefix("http://"))
    member_first = _ensemble_pin(client, model) == serving(repo, model)
    for name in [model, ENSEMBLE] if member_first else [ENSEMBLE, model]:
        client.load_model(name)
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
    serve_command = sub.add_parser("serve", help="promote, roll back (drops the candidate)")
    serve_command.add_argument("model")
    serve_command.add_argument("version", help="a version number, or latest")
    serve_command.add_argument("--triton-url", help="reload the model on this Triton (HTTP)")
    candidate_command = sub.add_parser("candidate", help="load a version beside the serving one")
    candidate_command.add_argument("model")
    candidate_command.add_argument("version", type=int)
    candidate_command.add_argument("--triton-url", help="reload the model on this Triton (HTTP)")
    args = parser.parse_args(argv)
    repo, model = args.repository, args.model
    if args.command == "list":
        recorded = version_parameters(repo / "members" / model / "config.pbtxt")
        for n in versions(repo, model):
            print(n, json.dumps(recorded.get(n, {"provenance": "as exported"})))
        print(f"serving {serving(repo, model)}, candidate {candidate(repo, model)}")
        return
    if args.command == "candidate":
        now = make_candidate(repo, model, args.version)
        print(f"{model}: version {now} serves, {args.version} is the candidate")
    else:
        serve(repo, model, args.version)
    if args.triton_url:
        reload(args.triton_url, repo, model)


if __name__ == "__main__":
    sys.exit(main())
