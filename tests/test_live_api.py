"""Live analysis over the WebSocket /api/live, against a real gateway and a lite Triton:
frames of the shared clips judged one by one, bad input, keys, limits, backpressure."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_repository.local_triton import TritonSettings
from tests.conftest import Gateway, start_gateway
from tests.live_client import (
    FAKE_CLIP,
    REAL_CLIP,
    LiveSocket,
    blank_jpeg,
    jpeg_frames,
    judge,
)

API_KEY = "live-test-key"
FRAMES = 12
MAX_FRAME_KB = 200


@pytest.fixture(scope="module")
def live(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway with an API key, a small frame cap and a short idle timeout."""
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("live"),
        api_keys=API_KEY,
        live_max_frame_kb=MAX_FRAME_KB,
        live_idle_timeout_s=2,
        live_max_sessions=3,
        live_max_sessions_per_client=2,
        workers=2,
    ) as gateway:
        yield gateway


def connect(gateway: Gateway) -> LiveSocket:
    return LiveSocket.open(gateway.url, header=[f"X-API-Key: {API_KEY}"])


def metric(gateway: Gateway, name: str, labels: str = "") -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(("clip", "fake"), [(FAKE_CLIP, True), (REAL_CLIP, False)])
def test_a_clip_judged_frame_by_frame(live: Gateway, clip: Path, fake: bool) -> None:
    socket = connect(live)
    started = socket.start(models=None, threshold=0.5, window=8)
    assert started["event"] == "started", started
    assert started["window"] == 8 and started["models"] == ["meso4", "mesoinception4"]
    answers = judge(socket, jpeg_frames(clip, FRAMES))
    socket.ws.send(json.dumps({"stop": True}))
    assert socket.next("end")["reason"] == "stopped"
    assert socket.close_code()[0] == 1000
    for answer in answers:
        assert answer["dropped"] == 0
        assert answer["faces"], "every frame of these clips shows a face"
        for face in answer["faces"]:
            assert len(face["box"]) == 4 and 0.0 <= face["p_fake"] <= 1.0
            assert {t["id"] for t in answer["tracks"]} >= {face["track"]}
        for track in answer["tracks"]:
            # the sliding window: at most `window` frames, the newest last
            assert 1 <= len(track["frames"]) <= 8 and track["frames"][-1] <= answer["frame"]
        assert answer["score"] == max(t["score"] for t in answer["tracks"])
        assert answer["verdict"] == ("fake" if answer["score"] >= 0.5 else "real")
    last = answers[-1]
    assert last["tracks"][0]["frames"] == list(range(FRAMES - 8, FRAMES))
    assert (last["score"] >= 0.5) == fake, last["score"]
    assert last["verdict"] == ("fake" if fake else "real")


def test_bad_messages_are_answered_and_the_session_goes_on(live: Gateway) -> None:
    socket = connect(live)
    socket.ws.send("{not json")
    assert socket.next()["error"]["code"] == "bad_control"
    socket.ws.send(json.dumps({"begin": {}}))
    assert socket.next()["error"]["code"] == "bad_control"
    assert socket.start(threshold=2)["error"]["code"] == "bad_control"
    assert socket.start(models=["nope"])["error"]["code"] == "unknown_model"
    assert socket.start(window=4)["event"] == "started"
    good = jpeg_frames(FAKE_CLIP, 1)[0]
    bad = {
        b"GIF89a not a jpeg": "not_jpeg",
        b"\xff\xd8\xff" + b"\x00" * (MAX_FRAME_KB * 1024): "frame_too_large",
        blank_jpeg(2000, 100): "media_limit_exceeded",  # over 1920 x 1080
        good[: len(good) // 3]: "undecodable_frame",  # a JPEG cut short
        b"\xff\xd8\xff\xe0 garbage": "undecodable_frame",
    }
    for n, (data, code) in enumerate(bad.items()):
        socket.frame(data)
        error = socket.next("error")
        assert (error["error"]["code"], error["frame"]) == (code, n), error
    socket.frame(good)
    answer = socket.next("frame")
    assert answer["frame"] == len(bad) and answer["faces"]
    socket.close()


@pytest.mark.parametrize(
    "credentials",
    [{}, {"header": ["X-API-Key: wrong"]}, {"query": "api_key=wrong"}],
    ids=["missing", "wrong-header", "wrong-query"],
)
def test_a_missing_or_wrong_key_closes_with_4401(live: Gateway, credentials: dict) -> None:
    socket = LiveSocket.open(live.url, **credentials)
    socket.frame(jpeg_frames(FAKE_CLIP, 1)[0])
    assert socket.close_code() == (4401, "a valid API key is required")
    assert not socket.messages  # not a frame was read, nothing answered


def test_keys_by_header_bearer_or_query(live: Gateway) -> None:
    for kwargs in (
        {"header": [f"Authorization: Bearer {API_KEY}"]},
        {"query": f"api_key={API_KEY}"},
    ):
        socket = LiveSocket.open(live.url, **kwargs)
        assert socket.start()["event"] == "started"
        socket.close()


def test_the_newest_frame_wins(live: Gateway) -> None:
    """Frames sent far faster than they are scored: the older waiting one is dropped and
    counted, never queued; the last frame sent is always judged."""
    dropped_before = metric(live, "gateway_live_frames_total", '{fate="dropped"}')
    frames = jpeg_frames(FAKE_CLIP, 30, step=1)
    socket = connect(live)
    socket.start()
    for jpeg in frames:
        socket.frame(jpeg)
    answers = list(socket.answers_until(len(frames) - 1))
    socket.close()
    numbers = [a["frame"] for a in answers]
    assert numbers == sorted(numbers) and numbers[-1] == len(frames) - 1
    assert answers[-1]["dropped"] > 0
    # every frame was either judged or dropped, and the count says which
    assert len(answers) + answers[-1]["dropped"] == len(frames)
    assert [a["dropped"] for a in answers] == sorted(a["dropped"] for a in answers)
    dropped = metric(live, "gateway_live_frames_total", '{fate="dropped"}') - dropped_before
    assert dropped == answers[-1]["dropped"]


def test_session_limits_idle_timeout_and_metrics(live: Gateway) -> None:
    first, second = connect(live), connect(live)
    assert first.start()["event"] == second.start()["event"] == "started"
    # a third session for the same key is over live_max_sessions_per_client
    third = connect(live)
    assert third.close_code() == (4429, "too many live sessions")
    assert metric(live, "gateway_live_sessions") == 2
    # no message for live_idle_timeout_s (2 s): closed
    started = time.monotonic()
    assert first.close_code() == (4408, "idle")
    assert second.close_code() == (4408, "idle")
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while metric(live, "gateway_live_sessions") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(live, "gateway_live_sessions") == 0
    for fate in ("received", "scored"):
        assert metric(live, "gateway_live_frames_total", f'{{fate="{fate}"}}') > 0
    assert metric(live, "gateway_live_lag_seconds_count") > 0


def test_stream_urls_are_checked(live: Gateway) -> None:
    """Loopback, private and link-local sources and other schemes are refused, on the socket
    (an error message; the session goes on) and by POST /api/live (403)."""
    headers = {"X-API-Key": API_KEY}
    refused = [
        "rtsp://127.0.0.1:8554/cam",
        "rtmp://10.1.2.3/live/s",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/x.m3u8",
        "http://localhost:8000/live.m3u8",
        "file:///etc/passwd",
        "gopher://example.com/",
    ]
    for url in refused:
        answer = httpx.post(live.url + "/api/live", json={"url": url}, headers=headers)
        assert answer.status_code == 403, (url, answer.text)
        assert answer.json()["error"]["code"] == "url_refused"
    assert httpx.post(live.url + "/api/live", json={"url": "rtsp://"}, headers=headers).json()[
        "error"
    ]["code"] in ("bad_url", "url_refused")
    assert httpx.post(live.url + "/api/live", json={}, headers=headers).status_code == 422
    assert httpx.post(live.url + "/api/live", json={"url": refused[0]}).status_code == 401
    socket = connect(live)
    error = socket.start(url=refused[0])
    assert error["event"] == "error" and error["error"]["code"] == "url_refused"
    assert socket.start()["event"] == "started"
    socket.close()
