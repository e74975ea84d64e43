"""The golden record holds: every shared clip and image answers as recorded.

See tests/golden.py for what is recorded and how to re-record after an intended change.
"""

import json

from tests.conftest import Gateway
from tests.golden import RECORD, answers, differences, golden_media, key


def test_the_record_covers_every_shared_clip_and_image() -> None:
    recorded = json.loads(RECORD.read_text())
    assert sorted(recorded) == sorted(key(p) for p in golden_media())
    assert {a["verdict"] for a in recorded.values()} >= {"fake", "real", "uncertain"}
    assert all(a["reasons"] for a in recorded.values() if a["verdict"] == "uncertain")


def test_every_answer_matches_the_golden_record(lite_gateway: Gateway) -> None:
    recorded = json.loads(RECORD.read_text())
    moved = {
        name: found
        for name, got in answers(lite_gateway.url)
        if (found := differences(recorded[name], got, name))
    }
    assert not moved, "answers moved beyond the tolerance:\n" + "\n".join(
        line for lines in moved.values() for line in lines[:5]
    )


def test_differences_sees_a_moved_score_a_lost_face_and_a_flipped_verdict() -> None:
    base = {"verdict": "fake", "score": 0.9, "faces_per_frame": [1, 1]}
    assert differences(base, base | {"score": 0.9001}) == []
    assert differences(base, base | {"score": 0.92}) == [".score: 0.9000 != 0.9200"]
    assert differences(base, base | {"faces_per_frame": [1, 0]}) == [".faces_per_frame[1]: 1 != 0"]
    assert differences(base, base | {"verdict": "real"}) == [".verdict: 'fake' != 'real'"]
