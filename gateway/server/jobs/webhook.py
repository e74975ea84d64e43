"""The finished job POSTed to its callback_url, signed the way Stripe signs its webhooks.

Headers: `Webhook-Timestamp: <unix seconds>` and
`Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
A receiver recomputes the HMAC over the raw body, compares in constant time
and refuses old timestamps (replays). Loopback, private, link-local and other
non-public addresses are refused (SSRF) unless the deployment allows them: the URL goes
through preprocess/egress.py (read strictly, resolved once, every address checked, the
POST sent to the checked address, no redirect followed).
"""

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import replace

from gateway.server.errors import ApiError
from gateway.server.settings import Settings
from preprocess.egress import BadUrl, EgressPolicy, Target, Unreachable, UrlRefused, networks

SIGNATURE_HEADER = "Webhook-Signature"
TIMESTAMP_HEADER = "Webhook-Timestamp"
USER_AGENT = "deepfake-gateway-webhook/1"


def signature(secret: str | Sequence[str], timestamp: str, body: bytes) -> str:
    """`v1=<hex>`, one per secret, comma-separated: while a secret is rotated a webhook
    carries a signature for the new and the old one (gateway/README.md, Jobs)."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    signed = timestamp.encode() + b"." + body
    return ",".join(
        "v1=" + hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets
    )


def verify(secret: str, timestamp: str, body: bytes, header: str, tolerance_s: float) -> bool:
    """What a receiver does (the tests' receiver uses it): fresh, and one of the header's
    `v1=` signatures is the one `secret` makes."""
    fresh = abs(time.time() - float(timestamp)) <= tolerance_s
    expected = signature(secret, timestamp, body)
    given = [part.strip() for part in header.split(",")]
    return fresh and sum(hmac.compare_digest(expected, part) for part in given) > 0


def bad_callback(message: str) -> ApiError:
    return ApiError("invalid_callback_url", message)


def callback_policy(settings: Settings) -> EgressPolicy:
    """Where callbacks may go: http(s), public addresses or egress_allow_networks (every
    address with jobs_allow_private_callbacks), through egress_proxy if set."""
    return EgressPolicy(
        **settings.egress_options(settings.jobs_allow_private_callbacks),
        timeout_s=settings.jobs_webhook_timeout_s,
        user_agent=USER_AGENT,
    )


def check_callback_url(
    url: str, allow_private: bool, *, egress: EgressPolicy | None = None
) -> Target:
    """422 unless `url` is http(s) to a host whose every address is public (or allowed);
    the checked address to connect to. Whether the host does not resolve or resolves to a
    refused address is one answer (the log tells which): no map of the network."""
    policy = egress or EgressPolicy(allowed_networks=networks((), everything=allow_private))
    try:
        return policy.resolve(url)
    except (BadUrl, UrlRefused) as exc:
        raise bad_callback(f"callback_url: {exc}") from None
    except Unreachable:
        raise bad_callback(
            "callback_url's host does not resolve to an address the gateway may reach"
        ) from None


def deliver(
    url: str,
    body: bytes,
    secret: str | Sequence[str],
    timeout_s: float,
    allow_private: bool,
    *,
    egress: EgressPolicy | None = None,
) -> None:
    """One attempt; raises on a refused address, a network error or a non-2xx answer
    (a redirect included: its target was never checked). The host is resolved and checked
    again now (DNS may have changed since the submit) and the POST goes to that address."""
    policy = replace(
        egress or EgressPolicy(allowed_networks=networks((), everything=allow_private)),
        timeout_s=timeout_s,
    )
    target = check_callback_url(url, allow_private, egress=policy)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        "User-Agent": USER_AGENT,
    }
    with policy.client() as client:
        response = policy.send(client, "POST", target, headers, body)
        response.close()
    response.raise_for_status()
