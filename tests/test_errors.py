"""The error catalogue (gateway/server/errors.py) is the one place statuses are stated: every
raise names a code it holds, preprocess's errors carry codes only, the OpenAPI document and
gateway/README.md's table are read from it, and `invalid_request` has one status."""

import ast
import re
from pathlib import Path

import pytest

from gateway.server.errors import CATALOGUE, from_media_error
from preprocess import egress
from preprocess.media import MediaError
from tests.conftest import MEDIA, InProcessGateway

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "gateway" / "server"
OBAMA = MEDIA / "images/real/face_recognition_obama.jpg"
# What each preprocess error was answered with before the statuses left preprocess.
MEDIA_STATUSES = {
    "media_error": 400,
    "unsupported_media": 415,
    "undecodable_media": 422,
    "media_limit_exceeded": 422,
    "bad_url": 422,
    "url_refused": 403,
    "stream_unreachable": 502,
}


def raised_codes() -> list[tuple[str, object]]:
    """(where, first argument) of each ApiError or AnswerError built with a literal first
    argument in gateway/server: a code, or a status where the old (status, code, …) form
    is still written."""
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("ApiError", "AnswerError") or not node.args:
                continue
            if isinstance(first := node.args[0], ast.Constant):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", first.value))
    return found


def all_subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in all_subclasses(sub))]


def test_every_raise_names_a_catalogued_code() -> None:
    found = raised_codes()
    assert len(found) > 30, "the walk found the raise sites"
    stated = [(where, status) for where, status in found if not isinstance(status, str)]
    assert not stated, f"raised by status, not by code: {stated}"
    unknown = [(where, code) for where, code in found if code not in CATALOGUE]
    assert not unknown, unknown


def test_preprocess_errors_carry_a_code_the_gateway_maps_to_the_same_status() -> None:
    kinds = all_subclasses(MediaError)
    assert egress.UrlRefused in kinds, "egress's errors are MediaErrors"
    assert {kind.code for kind in kinds} == set(MEDIA_STATUSES)
    for kind in kinds:
        assert not hasattr(kind, "status"), f"{kind.__name__}: HTTP belongs to the gateway"
        error = from_media_error(kind("why"))
        assert (error.code, error.status) == (kind.code, MEDIA_STATUSES[kind.code])


def test_the_openapi_error_texts_are_the_catalogue(api: InProcessGateway) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    seen = set()
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45":
                    continue
                for text in response["description"].split("; "):
                    code, _, description = text.partition(": ")
                    assert code in CATALOGUE, (method, path, status, text)
                    entry = CATALOGUE[code]
                    assert (entry.status, entry.description) == (int(status), description)
                    seen.add(code)
    assert {"file_too_large", "job_not_found", "not_ready", "rate_limited"} <= seen


def test_the_readme_table_is_the_catalogue() -> None:
    readme = (ROOT / "gateway" / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \| (.+) \|$", readme, re.MULTILINE)
    assert rows == [(code, str(e.status), e.description) for code, e in CATALOGUE.items()]
    assert not [code for code, e in CATALOGUE.items() if "; " in e.description], "the joiner"


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        # A header that is no number is a malformed upload (it was a 400 invalid_request)...
        ("", {"content-length": "many"}, 400, "malformed_upload"),
        # ...and invalid_request is FastAPI's validation, always a 422.
        ("?frames=x", {}, 422, "invalid_request"),
    ],
)
def test_invalid_request_has_one_status(
    api: InProcessGateway, query: str, headers: dict, status: int, code: str
) -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=o.jpg\r\n\r\n"
    body += OBAMA.read_bytes() + b"\r\n--b--\r\n"
    response = api.client.post(
        "/api/detect" + query,
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b", **headers},
    )
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert CATALOGUE[code].status == status
