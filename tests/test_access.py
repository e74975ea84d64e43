"""Access: API keys, per-key rate limits, CORS with a real preflight, request ids and
structured logs that never hold file contents or temp paths — against a real gateway."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.server.security import MAX_TRACKED_CLIENTS, RateLimiter, key_matches
from tests.conftest import ROOT, Gateway, free_port, start_gateway, wait_for
from tests.stack import OBAMA

KEYS = ("first-key-0123456789", "second-key-abcdefghij")
ORIGIN = "https://ui.example.org"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Keys, a rate limit of 3 at once then 1 a minute per key, one CORS origin.
    No Triton: access is decided before the model server is asked anything."""
    nowhere = f"127.0.0.1:{free_port()}"
    with start_gateway(
        nowhere,
        tmp_path_factory.mktemp("guarded"),
        api_keys=",".join(KEYS),
        rate_limit_per_minute=1,
        rate_limit_burst=3,
        cors_origins=ORIGIN,
    ) as gateway:
        yield gateway


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


@pytest.mark.stack
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": KEYS[0][:-1]},
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "prefix", "basic-scheme", "empty-bearer"],
)
def test_the_api_needs_a_valid_key(guarded: Gateway, headers: dict) -> None:
    for method, path in (("GET", "/api"), ("GET", "/api/models"), ("POST", "/api/detect")):
        response = httpx.request(method, guarded.url + path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert error_code(response) == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["x-request-id"]
    assert list(guarded.uploads.iterdir()) == []


@pytest.mark.stack
def test_probes_metrics_docs_and_the_web_page_stay_open(guarded: Gateway) -> None:
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json", "/"):
        assert httpx.get(guarded.url + path).status_code == 200, path
    assert httpx.get(guarded.url + "/readyz").status_code == 503  # open, and honest: no Triton


@pytest.mark.stack
def test_a_key_in_either_header_opens_the_api_and_each_key_has_its_own_rate(
    guarded: Gateway,
) -> None:
    first = {"X-API-Key": KEYS[0]}
    second = {"Authorization": f"Bearer {KEYS[1]}"}
    statuses = [httpx.get(guarded.url + "/api", headers=first).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200], "the burst is allowed"
    assert statuses[3:] == [429, 429], "then one a minute"
    limited = httpx.get(guarded.url + "/api", headers=first)
    assert error_code(limited) == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert httpx.get(guarded.url + "/api", headers=second).status_code == 200, "own bucket"
    # A refused key does not spend the other key's budget, nor do open routes.
    assert httpx.get(guarded.url + "/healthz", headers=first).status_code == 200


@pytest.mark.stack
def test_a_real_cors_preflight_from_an_allowed_origin(guarded: Gateway) -> None:
    preflight = httpx.options(
        guarded.url + "/api/detect",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key,content-type",
        },
    )
    assert preflight.status_code == 200, "answered without a key: browsers send none"
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    # The actual request's answer, even a refusal, carries the CORS headers the
    # browser needs to show it (the prototype's users saw only "CORS error").
    refused = httpx.get(guarded.url + "/api", headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in refused.headers["access-control-expose-headers"].lower()


@pytest.mark.stack
def test_other_origins_get_no_cors_grant(guarded: Gateway) -> None:
    preflight = httpx.options(
        guarded.url + "/api/detect",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    plain = httpx.get(guarded.url + "/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.stack
def test_without_keys_the_api_is_open_and_cors_off(tmp_path: Path) -> None:
    with start_gateway(f"127.0.0.1:{free_port()}", tmp_path) as gateway:
        assert httpx.get(gateway.url + "/api").status_code == 200
        preflight = httpx.options(
            gateway.url + "/api/detect",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.stack
def test_logs_are_json_lines_with_request_ids_and_no_user_data(tmp_path: Path) -> None:
    secret = b"SECRET-CONTENT-MARKER-7f3a"
    name = "../../home/alice/private/SECRET-NAME-9c1d.jpg"
    with start_gateway(f"127.0.0.1:{free_port()}", tmp_path, api_keys=KEYS[0]) as gateway:
        headers = {"X-API-Key": KEYS[0]}
        sent = {
            "bad": httpx.post(
                gateway.url + "/api/detect",
                files={"file": (name, secret * 100)},
                headers=headers,
            ),
            "good-jpeg-no-triton": httpx.post(
                gateway.url + "/api/detect",
                files={"file": (name, OBAMA.read_bytes() + secret)},
                headers=headers,
                timeout=60,
            ),
            "no-key": httpx.get(gateway.url + "/api"),
        }
        assert [r.status_code for r in sent.values()] == [415, 503, 401]
        log = gateway.log.read_text()
    events = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert events, "the gateway logged nothing"
    requests = {e["request_id"]: e for e in events if e.get("message") == "request"}
    for response in sent.values():
        event = requests[response.headers["x-request-id"]]
        assert event["status"] == response.status_code
        assert event["route"] in ("/api/detect", "/api", "unmatched")
    assert requests[sent["bad"].headers["x-request-id"]]["client"].startswith("key:")
    assert "SECRET-CONTENT" not in log and "SECRET-NAME" not in log
    assert str(gateway.uploads) not in log, "no temp path of a user's file"
    assert KEYS[0] not in log, "keys are logged only as a digest"


def test_a_bucket_refills_at_its_rate_and_forgets_the_oldest_clients() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)  # one a second
    assert [limiter.wait_s("a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.wait_s("a", now=0.0) == pytest.approx(1.0)
    assert limiter.wait_s("a", now=0.5) == pytest.approx(0.5), "half a token back"
    assert limiter.wait_s("a", now=1.5) == 0.0
    assert limiter.wait_s("b", now=1.5) == 0.0, "another client, another bucket"
    for n in range(MAX_TRACKED_CLIENTS + 5):
        limiter.wait_s(f"c{n}", now=2.0)
    assert len(limiter._buckets) == MAX_TRACKED_CLIENTS, "bounded memory"


def test_keys_are_compared_whole() -> None:
    assert key_matches(KEYS[1], list(KEYS))
    assert not key_matches(KEYS[1] + "x", list(KEYS))
    assert not key_matches("", list(KEYS))


@pytest.mark.stack
@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxy-trusted", "loopback-trusted"])
def test_forwarded_addresses_count_only_from_a_trusted_proxy(tmp_path: Path, trusted: bool) -> None:
    """Rate limits and logs see X-Forwarded-For's client only when the peer (here loopback)
    is a configured proxy; otherwise anyone could pick a fresh address per request."""
    proxies = {"forwarded_allow_ips": "127.0.0.1"} if trusted else {}
    with start_gateway(
        f"127.0.0.1:{free_port()}",
        tmp_path,
        rate_limit_per_minute=1,
        rate_limit_burst=1,
        **proxies,
    ) as gateway:
        statuses = [
            httpx.get(gateway.url + "/api", headers={"X-Forwarded-For": f"203.0.113.{n}"})
            for n in (1, 2)
        ]
        again = httpx.get(gateway.url + "/api", headers={"X-Forwarded-For": "203.0.113.1"})
        log = gateway.log.read_text()
    events = [json.loads(line) for line in log.splitlines() if line.strip()]
    requests = [e for e in events if e.get("message") == "request"]
    clients = [e["client"] for e in requests if e["route"] != "/healthz"]  # not the probes
    if trusted:
        assert [r.status_code for r in statuses] == [200, 200], "two clients behind the proxy"
        assert again.status_code == 429, "the first client's own bucket is spent"
        assert clients == ["ip:203.0.113.1", "ip:203.0.113.2", "ip:203.0.113.1"]
    else:
        assert [r.status_code for r in statuses] == [200, 429], "one client: the peer"
        assert set(clients) == {"ip:127.0.0.1"}


@pytest.mark.stack
def test_any_method_name_is_counted_under_a_bounded_label(tmp_path: Path) -> None:
    with start_gateway(f"127.0.0.1:{free_port()}", tmp_path) as gateway:
        for method in ("BREW", "XYZZY-1", "GET"):
            httpx.request(method, gateway.url + "/api")
        metrics = httpx.get(gateway.url + "/metrics").text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("gateway_requests_total{")
    }
    assert "other" in methods and "GET" in methods
    assert not {"BREW", "XYZZY-1"} & methods


def test_make_run_logs_what_python_m_gateway_logs(exported: Path, tmp_path: Path) -> None:
    """`make run` (python -m gateway.programs.local: a lite Triton, then the gateway) logs the same
    JSON lines, with request id, route, status and time."""
    port = free_port()
    triton_ports = {f"--triton-{p}-port": str(free_port()) for p in ("http", "grpc", "metrics")}
    args = ["--profile", "lite", "--port", str(port), *sum(triton_ports.items(), ())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_TMP_DIR"] = str(tmp_path)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.programs.local", *args],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process, err, timeout=180)
        answer = httpx.get(f"http://127.0.0.1:{port}/api")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C stops both
        process.wait(60)
    lines = [line for line in err.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON
    (event,) = [e for e in events if e.get("route") == "/api"]
    assert event["request_id"] == answer.headers["x-request-id"]
    assert event["status"] == 200 and event["ms"] >= 0 and event["method"] == "GET"
