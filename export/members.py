"""Members as data: `model_repository/members/<name>/member.toml`.

A member that is not one of the four built-in architectures is described by a
manifest in its own model folder; export reads every manifest, checks it and
its weights, writes the member's ONNX, its Triton configs (generated with a
template member's runtime settings, so it runs like its peers on every runtime)
and adds it to the ensembles and votes of the profiles it names
(export/profiles.py). Two kinds of weights:

    architecture = "meso4"       a built-in architecture with other weights:
    weights = "meso4_f2f"        an asset of export/assets.toml (sha256-checked)

    onnx = "classifier.onnx"     an ONNX classifier: NCHW float32 [N, 3, S, S] in,
                                 [N, 1] or [N, 2] out; looked up next to the
                                 manifest, then in $DEEPFAKE_ASSETS

Everything wrong with a manifest or its ONNX (a missing field, an unknown
output meaning, a shape, dtype, opset or op domain that does not fit) is a
ManifestError at export, never an error at request time. A manifest is data
from whoever drops the folder: it names only built-in templates and files
inside its own folder, and its free text reaches the configs escaped
(export/repository.py write_parameters). See model_repository/README.md.
"""

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from export.architectures import ARCHITECTURES
from export.configs import Source
from export.onnx_writer import INPUT_NAME, OPSET, OUTPUT_NAME
from export.profiles import PROFILES
from export.weights import weights_manifest
from preprocess import assets

MANIFEST = "member.toml"
BUILTIN = tuple(ARCHITECTURES)
# What the classifier's output means, and how it becomes P(fake).
OUTPUTS = {
    "p_fake": "a probability that the face is fake, [N, 1]",
    "p_real": "a probability that the face is real, [N, 1] (P_FAKE = 1 - it)",
    "logit_fake": "one logit for fake, [N, 1] (P_FAKE = sigmoid)",
    "softmax_index1": "two logits [N, 2], class 1 = fake (P_FAKE = softmax[:, 1])",
}
# Opsets ONNX Runtime 1.19+ (local and NGC 24.10) runs and the converter reaches.
MIN_OPSET, MAX_OPSET = 7, 21
NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
# Configs a member may copy: the built-in members' only, never a path (`../x`).
TEMPLATES = BUILTIN
# One part of the `onnx` path: no `..`, no glob characters (the asset search globs the name).
PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
# Operator sets every runtime of the repository has; a custom op fails only when Triton loads.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Free text (provenance) shown by /api/models and the report: a sentence, not a document.
MAX_TEXT = 500


class ManifestError(ValueError):
    """A manifest or its ONNX that export refuses, with what to fix."""


@dataclass(frozen=True)
class Member:
    name: str
    folder: Path
    output: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    trained_on: str
    profiles: tuple[str, ...]
    weight: float
    group: str
    template: str
    architecture: str = ""  # a built-in architecture ...
    weights_asset: str = ""  # ... with an asset's weights
    onnx: str = ""  # or an ONNX classifier file
    licence: str = ""
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _require(data: dict, key: str, kind: type, where: Path) -> object:
    if key not in data:
        raise ManifestError(f"{where}: missing {key!r}")
    value = data[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ManifestError(f"{where}: {key!r} must be a {kind.__name__}, not {value!r}")
    return value


def _triple(data: dict, key: str, default: tuple, where: Path) -> tuple[float, float, float]:
    value = data.get(key, default)
    if not (isinstance(value, list | tuple) and len(value) == 3):
        raise ManifestError(f"{where}: {key!r} must be 3 numbers (R, G, B), not {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _text(data: dict, key: str, where: Path, required: bool = False) -> str:
    """A free-text field: any characters (they are escaped where written), bounded."""
    value = _require(data, key, str, where) if required or key in data else ""
    if len(str(value)) > MAX_TEXT:
        raise ManifestError(f"{where}: {key!r} is over {MAX_TEXT} characters")
    return str(value)


def _onnx_path(value: str, where: Path) -> str:
    """`onnx`: a relative path inside the member's folder (find_onnx checks links)."""
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value:
        raise ManifestError(
            f"{where}: onnx {value!r} must be a path inside its folder, not absolute"
        )
    if ".." in path.parts:
        raise ManifestError(f"{where}: onnx {value!r} must not leave its folder (..)")
    if not (all(PATH_PART.match(p) for p in path.parts) and path.suffix == ".onnx"):
        raise ManifestError(
            f"{where}: onnx {value!r} must be a .onnx file named with letters, digits, . _ -"
        )
    return value


def parse_manifest(path: Path) -> Member:
    """One manifest, checked field by field (not its weights: see check_weights)."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not TOML: {exc}") from exc
    name = str(_require(data, "name", str, path))
    if not NAME.match(name) or name in BUILTIN or name.startswith("deepfake_"):
        raise ManifestError(
            f"{path}: name {name!r} must be lower-case letters, digits and _, "
            f"not a built-in member or deepfake_*"
        )
    if name != path.parent.name:
        raise ManifestError(f"{path}: name {name!r} must be its folder's name")
    output = str(_require(data, "output", str, path))
    if output not in OUTPUTS:
        raise ManifestError(f"{path}: output {output!r} must be one of {sorted(OUTPUTS)}")
    architecture = str(data.get("architecture", ""))
    onnx_file = _onnx_path(str(data["onnx"]), path) if data.get("onnx") else ""
    if bool(architecture) == bool(onnx_file):
        raise ManifestError(f"{path}: give either architecture (+ weights) or onnx, not both")
    if architecture and architecture not in BUILTIN:
        raise ManifestError(f"{path}: architecture {architecture!r} not one of {BUILTIN}")
    weights = str(data.get("weights", ""))
    if architecture and weights not in weights_manifest():
        raise ManifestError(f"{path}: weights {weights!r} is not an asset of export/assets.toml")
    profiles = tuple(data.get("profiles", PROFILES))
    if not set(profiles) <= set(PROFILES):
        raise ManifestError(f"{path}: profiles {profiles} must be among {PROFILES}")
    weight = float(_require(data, "weight", float, path)) if "weight" in data else 1.0
    if weight < 0:
        raise ManifestError(f"{path}: weight {weight} must be >= 0")
    size = int(_require(data, "input_size", int, path))
    if not 16 <= size <= 1024:
        raise ManifestError(f"{path}: input_size {size} must be 16..1024")
    template = str(data.get("template", architecture or "meso4"))
    if template not in TEMPLATES:
        raise ManifestError(f"{path}: template {template!r} must be one of {TEMPLATES}")
    group = str(data.get("group", ""))
    if group and not NAME.match(group):
        # It is written into vote_groups ("member=group,..."): no separators in it.
        raise ManifestError(f"{path}: group {group!r} must be lower-case letters, digits and _")
    return Member(
        name=name,
        folder=path.parent,
        output=output,
        input_size=size,
        mean=_triple(data, "mean", (0.0, 0.0, 0.0), path),
        std=_triple(data, "std", (1.0, 1.0, 1.0), path),
        trained_on=_text(data, "trained_on", path, required=True),
        profiles=profiles,
        weight=weight,
        group=group,
        template=template,
        architecture=architecture,
        weights_asset=weights,
        onnx=onnx_file,
        licence=_text(data, "licence", path, required=bool(onnx_file)),
        source=_text(data, "source", path, required=bool(onnx_file)),
    )


def discover(repo: Path) -> list[Member]:
    """Every manifest under members/, sorted by name."""
    return [parse_manifest(p) for p in sorted((repo / "members").glob(f"*/{MANIFEST}"))]


def find_onnx(member: Member) -> Path:
    """The member's ONNX: in its folder (a link may not point out of it), else found by
    its file name on the asset search path."""
    local = member.folder / member.onnx
    if local.exists() or local.is_symlink():
        resolved = local.resolve()
        if not resolved.is_relative_to(member.folder.resolve()):
            raise ManifestError(f"{member.name}: {member.onnx} links out of {member.folder}")
        if resolved.is_file():
            return resolved
    for root in assets.search_path():
        found = next(iter(sorted(root.rglob(Path(member.onnx).name))), None)
        if found is not None:
            return found
    raise ManifestError(
        f"{member.name}: {member.onnx} is neither in {member.folder} nor under "
        f"${assets.ENV_SEARCH_PATH}"
    )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Nodes and every node of their subgraphs (If, Loop, Scan bodies), depth first."""
    for node in nodes:
        yield node
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for graph in [*subgraphs, *attribute.graphs]:
                yield from _nodes(graph.node)


def op_domains(model: onnx.ModelProto) -> set[str]:
    """Every operator domain the model imports or uses, its local functions' included."""
    domains = {o.domain for o in model.opset_import}
    domains |= {n.domain for n in _nodes(model.graph.node)}
    for function in model.functions:
        domains |= {function.domain, *(o.domain for o in function.opset_import)}
        domains |= {n.domain for n in _nodes(function.node)}
    return domains


def check_classifier(member: Member, model: onnx.ModelProto) -> onnx.ModelProto:
    """The classifier if it fits, converted to the project's opset; else ManifestError."""
    where = f"{member.name} ({member.onnx})"
    custom = sorted(op_domains(model) - set(STANDARD_DOMAINS))
    if custom:
        raise ManifestError(
            f"{where}: op domain {custom[0]!r} is not a standard one {STANDARD_DOMAINS}: "
            f"Triton's runtimes have no such operators"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ManifestError(f"{where}: not a valid ONNX model: {exc}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ManifestError(f"{where}: opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}")
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ManifestError(f"{where}: needs exactly one input and one output")
    (x,), (y,) = inputs, model.graph.output
    if x.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ManifestError(f"{where}: input {x.name!r} must be float32")
    if y.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ManifestError(f"{where}: output {y.name!r} must be float32")
    size = member.input_size
    dims = _dims(x)
    fits = (
        len(dims) == 4
        and dims[1] == 3
        and all(d in (size, 0) or isinstance(d, str) for d in dims[2:])
    )
    if not fits or (isinstance(dims[0], int) and dims[0] != 0):
        raise ManifestError(
            f"{where}: input shape {dims} must be [N, 3, {size}, {size}] (NCHW, N dynamic)"
        )
    classes = 2 if member.output == "softmax_index1" else 1
    out = _dims(y)
    if len(out) != 2 or out[1] != classes:
        raise ManifestError(
            f"{where}: output shape {out} must be [N, {classes}] for output = {member.output!r}"
        )
    if opset != OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ManifestError(f"{where}: cannot convert opset {opset} to {OPSET}: {exc}") from exc
    return model


def _const(name: str, values: list, integer: bool = False) -> onnx.TensorProto:
    return numpy_helper.from_array(
        np.array(values, dtype=np.int64 if integer else np.float32), name
    )


def preprocessing(member: Member, output: str) -> onnx.ModelProto:
    """FACES uint8 [N, H, W, 3] → float32 [N, 3, S, S] in the classifier's
    normalisation: the arithmetic FacesToPFake does for built-in members."""
    size = member.input_size
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["nchw", "c255"], ["unit"]),
        helper.make_node("Shape", ["unit"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node(
            "Resize",
            ["unit", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Sub", ["resized", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], [output]),
    ]
    graph = helper.make_graph(
        nodes,
        "faces_to_input",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 3, size, size])],
        initializer=[
            _const("c255", [255.0]),
            _const("zero", [0], integer=True),
            _const("two", [2], integer=True),
            _const("hw", [size, size], integer=True),
            _const("mean", [[[[v]] for v in member.mean]]),
            _const("std", [[[[v]] for v in member.std]]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def postprocessing(member: Member, scores: str) -> onnx.ModelProto:
    """The classifier's output → P_FAKE [N, 1], by the manifest's `output`."""
    classes = 2 if member.output == "softmax_index1" else 1
    nodes = {
        "p_fake": [helper.make_node("Identity", [scores], [OUTPUT_NAME])],
        "p_real": [helper.make_node("Sub", ["one", scores], [OUTPUT_NAME])],
        "logit_fake": [helper.make_node("Sigmoid", [scores], [OUTPUT_NAME])],
        "softmax_index1": [
            helper.make_node("Softmax", [scores], ["probs"], axis=1),
            helper.make_node("Slice", ["probs", "one_i", "two_i", "one_i"], [OUTPUT_NAME]),
        ],
    }[member.output]
    graph = helper.make_graph(
        nodes,
        "scores_to_p_fake",
        [helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["N", classes])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        initializer=[
            _const("one", [1.0]),
            _const("one_i", [1], integer=True),
            _const("two_i", [2], integer=True),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def wrap_classifier(member: Member, classifier: onnx.ModelProto) -> onnx.ModelProto:
    """FACES uint8 → P_FAKE, around a checked classifier: the built-in members' interface."""
    classifier = compose.add_prefix(check_classifier(member, classifier), "classifier/")
    inits = {i.name for i in classifier.graph.initializer}
    (x,) = [i for i in classifier.graph.input if i.name not in inits]
    (y,) = classifier.graph.output
    ir = classifier.ir_version
    pre, post = preprocessing(member, "pixels"), postprocessing(member, "scores")
    pre.ir_version = post.ir_version = ir
    model = compose.merge_models(pre, classifier, io_map=[("pixels", x.name)])
    model = compose.merge_models(model, post, io_map=[(y.name, "scores")])
    onnx.checker.check_model(model, full_check=True)
    return model


# -- the model repository: what the member's configs are generated from


def source(member: Member) -> Source:
    """What the member's configs are generated from (export/configs.py): its template's
    runtime settings, its own name, input size and trained_on."""
    return Source(member.name, member.template, member.input_size, member.trained_on)
