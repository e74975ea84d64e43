"""A face box -> the fixed-size crop the classifiers take, as the DFDC winner cut it.

selimsef/dfdc_deepfake_challenge: grow the box by a third of its size on each side,
`isotropically_resize_image` (INTER_AREA down, INTER_CUBIC up), then `put_to_center`.
"""

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropConfig:
    size: int = 380  # EfficientNet-B7's input; the ONNX models resize for the others
    margin: float = 1 / 3  # of the box's width (height) added left and right (top and bottom)


def crop_face(image_rgb: np.ndarray, box: Box, config: CropConfig = CropConfig()) -> np.ndarray:
    """The face in `box` (x0, y0, x1, y1) with its margin, clipped to the frame, resized so its
    long side is `config.size` and zero-padded around the centre: size x size x 3 uint8."""
    x0, y0, x1, y1 = (int(v) for v in box)
    pad_x, pad_y = int((x1 - x0) * config.margin), int((y1 - y0) * config.margin)
    # Slicing stops at the far edges of the frame by itself; the near ones need the max.
    face = image_rgb[max(y0 - pad_y, 0) : y1 + pad_y, max(x0 - pad_x, 0) : x1 + pad_x]
    if face.size == 0:
        raise ValueError(f"box {box} leaves nothing to crop in a {image_rgb.shape} image")
    return _put_to_center(_isotropic_resize(face, config.size), config.size)


def _isotropic_resize(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale == 1:
        return image
    # The long side is exactly `size`; the short one as the winner's int() truncates it.
    new_size = (
        (size, max(1, int(height * scale)))
        if width >= height
        else (max(1, int(width * scale)), size)
    )
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, new_size, interpolation=interpolation)


def _put_to_center(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[top : top + height, left : left + width] = image
    return out
