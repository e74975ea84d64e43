"""The web page's batches in a real browser (Debian's chromium via Playwright) against a
real gateway over a lite Triton: several files dropped at once become one job, a queue
table follows it, a row opens the full result, a reload brings the batch back."""

# ruff: noqa: F811 — the seen fixture is imported from test_web_ui, then used

import base64
import json

import httpx
from playwright.sync_api import Browser, Page

from tests.conftest import Gateway
from tests.jobs_support import BAD, IMAGES
from tests.test_web_ui import (  # noqa: F401 — seen is a fixture
    DESKTOP,
    DROP_FILES_JS,
    VERDICT_WORDS,
    Seen,
    assert_only_own_origin,
    open_page,
    screenshot,
    seen,
)

JOB_TIMEOUT_MS = 180_000


def drop_files(page: Page, files: list[tuple[str, str, bytes]]) -> None:
    payload = [[name, kind, base64.b64encode(data).decode()] for name, kind, data in files]
    page.evaluate(DROP_FILES_JS, payload)


def shown(result: dict) -> str:
    """A done row's verdict cell, as jobs.js writes it."""
    codes = ", ".join(r["code"] for r in result["reasons"])
    return VERDICT_WORDS[result["verdict"]] + (f" ({codes})" if codes else "")


def rows(page: Page) -> list[dict]:
    return page.eval_on_selector_all(
        "#job-table tbody tr",
        "rs => rs.map(r => ({status: r.dataset.status, "
        "cells: [...r.cells].map(c => c.innerText)}))",
    )


def test_several_dropped_files_are_one_job_with_a_queue_table(
    lite_gateway: Gateway, browser: Browser, seen: Seen
) -> None:
    page = open_page(browser, lite_gateway.url, seen, DESKTOP)
    files = [(p.name, "image/jpeg", p.read_bytes()) for p in IMAGES[:2]]
    files.append(("notes.mp4", "video/mp4", BAD["notes.mp4"]))
    drop_files(page, files)
    page.wait_for_selector('#job[data-status="done"]', state="attached", timeout=JOB_TIMEOUT_MS)

    table = rows(page)
    assert [r["cells"][0] for r in table] == [name for name, _, _ in files]
    assert [r["status"] for r in table] == ["done", "done", "failed"]
    assert table[2]["cells"][2].startswith("unsupported_media")
    job_id = page.get_attribute("#job", "data-job")
    # Each done row shows its item's verdict and, beside it, the reasons' codes (these photos
    # lie within the measured uncertain band: "Uncertain (near_threshold)").
    job = httpx.get(f"{lite_gateway.url}/api/jobs/{job_id}", timeout=30).json()
    assert [r["cells"][2] for r in table[:2]] == [shown(i["result"]) for i in job["items"][:2]]
    assert f"job={job_id}" in page.url
    posts = [r for r in seen.posts() if "/api/jobs" in r]
    assert len(posts) == 1  # one job for the three files, not three uploads

    # A row opens the full result: the same view as a single upload.
    page.click('#job-table tr[data-item="1"] button')
    page.wait_for_selector("#result:not([hidden])", state="attached")
    answer = json.loads(page.text_content("#raw") or "")
    assert answer["filename"] == files[1][0]
    assert page.text_content("#verdict") == VERDICT_WORDS[answer["verdict"]]
    screenshot(page, "job-table-desktop")

    # A reload brings the batch back from the id in the URL.
    page.reload()
    page.wait_for_selector('#job[data-status="done"]', state="attached", timeout=30_000)
    assert rows(page) == table
    assert_only_own_origin(seen.requests, lite_gateway.url)
    assert seen.errors == []
    page.close()


def test_a_batch_that_is_gone_says_so(lite_gateway: Gateway, browser: Browser, seen: Seen) -> None:
    page = open_page(browser, lite_gateway.url, seen, DESKTOP)
    page.goto(f"{lite_gateway.url}/?job={'0' * 32}")
    page.wait_for_selector('#error[data-status="404"]', state="attached", timeout=30_000)
    assert "no longer kept" in (page.text_content("#error") or "")
    assert "job=" not in page.url
    page.close()
