"""The built-in architectures by member name: one module each, with its
PRETRAINED_CFG (native input size, normalisation, head, weights asset),
create_model() and load_weights(). The one list of built-in members."""

from types import ModuleType

from export import efficientnet_b7, meso4, mesoinception4, xception

ARCHITECTURES: dict[str, ModuleType] = {
    "meso4": meso4,
    "mesoinception4": mesoinception4,
    "xception": xception,
    "efficientnet_b7": efficientnet_b7,
}


def native_size(name: str) -> int:
    """The square input size the architecture was trained at (the graph resizes to it)."""
    return int(ARCHITECTURES[name].PRETRAINED_CFG["input_size"])
