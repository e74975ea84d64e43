"""The registry images the Dockerfiles start from: each an argument, pinned by digest where
one is known.

Every FROM of deploy/docker/*.Dockerfile names a stage of its own, `scratch`, or
`${BASE_IMAGE}`, whose default is the registry image as `name:tag` (never `latest`), or
`name:tag@sha256:<digest>` once resolved; `make images` passes its own base (the registry's,
pinned to the digest it pulled, or an mmdebstrap one). components/remote-repository runs the
stock image triton.Dockerfile is built on: the same reference.

    python -m deploy.bases            check the rules above (tests/test_deploy.py runs it)
    python -m deploy.bases pin        resolve each base's digest from its registry and write
                                      it into the ARG defaults and the manifest: where the
                                      registries answer (`skopeo inspect`, else `podman pull`)

Updating a base: change its tag in the ARG default (and nothing else), run `pin`, commit.
"""

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
DOCKERFILES = DEPLOY / "docker"
REMOTE_TRITON = DEPLOY / "k8s" / "components" / "remote-repository" / "triton-remote.yaml"
TRITON_DOCKERFILE = DOCKERFILES / "triton.Dockerfile"
BASE_ARG = "BASE_IMAGE"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# name[:port]/path:tag, optionally @sha256:digest (the tag is required, `latest` refused).
REFERENCE = re.compile(
    r"(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127})(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
ARG_LINE = re.compile(rf"^ARG {BASE_ARG}=(?P<ref>\S+)$", re.MULTILINE)
IMAGE_LINE = re.compile(r"^(?P<indent>\s+image: )(?P<ref>\S+)$", re.MULTILINE)
RESOLVE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Base:
    dockerfile: Path
    reference: str  # the ARG's default

    @property
    def tagged(self) -> str:
        """The reference without its digest: what a registry is asked about."""
        return self.reference.split("@", 1)[0]

    @property
    def digest(self) -> str | None:
        match = REFERENCE.fullmatch(self.reference)
        return match.group("digest") if match else None


def dockerfiles() -> list[Path]:
    return sorted(DOCKERFILES.glob("*.Dockerfile"))


def base_of(dockerfile: Path) -> Base:
    [match] = ARG_LINE.finditer(dockerfile.read_text())
    return Base(dockerfile, match.group("ref"))


def stages(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)}


def problems(dockerfile: Path) -> list[str]:
    """What breaks the rules in one Dockerfile ([] when it keeps them)."""
    text, found = dockerfile.read_text(), []
    named = re.findall(rf"^ARG {BASE_ARG}=", text, re.MULTILINE)
    if len(named) != 1:
        return [f"{dockerfile.name}: one `ARG {BASE_ARG}=<image>` default, not {len(named)}"]
    base = base_of(dockerfile)
    match = REFERENCE.fullmatch(base.reference)
    if match is None:
        found.append(f"{dockerfile.name}: {base.reference!r} is not name:tag[@sha256:…]")
    elif match.group("tag") == "latest":
        found.append(f"{dockerfile.name}: {base.reference} moves (`latest`)")
    first_from = text.find("\nFROM ")
    if first_from != -1 and text.find(f"\nARG {BASE_ARG}=") > first_from:
        found.append(f"{dockerfile.name}: ARG {BASE_ARG} after the first FROM is not a base")
    # A FROM may also name an argument whose default is a stage (gateway's YUNET_FROM).
    choices = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    own = stages(text) | {"scratch", f"${{{BASE_ARG}}}"}
    own |= {f"${{{name}}}" for name, value in choices.items() if value in stages(text)}
    for image in re.findall(r"^FROM (\S+)", text, re.MULTILINE):
        if image not in own:
            found.append(f"{dockerfile.name}: FROM {image}: not ${{{BASE_ARG}}} nor a stage")
    return found


def remote_reference() -> str:
    [match] = IMAGE_LINE.finditer(REMOTE_TRITON.read_text())
    return match.group("ref")


def check() -> list[str]:
    found = [p for dockerfile in dockerfiles() for p in problems(dockerfile)]
    triton = base_of(TRITON_DOCKERFILE).reference
    if remote_reference() != triton:
        found.append(f"{REMOTE_TRITON.name} runs {remote_reference()}, triton.Dockerfile {triton}")
    return found


def resolve(tagged: str) -> str | None:
    """The digest the registry gives `tagged` now: skopeo where installed (no pull),
    else podman (pulls it); None where neither answers."""
    if shutil.which("skopeo"):
        command = ["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{tagged}"]
        digest = _output(command)
    elif shutil.which("podman") and _output(["podman", "pull", "-q", tagged]) is not None:
        digest = _output(["podman", "image", "inspect", "--format", "{{.Digest}}", tagged])
    else:
        digest = None
    return digest if digest and DIGEST.fullmatch(digest) else None


def _output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def write_pin(base: Base, digest: str) -> str:
    """The Dockerfile's ARG default (and, for Triton's, the manifest's image) pinned."""
    pinned = f"{base.tagged}@{digest}"
    text = base.dockerfile.read_text()
    base.dockerfile.write_text(ARG_LINE.sub(f"ARG {BASE_ARG}={pinned}", text, count=1))
    if base.dockerfile == TRITON_DOCKERFILE:
        manifest = REMOTE_TRITON.read_text()
        REMOTE_TRITON.write_text(IMAGE_LINE.sub(rf"\g<indent>{pinned}", manifest, count=1))
    return pinned


def pin() -> int:
    unresolved = 0
    for dockerfile in dockerfiles():
        base = base_of(dockerfile)
        digest = resolve(base.tagged)
        if digest is None:
            unresolved += 1
            print(f"{dockerfile.name}: {base.tagged}: no registry answered; left as is")
            continue
        print(f"{dockerfile.name}: {write_pin(base, digest)}")
    return 1 if unresolved else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bases", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["check", "pin"], default="check")
    if parser.parse_args(argv).command == "pin":
        return pin()
    found = check()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
