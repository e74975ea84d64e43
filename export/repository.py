"""Write exported models and their provenance into the model repository.

Layout (see model_repository/README.md): `members/<model>/` holds each
detector, `<profile>/` the profile's vote and ensemble. A member's configs are
generated (export/configs.py) from the templates, its runtime settings and its
provenance (`provenance.json`, the one record of its weights), a profile's ensemble and vote
configs from profiles.toml and vote.toml (export/profiles.py); the provenance
reaches Triton's model-config API as `parameters`, where the gateway reads it.
"""

import hashlib
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from google.protobuf import text_encoding, text_format
from tritonclient.grpc import model_config_pb2

from preprocess.tensors import VOTE_RULES

BEGIN = "# provenance: written by `python -m export`; change the weights, not this block"
END = "# end provenance"
_BLOCK = re.compile(rf"\n?{re.escape(BEGIN)}\n.*?{re.escape(END)}\n", re.S)


@dataclass(frozen=True)
class Provenance:
    trained: bool
    weights_file: str
    weights_sha256: str
    weights_source: str
    weights_licence: str

    def parameters(self) -> dict[str, str]:
        return {k: str(v).lower() if isinstance(v, bool) else v for k, v in asdict(self).items()}


UNTRAINED = Provenance(
    trained=False,
    weights_file="",
    weights_sha256="",
    weights_source="random initialisation (seed 0): no weights were supplied",
    weights_licence="n/a",
)


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def profile_members(repo: Path, profile: str) -> list[str]:
    """The members the profile's generated ensemble serves, as Triton and the gateway see
    them (its `members` parameter). Export never reads it: the source is profiles.toml."""
    config = read_config(repo / profile / "deepfake_ensemble" / "config.pbtxt")
    return config.parameters["members"].string_value.split(",")


def config_files(model_dir: Path) -> list[Path]:
    """Every profile's config of one model: config.pbtxt and configs/*.pbtxt."""
    return [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]


def quoted(value: str) -> str:
    """`value` as a text-format string literal, escaped as protobuf's text_format writes it:
    a manifest's free text (trained_on, source, licence) cannot close the string and add
    fields of its own."""
    return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'


def write_parameters(config: Path, params: dict[str, str]) -> None:
    """Replace (or append) the provenance block of `config`."""
    lines = [BEGIN]
    lines += [
        f"parameters {{ key: {quoted(k)} value: {{ string_value: {quoted(v)} }} }}"
        for k, v in params.items()
    ]
    block = "\n".join([*lines, END]) + "\n"
    text = _BLOCK.sub("", config.read_text())
    config.write_text(text.rstrip("\n") + "\n" + block)
    written = read_config(config).parameters  # still a valid ModelConfig, and these values
    if any(written[k].string_value != v for k, v in params.items()):
        raise ValueError(f"{config}: the provenance block did not read back as written")


# export/ modules that never change a graph's bytes (they read the graphs, or write copies,
# configs and versions beside them): editing them must not re-export every member.
NOT_GRAPH_CODE = (
    "configs.py",
    "profiles.py",
    "quantize.py",
    "runtimes.py",
    "train.py",
    "versions.py",
)


def source_digest() -> str:
    """Changes whenever the code that writes the graphs does, so stale models are rebuilt."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in NOT_GRAPH_CODE:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def is_current(onnx_path: Path, metadata: dict[str, str]) -> bool:
    if not onnx_path.exists():
        return False
    props = {
        p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props
    }
    return props == metadata


def vote_weights(
    vote_file: Path,
    members: list[str],
    provenance: dict[str, Provenance],
    defaults: dict[str, float] | None = None,
) -> dict[str, float]:
    """The weights the vote uses: the file's (else a member manifest's, in
    `defaults`), with untrained members at 0."""
    with vote_file.open("rb") as f:
        settings = tomllib.load(f)
    count_untrained = bool(settings.get("count_untrained", False))
    weights = {}
    for member in members:
        weight = float(settings["weights"].get(member, (defaults or {}).get(member, 0.0)))
        weights[member] = weight if provenance[member].trained or count_untrained else 0.0
    if not any(weights.values()):
        raise ValueError(
            f"no member of {members} would vote: all are untrained or weigh 0 in "
            f"{vote_file}; supply weights, or set count_untrained = true to vote with them"
        )
    return weights


def vote_rule(
    vote_file: Path, members: list[str], defaults: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """vote.toml's rule ("mean" or "max_of_groups") and every member's
    specialist group: [groups], else a member manifest's (in `defaults`), else
    the member's own name (a group of one)."""
    with vote_file.open("rb") as f:
        settings = tomllib.load(f)
    rule = settings.get("rule", "mean")
    if rule not in VOTE_RULES:
        raise ValueError(f"{vote_file}: rule {rule!r} must be one of {VOTE_RULES}")
    named = settings.get("groups", {})
    return rule, {m: named.get(m) or (defaults or {}).get(m) or m for m in members}
