"""Media by URL: `/api/detect`'s file or a job's files fetched from HTTP(S) URLs (presigned
object-store URLs included) instead of uploaded, so a large job never crosses the edge as
one body.

The request is JSON, `{"url": …}` (/api/detect) or `{"urls": […]}` (/api/jobs), the query
options as for an upload. Every URL is checked (steps 1-2 of preprocess/egress.py: no
network) before the first byte is fetched; each is then fetched through that module
(resolved once, every address checked, the connection pinned, redirects checked hop by
hop) into the same spool as an uploaded file, under the same caps (`file_too_large`,
`job_too_large` at the first byte over), at the same pace (408) and in the same upload
slot. What follows (sniffing, admission, the analysis, the job's queue) is the upload's.
"""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Protocol
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.multipart import parse_options_header

from gateway.server.errors import ApiError, from_media_error
from gateway.server.settings import Settings
from gateway.server.uploads import (
    Form,
    Pace,
    Spool,
    Upload,
    next_chunk,
    receive_files,
    safe_filename,
    too_large,
)
from preprocess.egress import MAX_URL, EgressPolicy, Unreachable, Url
from preprocess.media import MediaError

JSON_BODY_MAX = 256 * 1024  # a job's 50 URLs of 2048 characters, and room to spare
CHUNK = 1 << 16
MediaUrlText = Annotated[
    str,
    Field(
        max_length=MAX_URL,
        description="`https://` (presigned object-store URLs included; `http://` where "
        "GATEWAY_MEDIA_URL_SCHEMES allows it); fetched by the gateway under the upload's caps",
    ),
]


class UrlBody(Protocol):
    def all_urls(self) -> list[str]: ...


class MediaUrl(BaseModel):
    """/api/detect's JSON body: the media to fetch instead of an upload."""

    model_config = ConfigDict(extra="forbid")
    url: MediaUrlText

    def all_urls(self) -> list[str]:
        return [self.url]


class MediaUrls(BaseModel):
    """/api/jobs' JSON body: each URL one item of the job."""

    model_config = ConfigDict(extra="forbid")
    urls: list[MediaUrlText] = Field(min_length=1)

    def all_urls(self) -> list[str]:
        return list(self.urls)


def media_policy(settings: Settings) -> EgressPolicy:
    """Where media URLs may go: GATEWAY_MEDIA_URL_SCHEMES (https) and _HOSTS, public
    addresses or GATEWAY_EGRESS_ALLOW_NETWORKS, through GATEWAY_EGRESS_PROXY if set."""
    return EgressPolicy(
        schemes=frozenset(settings.media_url_schemes),
        hosts=frozenset(settings.media_url_hosts),
        **settings.egress_options(allow_private=False),
    )


def is_json(content_type: str | None) -> bool:
    kind, _ = parse_options_header(content_type)
    return kind == b"application/json"


async def receive_media(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    form: Form,
    spool: Spool,
    pace: Pace,
    body: type[MediaUrl] | type[MediaUrls],
    policy: EgressPolicy,
) -> list[Upload]:
    """The form's files as `receive_files` receives them, or, for a JSON body, the files its
    URLs name, fetched: on disk in `spool` either way (the caller removes them)."""
    if not is_json(content_type):
        return await receive_files(chunks, content_type, content_length, form, spool, pace)
    urls = (await read_body(chunks, content_length, body, pace)).all_urls()
    return await fetch_all(urls, form, spool, pace, policy)


async def read_body(
    chunks: AsyncIterator[bytes],
    content_length: str | None,
    body: type[MediaUrl] | type[MediaUrls],
    pace: Pace,
) -> UrlBody:
    """The JSON body, at most JSON_BODY_MAX bytes, read within the upload's deadline."""
    too_long = ApiError("invalid_request", f"a JSON body is at most {JSON_BODY_MAX >> 10} KiB")
    declared = content_length or ""
    if declared.isdigit() and int(declared) > JSON_BODY_MAX:
        raise too_long
    data = bytearray()
    try:
        async with asyncio.timeout(pace.timeout_s):
            async for chunk in chunks:
                data += chunk
                if len(data) > JSON_BODY_MAX:
                    raise too_long
    except TimeoutError:
        raise ApiError("upload_timeout", f"the body took over {pace.timeout_s:.0f} s") from None
    try:
        return body.model_validate_json(bytes(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError("invalid_request", problems) from None


def url_filename(url: Url) -> str:
    """The name a fetched file is shown by: the path's last segment (never the query, which
    may be a presigned URL's signature), else the host."""
    last = url.path.split("?", 1)[0].rsplit("/", 1)[-1]
    return safe_filename(unquote(last)) or url.host


class Fetch:
    """One request's URLs fetched one after another into `spool`, the form's caps counted
    over all of them and the pace over the whole (as a multipart body's files)."""

    def __init__(self, form: Form, spool: Spool, pace: Pace, policy: EgressPolicy) -> None:
        self.form, self.spool, self.pace, self.policy = form, spool, pace, policy
        self.written: list[Path] = []
        self.total = 0
        self.start = time.perf_counter()

    async def one(self, client: httpx.AsyncClient, url: Url) -> tuple[Path, int, str]:
        """(where, bytes, sha256) of one URL's body."""
        target = await asyncio.to_thread(self.policy.resolved, url)
        pins = {} if target.address is None else {url.host: target.address}
        target, response = await self.policy.aget(client, target, pins)
        try:
            self.refuse_declared(response)
            with self.spool.open(len(self.written)) as out:
                self.written.append(Path(out.name))
                size, digest = 0, hashlib.sha256()
                body = response.aiter_bytes(CHUNK)
                while chunk := await self.next(body, target.url.url):
                    size, self.total = size + len(chunk), self.total + len(chunk)
                    self.check(size)
                    out.write(chunk)
                    digest.update(chunk)
        finally:
            await response.aclose()
        return self.written[-1], size, digest.hexdigest()

    async def next(self, body: AsyncIterator[bytes], shown: str) -> bytes:
        try:
            return await next_chunk(body, self.start, self.total, self.pace)
        except StopAsyncIteration:
            return b""
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise Unreachable(f"reading {shown}: {exc!r}") from None

    def refuse_declared(self, response: httpx.Response) -> None:
        """A body declared over the caps is refused before a byte of it is read."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit():
            self.check(int(declared), int(declared) + self.total)

    def check(self, size: int, total: int | None = None) -> None:
        if size > self.form.file_bytes:
            raise too_large(self.form.file_bytes)
        if (self.total if total is None else total) > self.form.total:
            raise self.form.refusal()


async def fetch_all(
    urls: list[str], form: Form, spool: Spool, pace: Pace, policy: EgressPolicy
) -> list[Upload]:
    """Every URL checked (no network), then each fetched into `spool`; on any error nothing
    is left behind."""
    try:
        checked = [policy.check(url) for url in urls]
    except MediaError as exc:  # bad_url, url_refused: before any byte is fetched
        raise from_media_error(exc) from None
    if len(checked) > form.files:
        raise form.refusal()
    fetch = Fetch(form, spool, pace, policy)
    try:
        files = await fetch_within(fetch, checked)
    except BaseException:  # a cancelled request too
        spool.discard(fetch.written)
        raise
    seconds = time.perf_counter() - fetch.start
    return [
        Upload(path, url_filename(url), size, seconds, sha256)
        for url, (path, size, sha256) in zip(checked, files, strict=True)
    ]


async def fetch_within(fetch: Fetch, urls: list[Url]) -> list[tuple[Path, int, str]]:
    """The fetches, under the upload's deadline; the API's errors."""
    try:
        async with asyncio.timeout(fetch.pace.timeout_s), fetch.policy.async_client() as client:
            return [await fetch.one(client, url) for url in urls]
    except TimeoutError:
        timeout = fetch.pace.timeout_s
        raise ApiError("upload_timeout", f"the fetch took over {timeout:.0f} s") from None
    except MediaError as exc:  # stream_unreachable, with its cause in the log
        raise from_media_error(exc) from None
