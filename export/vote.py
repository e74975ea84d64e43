"""The ensemble's vote as an ONNX graph: a weighted mean of member P_FAKEs,
or (rule "max_of_groups") the most fake of the weighted means of groups of
specialists, e.g. the Deepfakes-trained pair and the Face2Face-trained pair.

A graph rather than Python so the NGC image runs it on its native backend and
the weights are data in the file, readable next to the members' provenance.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx_writer import OPSET
from preprocess.tensors import OUTPUT_NAME, member_output


def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights summing to 1, in the members' order."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"vote weights {weights} sum to {total}: at least one must count")
    return {member: weight / total for member, weight in weights.items()}


def group_matrix(members: dict[str, float], groups: dict[str, str] | None) -> np.ndarray:
    """[M, G]: column g holds group g's normalised weights (one group: the mean).
    Groups whose members all weigh 0 are left out: they never vote."""
    names = sorted({groups[m] for m, w in members.items() if w} if groups else {""})
    matrix = np.zeros((len(members), len(names)), dtype=np.float32)
    for col, name in enumerate(names):
        mask = {m: w if not groups or groups[m] == name else 0.0 for m, w in members.items()}
        matrix[:, col] = list(normalise(mask).values())
    return matrix


def build_vote(members: dict[str, float], groups: dict[str, str] | None = None) -> onnx.ModelProto:
    """Inputs named after the members, [N, 1] each; outputs P_FAKE [N, 1] and
    P_FAKE_<MEMBER> [N, 1], each input passed through.

    Passing the member scores through the vote makes every ensemble output come
    from this last step, so a client may request any subset of them: outputs of
    earlier steps left unrequested deadlock the ensemble in Triton 2.51.
    With `groups` (member -> group) the vote is the maximum over the groups'
    weighted means; without, the weighted mean of all."""
    weights = group_matrix(members, groups)
    inputs = [helper.make_tensor_value_info(m, TensorProto.FLOAT, ["N", 1]) for m in members]
    passed = [member_output(m) for m in members]
    nodes = [
        helper.make_node("Concat", [i.name for i in inputs], ["scores"], axis=1),
        helper.make_node("MatMul", ["scores", "weights"], ["group_means"]),
        helper.make_node("ReduceMax", ["group_means"], [OUTPUT_NAME], axes=[1], keepdims=1),
        *(helper.make_node("Identity", [i.name], [p]) for i, p in zip(inputs, passed, strict=True)),
    ]
    graph = helper.make_graph(
        nodes,
        "deepfake_vote",
        inputs,
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1])
            for name in (OUTPUT_NAME, *passed)
        ],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_vote(members: dict[str, float], path: Path, groups: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_vote(members, groups), str(path))
