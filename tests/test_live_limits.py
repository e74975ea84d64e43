"""The live socket's limits (issue 24, findings 4 and 7): stream readers on a bounded pool of
their own, one per session; the largest message uvicorn takes; every message counted by the
key's rate limit, control messages by the session's too; the Origin of a browser's handshake.

The fast tests run the app in process (TestClient over the fake Triton); those marked by the
lite Triton run the real gateway process (uvicorn: its message size, its threads)."""

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import websocket
from starlette.datastructures import Headers
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from gateway.server.security import origin_allowed
from gateway.server.settings import Settings
from model_repository.local_triton import TritonSettings
from tests.conftest import Gateway, InProcessGateway, inprocess_gateway, start_gateway
from tests.live_client import LiveSocket, blank_jpeg, close_reason, silent_server

HANG_S = 10  # an answer later than this is a hang (the tests' hang detector, not a speed)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)


# --- in process: the rules -------------------------------------------------------------------


MakeApi = Callable[..., AbstractContextManager[InProcessGateway]]


@pytest.fixture
def make_api(tmp_path: Path) -> MakeApi:
    """An in-process gateway with these settings (a context manager), one per test."""
    return lambda **settings: inprocess_gateway(tmp_path, **settings)


def control(ws: WebSocketTestSession, message: dict) -> dict:
    ws.send_text(json.dumps(message))
    return ws.receive_json()


def stop(ws: WebSocketTestSession) -> None:
    """Ends the session and waits for its close: TestClient cancels an app still running."""
    assert control(ws, {"stop": True})["reason"] == "stopped"
    with pytest.raises(WebSocketDisconnect):
        ws.receive_json()


def test_origin_rule() -> None:
    def allowed(origin: str | None, host: str = "gw.example:8080", cors: tuple = ()) -> bool:
        headers = {"host": host} | ({"origin": origin} if origin is not None else {})
        return origin_allowed(Headers(headers), list(cors))

    assert allowed(None)  # not a browser
    assert allowed("http://gw.example:8080")  # the gateway's own page
    assert allowed("https://gw.example", host="gw.example")  # behind a TLS proxy
    assert allowed("http://gw.example", host="gw.example:80")
    assert allowed("https://app.example", cors=("https://app.example",))
    assert allowed("https://app.example", cors=("*",))
    assert not allowed("http://evil.example")
    assert not allowed("http://gw.example:9090")  # another port is another origin
    assert not allowed("http://gw.example.evil.example:8080")
    assert not allowed("null")  # a sandboxed frame or a file:// page
    assert not allowed("http://[bad")


def test_origins_on_the_handshake(make_api: MakeApi) -> None:
    with make_api(cors_origins="https://app.example") as api:
        for origin in ("https://evil.example", "http://testserver:1234"):
            with api.client.websocket_connect("/api/live", headers={"origin": origin}) as ws:
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert (closed.value.code, closed.value.reason) == (4403, "origin not allowed")
        for headers in ({}, {"origin": "http://testserver"}, {"origin": "https://app.example"}):
            with api.client.websocket_connect("/api/live", headers=headers) as ws:
                assert control(ws, {"start": {}})["event"] == "started", headers
                stop(ws)


def test_control_messages_are_rate_limited_per_session(make_api: MakeApi) -> None:
    with make_api(live_control_burst=2, live_control_per_minute=1) as api:
        with api.client.websocket_connect("/api/live") as ws:
            assert control(ws, {"start": {}})["event"] == "started"
            assert control(ws, {"nonsense": 1})["error"]["code"] == "bad_control"  # counted
            refused = control(ws, {"start": {}})
            assert refused["error"]["code"] == "rate_limited", refused
            assert "control messages" in refused["error"]["message"]
            stop(ws)  # never refused
        with api.client.websocket_connect("/api/live") as ws:  # a session of its own
            assert control(ws, {"start": {}})["event"] == "started"
            stop(ws)


def test_socket_messages_share_the_keys_rate_limit(make_api: MakeApi) -> None:
    with make_api(api_keys="k1,k2", rate_limit_per_minute=1, rate_limit_burst=3) as api:
        # the key spends its burst on HTTP requests; its socket's messages are refused
        for _ in range(3):
            assert api.client.get("/api/jobs", headers={"X-API-Key": "k1"}).status_code == 200
        assert api.client.get("/api/jobs", headers={"X-API-Key": "k1"}).status_code == 429
        with api.client.websocket_connect("/api/live?api_key=k1") as ws:
            ws.send_bytes(blank_jpeg(64, 64))
            error = ws.receive_json()
            assert (error["error"]["code"], error["frame"]) == ("rate_limited", 0), error
            assert control(ws, {"start": {}})["error"]["code"] == "rate_limited"
            stop(ws)
        # the other way: a socket's messages spend the key's requests
        with api.client.websocket_connect("/api/live?api_key=k2") as ws:
            assert control(ws, {"start": {}})["event"] == "started"
            for _ in range(2):
                ws.send_bytes(blank_jpeg(64, 64))
            ws.send_bytes(blank_jpeg(64, 64))
            errors = []
            while not errors:
                message = ws.receive_json()
                errors += [message] if message["event"] == "error" else []
            assert (errors[0]["error"]["code"], errors[0]["frame"]) == ("rate_limited", 2)
            ws.send_text(json.dumps({"stop": True}))
            with pytest.raises(WebSocketDisconnect):
                while True:
                    ws.receive_json()
        assert api.client.get("/api/jobs", headers={"X-API-Key": "k2"}).status_code == 429


def test_stream_readers_are_bounded_and_freed(make_api: MakeApi) -> None:
    """One reader per session, `live_max_stream_readers` in all: starts beyond are refused
    (stream_busy), not queued; a reader held by a silent source frees its place when the
    source goes (or after live_stream_timeout_s)."""
    settings = {"live_allow_private": True, "live_max_stream_readers": 1}
    with make_api(live_stream_timeout_s=30, **settings) as api, silent_server() as source:
        client = api.client
        with client.websocket_connect("/api/live") as a, client.websocket_connect("/api/live") as b:
            assert control(a, {"start": {"url": source.url()}})["event"] == "started"
            again = control(a, {"start": {"url": source.url()}})
            assert again["error"]["code"] == "stream_busy", again
            assert "previous stream" in again["error"]["message"]
            other = control(b, {"start": {"url": source.url()}})
            assert other["error"]["code"] == "stream_busy", other
            assert "all 1 stream readers" in other["error"]["message"]
            assert source.accepted <= 1
            # the source goes: its reader returns, its place is free again
            source.close()

            def started() -> bool:
                answer = control(b, {"start": {"url": "rtsp://127.0.0.1:9/none"}})
                return answer["event"] == "started"

            wait_for(started, 20)
            stop(a)
            ws = b
            ws.send_text(json.dumps({"stop": True}))
            with pytest.raises(WebSocketDisconnect):
                while True:
                    ws.receive_json()


def test_a_reader_stuck_in_opening_is_bounded_by_the_stream_timeout(make_api: MakeApi) -> None:
    with make_api(live_allow_private=True, live_stream_timeout_s=1) as api, silent_server() as s:
        with api.client.websocket_connect("/api/live") as ws:
            began = time.monotonic()
            assert control(ws, {"start": {"url": s.url()}})["event"] == "started"
            gone = ws.receive_json()  # the reader's own answer: it gave up
            assert gone["event"] == "error" and gone["error"]["code"] != "stream_busy", gone
            assert time.monotonic() - began < HANG_S
            assert ws.receive_json()["reason"] == "stream_ended"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        with api.client.websocket_connect("/api/live") as ws:  # its reader's place is free
            assert control(ws, {"start": {"url": s.url()}})["event"] == "started"
            stop(ws)


def test_the_message_size_follows_the_frame_cap() -> None:
    settings = Settings(_env_file=None, live_max_frame_kb=200)
    assert settings.uvicorn_options()["ws_max_size"] == 200 * 1024 + 64 * 1024


# --- the real gateway (uvicorn, its threads): finding 4 --------------------------------------

# More starts than the default executor has threads (min(32, cpus + 4)): where stream readers
# ran there, these would take every thread the job store and upload sniffing need.
STARTS = max(12, min(32, (os.cpu_count() or 1) + 4) + 2)
READERS = 2


@pytest.fixture(scope="module")
def readers_gateway(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Loopback stream sources allowed (the silent server), a long stream timeout (a reader
    stays held while the test runs), two readers, control messages not limited."""
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("live-readers"),
        live_allow_private=True,
        live_stream_timeout_s=30,
        live_max_sessions=3,
        live_max_sessions_per_client=3,
        live_max_stream_readers=READERS,
        live_control_burst=1000,
    ) as gateway:
        yield gateway


def open_socket(url: str, **kwargs: object) -> LiveSocket:
    session = LiveSocket.open(url, **kwargs)
    session.ws.settimeout(HANG_S)  # an answer that does not come is a failure, not a wait
    return session


def test_a_silent_stream_source_does_not_starve_the_gateway(readers_gateway: Gateway) -> None:
    """Finding 4: a start at a source that never answers, again and again on one socket,
    holds one reader (its own pool's), not the threads the rest of the gateway runs on."""
    url = readers_gateway.url
    with silent_server() as source:
        first = open_socket(url)
        answers = [first.start(url=source.url()) for _ in range(STARTS)]
        assert answers[0]["event"] == "started", answers[0]
        for answer in answers[1:]:  # one reader per session: refused while it still runs
            assert answer["event"] == "error", answer
            assert answer["error"]["code"] == "stream_busy", answer
        second, third = open_socket(url), open_socket(url)
        assert second.start(url=source.url())["event"] == "started"
        refused = third.start(url=source.url())  # both readers are held by the source
        assert refused["error"]["code"] == "stream_busy", refused
        assert f"all {READERS} stream readers" in refused["error"]["message"]
        # another client is answered meanwhile: the job store and upload sniffing have threads
        assert httpx.get(url + "/api/jobs", timeout=HANG_S).status_code == 200
        sniffed = httpx.post(
            url + "/api/detect", files={"file": ("x.mp4", b"not media")}, timeout=HANG_S
        )
        assert sniffed.status_code == 415, sniffed.text
        assert source.accepted <= READERS  # readers that got to connect: never more
    # the source is gone: the readers it held return, their places are free again
    wait_for(lambda: third.start(url=source.url())["event"] == "started", 30)
    for session in (first, second, third):
        session.close()


# --- the real gateway: finding 7 -------------------------------------------------------------

KEYS = ("limits-a", "limits-b", "limits-c")
BURST = 5
ALLOWED_ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def limits_gateway(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Keys with a small rate limit (each test spends its own key's), one allowed origin,
    the default frame cap (1 MiB)."""
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("live-limits"),
        api_keys=",".join(KEYS),
        rate_limit_per_minute=6,
        rate_limit_burst=BURST,
        cors_origins=ALLOWED_ORIGIN,
    ) as gateway:
        yield gateway


def keyed(gateway: Gateway, key: str, **kwargs: object) -> LiveSocket:
    return open_socket(gateway.url, header=[f"X-API-Key: {key}"], **kwargs)


def stopped(session: LiveSocket) -> None:
    """The session answers a stop (never rate limited) and closes normally."""
    session.ws.send(json.dumps({"stop": True}))
    assert session.next("end")["reason"] == "stopped"
    assert session.close_code()[0] == 1000


def test_an_oversized_message_is_refused_by_the_server(limits_gateway: Gateway) -> None:
    """Finding 7: a message over the frame cap plus a margin is refused as its header
    arrives (1009), not buffered and answered; the gateway goes on."""
    session = keyed(limits_gateway, KEYS[0])
    with contextlib.suppress(OSError, websocket.WebSocketException):
        session.frame(b"\xff\xd8\xff" + bytes(2 * 1024 * 1024))  # the server may stop reading
    frame = session.ws.recv_frame()  # not recv_data: its close reply meets a reset socket
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE, frame.data[:200]  # no answer: closed
    assert close_reason(frame.data)[0] == 1009
    stopped(keyed(limits_gateway, KEYS[0]))


def test_a_rate_limited_key_gets_its_socket_messages_refused(limits_gateway: Gateway) -> None:
    """Finding 7: the socket's messages are requests of the key's rate limit, both ways."""
    limited, spender = KEYS[1], KEYS[2]
    wait_for(
        lambda: (
            httpx.get(limits_gateway.url + "/api/jobs", headers={"X-API-Key": limited}).status_code
            == 429
        ),
        HANG_S,
    )
    session = keyed(limits_gateway, limited)
    for n in range(3):
        session.frame(blank_jpeg(64, 64))
        error = session.next()
        assert error["event"] == "error", error
        assert (error["error"]["code"], error["frame"]) == ("rate_limited", n), error
    assert session.start()["error"]["code"] == "rate_limited"
    stopped(session)
    # a socket spends its key's requests: its burst, then frames refused and HTTP 429s
    session = keyed(limits_gateway, spender)
    assert session.start()["event"] == "started"
    for _ in range(BURST):
        session.frame(blank_jpeg(64, 64))
    refused = session.next("error")
    assert (refused["error"]["code"], refused["frame"]) == ("rate_limited", BURST - 1), refused
    answer = httpx.get(limits_gateway.url + "/api/jobs", headers={"X-API-Key": spender})
    assert answer.status_code == 429
    stopped(session)


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1:1", "null"],
    ids=["foreign-host", "foreign-port", "null"],
)
def test_a_foreign_origin_is_refused(limits_gateway: Gateway, origin: str) -> None:
    """Finding 7: a page of another origin cannot use a visitor's browser (and its address,
    its query-string key) to open a session: closed with 4403 before a message is read."""
    session = keyed(limits_gateway, KEYS[0], origin=origin)
    session.ws.send(json.dumps({"stop": True}))
    assert session.close_code() == (4403, "origin not allowed")
    assert not session.messages


@pytest.mark.parametrize(
    "handshake",
    [{}, {"suppress_origin": True}, {"origin": ALLOWED_ORIGIN}],
    ids=["same-origin", "no-origin", "allowed-origin"],
)
def test_own_allowed_and_no_origin_are_accepted(limits_gateway: Gateway, handshake: dict) -> None:
    """websocket-client sends the gateway's own origin unless told otherwise."""
    stopped(keyed(limits_gateway, KEYS[0], **handshake))
