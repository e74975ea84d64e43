"""preprocess.tracks on real detections: people followed across frames."""

import numpy as np
import pytest

from preprocess.faces import DetectorConfig, Face, load_detector
from preprocess.media import MediaReader
from preprocess.tracks import box_iou, link_tracks
from tests.conftest import ASSETS, MEDIA


@pytest.fixture(scope="module")
def two_faces() -> list[Face]:
    """The two people of a real photo, as SCRFD finds them: the larger (right) one first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
        detector = load_detector(DetectorConfig(name="scrfd"))
    image = MediaReader().read(MEDIA / "images/real/face_recognition_two_people.jpg", 1)
    faces = detector.detect(image.frames[0].image)
    assert len(faces) == 2 and faces[0].box[0] > faces[1].box[0]
    return faces


def moved(face: Face, dx: float) -> Face:
    x0, y0, x1, y1 = face.box
    return Face((x0 + dx, y0, x1 + dx, y1), face.score)


def test_box_iou() -> None:
    a = [(0, 0, 10, 10), (0, 0, 10, 20)]
    b = [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)]
    assert box_iou(a, b) == pytest.approx(np.array([[1, 1 / 3, 0], [0.5, 0.2, 0]]))
    assert box_iou(a, []).shape == (2, 0)


def test_two_people_with_a_missed_detection(two_faces: list[Face]) -> None:
    right, left = two_faces
    frames = [
        [right, left],
        [moved(right, 5), moved(left, -5)],
        [moved(left, -10)],  # the right face missed
        [],  # both missed
        [moved(left, -15), moved(right, 15)],  # listed in the other order
        [moved(right, 20), moved(left, -20)],
    ]
    tracks = link_tracks(frames)
    assert [t.id for t in tracks] == [0, 1]
    assert tracks[0].links == [(0, 0), (1, 0), (4, 1), (5, 0)]
    assert tracks[1].links == [(0, 1), (1, 1), (2, 0), (4, 0), (5, 1)]
    assert tracks[0].frames == [0, 1, 4, 5]
    assert tracks[0].boxes[-1] == moved(right, 20).box


def test_a_long_gap_starts_a_new_track(two_faces: list[Face]) -> None:
    face = two_faces[0]
    frames = [[face], [], [], [], [face]]
    assert [t.frames for t in link_tracks(frames, max_gap=3)] == [[0, 4]]
    assert [t.frames for t in link_tracks(frames, max_gap=2)] == [[0], [4]]


def test_ids_by_first_appearance_larger_first(two_faces: list[Face]) -> None:
    right, left = two_faces
    tracks = link_tracks([[], [left], [right, left], [right, left]])
    assert [(t.id, t.frames) for t in tracks] == [(0, [1, 2, 3]), (1, [2, 3])]
    # New faces in one frame: the larger gets the smaller id, whatever the list order.
    tracks = link_tracks([[left, right]])
    assert [t.boxes[0] for t in tracks] == [right.box, left.box]
    assert [t.links[0] for t in tracks] == [(0, 1), (0, 0)]


def test_far_apart_boxes_do_not_link(two_faces: list[Face]) -> None:
    right, left = two_faces
    tracks = link_tracks([[right], [left]])
    assert len(tracks) == 2


def test_a_real_clip_with_one_person() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
        detector = load_detector(DetectorConfig(name="yunet"))
    clip = MEDIA / "videos/real/hdtf_via_sadtalker_WDA_KatieHill_000.mp4"
    frames = MediaReader().read(clip, 16).frames
    tracks = link_tracks([detector.detect(frame.image) for frame in frames])
    main = max(tracks, key=lambda t: len(t.links))
    assert len(main.links) >= 15
    assert all(len(t.links) <= 2 for t in tracks if t is not main)
