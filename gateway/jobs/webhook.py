"""The finished job POSTed to its callback_url, signed the way Stripe signs its webhooks.

Headers: `Webhook-Timestamp: <unix seconds>` and
`Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
A receiver recomputes the HMAC over the raw body, compares in constant time
and refuses old timestamps (replays). Loopback, private, link-local and other
non-public addresses are refused (SSRF) unless the deployment allows them.
"""

import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx

from gateway.errors import ApiError

SIGNATURE_HEADER = "Webhook-Signature"
TIMESTAMP_HEADER = "Webhook-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str, tolerance_s: float) -> bool:
    """What a receiver does (the tests' receiver uses it)."""
    fresh = abs(time.time() - float(timestamp)) <= tolerance_s
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


def bad_callback(message: str) -> ApiError:
    return ApiError(422, "invalid_callback_url", message)


def check_callback_url(url: str, allow_private: bool) -> None:
    """422 unless `url` is http(s) to a host whose every address is public (or allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_callback("callback_url must be an http or https URL with a host")
    if len(url) > 2048:
        raise bad_callback("callback_url is longer than 2048 characters")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise bad_callback(f"callback_url's host does not resolve: {exc}") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise bad_callback(
                f"callback_url resolves to a non-public address ({address}); "
                "refused unless GATEWAY_JOBS_ALLOW_PRIVATE_CALLBACKS is set"
            )


def deliver(url: str, body: bytes, secret: str, timeout_s: float, allow_private: bool) -> None:
    """One attempt; raises on a refused address, a network error or a non-2xx answer."""
    check_callback_url(url, allow_private)  # again: DNS may have changed since the submit
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        "User-Agent": "deepfake-gateway-webhook/1",
    }
    # No redirects: a redirect could lead to an address the check above refused.
    response = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
    response.raise_for_status()
