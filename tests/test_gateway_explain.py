"""Explanations (explain=true) against the real stack: the lite Triton (the two trained
MesoNets, the voting members), real gateways, real fake clips and faces from ../shared.

The deletion check is the standard test that a saliency map means something: hiding a
face's cells in the map's order must lower the model's P(fake) faster than hiding them
in a random order. It runs on faces the real pipeline cuts from shared fake clips.
"""

import asyncio
import base64
import hashlib
import io
import unicodedata
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from export.repository import profile_members
from gateway.server.model_server import ModelServer
from gateway.server.settings import ExplainConfig
from gateway.server.verdict.explain import VOTE, occlude, occluded_copies, saliency
from model_repository.local_triton import TritonSettings
from preprocess.crop import CropConfig
from preprocess.faces import DetectorConfig, load_detector
from preprocess.media import MediaReader
from preprocess.pipeline import FaceExtractor
from tests.conftest import MEDIA, REPOSITORY, Gateway, start_gateway, write_results
from tests.stack import ok_answer

FAKE_CLIPS = (
    MEDIA / "videos/fake/ffpp_c23_Deepfakes_519_515.mp4",
    MEDIA / "videos/fake/dfdc_widuwuoiur.mp4",
    MEDIA / "videos/fake/ffpp_deepfakes_003_000.mp4",
)
FRAMES_PER_CLIP = 3
# The lite profile's members, all trained, all voting (the Face2Face pair too).
VOTING = tuple(profile_members(REPOSITORY, "lite"))
# The Deepfakes-trained pair: these fake clips are Deepfakes-method, so a map of
# why a face looks fake is checked for the models that call them fake (the
# Face2Face-trained pair scores them near 0: there is nothing to delete).
DF_PAIR = ("meso4", "mesoinception4")
RANDOM_ORDERS = 8
FRAMES = 8
SETTINGS = ExplainConfig()  # the gateway's defaults, as the test gateways run them
GRID = SETTINGS.grid  # the deletion check tests the map the gateway ships


def server_for(triton: TritonSettings) -> ModelServer:
    return ModelServer(triton.grpc_url, "deepfake_ensemble", 120.0, 1, 32)


def score_members(triton: TritonSettings, batch: np.ndarray) -> dict[str, np.ndarray]:
    async def run() -> dict[str, np.ndarray]:
        server = server_for(triton)
        try:
            return await server.score_with_members(batch, list(DF_PAIR))
        finally:
            await server.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def fake_faces(lite_triton: TritonSettings) -> list[np.ndarray]:
    """380 px crops cut by the real pipeline from shared fake clips, kept where the
    vote says fake: a map of why a face looks fake needs a face that does."""
    extractor = FaceExtractor(load_detector(DetectorConfig()), CropConfig())
    reader = MediaReader()
    crops = []
    for clip in FAKE_CLIPS:
        for frame in reader.read(clip, FRAMES_PER_CLIP).frames:
            found = extractor.extract_frame(frame)
            crops += found.crops[:1]  # the largest face
    scores = score_members(lite_triton, np.stack(crops))
    vote = np.mean([scores[m] for m in DF_PAIR], axis=0)
    fake = [c for c, v in zip(crops, vote, strict=True) if v >= 0.5]
    assert len(fake) >= 5, f"only {len(fake)} of {len(crops)} shared fake faces score as fake"
    return fake


def deletion_curve(
    triton: TritonSettings, crop: np.ndarray, orders: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """P(fake) per model as cells are hidden one more at a time, for each order:
    [orders, grid² + 1] per model (step 0: nothing hidden)."""
    steps = GRID * GRID + 1
    batch = np.stack(
        [occlude(crop, order[:s].tolist(), GRID) for order in orders for s in range(steps)]
    )
    scores = score_members(triton, batch)
    return {m: scores[m].reshape(len(orders), steps) for m in DF_PAIR}


def test_deleting_the_map_s_cells_first_lowers_p_fake_faster_than_random(
    lite_triton: TritonSettings, fake_faces: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(0)
    by_map = {m: [] for m in DF_PAIR}
    by_chance = {m: [] for m in DF_PAIR}
    for crop in fake_faces:
        scores = score_members(lite_triton, occluded_copies(crop, GRID))
        random_orders = [rng.permutation(GRID * GRID) for _ in range(RANDOM_ORDERS)]
        for model in DF_PAIR:
            order = np.argsort(-saliency(scores[model], GRID).ravel(), kind="stable")
            curves = deletion_curve(lite_triton, crop, [order, *random_orders])[model]
            # Area under the deletion curve: lower is a map that finds the evidence sooner.
            by_map[model].append(float(curves[0].mean()))
            by_chance[model].append(float(curves[1:].mean()))
    figures = {}
    for model in DF_PAIR:
        ours, chance = np.array(by_map[model]), np.array(by_chance[model])
        figures[model] = {
            "faces": len(ours),
            "auc_map_order": round(float(ours.mean()), 4),
            "auc_random_order": round(float(chance.mean()), 4),
            "faces_where_map_beats_random": int((ours < chance).sum()),
        }
    write_results(
        "explain_deletion_check", figures | {"grid": GRID, "random_orders": RANDOM_ORDERS}
    )
    for model in DF_PAIR:
        ours, chance = np.array(by_map[model]), np.array(by_chance[model])
        assert ours.mean() < chance.mean(), (model, figures[model])


def png_side(url: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(url[len(prefix) :]), np.uint8), 1)
    assert image is not None
    return image.shape[0], image.shape[1]


def test_explain_answers_maps_for_each_voting_model_on_the_decisive_faces(
    lite_gateway: Gateway,
) -> None:
    clip = FAKE_CLIPS[0]
    answer = ok_answer(lite_gateway.client.detect_response(clip, explain="true", frames=FRAMES))
    assert answer["verdict"] == "fake"
    assert answer["bytes"] == clip.stat().st_size
    assert answer["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    voting = [m["name"] for m in answer["models"] if m["voting"]]
    assert sorted(voting) == sorted(VOTING)

    explanations = answer["explanations"]
    faces = {(e["track"], e["frame"], e["face"]) for e in explanations}
    tracks = sorted(answer["tracks"], key=lambda t: -t["score"])[: SETTINGS.max_tracks]
    expected = set()
    for track in tracks:
        scored = sorted(
            (
                (-face["p_fake"], frame["index"], n)
                for frame in answer["frames"]
                for n, face in enumerate(frame["faces"])
                if face["track"] == track["id"]
            )
        )
        expected |= {(track["id"], frame, n) for _, frame, n in scored[: SETTINGS.top_k]}
    assert faces == expected
    for key in faces:
        models = sorted(
            e["model"] for e in explanations if (e["track"], e["frame"], e["face"]) == key
        )
        assert models == sorted([*VOTING, VOTE])

    p_fake = {
        (frame["index"], n): face
        for frame in answer["frames"]
        for n, face in enumerate(frame["faces"])
    }
    for e in explanations:
        assert len(e["grid"]) == SETTINGS.grid and all(len(r) == SETTINGS.grid for r in e["grid"])
        assert png_side(e["heatmap"]) == (SETTINGS.overlay_px, SETTINGS.overlay_px)
        face = p_fake[(e["frame"], e["face"])]
        intact = face["p_fake"] if e["model"] == VOTE else face["models"][e["model"]]
        assert e["p_fake"] == pytest.approx(intact, abs=1e-4)  # the same crop, the same score
        assert np.abs(np.array(e["grid"])).max() > 0  # hiding something moved the model
    assert answer["timings_ms"]["explain"] > 0

    again = ok_answer(lite_gateway.client.detect_response(clip, explain="true", frames=FRAMES))
    assert [(e["model"], e["grid"]) for e in again["explanations"]] == [
        (e["model"], e["grid"]) for e in explanations
    ]
    assert [e["heatmap"] for e in again["explanations"]] == [e["heatmap"] for e in explanations]

    plain = ok_answer(lite_gateway.client.detect_response(clip, frames=FRAMES))
    assert plain["explanations"] == [] and plain["timings_ms"]["explain"] == 0
    per_track = answer["timings_ms"]["explain"] / max(1, len({e["track"] for e in explanations}))
    write_results(
        "explain_cost_lite",
        {
            "clip": clip.name,
            "frames": FRAMES,
            "tracks_explained": len({e["track"] for e in explanations}),
            "faces_explained": len(faces),
            "grid": SETTINGS.grid,
            "explain_ms": answer["timings_ms"]["explain"],
            "explain_ms_per_track": round(per_track, 1),
            "total_ms_with_explain": answer["timings_ms"]["total"],
            "total_ms_without": plain["timings_ms"]["total"],
        },
    )


def test_explain_with_models_explains_those_and_no_face_has_none(
    lite_gateway: Gateway, tmp_path: Path
) -> None:
    answer = ok_answer(
        lite_gateway.client.detect_response(
            FAKE_CLIPS[0], explain="true", models="meso4", frames=FRAMES
        )
    )
    assert {e["model"] for e in answer["explanations"]} == {"meso4", VOTE}
    vote = [e for e in answer["explanations"] if e["model"] == VOTE]
    own = [e for e in answer["explanations"] if e["model"] == "meso4"]
    assert [e["grid"] for e in vote] == [e["grid"] for e in own]  # one voter: the same map

    sky = tmp_path / "sky.png"
    gradient = np.linspace(40, 220, 320, dtype=np.uint8)
    cv2.imwrite(str(sky), np.dstack([np.tile(gradient, (240, 1))] * 3))
    faceless = ok_answer(lite_gateway.client.detect_response(sky, explain="true", frames=FRAMES))
    assert faceless["verdict"] == "no_face" and faceless["explanations"] == []

    bad = lite_gateway.client.detect_response(sky, explain="maybe")
    assert bad.status_code == 422 and bad.json()["error"]["code"]


def test_report_of_an_answer_is_self_contained_html_and_a_pdf(lite_gateway: Gateway) -> None:
    from pypdf import PdfReader

    clip = FAKE_CLIPS[0]
    answer = ok_answer(
        lite_gateway.client.detect_response(clip, explain="true", thumbnails="true", frames=FRAMES)
    )
    html = httpx.post(f"{lite_gateway.url}/api/report", json=answer, timeout=60)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html")
    assert f'filename="{clip.stem}.deepfake-report.html"' in html.headers["content-disposition"]
    page = html.text
    for fact in (clip.name, answer["sha256"], f"{clip.stat().st_size:,} bytes", "Likely fake"):
        assert fact in page, fact
    for model in answer["models"]:
        assert model["weights"]["sha256"] in page and model["version"] in page
    assert page.count("data:image/png;base64,") == len(answer["explanations"])
    assert "default-src 'none'" in page and "http://" not in page and "https://" not in page

    pdf = httpx.post(
        f"{lite_gateway.url}/api/report", params={"format": "pdf"}, json=answer, timeout=120
    )
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(pdf.content))
    # NFKC: the PDF's fonts set "ff" as one ligature glyph.
    text = unicodedata.normalize("NFKC", "".join(p.extract_text() for p in reader.pages))
    assert len(reader.pages) >= 1 and clip.name in text and "Likely fake" in text
    images = sum(len(p.images) for p in reader.pages)
    assert images >= len(answer["explanations"])  # the heatmaps were printed too

    broken = httpx.post(f"{lite_gateway.url}/api/report", json={"verdict": "fake"}, timeout=30)
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_answer"
    # An explanation of a frame the answer lacks: a clear 422, not a KeyError (500).
    elsewhere = [dict(answer["explanations"][0], frame=10**6)]
    lacking = httpx.post(
        f"{lite_gateway.url}/api/report", json=answer | {"explanations": elsewhere}, timeout=30
    )
    assert lacking.status_code == 422 and lacking.json()["error"]["code"] == "invalid_report"


def test_cli_writes_the_report_through_the_gateway_and_straight_through_triton(
    lite_gateway: Gateway, lite_triton: TritonSettings, tmp_path: Path, capsys
) -> None:
    from pypdf import PdfReader

    from gateway.programs.cli import main

    clip = FAKE_CLIPS[0]
    html = tmp_path / "via-gateway.html"
    assert (
        main(
            ["detect", str(clip), "--url", lite_gateway.url, "--frames", "4", "--report", str(html)]
        )
        == 0
    )
    assert f"report: {html}" in capsys.readouterr().out
    page = html.read_text()
    assert clip.name in page and "data:image/png;base64," in page and "Decisive faces" in page

    pdf = tmp_path / "direct.pdf"
    argv = ["detect", str(clip), "--triton", lite_triton.grpc_url, "--frames", "4"]
    assert main([*argv, "--report", str(pdf)]) == 0
    out = capsys.readouterr().out
    assert "explained: 3 decisive face(s)" in out, out
    reader = PdfReader(pdf)
    text = unicodedata.normalize("NFKC", "".join(p.extract_text() for p in reader.pages))
    assert clip.name in text and hashlib.sha256(clip.read_bytes()).hexdigest()[:16] in text.replace(
        "\n", ""
    )


def test_reports_of_a_faceless_answer_and_without_chromium(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    """A gateway that has no Chromium still gives the HTML report; the PDF is a clear 406."""
    sky = tmp_path / "sky.png"
    gradient = np.linspace(40, 220, 320, dtype=np.uint8)
    cv2.imwrite(str(sky), np.dstack([np.tile(gradient, (240, 1))] * 3))
    settings = {"chromium": "/nonexistent/chromium", "report_max_mb": 20}
    with start_gateway(lite_triton.grpc_url, tmp_path / "gw", **settings) as gw:
        answer = ok_answer(gw.client.detect_response(sky, explain="true", frames=FRAMES))
        assert answer["verdict"] == "no_face"
        html = httpx.post(f"{gw.url}/api/report", json=answer, timeout=60)
        assert html.status_code == 200
        assert "No face found" in html.text and "nothing to plot" in html.text
        pdf = httpx.post(f"{gw.url}/api/report", params={"format": "pdf"}, json=answer, timeout=60)
        assert pdf.status_code == 406 and pdf.json()["error"]["code"] == "pdf_unavailable"
        huge = httpx.post(
            f"{gw.url}/api/report",
            content=b"[" + b"0," * (11 << 20) + b"0]",
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert huge.status_code == 413  # over GATEWAY_REPORT_MAX_MB, not read further
