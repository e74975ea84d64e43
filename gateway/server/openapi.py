"""The OpenAPI document, made to say exactly what the API answers.

FastAPI documents what each route declares; what the middlewares and handlers add is
written here once: the access middleware's 401 and 429 on every /api operation, the
error body every 4xx and 5xx has (FastAPI's default 422 schema is not what
gateway/server/errors.py sends), the Allow header of 405s. tests/test_api_contract.py runs
Schemathesis against the document so it stays true.
"""

from collections.abc import Callable

from fastapi import FastAPI
from pydantic import BaseModel

from gateway.server import schemas
from gateway.server.errors import CATALOGUE


def errors_doc(*codes: str) -> dict[int | str, dict]:
    """A route's OpenAPI responses: one per status of the codes it can raise, each described
    by its codes' catalogue entries (install_openapi adds their common body)."""
    texts: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        entry = CATALOGUE[code]
        texts.setdefault(entry.status, []).append(f"{code}: {entry.description}")
    return {
        status: {"model": schemas.ErrorAnswer, "description": "; ".join(texts[status])}
        for status in sorted(texts)
    }


ERROR_REF = {"$ref": "#/components/schemas/ErrorAnswer"}
ERROR_CONTENT = {"application/json": {"schema": ERROR_REF}}
# Raised by gateway/server/security.py on every operation under /api when keys or limits are set.
ACCESS_ERRORS = ("unauthorized", "rate_limited")
VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
# A submitted job's id is where the job's other operations go (OpenAPI links: clients and
# Schemathesis's stateful tests follow them).
JOB = "/api/jobs/{job_id}"
JOB_LINKS = {
    "GetJob": (JOB, "get"),
    "CancelJob": (JOB + "/cancel", "post"),
    "DeleteJob": (JOB, "delete"),
    "JobEvents": (JOB + "/events", "get"),
}


def complete(document: dict) -> dict:
    """The document FastAPI generated, with what the middlewares and handlers add."""
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path == "/api" or path.startswith("/api/"):
                add_access_errors(responses)
            for status, response in responses.items():
                if status[0] in "45":
                    # Every error is {"error": {"code", "message"}} (gateway/server/errors.py).
                    response["content"] = ERROR_CONTENT
    paths = document.get("paths", {})
    submitted = paths.get("/api/jobs", {}).get("post", {}).get("responses", {}).get("202")
    if submitted is not None:
        submitted["links"] = {
            name: {
                "operationId": paths[path][method]["operationId"],
                "parameters": {"job_id": "$response.body#/id"},
            }
            for name, (path, method) in JOB_LINKS.items()
            if method in paths.get(path, {})
        }
    schemas = document.get("components", {}).get("schemas", {})
    for name in VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document


def add_access_errors(responses: dict) -> None:
    """The access middleware's codes beside the route's own, under the same statuses."""
    for status, response in errors_doc(*ACCESS_ERRORS).items():
        text = response["description"]
        known = responses.setdefault(str(status), {"description": text})
        if text not in known["description"]:
            known["description"] += "; " + text


def install_openapi(app: FastAPI) -> None:
    """app.openapi() returns the completed document (cached, as FastAPI's is)."""
    generate: Callable[[], dict] = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def upload_doc(urls: type[BaseModel], many: bool = False) -> dict:
    """The request body of an upload route (its parser is hand-written, so FastAPI cannot
    see it): multipart, one `file` part or several for a job; or JSON, `urls`' model, the
    media URLs the gateway fetches instead (gateway/server/media_urls.py)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": schema},
                        "required": ["file"],
                    }
                },
                "application/json": {"schema": urls.model_json_schema()},
            },
        }
    }


# The codes route groups share. What any route that asks Triton may answer besides its own:
MODEL_SERVER_ERRORS = ("triton_error", "triton_unavailable", "model_unavailable", "triton_timeout")
# What receiving an upload may answer (gateway/server/uploads.py), its upload slot included,
# and fetching media by URL instead (gateway/server/media_urls.py).
UPLOAD_ERRORS = (
    "malformed_upload",
    "upload_timeout",
    "upload_too_slow",
    "file_too_large",
    "unsupported_content_type",
    "missing_file",
    "too_many_uploads",
    "invalid_request",
    "bad_url",
    "url_refused",
    "stream_unreachable",
)
# What analysing an upload may answer: the media, the options, the admission, the deadline.
ANALYSIS_ERRORS = (
    "invalid_request",
    "unsupported_media",
    "undecodable_media",
    "media_limit_exceeded",
    "unknown_model",
    "no_voting_model",
    "too_many_requests",
    "analysis_timeout",
    *MODEL_SERVER_ERRORS,
)
