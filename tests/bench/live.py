"""Stage "live": latency from a frame sent on the WebSocket /api/live to its score received.

A client sends JPEG frames of a clip (640 px on the long side, as the page sends them) at
a fixed rate for `live_seconds`, reading answers on another thread; each answered frame's
latency is its receive time minus its send time. Frames the gateway dropped (a newer one
came first) have no latency: they are counted. Measured on the lite profile at each rate.
"""

import json
import threading
import time
from pathlib import Path

import cv2
import websocket

from tests.bench.config import BenchConfig
from tests.bench.measure import latency_summary

LONG_SIDE = 640
JPEG_QUALITY = 85


def clip_jpegs(clip: Path, count: int) -> list[bytes]:
    """Up to `count` consecutive frames of `clip`, scaled and JPEG-encoded beforehand, so
    the client's own encoding is not in the figure."""
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        scale = min(1.0, LONG_SIDE / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frames.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1])
    capture.release()
    return [f.tobytes() for f in frames]


def measure_rate(url: str, frames: list[bytes], fps: float, seconds: float) -> dict:
    """One session: `fps` frames a second for `seconds`; latencies of the answered ones."""
    ws = websocket.create_connection(url.replace("http://", "ws://", 1) + "/api/live", timeout=60)
    ws.send(json.dumps({"start": {}}))
    assert json.loads(ws.recv())["event"] == "started"
    total = max(1, round(fps * seconds))
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answers: list[dict] = []
    done = threading.Event()

    def receive() -> None:
        while len(answers) < total:
            message = json.loads(ws.recv())
            if message.get("event") not in ("frame", "error"):
                continue
            frame = message.get("frame")
            if frame is not None and frame in sent_at and message["event"] == "frame":
                latencies.append(time.perf_counter() - sent_at[frame])
            answers.append(message)
            if frame == total - 1:
                break
        done.set()

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    start = time.perf_counter()
    for n in range(total):
        time.sleep(max(0.0, start + n / fps - time.perf_counter()))
        sent_at[n] = time.perf_counter()
        ws.send_binary(frames[n % len(frames)])
    done.wait(60)
    ws.send(json.dumps({"stop": True}))
    ws.close()
    judged = [a for a in answers if a["event"] == "frame"]
    return {
        "fps": fps,
        "seconds": seconds,
        "sent": total,
        "judged": len(judged),
        "dropped": judged[-1]["dropped"] if judged else None,
        "errors": len(answers) - len(judged),
        "faces_per_frame": round(sum(len(a["faces"]) for a in judged) / max(1, len(judged)), 2),
        "gateway_lag_p50_ms": latency_summary([a["lag_ms"] / 1000 for a in judged])["p50_ms"],
        **latency_summary(latencies),
    }


def run_live(config: BenchConfig, url: str) -> dict:
    frames = clip_jpegs(config.live_clip, 300)
    result: dict = {"clip": config.live_clip.name, "long_side": LONG_SIDE, "rates": {}}
    for fps in config.live_rates:
        print(f"[live] {fps:g} frames/s for {config.live_seconds:g} s", flush=True)
        result["rates"][f"{fps:g}fps"] = measure_rate(url, frames, fps, config.live_seconds)
    return result
