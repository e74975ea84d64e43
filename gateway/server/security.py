"""Who may call the API and how often: API keys, per-key rate limits, CORS.

Only the API (paths under /api) is guarded. Health and readiness (Kubernetes
probes), /metrics (Prometheus), the OpenAPI page and the static web page stay
open, so an operator can turn keys on without breaking the cluster around it.
"""

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.server.errors import ApiError, error_response
from gateway.server.settings import Settings

PROTECTED_PREFIX = "/api"
MAX_TRACKED_CLIENTS = 10_000  # buckets kept; the least recently seen are forgotten beyond


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def presented_key(headers: Headers) -> str | None:
    """The key from `X-API-Key`, or from `Authorization: Bearer <key>`."""
    if key := headers.get("x-api-key"):
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(key: str, keys: list[str]) -> bool:
    """Constant-time: every configured key is compared, whatever matches first."""
    given = key.encode()
    return sum(hmac.compare_digest(given, k.encode()) for k in keys) > 0


def key_id(key: str) -> str:
    """A short, non-reversible name for a key: safe in logs and as a bucket name."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


OPEN_TENANT = "public"  # without API keys every caller is one tenant


def tenant_of(headers: Headers, api_keys: list[str]) -> str:
    """Whose jobs and reviews a request reaches: its API key's non-reversible id (the access
    middleware has checked the key), or OPEN_TENANT on a gateway without keys."""
    key = presented_key(headers)
    return key_id(key) if api_keys and key else OPEN_TENANT


def peer(scope: Scope) -> str:
    """The client's address: the peer's, or X-Forwarded-For's when uvicorn was told the peer
    is a trusted proxy (Settings.forwarded_allow_ips) and rewrote scope["client"]."""
    return "ip:" + (scope.get("client") or ("unknown", 0))[0]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate_per_s = per_minute / 60.0
        self.burst = burst
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def wait_s(self, client: str, now: float | None = None) -> float:
        """0 when `client` may go now (a token is taken); else seconds until it may."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        self._buckets[client] = bucket  # most recently seen last
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


class AccessControl:
    """ASGI middleware: 401 without a valid key (when keys are set), 429 beyond the rate."""

    def __init__(self, app: ASGIApp, keys: list[str], limiter: RateLimiter | None) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        error = self.refusal(scope)
        if error is None:
            await self.app(scope, receive, send)
        else:
            await error_response(error)(scope, receive, send)

    def refusal(self, scope: Scope) -> ApiError | None:
        key = presented_key(Headers(scope=scope))
        if self.keys:
            if key is None or not key_matches(key, self.keys):
                return ApiError(
                    "unauthorized",
                    "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
                    {"WWW-Authenticate": "Bearer"},
                )
            client = key_id(key)
        else:
            client = peer(scope)
        scope.setdefault("state", {})["client"] = client  # for the request log line
        if self.limiter and (wait := self.limiter.wait_s(client)) > 0:
            return ApiError(
                "rate_limited",
                "too many requests for this API key; retry later",
                {"Retry-After": str(math.ceil(wait))},
            )
        return None


def install_access(app: FastAPI, settings: Settings) -> None:
    """Keys and rate limits, innermost of the middlewares (after request ids)."""
    limiter = (
        RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute > 0
        else None
    )
    app.state.rate_limiter = limiter  # the live socket counts its messages in the same buckets
    if settings.api_keys or limiter:
        app.add_middleware(AccessControl, keys=settings.api_keys, limiter=limiter)


DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_allowed(headers: Headers, allowed: list[str]) -> bool:
    """A WebSocket handshake's Origin (browsers send it; CORS does not guard sockets): none
    (not a browser), the gateway's own (host and port those of the Host header), or one of
    the allowed origins (cors_origins; * for any)."""
    origin = headers.get("origin")
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return True
    try:
        parts = urlsplit(origin)
        own = urlsplit("//" + headers.get("host", ""))
        origin_host, origin_port = parts.hostname, parts.port
        host, port = own.hostname, own.port
    except ValueError:
        return False  # a malformed Origin or Host: not the gateway's own
    if origin_host is None or origin_host != host:
        return False
    default = DEFAULT_PORTS.get(parts.scheme.lower())
    return (origin_port or default) == (port or default)


def install_cors(app: FastAPI, settings: Settings) -> None:
    """CORS outermost, so a browser's preflight is answered before keys are asked for."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )
