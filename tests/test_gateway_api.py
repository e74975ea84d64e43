"""The gateway end to end: real HTTP to the real gateway, real Triton, real media."""

import hashlib
import json
import socket
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from export.repository import profile_members
from gateway.server.schemas import DetectAnswer, ModelsAnswer, ModelSummary, ServiceInfo
from gateway.server.verdict.aggregate import vote
from tests.conftest import ASSETS, MEDIA, MEMBERS, REPOSITORY, Gateway
from tests.stack import OBAMA, TIMEOUT, TWO_PEOPLE, metric, wait_until
from tests.triton_client import parameters

VIDEOS = sorted((MEDIA / "videos").glob("*/*.mp4"))


def detect_bytes(gateway: Gateway, name: str, data: bytes, field: str = "file") -> httpx.Response:
    return httpx.post(gateway.url + "/api/detect", files={field: (name, data)}, timeout=TIMEOUT)


def assert_clean(gateway: Gateway) -> None:
    """Nothing left in the upload folder within a second (a stream's last line can reach
    the client just before its cleanup runs), and the gateway still answers."""
    wait_until(lambda: not list(gateway.uploads.iterdir()), timeout=1, what="temp file left")
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "alive"}


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize("clip", VIDEOS, ids=lambda p: f"{p.parent.name}/{p.stem[:30]}")
def test_every_shared_clip_gets_a_valid_answer(gateway: Gateway, clip: Path) -> None:
    response = gateway.client.detect_response(clip, frames=8)
    assert response.status_code == 200, response.text
    answer = DetectAnswer.model_validate(response.json())
    # uncertain says why (a short deciding track, small faces...): never without a reason
    assert answer.verdict in ("fake", "real", "uncertain")
    assert answer.verdict != "uncertain" or answer.reasons
    assert answer.score is not None and 0 <= answer.score <= 1
    # Xception and B7 have random weights here: by default they are not run, and said so.
    assert answer.ensemble is None
    assert [m.name for m in answer.skipped] == ["xception", "efficientnet_b7"]
    assert all("random weights" in m.reason for m in answer.skipped)
    assert answer.media.kind == "video" and answer.media.format == "mp4"
    capture = cv2.VideoCapture(str(clip))
    assert answer.media.width == int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    assert answer.media.height == int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    assert len(answer.frames) == 8
    with_faces = [f for f in answer.frames if f.faces]
    assert len(with_faces) >= 6, "a face in (nearly) every sampled frame of these clips"
    # By default only the voting members run: the untrained ones are listed as skipped.
    skipped = {m.name for m in answer.skipped}
    assert {m.name for m in answer.models} == set(MEMBERS) - skipped
    (decisive,) = [t for t in answer.tracks if t.decisive]
    assert decisive.score == pytest.approx(answer.raw_score)  # score: calibrated
    assert decisive.score == max(t.score for t in answer.tracks if not t.short or t is decisive)
    for face in (face for frame in answer.frames for face in frame.faces):
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= answer.media.width and 0 <= y0 < y1 <= answer.media.height
        assert set(face.models) == {m.name for m in answer.models}
    timings = answer.timings_ms.model_dump()
    assert all(timings[k] > 0 for k in ("upload", "decode", "detect", "infer"))
    assert_clean(gateway)


def test_the_answer_is_the_documented_vote_of_the_models(gateway: Gateway) -> None:
    """Default 32 frames on a real deepfake: per-face p_fake is the ensemble's
    vote by its stated rule, and untrained models are reported, flagged and not voting."""
    answer = DetectAnswer.model_validate(
        gateway.client.detect_response(
            MEDIA / "videos/fake/dfdc_widuwuoiur.mp4", models="all"
        ).json()
    )
    assert len(answer.frames) == 32
    assert answer.ensemble == "deepfake_ensemble" and answer.skipped == []
    models = {m.name: m for m in answer.models}
    assert models["meso4"].trained and models["meso4"].voting
    assert not models["xception"].trained and models["xception"].weight == 0
    assert not models["efficientnet_b7"].voting
    assert any("xception" in n and "random weights" in n for n in answer.notes)
    rule = httpx.get(f"{gateway.url}/api/models", timeout=30).json()["vote_rule"]
    weights = {m: models[m].weight for m in models}
    groups = {m: models[m].group for m in models} if rule == "max_of_groups" else None
    for face in (face for frame in answer.frames for face in frame.faces):
        assert face.p_fake == pytest.approx(vote(face.models, weights, groups), abs=1e-5)
    (decisive,) = [t for t in answer.tracks if t.decisive]
    assert {m: models[m].score for m in models} == pytest.approx(decisive.models)


def test_images_are_one_frame(gateway: Gateway, tmp_path: Path) -> None:
    image = cv2.imread(str(TWO_PEOPLE))
    for ext in ("png", "webp"):
        converted = tmp_path / f"two.{ext}"
        cv2.imwrite(str(converted), image)
        response = gateway.client.detect_response(converted)
        assert response.status_code == 200, response.text
        answer = DetectAnswer.model_validate(response.json())
        assert answer.media.kind == "image" and answer.media.format == ext
        assert answer.media.frame_count == 1 and len(answer.frames) == 1
        assert len(answer.frames[0].faces) == 2
        assert len(answer.tracks) == 2, "two people, two tracks"
    answer = DetectAnswer.model_validate(gateway.client.detect_response(OBAMA).json())
    assert answer.media.format == "jpeg" and len(answer.tracks) == 1
    assert_clean(gateway)


def test_two_people_in_a_clip_are_two_tracks(gateway: Gateway, tmp_path: Path) -> None:
    image = cv2.imread(str(TWO_PEOPLE))
    frames = [np.roll(image, 2 * i, axis=1) for i in range(12)]
    answer = DetectAnswer.model_validate(
        gateway.client.detect_response(write_clip(tmp_path / "two.mp4", frames), frames=6).json()
    )
    assert len(answer.tracks) == 2
    assert all(len(t.frames) == 6 for t in answer.tracks)
    xs = [
        [f.box[0] for f in frame.faces if f.track == t.id]
        for t in answer.tracks
        for frame in answer.frames
    ]
    assert all(len(x) == 1 for x in xs), "each track has one face per frame"


def test_a_faceless_clip_is_no_face(gateway: Gateway, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(20)]
    response = gateway.client.detect_response(write_clip(tmp_path / "noise.mp4", frames))
    assert response.status_code == 200
    answer = DetectAnswer.model_validate(response.json())
    assert answer.verdict == "no_face" and answer.score is None and answer.tracks == []
    assert all(m.score is None for m in answer.models)
    assert_clean(gateway)


def test_chosen_models_are_called_directly_with_the_same_scores(gateway: Gateway) -> None:
    clip = MEDIA / "videos/real/ffpp_c23_original_004.mp4"
    full = DetectAnswer.model_validate(gateway.client.detect_response(clip, frames=4).json())
    voting = [m.name for m in full.models if m.voting]  # the trained MesoNets
    mesos = DetectAnswer.model_validate(
        gateway.client.detect_response(clip, frames=4, models=",".join(voting)).json()
    )
    assert mesos.ensemble is None
    assert [m.name for m in mesos.models] == voting
    for a, b in zip(full.frames, mesos.frames, strict=True):
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fb.models["meso4"] == pytest.approx(fa.models["meso4"], abs=1e-6)
            assert set(fb.models) == set(voting)
    # The voting members carry all the vote in the local repository: same verdict.
    assert mesos.score == pytest.approx(full.score, abs=1e-5)


def test_models_that_cannot_vote_are_skipped_without_changing_the_answer(
    gateway: Gateway,
) -> None:
    """The default runs only the voting members; models=all adds the random-weight ones for
    display: the same faces, verdict and scores, since they carry no vote."""
    clip = MEDIA / "videos/fake/dfdc_widuwuoiur.mp4"
    default = DetectAnswer.model_validate(gateway.client.detect_response(clip, frames=8).json())
    everything = DetectAnswer.model_validate(
        gateway.client.detect_response(clip, frames=8, models="all").json()
    )
    assert [m.name for m in default.skipped] == ["xception", "efficientnet_b7"]
    assert any("models=all" in n for n in default.notes)
    assert sorted(m.name for m in everything.models) == sorted(profile_members(REPOSITORY, "full"))
    assert default.verdict == everything.verdict
    assert default.score == pytest.approx(everything.score, abs=1e-5)
    for a, b in zip(default.frames, everything.frames, strict=True):
        assert [f.p_fake for f in a.faces] == pytest.approx([f.p_fake for f in b.faces], abs=1e-5)
    assert_clean(gateway)


def test_untrained_or_unknown_models_alone_are_refused(gateway: Gateway) -> None:
    response = gateway.client.detect_response(OBAMA, models="xception")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_voting_model"
    response = gateway.client.detect_response(OBAMA, models="meso4,resnet")
    assert response.status_code == 422
    assert "resnet" in response.json()["error"]["message"]
    # ...but an untrained model beside a trained one is reported, flagged.
    answer = gateway.client.detect_response(OBAMA, models="meso4,xception").json()
    assert [(m["name"], m["voting"]) for m in answer["models"]] == [
        ("meso4", True),
        ("xception", False),
    ]
    assert_clean(gateway)


def test_thumbnails_are_small_jpegs_on_request(gateway: Gateway) -> None:
    plain = gateway.client.detect_response(OBAMA).json()
    assert plain["frames"][0]["faces"][0]["thumbnail"] is None
    face = gateway.client.detect_response(OBAMA, thumbnails="true").json()["frames"][0]["faces"][0]
    assert face["thumbnail"].startswith("data:image/jpeg;base64,")


def test_the_streaming_variant_reports_progress_then_the_answer(gateway: Gateway) -> None:
    clip = MEDIA / "videos/fake/cvprw2019_demo_fake.mp4"
    with (
        clip.open("rb") as f,
        httpx.stream(
            "POST",
            gateway.url + "/api/detect/stream",
            files={"file": (clip.name, f)},
            params={"frames": 8},
            timeout=TIMEOUT,
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    names = [e["event"] for e in events]
    assert names[:3] == ["accepted", "decoded", "faces"]
    assert names[-1] == "result" and set(names[3:-1]) == {"inference"}
    progress = [e["done"] for e in events if e["event"] == "inference"]
    # Faces go to Triton while the clip is still read: the first count may be above 0.
    assert progress == sorted(progress) and 0 <= progress[0] <= progress[-1]
    assert progress[-1] == events[2]["faces"] > 0
    answer = DetectAnswer.model_validate(events[-1]["result"])
    assert answer.media.frame_count == events[1]["media"]["frame_count"] == 134
    assert answer.timings_ms.upload > 0  # the stream reports receiving the upload too
    assert_clean(gateway)


def test_a_stream_that_fails_after_it_began_ends_with_an_error_event(
    gateway: Gateway, tmp_path: Path
) -> None:
    clip = (MEDIA / "videos/real/cvprw2019_demo.mp4").read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip[:4096])
    with truncated.open("rb") as f:
        response = httpx.post(
            gateway.url + "/api/detect/stream", files={"file": ("cut.mp4", f)}, timeout=TIMEOUT
        )
    assert response.status_code == 200
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[0]["event"] == "accepted"
    assert events[-1] == {
        "event": "error",
        "status": 422,
        "error": events[-1]["error"],
    }
    assert events[-1]["error"]["code"] == "undecodable_media"
    assert_clean(gateway)


BAD_FILES = {
    "empty.mp4": (b"", 415, "unsupported_media"),
    "random.mp4": (
        bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8)),
        415,
        "unsupported_media",
    ),
    "notes.mp4": (b"this is not a video\n" * 100, 415, "unsupported_media"),
    # GIF is accepted (animated ones are sampled like a video); this one is only a header.
    "anim.gif": (b"GIF89a" + b"\0" * 200, 422, "undecodable_media"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_get_a_json_4xx(gateway: Gateway, name: str) -> None:
    data, status, code = BAD_FILES[name]
    response = detect_bytes(gateway, name, data)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert_clean(gateway)


def test_a_truncated_video_is_undecodable(gateway: Gateway) -> None:
    clip = (MEDIA / "videos/real/cvprw2019_demo.mp4").read_bytes()
    response = detect_bytes(gateway, "cut.mp4", clip[:4096])
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "undecodable_media"
    assert_clean(gateway)


def test_an_image_named_like_a_video_is_analysed_as_an_image(gateway: Gateway) -> None:
    response = detect_bytes(gateway, "clip.mkv", OBAMA.read_bytes())
    assert response.status_code == 200
    assert response.json()["media"]["format"] == "jpeg"


def test_the_prototypes_field_name_video_is_accepted(gateway: Gateway) -> None:
    response = detect_bytes(gateway, "obama.jpg", OBAMA.read_bytes(), field="video")
    assert response.status_code == 200
    assert response.json()["verdict"] in ("real", "fake", "uncertain")


def test_an_upload_over_the_cap_is_refused(gateway: Gateway) -> None:
    big = b"\0" * (101 << 20)
    response = detect_bytes(gateway, "big.mp4", big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert_clean(gateway)


def test_a_declared_length_over_the_cap_is_refused_before_reading(gateway: Gateway) -> None:
    """The client says 200 MB and sends 5 bytes: only the declared length can
    refuse it, and the answer must come without waiting for the rest."""
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST /api/detect HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {200 << 20}\r\n\r\n--x\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode())
        reply = ""
        while "}}" not in reply and (chunk := conn.recv(65536)):
            reply += chunk.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"file_too_large"' in reply


# Requests that are not a well-formed upload: (httpx arguments, status, error code).
MALFORMED = [
    ({"data": {"name": "x"}}, 415, "unsupported_content_type"),
    ({"files": {"other": ("a.jpg", b"1234")}}, 422, "missing_file"),
    (
        {"content": b"raw bytes", "headers": {"content-type": "video/mp4"}},
        415,
        "unsupported_content_type",
    ),
    (
        {
            "content": b"--b\r\nbroken",
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
        422,
        "missing_file",
    ),
]


@pytest.mark.parametrize(("kwargs", "status", "code"), MALFORMED)
def test_malformed_requests(gateway: Gateway, kwargs: dict, status: int, code: str) -> None:
    response = httpx.post(gateway.url + "/api/detect", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert_clean(gateway)


@pytest.mark.parametrize("query", ["frames=0", "frames=x", "threshold=2", "frames=1000"])
def test_bad_options_are_422(gateway: Gateway, query: str) -> None:
    response = httpx.post(
        f"{gateway.url}/api/detect?{query}", files={"file": ("o.jpg", OBAMA.read_bytes())}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_routes_are_json(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.get(gateway.url + "/api/detect")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_the_threshold_option_decides_the_verdict(gateway: Gateway) -> None:
    low = gateway.client.detect_response(OBAMA, threshold=0.0).json()
    high = gateway.client.detect_response(OBAMA, threshold=1.0).json()
    assert low["score"] == pytest.approx(high["score"])
    assert 0 < high["score"] < 1  # a score of exactly 1 would be "fake" at any threshold
    assert high["verdict"] == "real" and high["reasons"] == []
    # At 0 every score is fake, unless it lies within the uncertainty band of 0 (unset: the
    # measured band GET /api/models shows, 0.367 around a calibrated score).
    band = httpx.get(gateway.url + "/api/models", timeout=30).json()["calibration"][
        "uncertain_band"
    ]
    codes = [r["code"] for r in low["reasons"]]
    near = ("uncertain", ["near_threshold"])
    assert (low["verdict"], codes) == (near if low["score"] < band else ("fake", []))


PROVENANCE = ("file", "sha256", "source", "licence")


def assert_provenance_is_true(model: ModelSummary) -> None:
    """What the provenance says, checked: a trained model's file is the shared weights file
    with that sha256; an untrained one says it has random weights and names no file."""
    if model.trained:
        (path,) = ASSETS.rglob(model.weights.file)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == model.weights.sha256
        assert model.weights.source and model.weights.licence not in ("", "n/a")
    else:
        assert (model.weights.file, model.weights.sha256, model.weights.licence) == ("", "", "n/a")
        assert model.weights.source.startswith("random initialisation")
        assert model.weight == 0


def test_models_come_from_triton(gateway: Gateway, triton) -> None:
    answer = ModelsAnswer.model_validate(httpx.get(gateway.url + "/api/models").json())
    assert answer.ensemble == "deepfake_ensemble" and answer.profile == "full"
    assert answer.ready
    for model in answer.models:
        params = parameters(triton.grpc_url, model.name)
        assert model.trained == (params["trained"] == "true")
        assert model.weights.model_dump() == {k: params[f"weights_{k}"] for k in PROVENANCE}
        assert model.input_size == int(params["input_size"])
        assert_provenance_is_true(model)
        assert model.ready and model.version == "1"
    vote = parameters(triton.grpc_url, "deepfake_vote")["vote_weights"]
    assert ",".join(f"{m.name}={m.weight:g}" for m in answer.models) == vote


def test_service_information_and_health(gateway: Gateway) -> None:
    info = ServiceInfo.model_validate(httpx.get(gateway.url + "/api").json())
    assert info.status == "ready" and info.profile == "full" and info.max_upload_mb == 100
    assert httpx.get(gateway.url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(gateway.url + "/docs").status_code == 200
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/api/detect"]["post"]["requestBody"]["content"]


def test_request_ids_are_returned(gateway: Gateway) -> None:
    response = gateway.client.detect_response(OBAMA)
    assert response.headers["x-request-id"] == response.json()["request_id"]
    mine = httpx.get(gateway.url + "/healthz", headers={"x-request-id": "abc123"})
    assert mine.headers["x-request-id"] == "abc123"


def test_metrics_count_requests_stages_and_faces(gateway: Gateway) -> None:
    stages = ("decode", "detect", "infer", "total")

    def counts() -> dict[str, float]:
        detects = {
            str(status): metric(
                gateway.url,
                "gateway_requests_total",
                method="POST",
                route="/api/detect",
                status=str(status),
            )
            for status in (200, 415)
        }
        timed = {s: metric(gateway.url, "gateway_stage_seconds_count", stage=s) for s in stages}
        faces = {"faces": metric(gateway.url, "gateway_faces_per_request_sum")}
        return detects | timed | faces

    before = counts()
    assert detect_bytes(gateway, "empty.mp4", b"").status_code == 415
    answer = gateway.client.detect_response(OBAMA).json()
    after = counts()
    found = sum(len(frame["faces"]) for frame in answer["frames"])
    assert found == 1
    # Exactly these two requests: one refused before any stage, one through every stage.
    assert {k: after[k] - before[k] for k in before} == {
        "200": 1,
        "415": 1,
        **dict.fromkeys(stages, 1),
        "faces": found,
    }
