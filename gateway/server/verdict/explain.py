"""Where the models saw a fake: occlusion sensitivity computed through Triton.

Every model is a black box behind Triton (any ONNX member, any runtime), so the
maps are made from scores alone: each explained face is copied once per cell of a
grid with that cell hidden (filled with the crop's mean colour), and the copies
are scored in one batch per voting member. A cell's value is how much hiding it
lowers the model's P(fake): positive where the face looks fake to the model. The
vote is a weighted mean of the members, so its map is the same weighted mean of
theirs. Occlusion is deterministic: the same request gives the same map.
"""

import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from gateway.server import schemas
from gateway.server.settings import ExplainConfig
from gateway.server.verdict.aggregate import vote

FaceKey = tuple[int, int]  # (frame index in the clip, face number in the frame)
Score = Callable[[np.ndarray, list[str]], Awaitable[dict[str, np.ndarray]]]
VOTE = "ensemble"  # the name the answer already gives the vote's per-face score
# A map whose largest drop is below this is drawn faint: hiding any one cell barely
# moved the model, and stretching that noise to full colour would mislead.
MIN_SCALE = 0.05
OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class FaceToExplain:
    track: int
    frame: int
    face: int


def cells(size: int, grid: int) -> list[tuple[int, int]]:
    """[start, end) of each of `grid` bands covering `size` pixels."""
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def occlude(crop: np.ndarray, hidden: Sequence[int], grid: int) -> np.ndarray:
    """The crop with the given cells (row-major numbers) filled with its mean colour."""
    out = crop.copy()
    fill = crop.reshape(-1, crop.shape[-1]).mean(axis=0).round().astype(crop.dtype)
    rows, cols = cells(crop.shape[0], grid), cells(crop.shape[1], grid)
    for cell in hidden:
        (y0, y1), (x0, x1) = rows[cell // grid], cols[cell % grid]
        out[y0:y1, x0:x1] = fill
    return out


def occluded_copies(crop: np.ndarray, grid: int) -> np.ndarray:
    """[grid² + 1, H, W, 3]: the intact crop first, then one copy per hidden cell."""
    return np.stack([crop] + [occlude(crop, [cell], grid) for cell in range(grid * grid)])


def saliency(scores: np.ndarray, grid: int) -> np.ndarray:
    """Scores of occluded_copies -> [grid, grid]: the drop in P(fake) per hidden cell."""
    return (scores[0] - scores[1:]).reshape(grid, grid)


def overlay_png(crop: np.ndarray, grid_map: np.ndarray, size: int) -> str:
    """A data: URL of a PNG: the crop with the map's positive part in colour over it."""
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    strength = np.clip(grid_map / max(float(grid_map.max()), MIN_SCALE), 0.0, 1.0)
    smooth = cv2.resize(strength.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    smooth = np.clip(smooth, 0.0, 1.0)
    colour = cv2.applyColorMap((smooth * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (OVERLAY_ALPHA * smooth)[..., None]
    blended = (face.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)
    _, png = cv2.imencode(".png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def pick_faces(answer: schemas.DetectAnswer, config: ExplainConfig) -> list[FaceToExplain]:
    """The most fake tracks first; in each, its top_k faces by the vote's P(fake)."""
    tracks = sorted(answer.tracks, key=lambda t: t.score, reverse=True)[: config.max_tracks]
    picked = []
    for track in tracks:
        faces = [
            (face.p_fake, frame.index, number)
            for frame in answer.frames
            for number, face in enumerate(frame.faces)
            if face.track == track.id
        ]
        faces.sort(key=lambda f: (-f[0], f[1], f[2]))
        picked += [FaceToExplain(track.id, frame, n) for _, frame, n in faces[: config.top_k]]
    return picked


async def explain(
    answer: schemas.DetectAnswer,
    crops: Mapping[FaceKey, np.ndarray],
    score: Score,
    config: ExplainConfig,
    groups: Mapping[str, str] | None = None,
) -> list[schemas.Explanation]:
    """Maps for the decisive faces, per voting member and for the vote (by the
    ensemble's rule: `groups` when it is max_of_groups, see aggregate.vote).

    One Triton batch per face and member (grid² + 1 crops), faces one after the
    other so at most one face's copies are held at once."""
    weights = {m.name: m.weight for m in answer.models if m.voting}
    if answer.verdict == "no_face" or not weights:
        return []
    members = list(weights)
    explanations = []
    for face in pick_faces(answer, config):
        crop = crops[(face.frame, face.face)]
        scores = await score(occluded_copies(crop, config.grid), members)
        maps = {m: saliency(scores[m], config.grid) for m in members}
        intact = {m: float(scores[m][0]) for m in members}
        # The vote of each occluded copy, then its map: the maximum over groups
        # is not linear, so the members' maps cannot simply be weighted.
        voted = vote({m: scores[m] for m in members}, weights, groups)
        maps[VOTE] = saliency(voted, config.grid)
        intact[VOTE] = float(voted[0])
        explanations += [
            schemas.Explanation(
                track=face.track,
                frame=face.frame,
                face=face.face,
                model=name,
                p_fake=intact[name],
                grid=np.round(grid_map, 4).tolist(),
                heatmap=overlay_png(crop, grid_map, config.overlay_px),
            )
            for name, grid_map in maps.items()
        ]
    return explanations
