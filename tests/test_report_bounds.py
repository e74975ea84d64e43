"""POST /api/report takes an answer from the client: a reference the answer lacks is a
clear 422, its size is bounded before it is parsed and rendered, and rendering (HTML
and PDF) runs on a worker thread under an admission slot, never on the event loop.

In process (TestClient over tests/fake_triton.py) first; then the same against the real
gateway process (`python -m gateway`, over the fake model server: a report needs no
Triton), marked `stack`.
"""

import base64
import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

import gateway.server.routers.report as app_module
from gateway.server.report import ReportLimits
from tests.conftest import MEDIA, InProcessGateway, inprocess_gateway
from tests.stack import Gateway, gateway_process, metric, wait_until

FACE = MEDIA / "images/fake/dfdc_mqzvfufzoq_fr0.jpg"
# How long /healthz may take before the test calls it a hang: far above any answer of a
# free event loop (milliseconds), far below a loop busy parsing and rendering.
HANG_S = 3.0
SEP = (",", ":")  # compact JSON, as a client would send it


def png(width: int, height: int) -> str:
    """A data: URL of a black PNG: tiny, whatever it decodes to."""
    ok, data = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """One slot, no queue: a render holding it leaves none for anything else."""
    tmp = tmp_path_factory.mktemp("report-bounds")
    # A small occlusion grid: its batches stay under the fake server's 4 MB messages.
    with inprocess_gateway(tmp, max_in_flight=1, max_queue=0, explain_grid=2) as gw:
        yield gw


@pytest.fixture(scope="module")
def answer(gateway: InProcessGateway) -> dict:
    """A real answer with explanations and thumbnails, as /api/detect wrote it."""
    params = {"explain": "true", "thumbnails": "true"}
    with FACE.open("rb") as handle:
        reply = gateway.client.post(
            "/api/detect", files={"file": (FACE.name, handle)}, params=params
        )
    assert reply.status_code == 200, reply.text
    found = reply.json()
    assert found["explanations"] and found["frames"][0]["faces"][0]["thumbnail"]
    return found


def changed(answer: dict, change: Callable[[dict], object]) -> dict:
    broken = copy.deepcopy(answer)
    change(broken)
    return broken


def first_face(a: dict) -> dict:
    return a["frames"][0]["faces"][0]


# Each: a reference an answer of the gateway always has, broken.
BAD_REFERENCES = {
    "explanation of a frame the answer lacks": lambda a: a["explanations"][0].update(frame=999),
    "explanation of a face the frame lacks": lambda a: a["explanations"][0].update(face=7),
    "explanation of another track": lambda a: a["explanations"][0].update(track=42),
    "explanation of a model the answer lacks": lambda a: a["explanations"][0].update(model="x"),
    "thumbnail's face of a track the answer lacks": lambda a: first_face(a).update(track=42),
    "track seen in a frame the answer lacks": lambda a: a["tracks"][0].update(frames=[0, 999]),
    "heatmap that is no PNG": lambda a: a["explanations"][0].update(
        heatmap=first_face(a)["thumbnail"].replace("image/jpeg", "image/png")
    ),
}


@pytest.mark.parametrize("change", BAD_REFERENCES.values(), ids=BAD_REFERENCES)
def test_a_reference_the_answer_lacks_is_a_clear_422(
    gateway: InProcessGateway, answer: dict, change: Callable[[dict], object]
) -> None:
    reply = gateway.client.post("/api/report", json=changed(answer, change))
    assert reply.status_code == 422, reply.text[:300]
    assert reply.json()["error"]["code"] == "invalid_report"


def test_the_gateways_own_answer_renders_well_within_the_limits(
    gateway: InProcessGateway, answer: dict
) -> None:
    reply = gateway.client.post("/api/report", json=answer)
    assert reply.status_code == 200 and "Decisive faces" in reply.text
    body = json.dumps(answer).encode()
    bound = sum(body.count(c) for c in (b",", b":", b"[", b"{")) + 1
    assert bound * 10 < ReportLimits().values  # room for 32 frames, several people


def many_frames(answer: dict, count: int) -> dict:
    """The answer with `count` more faceless frames: small JSON, a long parse and page."""
    frames = [{"index": 1000 + n, "timestamp_s": n / 25, "faces": []} for n in range(count)]
    return changed(answer, lambda a: a["frames"].extend(frames))


def many_faces(answer: dict, size: int) -> bytes:
    """The answer with frames added, each with a copy of its first face (no thumbnail),
    until its JSON is about `size` bytes: a plot and a page of as many points, and JSON
    values by the million."""
    face = dict(first_face(answer), thumbnail=None)
    one = json.dumps({"index": 100_000, "timestamp_s": 1e3 / 3, "faces": [face]}, separators=SEP)
    frames = [
        {"index": 1000 + n, "timestamp_s": n / 25, "faces": [face]}
        for n in range((size - len(json.dumps(answer))) // (len(one) + 1))
    ]
    return json.dumps(
        changed(answer, lambda a: a["frames"].extend(frames)), separators=SEP
    ).encode()


def with_heatmaps(answer: dict, count: int, side: int) -> dict:
    """The answer with its first explanation repeated `count` times, each heatmap a
    side x side PNG: a few KB of JSON that decode to count x side² pixels."""
    heatmap = png(side, side)
    more = [dict(answer["explanations"][0], heatmap=heatmap) for _ in range(count)]
    return changed(answer, lambda a: a.__setitem__("explanations", more))


OVER_LIMITS = {
    "40k frames": lambda a: many_frames(a, 40_000),
    "one heatmap of 4000 x 4000 px": lambda a: with_heatmaps(a, 1, 4000),
    "70 heatmaps of 1024 x 1024 px": lambda a: with_heatmaps(a, 70, 1024),
}


@pytest.mark.parametrize("make", OVER_LIMITS.values(), ids=OVER_LIMITS)
def test_an_answer_over_the_report_limits_is_refused(
    gateway: InProcessGateway, answer: dict, make: Callable[[dict], dict]
) -> None:
    big = make(answer)
    assert len(json.dumps(big)) < 20 << 20  # under report_max_mb: a small JSON
    reply = gateway.client.post("/api/report", json=big)
    assert reply.status_code == 422, reply.text[:300]
    assert reply.json()["error"]["code"] == "report_over_limits"


def test_html_rendering_holds_an_admission_slot_off_the_event_loop(
    gateway: InProcessGateway, answer: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one HTML report renders (held here until released) /healthz answers, and an
    analysis or another report finds no slot (max_in_flight 1, no queue): 429."""
    started, release = threading.Event(), threading.Event()
    render = app_module.render_html

    def held(*args: object) -> str:
        started.set()
        release.wait(60)
        return render(*args)

    monkeypatch.setattr(app_module, "render_html", held)
    admission = gateway.client.app.state.admission
    first: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: first.append(gateway.client.post("/api/report", json=answer))
    )
    sender.start()
    try:
        assert started.wait(30), "the report never rendered"
        assert answered(lambda: gateway.client.get("/healthz")).status_code == 200
        assert admission.active == 1
        busy = answered(lambda: gateway.client.post("/api/report", json=answer))
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_requests"
        files = {"file": (FACE.name, FACE.read_bytes())}
        detect = answered(lambda: gateway.client.post("/api/detect", files=files))
        assert detect.status_code == 429
    finally:
        release.set()
        sender.join(60)
    assert first[0].status_code == 200 and "Decisive faces" in first[0].text
    assert admission.active == 0


def answered(call: Callable[[], httpx.Response], deadline: float = HANG_S) -> httpx.Response:
    """`call`'s reply, or a failure if it hangs past `deadline` (a blocked event loop)."""
    replies: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: replies.append(call()), daemon=True)
    caller.start()
    caller.join(deadline)
    assert replies, f"no reply in {deadline} s: the event loop is blocked"
    return replies[0]


# --- a PDF where the gateway can print one, a clear 4xx where it cannot ----------------------

# Chromium stand-ins (the fast tier runs no browser): one prints, one runs and prints nothing.
PRINTING_CHROMIUM = """#!/bin/sh
for arg in "$@"; do
  case "$arg" in --print-to-pdf=*) printf '%%PDF-1.4 printed\\n' > "${arg#--print-to-pdf=}";; esac
done
"""
FAILING_CHROMIUM = "#!/bin/sh\nexit 1\n"
PRINTERS = {
    # chromium -> (GET /api's pdf_reports, the PDF's status, its error code)
    "none": (None, False, 406, "pdf_unavailable"),
    "printing": (PRINTING_CHROMIUM, True, 200, None),
    "failing": (FAILING_CHROMIUM, True, 500, "pdf_failed"),
}


@pytest.mark.parametrize(("script", "reports", "status", "code"), PRINTERS.values(), ids=PRINTERS)
def test_the_gateway_states_whether_it_prints_pdfs_and_refuses_them_with_a_4xx(
    tmp_path: Path, answer: dict, script: str | None, reports: bool, status: int, code: str | None
) -> None:
    """Whether a PDF can be made is known at start-up and said in GET /api; without a
    Chromium a PDF is a 406 pdf_unavailable (a 4xx: no click feeds the 5xx alert), refused
    before the body is read; only a Chromium that fails to print is a 5xx."""
    chromium = tmp_path / "chromium"
    if script is not None:
        chromium.write_text(script)
        chromium.chmod(0o755)
    with inprocess_gateway(tmp_path / "gw", chromium=str(chromium)) as gw:
        assert gw.client.get("/api").json()["pdf_reports"] is reports
        pdf = gw.client.post("/api/report", params={"format": "pdf"}, json=answer)
        assert pdf.status_code == status, pdf.text[:300]
        if code is None:
            assert pdf.content.startswith(b"%PDF") and pdf.headers["content-type"] == (
                "application/pdf"
            )
        else:
            assert pdf.json()["error"]["code"] == code
        html = gw.client.post("/api/report", json=answer)
        assert html.status_code == 200 and "Decisive faces" in html.text
        if not reports:  # refused up front: not even a body that is no answer is read
            junk = gw.client.post("/api/report", params={"format": "pdf"}, content=b"[")
            assert junk.status_code == 406


# --- the real gateway process -----------------------------------------------------------

BLOCKING_CHROMIUM = """#!/bin/sh
# A Chromium that prints once the test lets it: it holds a PDF render as long as needed.
while [ ! -e "{release}" ]; do sleep 0.05; done
for arg in "$@"; do
  case "$arg" in --print-to-pdf=*) printf '%%PDF-1.4 held\\n' > "${{arg#--print-to-pdf=}}";; esac
done
"""


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """`python -m gateway` with one slot and no queue, over the fake model server; its
    Chromium a script that waits for the returned file to exist."""
    from tests.fake_triton import fake_triton

    tmp = tmp_path_factory.mktemp("real-report")
    release = tmp / "release"
    chromium = tmp / "chromium"
    chromium.write_text(BLOCKING_CHROMIUM.format(release=release))
    chromium.chmod(0o755)
    settings = {"max_in_flight": 1, "max_queue": 0, "chromium": chromium}
    with fake_triton("lite") as triton, gateway_process(triton.url, tmp, **settings) as gw:
        yield gw, release


@pytest.mark.stack
def test_the_real_gateway_refuses_a_bad_reference_and_an_oversized_answer(
    real_gateway: tuple[Gateway, Path], answer: dict
) -> None:
    gw, _ = real_gateway
    for change in BAD_REFERENCES.values():
        reply = httpx.post(f"{gw.url}/api/report", json=changed(answer, change), timeout=60)
        assert reply.status_code == 422, reply.text[:300]
        assert reply.json()["error"]["code"] == "invalid_report"
    reply = httpx.post(f"{gw.url}/api/report", json=with_heatmaps(answer, 1, 4000), timeout=60)
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "report_over_limits"


@contextlib.contextmanager
def watched(url: str) -> Iterator[list[float]]:
    """/healthz asked again and again meanwhile; yields the seconds each took (a reply
    that never comes counts as the time until the end)."""
    took: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                start = time.monotonic()
                assert client.get(url + "/healthz").status_code == 200
                took.append(time.monotonic() - start)
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield took
    finally:
        done.set()
        poller.join(120)


@pytest.mark.stack
def test_big_reports_leave_the_real_gateways_event_loop_free(
    real_gateway: tuple[Gateway, Path], answer: dict
) -> None:
    """Two answers near report_max_mb: one of small JSON values by the million (refused
    before any parse), one of images (rendered on a worker thread). /healthz answers
    throughout; the hang detector is generous (HANG_S)."""
    gw, _ = real_gateway
    values = many_faces(answer, 19 << 20)
    images = json.dumps(with_heatmaps(answer, 60, 1024)).encode()  # 63 Mpx, under 64
    assert 15 << 20 < len(values) < 20 << 20 and len(images) < 20 << 20
    headers = {"content-type": "application/json"}
    with watched(gw.url) as took:
        for body in (values, images):
            reply = httpx.post(f"{gw.url}/api/report", content=body, headers=headers, timeout=120)
            assert reply.status_code == (422 if body is values else 200), reply.text[:300]
    assert took and max(took) < HANG_S, f"/healthz took up to {max(took):.1f} s"


@pytest.mark.stack
def test_a_render_holds_the_real_gateways_only_slot(
    real_gateway: tuple[Gateway, Path], answer: dict
) -> None:
    """A PDF being printed holds the one slot: an HTML report and an analysis meanwhile are
    429, /healthz answers; once printed, the slot is free again."""
    gw, release = real_gateway
    printed: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: printed.append(
            httpx.post(f"{gw.url}/api/report", params={"format": "pdf"}, json=answer, timeout=120)
        )
    )
    sender.start()
    try:
        wait_until(lambda: metric(gw.url, "gateway_requests_in_flight") == 1, 60, "no slot taken")
        assert httpx.get(f"{gw.url}/healthz", timeout=HANG_S).status_code == 200
        html = httpx.post(f"{gw.url}/api/report", json=answer, timeout=60)
        assert html.status_code == 429, html.text[:300]
        detect = httpx.post(
            f"{gw.url}/api/detect", files={"file": (FACE.name, FACE.read_bytes())}, timeout=60
        )
        assert detect.status_code == 429 and detect.json()["error"]["code"] == "too_many_requests"
    finally:
        release.touch()
        sender.join(120)
    assert printed[0].status_code == 200 and printed[0].content.startswith(b"%PDF")
    assert metric(gw.url, "gateway_requests_in_flight") == 0
    assert httpx.post(f"{gw.url}/api/report", json=answer, timeout=60).status_code == 200
