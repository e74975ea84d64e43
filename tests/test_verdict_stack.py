"""Four verdicts with reasons against the real gateway over the lite Triton (the MesoNets): a
file, a job and the CLI each answer `uncertain` with its reasons when the request's threshold
sits at the file's own score, and a two-frame look at a clip says its evidence is thin."""

import subprocess
import sys

import pytest

from gateway.clients.batch import JobsClient
from tests.conftest import ROOT, Gateway
from tests.jobs_support import wait_job
from tests.stack import MEDIA, OBAMA

pytestmark = pytest.mark.stack

CLIP = MEDIA / "videos/real/ffpp_c23_original_519.mp4"


def codes(answer: dict) -> list[str]:
    return [r["code"] for r in answer["reasons"]]


def test_a_file_at_its_own_score_is_uncertain_and_far_from_it_is_not(
    lite_gateway: Gateway,
) -> None:
    score = lite_gateway.client.detect(OBAMA)["score"]
    near = lite_gateway.client.detect(OBAMA, threshold=score)
    assert (near["verdict"], codes(near)) == ("uncertain", ["near_threshold"])
    far = lite_gateway.client.detect(OBAMA, threshold=min(score + 0.5, 1.0))
    assert (far["verdict"], far["reasons"]) == ("real", [])


def test_two_frames_of_a_clip_are_thin_evidence(lite_gateway: Gateway) -> None:
    answer = lite_gateway.client.detect(CLIP, frames=2)
    assert answer["verdict"] == "uncertain" and "few_face_frames" in codes(answer)


def test_a_jobs_result_carries_the_verdict_and_its_reasons(lite_gateway: Gateway) -> None:
    score = lite_gateway.client.detect(OBAMA)["score"]
    job = JobsClient(lite_gateway.url).submit([OBAMA], threshold=score)
    (item,) = wait_job(lite_gateway.url, job["id"])["items"]
    assert item["status"] == "done", item
    assert (item["result"]["verdict"], codes(item["result"])) == ("uncertain", ["near_threshold"])


def test_the_cli_prints_the_verdict_and_why(lite_gateway: Gateway) -> None:
    score = lite_gateway.client.detect(OBAMA)["score"]
    command = [sys.executable, "-m", "gateway.programs.cli", "detect", str(OBAMA)]
    run = subprocess.run(
        [*command, "--url", lite_gateway.url, "--threshold", repr(score)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr  # a verdict, whichever, is a success
    first, why = run.stdout.splitlines()[:2]
    assert " UNCERTAIN " in f" {first} " and why.startswith("  why: near_threshold: P(fake) ")
