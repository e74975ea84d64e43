"""The page's explanations and reports in a real browser (Debian's Chromium driven by
Playwright) over a real gateway and the lite Triton: heatmaps on the decisive faces
with a toggle per model, the decisive frames marked on the plot, the HTML report
downloaded and opened, the PDF downloaded and read back.

Screenshots go to tests/artifacts/web_ui/ (git-ignored) for a person to look at.
"""

import unicodedata
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from pypdf import PdfReader

from tests.conftest import FAKE_CLIP, Gateway
from tests.test_web_ui import DESKTOP, Seen, open_page, screenshot, settle, shown_answer

VOTE = "ensemble"


@pytest.fixture
def seen() -> Seen:
    return Seen()


def visible_heatmaps(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#explain-faces img.heatmap",
        "is => is.filter(i => !i.hidden && i.complete && i.naturalWidth > 0)"
        ".map(i => i.dataset.model)",
    )


def decisive_frames(answer: dict) -> list[int]:
    decisive = max(answer["tracks"], key=lambda t: t["score"])["id"]
    return sorted({e["frame"] for e in answer["explanations"] if e["track"] == decisive})


def test_heatmaps_toggles_decisive_frames_and_the_reports(
    lite_gateway: Gateway, browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    page = open_page(browser, lite_gateway.url, seen, DESKTOP)
    assert page.is_checked("#explain")
    page.set_input_files("#file", FAKE_CLIP)
    assert settle(page, run=1) == "done", page.text_content("#error")
    answer = shown_answer(page)
    assert seen.posts()[-1].endswith("explain=true")
    explanations = answer["explanations"]
    faces = {(e["track"], e["frame"], e["face"]) for e in explanations}
    models = sorted({e["model"] for e in explanations})
    voting = sorted(m["name"] for m in answer["models"] if m["voting"])
    assert models == sorted([*voting, VOTE])

    assert page.locator("#explain-section").is_visible()
    toggles = page.eval_on_selector_all(
        "#explain-models label", "ls => ls.map(l => l.dataset.model)"
    )
    assert sorted(toggles) == models and toggles[0] == VOTE  # the vote shown first
    assert visible_heatmaps(page) == [VOTE] * len(faces)
    for model in models:
        page.check(f"#explain-model-{model}")
        assert visible_heatmaps(page) == [model] * len(faces), model
    screenshot(page, "explain-heatmaps")

    marks = page.eval_on_selector_all(
        "#plot line.decisive", "ls => ls.map(l => Number(l.dataset.frame))"
    )
    assert marks == decisive_frames(answer) and marks

    with page.expect_download() as html_download:
        page.click("#report-html")
    assert html_download.value.suggested_filename == f"{FAKE_CLIP.stem}.deepfake-report.html"
    report_path = tmp_path / "report.html"
    html_download.value.save_as(report_path)
    check_report_in_the_browser(browser, report_path, answer)

    with page.expect_download(timeout=120_000) as pdf_download:
        page.click("#report-pdf")
    assert pdf_download.value.suggested_filename == f"{FAKE_CLIP.stem}.deepfake-report.pdf"
    reader = PdfReader(pdf_download.value.path())
    text = unicodedata.normalize("NFKC", "".join(p.extract_text() for p in reader.pages))
    assert len(reader.pages) >= 1 and FAKE_CLIP.name in text and "Likely fake" in text
    assert page.inner_text("#report-status") == "Report downloaded."
    assert seen.errors == []

    # Without explanations: no heatmaps, no marks, the report says why it has none.
    page.uncheck("#explain")
    page.set_input_files("#file", FAKE_CLIP)
    assert settle(page, run=2) == "done", page.text_content("#error")
    assert "explain" not in seen.posts()[-1]
    assert page.locator("#explain-section").is_hidden()
    assert page.locator("#plot line.decisive").count() == 0
    page.close()


def check_report_in_the_browser(browser: Browser, path: Path, answer: dict) -> None:
    """The downloaded report, opened from disk: complete, and nothing fetched."""
    report = browser.new_page(viewport=DESKTOP)
    requests: list[str] = []
    report.on("request", lambda r: requests.append(r.url))
    report.goto(path.as_uri())
    assert report.inner_text("#verdict h2") == "Likely fake"
    assert report.get_attribute("#verdict", "data-verdict") == answer["verdict"]
    images = report.eval_on_selector_all(
        "#faces img", "is => is.filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert images == len(answer["explanations"])
    assert report.locator("#timeline line.decisive").count() == len(decisive_frames(answer))
    rows = report.eval_on_selector_all(
        "#models tr[data-model]", "rs => rs.map(r => r.dataset.model)"
    )
    assert rows == [m["name"] for m in answer["models"]]
    assert answer["sha256"] in report.inner_text("#file")
    foreign = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert foreign == []
    screenshot(report, "explain-report")
    report.close()
