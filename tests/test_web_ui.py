"""The gateway's web page in a real browser (headless Chromium driven by Playwright)
against the real stack: the session's full-profile Triton and a real gateway.

Screenshots are written to tests/artifacts/web_ui/ (git-ignored) for a person to look at.
"""

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Request

from tests.conftest import MEDIA, MEMBERS, ROOT, Gateway, free_port, start_gateway
from tests.stack import BIG_CLIP, CHROMIUM, REAL_CLIP

# The full tier only (make test): a browser and gateway processes.
pytestmark = pytest.mark.stack


ARTIFACTS = ROOT / "tests/artifacts/web_ui"
FRAMES = 8  # few frames keep the browser tests quick; the page passes ?frames= on
FAKE_CLIP = MEDIA / "videos/fake/ffpp_deepfakes_003_000.mp4"
PHOTO = MEDIA / "images/real/face_recognition_obama.jpg"
STAGES = ["upload", "uploaded", "accepted", "decoded", "faces", "inference", "result"]
VERDICT_WORDS = {
    "fake": "Likely fake",
    "real": "Likely real",
    "uncertain": "Uncertain",
    "no_face": "No face found",
}
ANALYSIS_TIMEOUT_MS = 240_000
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 375, "height": 740}
API_KEY = "web-ui-test-key"

# Builds a File from each (name, type, base64 bytes), puts them in one DataTransfer and
# drops it on the zone, as a desktop browser does when files come from the file manager.
DROP_FILES_JS = """(files) => {
  const data = new DataTransfer();
  for (const [name, type, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name, { type }));
  }
  const zone = document.getElementById("dropzone");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    const init = { bubbles: true, cancelable: true, dataTransfer: data };
    zone.dispatchEvent(new DragEvent(kind, init));
  }
}"""


@dataclass
class Seen:
    """What the browser did: every request it made, every script or console error."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def posts(self) -> list[str]:
        return [r for r in self.requests if r.startswith("POST ")]


@pytest.fixture
def seen() -> Seen:
    return Seen()


def open_page(
    browser: Browser, url: str, seen: Seen, viewport: dict, permissions: list[str] | None = None
) -> Page:
    """The page at `url`, what it does recorded, its facts loaded."""
    page = browser.new_page(viewport=viewport, permissions=permissions or [])
    page.on("request", lambda request: seen.requests.append(request_line(request)))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{url}/?frames={FRAMES}")
    # Selectors, not wait_for_function: the page's CSP forbids the eval() that needs.
    page.wait_for_selector('#service:not([data-status="loading"])', state="attached")
    return page


def request_line(request: Request) -> str:
    return f"{request.method} {request.url}"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def settle(page: Page, run: int) -> str:
    """Wait until the page's `run`-th analysis is done or failed; its state."""
    page.wait_for_selector(
        f'#app[data-run="{run}"]:is([data-state="done"], [data-state="error"])',
        state="attached",
        timeout=ANALYSIS_TIMEOUT_MS,
    )
    return page.get_attribute("#app", "data-state") or ""


def drop_file(page: Page, path: Path, media_type: str) -> None:
    payload = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(DROP_FILES_JS, [[path.name, media_type, payload]])


def logged_events(page: Page) -> list[str]:
    return page.eval_on_selector_all("#log li", "items => items.map(i => i.dataset.event)")


def shown_answer(page: Page) -> dict:
    """The raw answer the page shows (and offers to copy or download)."""
    return json.loads(page.text_content("#raw") or "")


def percent(text: str) -> float:
    return float(text.strip().rstrip("%"))


def collapsed(events: list[str]) -> list[str]:
    """Repeated events (inference progress) once."""
    return [e for n, e in enumerate(events) if n == 0 or events[n - 1] != e]


def assert_only_own_origin(requests: list[str], origin: str) -> None:
    """No CDN, no fetch beyond the gateway itself (data: and blob: URLs are local)."""
    foreign = [r for r in requests if not r.split(" ", 1)[1].startswith((origin, "data:", "blob:"))]
    assert not foreign, foreign


# The text colour of the element and the first opaque background behind it.
COLOURS_JS = """el => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  let back = el;
  while (back && rgb(getComputedStyle(back).backgroundColor)[3] === 0) back = back.parentElement;
  const bg = back ? getComputedStyle(back).backgroundColor : "rgb(255, 255, 255)";
  return [rgb(getComputedStyle(el).color), rgb(bg)];
}"""


def contrast(page: Page, selector: str) -> float:
    """WCAG contrast ratio of an element's text against its background."""
    text, back = page.locator(selector).first.evaluate(COLOURS_JS)

    def luminance(rgb: list[float]) -> float:
        linear = [c / 255 for c in rgb[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in linear]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(text), luminance(back)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def assert_result_matches_answer(page: Page, gateway: Gateway) -> dict:
    """Verdict, model rows, plot and thumbnails drawn from the answer the stream gave."""
    answer = shown_answer(page)
    box = page.locator("#verdict-box")
    assert f"verdict-{answer['verdict']}" in (box.get_attribute("class") or "")
    assert page.text_content("#verdict") == VERDICT_WORDS[answer["verdict"]]
    colour = box.evaluate("b => getComputedStyle(b).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")

    served = httpx.get(f"{gateway.url}/api/models", timeout=30).json()["models"]
    rows = page.locator("#models [data-model]")
    # One row per served model (the models run first, then those skipped).
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.model)")
    assert sorted(shown) == sorted(m["name"] for m in served)
    scores = {m["name"]: m["score"] for m in answer["models"]}
    skipped = {m["name"]: m["reason"] for m in answer.get("skipped", [])}
    for model in served:
        row = page.locator(f'#models [data-model="{model["name"]}"]')
        text = row.inner_text()
        if model["name"] in skipped:  # cannot vote: not run by default, and the row says why
            assert "not run" in text.lower() and skipped[model["name"]] in text, text
            continue
        assert ("untrained — not voting" in text) is (not model["trained"]), text
        assert model["weights"]["source"] in text  # provenance, trained or not
        if model["trained"]:
            assert model["weights"]["file"] in text and model["weights"]["licence"] in text
        assert model["trained_on"] in text  # empty unless a manifest says
        shown = percent(row.locator(".model-score").inner_text())
        assert shown == pytest.approx(scores[model["name"]] * 100, abs=0.051)
    assert any(not m["trained"] for m in served), "the full profile has untrained members"

    series = page.eval_on_selector_all("#plot svg g.series", "gs => gs.map(g => g.dataset.series)")
    assert series == [m["name"] for m in answer["models"]] + ["ensemble"]
    with_faces = sum(1 for f in answer["frames"] if f["faces"])
    for name in series:
        path = page.get_attribute(f'#plot g.series[data-series="{name}"] path', "d") or ""
        assert path.count("M") + path.count("L") == with_faces, (name, path)
    legend = page.eval_on_selector_all("#legend li", "ls => ls.map(l => l.dataset.series)")
    assert legend == series

    faces = [face for frame in answer["frames"] for face in frame["faces"]]
    thumbs = page.locator("#tracks img.thumb")
    assert thumbs.count() == len(faces) > 0
    assert all(
        src.startswith("data:image/jpeg;base64,")
        for src in thumbs.evaluate_all("is => is.map(i => i.getAttribute('src'))")
    )
    assert thumbs.evaluate_all("is => is.every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#tracks [data-track]").count() == len(answer["tracks"])
    assert page.locator("#media dd").first.inner_text().startswith(answer["filename"])
    for text in ("#verdict", "#verdict-detail", ".model-name", ".tag", ".provenance", "#legend li"):
        assert contrast(page, text) >= 4.5, text  # WCAG AA for normal text
    return answer


def test_drop_a_clip_shows_progress_then_the_full_result(
    gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    page = open_page(browser, gateway.url, seen, DESKTOP)
    drop_file(page, FAKE_CLIP, "video/mp4")
    assert settle(page, run=1) == "done", page.text_content("#error")

    events = logged_events(page)
    assert collapsed(events) == STAGES, events
    assert events.count("inference") >= 1  # k of N (scoring starts early), ..., N of N
    stages = page.eval_on_selector_all("#stages li", "ls => ls.map(l => l.dataset.status)")
    assert stages == ["done"] * 6
    assert page.get_attribute("#upload-bar", "value") == "100"

    answer = assert_result_matches_answer(page, gateway)
    assert answer["filename"] == FAKE_CLIP.name
    assert len(answer["frames"]) == FRAMES  # the page passed its ?frames= on
    assert seen.posts() == [
        f"POST {gateway.url}/api/detect/stream?thumbnails=true&frames={FRAMES}&explain=true"
    ]
    assert_only_own_origin(seen.requests, gateway.url)
    # The browser itself holds the page to its origin, and nothing broke under that.
    policy = httpx.get(f"{gateway.url}/", timeout=30).headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert seen.errors == []
    screenshot(page, "drop-clip-desktop")
    page.close()


def test_file_input_then_more_files_without_reload(
    gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    clipboard = ["clipboard-read", "clipboard-write"]
    page = open_page(browser, gateway.url, seen, DESKTOP, permissions=clipboard)
    page.evaluate("window.sameDocument = true")

    page.set_input_files("#file", REAL_CLIP)
    assert settle(page, run=1) == "done", page.text_content("#error")
    first = assert_result_matches_answer(page, gateway)
    assert first["filename"] == REAL_CLIP.name and first["media"]["kind"] == "video"
    screenshot(page, "file-input-clip")

    assert [m["name"] for m in first["skipped"]] == ["xception", "efficientnet_b7"]
    # Asked for every model, the page runs those that cannot vote too (models=all).
    page.check("#all-models")
    page.set_input_files("#file", PHOTO)
    assert settle(page, run=2) == "done", page.text_content("#error")
    second = assert_result_matches_answer(page, gateway)
    assert second["filename"] == PHOTO.name and second["media"]["kind"] == "image"
    assert second["skipped"] == [] and len(second["models"]) == len(MEMBERS)
    assert "models=all" in seen.posts()[-1]
    assert collapsed(logged_events(page)) == STAGES  # the log starts afresh
    assert page.evaluate("window.sameDocument") is True

    # The raw answer, copied and downloaded, is the answer the page drew.
    page.click("#copy")
    page.wait_for_selector("#copy-status:text('Copied.')")
    assert json.loads(page.evaluate("navigator.clipboard.readText()")) == second
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == f"{PHOTO.stem}.deepfake.json"
    assert json.loads(Path(download.value.path()).read_text()) == second
    assert seen.errors == []
    screenshot(page, "file-input-photo")
    page.close()


def test_bad_files_get_clear_messages_and_the_page_recovers(
    gateway: Gateway, browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    page = open_page(browser, gateway.url, seen, DESKTOP)

    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    page.set_input_files("#file", text)
    assert page.get_attribute("#error", "data-status") == "client"
    assert "not a supported video or image" in page.inner_text("#error")
    assert not seen.posts()  # refused before upload

    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(64 * 1024))
    page.set_input_files("#file", noise)
    assert settle(page, run=1) == "error"
    assert page.get_attribute("#error", "data-status") == "415"
    assert "This file is not a supported video or image" in page.inner_text("#error")
    assert contrast(page, "#error") >= 4.5
    assert logged_events(page)[-1] == "error"
    screenshot(page, "bad-file-415")

    # Not stuck: the picker works again and the next real file is analysed.
    assert page.locator("#pick").is_enabled()
    page.set_input_files("#file", PHOTO)
    assert settle(page, run=2) == "done"
    assert page.locator("#error").is_hidden()
    assert_result_matches_answer(page, gateway)
    page.close()


def test_a_faceless_image_says_no_face_found(
    gateway: Gateway, browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    landscape = tmp_path / "sky.png"
    gradient = np.linspace(40, 220, 320, dtype=np.uint8)
    cv2.imwrite(str(landscape), np.dstack([np.tile(gradient, (240, 1))] * 3))
    page = open_page(browser, gateway.url, seen, DESKTOP)
    page.set_input_files("#file", landscape)
    assert settle(page, run=1) == "done", page.text_content("#error")
    assert shown_answer(page)["verdict"] == "no_face"
    assert "verdict-no_face" in (page.get_attribute("#verdict-box", "class") or "")
    assert page.text_content("#verdict") == "No face found"
    assert "No face was found in any sampled frame" in page.inner_text("#verdict-detail")
    assert page.locator("#tracks img").count() == 0
    assert page.locator("#plot svg").count() == 0  # nothing to plot, said in words
    assert "inference" not in logged_events(page)
    stages = page.eval_on_selector_all("#stages li", "ls => ls.map(l => l.dataset.status)")
    assert stages == ["done", "done", "done", "done", "skipped", "done"]
    assert page.locator("#models [data-model]").count() == len(MEMBERS)
    assert seen.errors == []
    screenshot(page, "no-face")
    page.close()


def test_cancel_mid_analysis_leaves_the_page_and_the_gateway_ready(
    gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    page = open_page(browser, gateway.url, seen, DESKTOP)
    page.fill("#frames", "64")  # a long analysis: there is time to cancel it
    page.set_input_files("#file", FAKE_CLIP)
    page.wait_for_selector('#log [data-event="accepted"]', state="attached")
    page.click("#cancel")
    page.wait_for_selector('#app[data-run="1"][data-state="idle"]', state="attached")
    assert logged_events(page)[-1] == "cancelled"
    assert page.inner_text("#stage-text") == "Cancelled."
    assert page.locator("#result").is_hidden() and page.locator("#pick").is_enabled()
    # The gateway drops the analysis and its upload once the browser hangs up.
    for _ in range(120):
        if not any(gateway.uploads.iterdir()):
            break
        page.wait_for_timeout(500)
    assert not any(gateway.uploads.iterdir())
    assert httpx.get(f"{gateway.url}/healthz", timeout=30).status_code == 200
    page.close()


def test_locked_down_gateway_key_cap_and_triton_unavailable(
    browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    """A gateway with an API key, a 1 MB cap and no Triton behind it: the page asks
    for the key, then takes the cap from GET /api and refuses a 2 MB clip before
    sending a byte; a small photo reaches the gateway and gets the 503 in words;
    with the gateway stopped, the next upload says so."""
    dead_triton = f"127.0.0.1:{free_port()}"
    with start_gateway(dead_triton, tmp_path, max_upload_mb=1, api_keys=API_KEY) as locked:
        page = open_page(browser, locked.url, seen, DESKTOP)
        assert page.get_attribute("#service", "data-status") == "locked"
        assert page.locator("#key-form").is_visible()
        page.fill("#api-key", API_KEY)
        page.keyboard.press("Enter")
        page.wait_for_selector('#service:not([data-status="locked"])', state="attached")
        assert page.get_attribute("#service", "data-status") == "unavailable"
        assert "unavailable" in page.inner_text("#service")
        assert "up to 1 MB" in page.inner_text("#limits")
        assert page.locator("#key-form").is_hidden()

        assert BIG_CLIP.stat().st_size > 1 << 20
        drop_file(page, BIG_CLIP, "video/mp4")
        assert page.get_attribute("#error", "data-status") == "client"
        assert "the limit is 1 MB" in page.inner_text("#error")
        assert not seen.posts()
        screenshot(page, "too-big-client-side")

        page.set_input_files("#file", PHOTO)
        assert settle(page, run=1) == "error"
        assert page.get_attribute("#error", "data-status") == "503"
        assert "detection service is unavailable" in page.inner_text("#error")
        assert page.locator("#pick").is_enabled()
        screenshot(page, "triton-unavailable-503")

    # The gateway is gone: the upload fails in words, and the page stays usable.
    page.set_input_files("#file", PHOTO)
    assert settle(page, run=2) == "error"
    assert page.get_attribute("#error", "data-status") == "0"
    assert "The gateway could not be reached" in page.inner_text("#error")
    assert page.locator("#pick").is_enabled()
    page.close()


@pytest.mark.parametrize("printer", ["none", "chromium"])
def test_the_pdf_button_is_there_only_where_the_gateway_prints_pdfs(
    browser: Browser, seen: Seen, tmp_path: Path, printer: str
) -> None:
    """GET /api's pdf_reports (a Chromium found as the gateway started) shows the page's PDF
    button; a gateway without one (the image) hides it rather than offer a 406."""
    chromium = CHROMIUM if printer == "chromium" else str(tmp_path / "no-chromium")
    dead_triton = f"127.0.0.1:{free_port()}"  # GET /api answers without Triton
    with start_gateway(dead_triton, tmp_path, chromium=chromium) as gw:
        assert httpx.get(f"{gw.url}/api", timeout=30).json()["pdf_reports"] is (
            printer == "chromium"
        )
        page = open_page(browser, gw.url, seen, DESKTOP)
        hidden = page.locator("#report-pdf[hidden]").count() == 1
        assert hidden is (printer == "none")
        assert page.locator("#report-html[hidden]").count() == 0  # HTML reports always work
        assert seen.errors == []
        page.close()


def test_keyboard_alone_opens_the_picker_and_uploads(
    gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    page = open_page(browser, gateway.url, seen, DESKTOP)
    # Playwright turns on file-chooser interception when the first listener is added,
    # asynchronously: added here, early, it is on before the key press.
    page.on("filechooser", lambda chooser: None)
    for _ in range(10):  # the picker is among the first stops of the tab order
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "pick":
            break
    assert page.evaluate("document.activeElement.id") == "pick"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(PHOTO)
    assert settle(page, run=1) == "done", page.text_content("#error")
    assert shown_answer(page)["filename"] == PHOTO.name
    # Every control is labelled for assistive technology.
    unlabelled = page.eval_on_selector_all(
        "input, button, progress",
        "els => els.filter(e => !(e.labels?.length || e.getAttribute('aria-label')"
        " || e.textContent.trim())).map(e => e.id)",
    )
    assert unlabelled == []
    page.close()


def test_phone_width_has_no_horizontal_overflow(
    gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    page = open_page(browser, gateway.url, seen, PHONE)
    page.set_input_files("#file", REAL_CLIP)
    assert settle(page, run=1) == "done", page.text_content("#error")
    assert_result_matches_answer(page, gateway)
    page.locator("#raw").evaluate("pre => pre.closest('details').open = true")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width}px wide at {PHONE['width']}px"
    plot = page.locator("#plot svg").bounding_box()
    assert plot is not None and plot["width"] <= PHONE["width"]
    assert seen.errors == []
    screenshot(page, "phone-width")
    page.close()


def test_the_api_docs_render_offline_under_the_pages_csp(
    browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    """/docs is Swagger UI from the gateway's own files: it lists every documented
    operation, asks nothing of any other origin, and breaks no CSP rule."""
    with start_gateway(f"127.0.0.1:{free_port()}", tmp_path) as gateway:
        page = browser.new_page(viewport=DESKTOP)
        page.on("request", lambda request: seen.requests.append(request_line(request)))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{gateway.url}/docs")
        page.wait_for_selector(".opblock", timeout=60_000)
        document = httpx.get(gateway.url + "/openapi.json").json()
        operations = sum(len(methods) for methods in document["paths"].values())
        assert page.locator(".opblock").count() == operations
        screenshot(page, "docs")
    assert seen.requests and all(r.split(" ", 1)[1].startswith(gateway.url) for r in seen.requests)
    assert seen.errors == []


def test_an_uncertain_verdict_is_shown_with_its_reasons(
    lite_gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    """The page's threshold field placed at the photo's own score (the lite models): the
    request is uncertain (near_threshold), and the page says so and why."""
    score = lite_gateway.client.detect(PHOTO)["score"]
    page = open_page(browser, lite_gateway.url, seen, DESKTOP)
    page.fill("#threshold", f"{score:.6f}")
    page.set_input_files("#file", PHOTO)
    assert settle(page, run=1) == "done", page.text_content("#error")
    answer = shown_answer(page)
    assert answer["threshold"] == pytest.approx(score, abs=1e-6)
    assert answer["verdict"] == "uncertain"
    assert "verdict-uncertain" in (page.get_attribute("#verdict-box", "class") or "")
    assert page.text_content("#verdict") == "Uncertain"
    assert "too close to call" in page.inner_text("#verdict-detail")
    items = page.locator("#reasons li")
    assert page.locator("#reasons").is_visible()
    shown = [
        (items.nth(n).get_attribute("data-code"), items.nth(n).inner_text())
        for n in range(items.count())
    ]
    assert shown == [(r["code"], f"{r['code']}: {r['message']}") for r in answer["reasons"]]
    assert shown[0][0] == "near_threshold"
    assert contrast(page, "#reasons li") >= 4.5
    screenshot(page, "uncertain")
    assert not seen.errors, seen.errors
    page.close()
