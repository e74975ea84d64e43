"""Turning decoded pixels upright, as a player or a photo viewer shows them.

Phones store portrait video sideways and say in the container's display matrix how to turn
it; cameras do the same for photos with the EXIF orientation tag. Faces are only found, and
only scored as the models were trained, on the upright picture.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The 2x2 part of a display matrix, as FFmpeg defines it (libavutil/display.h): a source pixel
# (p, q) (x right, y down) goes to (a*p + c*q, b*p + d*q) on the display; stored 16.16 fixed
# point as [a b u c d v x y w].
_CLOCKWISE = np.array([[0, -1], [1, 0]])  # a quarter turn clockwise on screen (y down)
_MIRROR = np.array([[-1, 0], [0, 1]])  # left <-> right


@dataclass(frozen=True)
class Orientation:
    """How to turn decoded pixels upright: mirror them left-right first if `flipped`, then
    rotate clockwise by `rotation` degrees (0, 90, 180 or 270). Together these are all eight
    orientations of a rectangle: every display matrix of quarter turns and every EXIF tag."""

    rotation: int = 0
    flipped: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """`image` (H x W x C) upright; the same array when nothing is to be done."""
        if self.rotation == 0 and not self.flipped:
            return image
        if self.flipped:
            image = image[:, ::-1]
        # Contiguous, since OpenCV and the crop code do not take negative strides.
        return np.ascontiguousarray(np.rot90(image, k=-(self.rotation // 90)))

    def facts(self) -> tuple[int, bool]:
        """(rotation, flipped), as MediaInfo reports them."""
        return self.rotation, self.flipped

    def matrix(self) -> np.ndarray:
        """This transform as the 2x2 part of a display matrix ([[a, c], [b, d]])."""
        mirror = _MIRROR if self.flipped else np.eye(2, dtype=int)
        return np.linalg.matrix_power(_CLOCKWISE, self.rotation // 90) @ mirror


UPRIGHT = Orientation()
ALL = tuple(Orientation(r, f) for f in (False, True) for r in (0, 90, 180, 270))


def from_display_matrix(matrix: Sequence[int]) -> Orientation:
    """The orientation a display matrix ([a b u c d v x y w]) asks for. A matrix that is not
    made of quarter turns (a skewed or arbitrary angle, never written by phones) is taken as
    the nearest one; a degenerate one as upright."""
    if len(matrix) < 9:  # side data of the wrong size: nothing to read from it
        return UPRIGHT
    a, b, c, d = (int(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if abs(a) + abs(d) >= abs(b) + abs(c):
        signs = np.array([[np.sign(a), 0], [0, np.sign(d)]])
    else:
        signs = np.array([[0, np.sign(c)], [np.sign(b), 0]])
    for orientation in ALL:
        if np.array_equal(orientation.matrix(), signs):
            return orientation
    return UPRIGHT  # a zero in the signs: no transform can be read from it


def from_rotate_tag(value: str) -> Orientation:
    """The legacy `rotate` stream tag (old FFmpeg, some Matroska files): degrees clockwise."""
    try:
        degrees = round(float(value)) % 360
    except ValueError:
        return UPRIGHT
    return Orientation(degrees) if degrees in (90, 180, 270) else UPRIGHT


# EXIF tag 0x0112 -> the transform that makes the photo upright (Pillow's exif_transpose).
_EXIF = {
    1: UPRIGHT,
    2: Orientation(0, True),  # mirrored
    3: Orientation(180),
    4: Orientation(180, True),  # mirrored top to bottom
    5: Orientation(270, True),  # transposed
    6: Orientation(90),
    7: Orientation(90, True),  # transversed
    8: Orientation(270),
}


def from_exif(value: object) -> Orientation:
    """The EXIF orientation tag's transform; upright for a missing or invalid tag."""
    return _EXIF.get(value, UPRIGHT) if isinstance(value, int) else UPRIGHT
