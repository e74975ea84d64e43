"""python -m export: write the profile's models into the model repository.

    python -m export --profile full --allow-random
    python -m export --weights xception=/data/ffpp_c23.pth --weights efficientnet_b7=/data/b7

Weights come from --weights, else the asset search path ($DEEPFAKE_ASSETS),
else a download of a pinned asset. A model with none of these is an error,
unless --allow-random: then it is exported with random weights and its
provenance says trained = false. Members described by a manifest
(model_repository/members/<name>/member.toml, see export/members.py) are
exported too and added to the profiles they name.
"""

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import onnx

from export import configs, profiles, quantize, runtimes
from export import members as manifests
from export.architectures import ARCHITECTURES
from export.onnx_writer import FacesToPFake, export_onnx
from export.repository import UNTRAINED, Provenance, is_current, source_digest
from export.vote import write_vote
from export.weights import weights_manifest
from preprocess import assets

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
log = logging.getLogger("export")


def find_weights(
    name: str,
    explicit: Path | None,
    allow_random: bool,
    allow_download: bool,
    asset_name: str | None = None,
) -> tuple[Path | None, Provenance]:
    """Member `name`'s weights (its architecture's asset, or `asset_name`) and their
    provenance; random ones (None, UNTRAINED) only where allowed, and said."""
    asset = weights_manifest()[asset_name or ARCHITECTURES[name].PRETRAINED_CFG["asset"]]
    if explicit is not None:
        path = explicit
    else:
        try:
            path = assets.resolve(asset, allow_download)
        except assets.AssetError as exc:
            if not allow_random:
                raise SystemExit(
                    f"{name}: {exc}. Supply --weights {name}=PATH, add its "
                    f"folder to ${assets.ENV_SEARCH_PATH}, or pass --allow-random"
                ) from exc
            log.warning("%s: %s; exporting RANDOM weights (trained = false)", name, exc)
            return None, UNTRAINED
    known = path.name == asset.file
    return path, Provenance(
        trained=True,
        weights_file=path.name,
        weights_sha256=assets.sha256_of(path),
        weights_source=asset.source if known else "user-supplied checkpoint",
        weights_licence=asset.licence if known else "as supplied by its owner",
    )


def export_member(
    repo: Path, name: str, weights: Path | None, provenance: Provenance, force: bool
) -> None:
    arch = ARCHITECTURES[name]
    model_dir = repo / "members" / name
    target = model_dir / "1" / "model.onnx"
    metadata = {**provenance.parameters(), "export_digest": source_digest()}
    if force or not is_current(target, metadata):
        model = arch.create_model()
        if weights is not None:
            arch.load_weights(model, weights)
        partial = target.with_suffix(".onnx.part")  # Triton never sees half a file
        export_onnx(FacesToPFake(model, arch.PRETRAINED_CFG), partial, metadata)
        partial.replace(target)
        log.info("%s: wrote %s", name, target)
    else:
        log.info("%s: %s is current", name, target)
    configs.write_provenance(repo, name, provenance)
    configs.write_member_configs(repo, configs.builtin(name))


def export_manifest_member(
    repo: Path, member: manifests.Member, allow_random: bool, allow_download: bool, force: bool
) -> Provenance:
    """A member described by members/<name>/member.toml: its ONNX, configs, provenance."""
    target = repo / "members" / member.name / "1" / "model.onnx"
    if member.architecture:
        arch = ARCHITECTURES[member.architecture]
        cfg = arch.PRETRAINED_CFG
        head = {"p_real": "p_real", "softmax_index1": "softmax_index1", "logit_fake": "sigmoid"}
        if (head.get(member.output), member.input_size, member.mean, member.std) != (
            cfg["head"],
            cfg["input_size"],
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
        ):
            raise SystemExit(
                f"{member.name}: output, input_size, mean, std must be {member.architecture}'s "
                f"({cfg['head']}, {cfg['input_size']}, {cfg['mean']}, {cfg['std']})"
            )
        weights, provenance = find_weights(
            member.name, None, allow_random, allow_download, member.weights_asset
        )
    else:
        weights = manifests.find_onnx(member)
        provenance = Provenance(
            True, weights.name, assets.sha256_of(weights), member.source, member.licence
        )
    manifest_text = (member.folder / manifests.MANIFEST).read_bytes()
    metadata = {
        **provenance.parameters(),
        "export_digest": source_digest(),
        "manifest_sha256": hashlib.sha256(manifest_text).hexdigest(),
    }
    if force or not is_current(target, metadata):
        partial = target.with_suffix(".onnx.part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        if member.architecture:
            model = arch.create_model()
            if weights is not None:
                arch.load_weights(model, weights)
            export_onnx(FacesToPFake(model, cfg), partial, metadata)
        else:
            wrapped = manifests.wrap_classifier(member, onnx.load(str(weights)))
            onnx.helper.set_model_props(wrapped, metadata)
            onnx.save(wrapped, str(partial))
        partial.replace(target)
        log.info("%s: wrote %s", member.name, target)
    else:
        log.info("%s: %s is current", member.name, target)
    configs.write_provenance(repo, member.name, provenance)
    configs.write_member_configs(repo, manifests.source(member))
    return provenance


def export_vote(repo: Path, profile: str, extras: list[manifests.Member]) -> list[str]:
    """The profile's ensemble and vote configs (export/profiles.py) and the vote's graph,
    from the same weights; the profile's members returned."""
    vote = profiles.write_profile(repo, profile, extras)
    write_vote(
        vote.weights,
        repo / profile / "deepfake_vote" / "1" / "model.onnx",
        vote.groups if vote.rule == "max_of_groups" else None,
    )
    log.info("%s vote: %s", profile, vote.parameters()["vote_weights"])
    return list(vote.weights)


def parse_weights(items: list[str]) -> dict[str, Path]:
    """--weights MODEL=PATH arguments, checked before any work starts."""
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in ARCHITECTURES:
            raise SystemExit(
                f"--weights {item!r}: expected MODEL=PATH with MODEL one of {sorted(ARCHITECTURES)}"
            )
        if not Path(path).is_file():
            raise SystemExit(f"--weights {item!r}: {path} is not a file")
        weights[name] = Path(path)
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=profiles.PROFILES, default="full")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH")
    parser.add_argument(
        "--allow-random",
        action="store_true",
        help="export models without weights with random ones (trained=false)",
    )
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--force", action="store_true", help="re-export even if current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    explicit = parse_weights(args.weights)
    try:
        extras = manifests.discover(args.repository)
    except manifests.ManifestError as exc:
        raise SystemExit(f"member manifest: {exc}") from exc
    for name in profiles.read_profiles(args.repository)[args.profile]:
        weights, provenance = find_weights(
            name, explicit.get(name), args.allow_random, not args.no_download
        )
        export_member(args.repository, name, weights, provenance, args.force)
    for member in extras:
        if args.profile in member.profiles:
            try:
                export_manifest_member(
                    args.repository, member, args.allow_random, not args.no_download, args.force
                )
            except manifests.ManifestError as exc:
                raise SystemExit(f"member manifest: {exc}") from exc
    names = export_vote(args.repository, args.profile, extras)
    for name in names:
        # Lower-precision copies made from other weights are checked again: an int8 file
        # (export/quantize.py), a trained bf16 member's check (export/runtimes.py).
        quantize.refresh(args.repository, name)
        runtimes.refresh(args.repository, name)
    # configs/cpu_fast.pbtxt is not written here: the Triton that serves it chooses each
    # member's precision for its own CPU when it starts (export/runtimes.py).


if __name__ == "__main__":
    sys.exit(main())
