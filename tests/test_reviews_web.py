"""The review queue's page (/review) in a real browser (Debian's chromium via Playwright)
against a real gateway over the lite Triton, reviews on: the key asked for, each answer shown
as the API serves it (why it is queued, faces, heatmaps or why none, scores), one labelled
by its button with a note, one by the keyboard, one skipped; progress follows; the reviews
are read back through the API."""

# ruff: noqa: F811 — the seen fixture is imported from test_web_ui, then used

from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page

from model_repository.local_triton import TritonSettings
from tests.conftest import start_gateway
from tests.jobs_support import IMAGES
from tests.test_web_ui import (  # noqa: F401 — seen is a fixture
    DESKTOP,
    Seen,
    assert_only_own_origin,
    request_line,
    screenshot,
    seen,
)

KEY = "review-web-test-key"
AS_KEY = {"X-API-Key": KEY}


def detect(url: str, path: Path, **params: object) -> dict:
    with path.open("rb") as file:
        response = httpx.post(
            url + "/api/detect",
            files={"file": (path.name, file)},
            params=params,
            headers=AS_KEY,
            timeout=120,
        )
    assert response.status_code == 200, response.text
    return response.json()


def progress(page: Page) -> tuple[int, int]:
    reviewed = page.get_attribute("#queue-progress", "data-reviewed")
    left = page.get_attribute("#queue-progress", "data-left")
    return int(reviewed or -1), int(left or -1)


def wait_for_item(page: Page, answer_id: str, reviewed: int) -> None:
    page.wait_for_selector(f'#item[data-answer="{answer_id}"]', state="attached")
    page.wait_for_selector(f'#queue-progress[data-reviewed="{reviewed}"]', state="attached")


def assert_shown(page: Page, item: dict) -> None:
    """The page shows the queued answer as GET /api/review-queue serves it."""
    assert page.get_attribute("#why", "data-why") == item["why"]
    assert page.locator("#faces img").count() == len(item["faces"]) > 0
    assert page.locator("#heatmaps img").count() == len(item["heatmaps"])
    if item["heatmaps"]:
        assert page.locator("#no-heatmaps").is_hidden()
    else:
        assert item["no_heatmaps"] in page.inner_text("#no-heatmaps")
    codes = page.locator("#reasons li").evaluate_all("ls => ls.map(l => l.dataset.code)")
    assert codes == [r["code"] for r in item["reasons"]]
    assert f"{item['score'] * 100:.1f}%" in page.inner_text("#score")
    assert page.locator("#models tbody tr").count() == len(item["models"])


def test_the_queue_is_labelled_by_button_and_keyboard_skipped_and_noted(
    lite_triton: TritonSettings, browser: Browser, seen: Seen, tmp_path: Path
) -> None:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path,
        reviews_enabled="true",
        reviews_dir=str(tmp_path / "reviews"),
        reviews_queue_sample_share="1",
        api_keys=KEY,
    ) as gateway:
        photo = IMAGES[0]
        score = detect(gateway.url, photo)["score"]
        # One uncertain answer with heatmaps (its threshold at its own score), more confident.
        detect(gateway.url, photo, threshold=round(score, 4), explain="true")
        for path in IMAGES[1:3]:
            detect(gateway.url, path)
        expected = httpx.get(
            gateway.url + "/api/review-queue", params={"limit": 20}, headers=AS_KEY
        ).json()["items"]
        assert len(expected) == 4 and any(i["heatmaps"] for i in expected)
        assert any(i["no_heatmaps"] for i in expected)
        assert "uncertain" in [i["why"] for i in expected]

        page = browser.new_page(viewport=DESKTOP)
        page.on("request", lambda request: seen.requests.append(request_line(request)))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.goto(gateway.url + "/review")
        page.wait_for_selector('#review[data-state="locked"]', state="attached")
        page.fill("#api-key", KEY)
        page.keyboard.press("Enter")

        # 1: a note, then the Fake button.
        wait_for_item(page, expected[0]["answer_id"], reviewed=0)
        assert progress(page) == (0, 4)
        assert_shown(page, expected[0])
        assert "F fake" in page.inner_text("#shortcuts").replace("\n", " ")
        screenshot(page, "review-queue")
        page.fill("#note", "the mouth flickers")
        page.click("#label-fake")

        # 2: R on the keyboard; a letter typed in the note labels nothing.
        wait_for_item(page, expected[1]["answer_id"], reviewed=1)
        assert_shown(page, expected[1])
        page.click("#note")
        page.keyboard.type("rfs")
        assert page.input_value("#note") == "rfs" and progress(page) == (1, 3)
        page.fill("#note", "")
        page.keyboard.press("Escape")  # out of the note: the keys label again
        page.keyboard.press("r")

        # 3: S skips it; the fourth is shown, the third waits at the back.
        wait_for_item(page, expected[2]["answer_id"], reviewed=2)
        page.keyboard.press("s")
        wait_for_item(page, expected[3]["answer_id"], reviewed=2)
        assert_shown(page, expected[3])
        assert progress(page) == (2, 2)
        assert "1 skipped" in page.inner_text("#queue-progress")
        assert page.get_attribute("#queue-bar", "value") == "2"
        screenshot(page, "review-queue-progress")

        reviews = httpx.get(gateway.url + "/api/reviews", headers=AS_KEY).json()["reviews"]
        queue = httpx.get(
            gateway.url + "/api/review-queue", params={"limit": 20}, headers=AS_KEY
        ).json()
    labels = {r["answer_id"]: (r["label"], r["note"]) for r in reviews}
    assert labels == {
        expected[0]["answer_id"]: ("fake", "the mouth flickers"),
        expected[1]["answer_id"]: ("real", None),
    }
    assert [i["answer_id"] for i in queue["items"]] == [
        expected[3]["answer_id"],
        expected[2]["answer_id"],
    ]
    assert queue["progress"] == {"reviewed": 2, "left": 2, "skipped": 1}
    assert_only_own_origin(seen.requests, gateway.url)
    assert seen.errors == [] or all("401" in e for e in seen.errors), seen.errors
    page.close()
