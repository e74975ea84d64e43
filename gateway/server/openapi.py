"""The OpenAPI document, made to say exactly what the API answers.

FastAPI documents what each route declares; what the middlewares and handlers add is
written here once: the access middleware's 401 and 429 on every /api operation, the
error body every 4xx and 5xx has (FastAPI's default 422 schema is not what
gateway/server/errors.py sends), the Allow header of 405s. tests/test_api_contract.py runs
Schemathesis against the document so it stays true.
"""

from collections.abc import Callable

from fastapi import FastAPI

from gateway.server import schemas


def errors_doc(texts: dict[int, str]) -> dict[int | str, dict]:
    """A route's OpenAPI responses for these errors (install_openapi adds their common body)."""
    return {
        code: {"model": schemas.ErrorAnswer, "description": text} for code, text in texts.items()
    }


ERROR_REF = {"$ref": "#/components/schemas/ErrorAnswer"}
ERROR_CONTENT = {"application/json": {"schema": ERROR_REF}}
# Added by gateway/server/security.py to every operation under /api when keys or limits are set.
ACCESS_RESPONSES = {
    "401": "a valid API key is required (when GATEWAY_API_KEYS is set): X-API-Key or "
    "Authorization: Bearer",
    "429": "over the rate limit of this key or address (GATEWAY_RATE_LIMIT_PER_MINUTE; "
    "see Retry-After)",
}
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
                for status, text in ACCESS_RESPONSES.items():
                    responses.setdefault(status, {"description": text})
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


def install_openapi(app: FastAPI) -> None:
    """app.openapi() returns the completed document (cached, as FastAPI's is)."""
    generate: Callable[[], dict] = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def upload_doc(many: bool = False) -> dict:
    """The multipart request body of an upload route (its parser is hand-written, so
    FastAPI cannot see it): one `file` part, or several for a job."""
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
                }
            },
        }
    }


# What any route that asks Triton may answer besides its own statuses.
MODEL_SERVER_ERRORS = {
    502: "Triton failed",
    503: "Triton or the ensemble unavailable (see Retry-After)",
    504: "Triton did not answer in time",
}
