"""Media by URL (gateway/server/media_urls.py): `/api/detect` and `/api/jobs` fetch HTTPS URLs
through preprocess/egress.py, under the upload's caps, pace, slots and sniffing.

The source is an HTTPS server on 127.0.0.2 whose certificate a test CA signed
(GATEWAY_EGRESS_CA_BUNDLE); its name `media.test` resolves there through a stub DNS server
(GATEWAY_EGRESS_DNS_SERVER), and 127.0.0.2 is the one network the gateway may reach
(GATEWAY_EGRESS_ALLOW_NETWORKS). Whatever listens on 127.0.0.1 must hear nothing. The fast
tier runs the gateway in process; the last tests run the real gateway over a lite Triton."""

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from gateway.clients.batch import JobsClient
from gateway.clients.client import GatewayClient, media_source
from gateway.programs import cli
from model_repository.local_triton import TritonSettings
from tests.conftest import MEDIA, InProcessGateway, inprocess_gateway, start_gateway
from tests.egress_support import Listener, StubDns, TestCa
from tests.stack import FAKE_CLIP, REAL_CLIP, ok_answer, serve_http, wait_until

SOURCE = "127.0.0.2"  # the only address the gateway may reach
HOST = "media.test"  # resolves to SOURCE through the stub DNS
OBAMA = MEDIA / "images/real/face_recognition_obama.jpg"
BIDEN = MEDIA / "images/real/face_recognition_biden.jpg"
PRESIGNED = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=900&X-Amz-Signature=5ec2e7"
BIG = b"\0" * (1 << 20) + b"over"  # past a 1 MB cap


@dataclass
class Source:
    """An HTTPS server of media on SOURCE: `files` by path (`streamed` ones without a
    Content-Length), `redirects` by path; every request line it got in `asked`."""

    files: dict[str, bytes] = field(default_factory=dict)
    streamed: set[str] = field(default_factory=set)
    redirects: dict[str, str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str, host: str = HOST) -> str:
        return f"https://{host}:{self.port}{path}"

    @contextlib.contextmanager
    def serving(self, ca: TestCa) -> Iterator["Source"]:
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.asked.append(self.path)
                path = self.path.split("?", 1)[0]
                if path in source.redirects:
                    self.send_response(302)
                    self.send_header("Location", source.redirects[path])
                    self.end_headers()
                    return
                if path not in source.files:
                    self.send_error(404)
                    return
                body = source.files[path]
                self.send_response(200)
                if path not in source.streamed:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the gateway may stop reading: a cap
                    for start in range(0, len(body), 1 << 16):
                        self.wfile.write(body[start : start + (1 << 16)])

            def log_message(self, *args: object) -> None:
                return None

        with serve_http(Handler, SOURCE, tls=ca.server(HOST)) as port:
            self.port = port
            yield self


@dataclass(frozen=True)
class Egress:
    """What the tests' gateways are given to reach the source: the stub DNS, the CA."""

    dns: StubDns
    ca: TestCa
    source: Source

    def settings(self) -> dict[str, object]:
        return {
            "egress_allow_networks": f"{SOURCE}/32",
            "egress_dns_server": self.dns.server,
            "egress_ca_bundle": str(self.ca.bundle),
        }


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Egress]:
    ca = TestCa(tmp_path_factory.mktemp("ca"))
    files = {"/clips/obama.jpg": OBAMA.read_bytes(), "/biden.jpg": BIDEN.read_bytes()}
    files |= {"/big.bin": BIG, "/streamed.bin": BIG, "/notes.mp4": b"not a video\n" * 100}
    files |= {"/fake.mp4": FAKE_CLIP.read_bytes(), "/real.mp4": REAL_CLIP.read_bytes()}
    source = Source(files, streamed={"/streamed.bin"})
    with StubDns({HOST: [SOURCE]}).serving() as dns, source.serving(ca):
        yield Egress(dns, ca, source)


@pytest.fixture(scope="module")
def gateway(egress: Egress, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with inprocess_gateway(
        tmp_path_factory.mktemp("media-urls"),
        max_upload_mb=1,
        jobs_max_files=3,
        jobs_max_mb=1,
        **egress.settings(),
    ) as gw:
        yield gw


def refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def leftovers(gateway: InProcessGateway) -> list[Path]:
    uploads = gateway.settings.jobs_dir / "uploads"
    return [*gateway.uploads.iterdir(), *(uploads.rglob("*") if uploads.exists() else [])]


def test_detect_reads_a_presigned_https_url_as_it_reads_an_upload(
    gateway: InProcessGateway, egress: Egress
) -> None:
    client = GatewayClient(http=gateway.client)
    asked = len(egress.dns.queries)
    url = egress.source.url(f"/clips/obama.jpg?{PRESIGNED}")
    by_url = ok_answer(client.detect_url_response(url))
    uploaded = ok_answer(client.detect_response(OBAMA))
    assert by_url["filename"] == "obama.jpg"  # the path's, never the query's signature
    for key in ("verdict", "score", "sha256", "bytes", "tracks", "models"):
        assert by_url[key] == uploaded[key], key
    assert egress.source.asked[-1] == f"/clips/obama.jpg?{PRESIGNED}"  # the query sent on
    assert egress.dns.queries[asked:] == [HOST]  # resolved once
    assert leftovers(gateway) == []


def test_the_stream_route_takes_a_url_too(gateway: InProcessGateway, egress: Egress) -> None:
    url = egress.source.url("/clips/obama.jpg")
    response = gateway.client.post("/api/detect/stream", json={"url": url})
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[0] == events[0] | {"event": "accepted", "filename": "obama.jpg"}
    assert events[-1]["event"] == "result", events[-1]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        (f"http://{HOST}/clips/obama.jpg", 403, "url_refused"),  # https only by default
        ("ftp://example.com/a.mp4", 403, "url_refused"),
        ("https://127.0.0.1:{port}/x.mp4", 403, "url_refused"),
        ("https://localhost:{port}/x.mp4", 403, "url_refused"),
        ("https://169.254.169.254/latest/meta-data", 403, "url_refused"),
        ("https://127.0.0.1:{port}\x00@media.test/x.mp4", 422, "bad_url"),
        ("https://user:pw@media.test/x.mp4", 422, "bad_url"),
        ("https://0x7f.1/x.mp4", 422, "bad_url"),
    ],
)
def test_refused_urls_are_refused_before_any_connection(
    gateway: InProcessGateway, url: str, status: int, code: str
) -> None:
    with Listener("127.0.0.1").serving() as inside:
        response = gateway.client.post("/api/detect", json={"url": url.format(port=inside.port)})
        assert refusal(response) == (status, code), response.text
    assert inside.received == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b'{"url": 1}', "not a string"),
        (b'{"urls": ["https://media.test/a.jpg"]}', "a job's field"),
        (b'{"url": "https://media.test/a.jpg", "callback_url": "x"}', "an unknown field"),
        (json.dumps({"url": "https://media.test/" + "a" * 2048}).encode(), "over 2048"),
        (b" " * (300 * 1024), "over the body's cap"),
    ],
)
def test_a_json_body_that_is_no_media_url_is_invalid(
    gateway: InProcessGateway, body: bytes, why: str
) -> None:
    headers = {"Content-Type": "application/json"}
    response = gateway.client.post("/api/detect", content=body, headers=headers)
    assert refusal(response) == (422, "invalid_request"), why


def test_every_failure_past_the_check_reads_the_same(
    gateway: InProcessGateway, egress: Egress, tmp_path: Path
) -> None:
    """A name that does not resolve, a 404, a certificate no trusted CA signed, a redirect
    to a refused address: one code and one message (the cause is for the log), and the
    address the redirect named hears nothing."""
    stranger = TestCa(tmp_path)  # a CA the gateway does not trust
    source = egress.source
    with (
        Listener("127.0.0.1").serving() as inside,
        Source(dict(source.files)).serving(stranger) as untrusted,
    ):
        source.redirects["/inside"] = f"https://127.0.0.1:{inside.port}/x.mp4"
        source.redirects["/plain"] = f"http://{HOST}:{source.port}/biden.jpg"
        urls = [
            f"https://nowhere.test:{source.port}/biden.jpg",
            source.url("/missing.mp4"),
            untrusted.url("/biden.jpg"),
            source.url("/inside"),
            source.url("/plain"),
        ]
        answers = [gateway.client.post("/api/detect", json={"url": url}) for url in urls]
    assert {refusal(a) for a in answers} == {(502, "stream_unreachable")}
    assert len({a.json()["error"]["message"] for a in answers}) == 1
    assert inside.received == [] and untrusted.asked == []  # TLS failed before the request
    assert leftovers(gateway) == []


def test_a_redirect_to_an_allowed_source_is_followed(
    gateway: InProcessGateway, egress: Egress
) -> None:
    egress.source.redirects["/latest"] = egress.source.url("/biden.jpg")
    response = gateway.client.post("/api/detect", json={"url": egress.source.url("/latest")})
    assert ok_answer(response)["filename"] == "latest"  # the URL the client named


@pytest.mark.parametrize("path", ["/big.bin", "/streamed.bin"])
def test_a_body_over_the_cap_is_refused_as_an_upload_is(
    gateway: InProcessGateway, egress: Egress, path: str
) -> None:
    """Declared over the cap (refused before a byte is read) or not declared (refused at
    the first byte over): the upload's 413, its message, no file left."""
    fetched = gateway.client.post("/api/detect", json={"url": egress.source.url(path)})
    uploaded = gateway.client.post("/api/detect", files={"file": ("big.bin", BIG)})
    assert refusal(fetched) == refusal(uploaded) == (413, "file_too_large")
    assert fetched.json() == uploaded.json()
    assert leftovers(gateway) == []


def test_what_is_not_media_is_sniffed_out(gateway: InProcessGateway, egress: Egress) -> None:
    response = gateway.client.post("/api/detect", json={"url": egress.source.url("/notes.mp4")})
    assert refusal(response) == (415, "unsupported_media")
    assert leftovers(gateway) == []


def test_a_presigned_query_never_reaches_the_log(
    gateway: InProcessGateway, egress: Egress, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        url = egress.source.url(f"/missing.mp4?{PRESIGNED}")
        response = gateway.client.post("/api/detect", json={"url": url})
    assert refusal(response) == (502, "stream_unreachable")
    assert "missing.mp4" in caplog.text  # the cause is logged
    assert "5ec2e7" not in caplog.text and "X-Amz" not in caplog.text


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["finished"] is not None else None

    wait_until(finished, timeout, f"job {job_id} finished")
    return client.get(f"/api/jobs/{job_id}").json()


def test_a_job_from_urls(gateway: InProcessGateway, egress: Egress) -> None:
    urls = [egress.source.url("/clips/obama.jpg"), egress.source.url(f"/biden.jpg?{PRESIGNED}")]
    jobs = JobsClient("", http=gateway.client)
    job = wait_job(gateway.client, jobs.submit_urls(urls)["id"])
    assert [i["filename"] for i in job["items"]] == ["obama.jpg", "biden.jpg"]
    assert [i["status"] for i in job["items"]] == ["done", "done"], job
    uploaded = ok_answer(GatewayClient(http=gateway.client).detect_response(OBAMA))
    assert job["items"][0]["result"]["score"] == uploaded["score"]
    assert job["items"][0]["result"]["sha256"] == uploaded["sha256"]


@pytest.mark.parametrize(
    ("paths", "status", "code"),
    [
        (["/biden.jpg"] * 4, 413, "job_too_large"),  # jobs_max_files=3
        (["/biden.jpg", "/big.bin"], 413, "file_too_large"),
        (["/biden.jpg"] * 3, 413, "job_too_large"),  # 1 MB in all
        (["/biden.jpg", "http://media.test/a.jpg"], 403, "url_refused"),
        (["/biden.jpg", "/missing.mp4"], 502, "stream_unreachable"),
    ],
)
def test_a_refused_job_keeps_nothing(
    gateway: InProcessGateway, egress: Egress, paths: list[str], status: int, code: str
) -> None:
    """Each refusal is the upload's (or the egress module's), nothing stays on disk, nothing
    is queued; a URL refused by its spelling is refused before any is fetched."""
    urls = [p if p.startswith("http:") else egress.source.url(p) for p in paths]
    before = gateway.client.get("/api/jobs").json()["total"]
    asked = len(egress.source.asked)
    response = gateway.client.post("/api/jobs", json={"urls": urls})
    assert refusal(response) == (status, code), response.text
    assert gateway.client.get("/api/jobs").json()["total"] == before
    assert leftovers(gateway) == []
    if code == "url_refused":
        assert len(egress.source.asked) == asked


def test_the_openapi_document_shows_the_url_bodies(gateway: InProcessGateway) -> None:
    paths = gateway.client.get("/openapi.json").json()["paths"]
    for route, field_name in [("/api/detect", "url"), ("/api/jobs", "urls")]:
        post = paths[route]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == [field_name]
        assert "multipart/form-data" in post["requestBody"]["content"]
        for status in ("403", "413", "422", "502"):
            assert status in post["responses"], (route, status)


def test_the_cli_tells_urls_from_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert media_source(f"HTTPS://{HOST}/a.mp4?{PRESIGNED}") == f"HTTPS://{HOST}/a.mp4?{PRESIGNED}"
    assert media_source("clips/https.mp4") == Path("clips/https.mp4")
    assert cli.main(["detect", f"https://{HOST}/a.mp4", "--triton", "127.0.0.1:9"]) == 2
    assert "drop --triton" in capsys.readouterr().err


# --- the real gateway over a lite Triton ---------------------------------------------------


@pytest.fixture(scope="module")
def real_gateway(
    lite_triton: TritonSettings, egress: Egress, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("media-urls-real")
    with start_gateway(lite_triton.grpc_url, tmp, **egress.settings()) as gw:
        yield gw.url


def test_the_real_gateway_detects_a_clip_by_url(real_gateway: str, egress: Egress) -> None:
    with httpx.Client(base_url=real_gateway, timeout=300) as http:
        client = GatewayClient(http=http)
        for path, clip in [("/fake.mp4", FAKE_CLIP), ("/real.mp4", REAL_CLIP)]:
            by_url = ok_answer(client.detect_url_response(egress.source.url(path)))
            uploaded = ok_answer(client.detect_response(clip))
            assert (by_url["verdict"], by_url["score"]) == (uploaded["verdict"], uploaded["score"])
            assert by_url["sha256"] == uploaded["sha256"]
        # the real clip's (the verdict is uncertain: within the measured band, the default)
        assert by_url["score"] < 0.5


def test_the_real_gateway_runs_a_job_from_urls(real_gateway: str, egress: Egress) -> None:
    jobs = JobsClient(real_gateway)
    started = time.monotonic()
    urls = [egress.source.url("/fake.mp4"), egress.source.url(f"/real.mp4?{PRESIGNED}")]
    job = wait_job(jobs.http, jobs.submit_urls(urls)["id"], timeout=600)
    jobs.close()
    # Which clip each item judged: the side of the threshold its score lies on (the real
    # clip's verdict is uncertain, within the measured band the gateway uses by default).
    sides = [(i["filename"], i["status"], i["result"]["score"] >= 0.5) for i in job["items"]]
    assert sides == [("fake.mp4", "done", True), ("real.mp4", "done", False)]
    assert time.monotonic() - started < 600


def test_the_cli_detects_a_url_and_makes_a_job_of_several(
    real_gateway: str, egress: Egress, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = egress.source.url(f"/fake.mp4?{PRESIGNED}")
    assert cli.main(["detect", fake, "--url", real_gateway, "--frames", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["filename"] == "fake.mp4"
    out = tmp_path / "report"
    urls = [fake, egress.source.url("/real.mp4")]
    assert (
        cli.main(["detect", *urls, "--url", real_gateway, "--frames", "8", "--out", str(out)]) == 0
    )
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["file"], r["score"] >= 0.5) for r in rows] == [
        (egress.source.url("/fake.mp4"), True),  # shown without the presigned query
        (egress.source.url("/real.mp4"), False),  # its verdict: uncertain (the measured band)
    ]
    assert all(len(r["sha256"]) == 64 for r in rows)


def test_the_page_checks_a_link_and_a_batch_of_links(
    real_gateway: str,
    egress: Egress,
    browser: "Browser",  # noqa: F821 — playwright's
) -> None:
    """The page's link field: one link is analysed as a dropped file is (its progress, its
    verdict), several are a batch; the browser sends only the links to its own origin,
    never a byte of the media, and never reaches the source itself."""
    page = browser.new_page()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(f"{request.method} {request.url}"))
    page.goto(f"{real_gateway}/?frames=8")
    page.wait_for_selector('#service:not([data-status="loading"])', state="attached")
    page.fill("#media-url", egress.source.url(f"/fake.mp4?{PRESIGNED}"))
    page.click("#url-form button")
    page.wait_for_selector(
        '#app[data-run="1"][data-state="done"]', state="attached", timeout=240_000
    )
    assert page.text_content("#verdict") == "Likely fake"
    assert "fake.mp4" in (page.text_content("#media") or "")
    page.fill("#media-url", f"{egress.source.url('/real.mp4')} {egress.source.url('/biden.jpg')}")
    page.click("#url-form button")
    page.wait_for_selector('#job[data-status="done"]', state="attached", timeout=240_000)
    states = page.eval_on_selector_all(
        "#job-table tbody tr", "rows => rows.map(r => r.dataset.status)"
    )
    assert states == ["done", "done"]
    page.close()
    posts = [a for a in asked if a.startswith("POST ")]
    assert [p.split("?")[0] for p in posts] == [
        f"POST {real_gateway}/api/detect/stream",
        f"POST {real_gateway}/api/jobs",
    ]
    assert all(a.split(" ", 1)[1].startswith(real_gateway) for a in asked)
