"""preprocess/credentials.py: content credentials read from signed media made here (JPEG, PNG,
WebP, a shared MP4 clip and a MOV remuxed from it by PyAV), altered files, hostile bytes, trust."""

# ruff: noqa: F811 — the authority fixture is imported from credentials_support, then used

import http.server
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from preprocess.credentials import (
    MAX_ACTIONS,
    UNTRUSTED,
    ContentCredentials,
    CredentialPolicy,
    read_credentials,
)
from preprocess.media import UnsupportedMedia, sniff
from tests.credentials_support import (
    AI_GENERATED,
    CAMERA,
    CREATED_AT,
    Authority,
    altered,
    authority,  # noqa: F401 — a fixture
    image_bytes,
    remux_mov,
    write,
)
from tests.stack import REAL_CLIP, serve_http


def read(path: Path, policy: CredentialPolicy = UNTRUSTED) -> ContentCredentials | None:
    return read_credentials(path, sniff(path), policy)


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_camera_capture_reads_back_valid_and_not_ai(
    authority: Authority, tmp_path: Path, fmt: str, mime: str
) -> None:
    path = write(tmp_path, f"camera.{fmt.lower()}", authority.sign(image_bytes(fmt), mime))
    found = read(path)
    assert found is not None
    assert found.state == "valid"
    assert (found.signer, found.issuer) == ("Test Camera", "Test Authority")
    assert found.claim_generator == "credentials-test/1.0"
    assert found.created == CREATED_AT
    assert [(a.action, a.digital_source_type) for a in found.actions] == [("c2pa.created", CAMERA)]
    assert not found.ai_generated
    assert found.failures == ()


def test_ai_generated_webp(authority: Authority, tmp_path: Path) -> None:
    signed = authority.sign(image_bytes("WEBP"), "image/webp", AI_GENERATED)
    found = read(write(tmp_path, "ai.webp", signed))
    assert found is not None and found.state == "valid" and found.ai_generated


def test_composite_with_ai_is_ai_generated(authority: Authority, tmp_path: Path) -> None:
    composite = AI_GENERATED.replace("trained", "compositeWithTrained")
    found = read(write(tmp_path, "c.jpg", authority.sign(image_bytes(), "image/jpeg", composite)))
    assert found is not None and found.ai_generated


def test_altered_after_signing_is_invalid(authority: Authority, tmp_path: Path) -> None:
    signed = authority.sign(image_bytes(), "image/jpeg", AI_GENERATED)
    found = read(write(tmp_path, "edited.jpg", altered(signed)))
    assert found is not None
    assert found.state == "invalid"
    assert "assertion.dataHash.mismatch" in found.failures
    assert found.ai_generated  # what it declares is still reported, not believed


def test_trust_anchors_make_it_trusted_and_only_theirs(authority: Authority, tmp_path: Path):
    path = write(tmp_path, "camera.jpg", authority.sign(image_bytes(), "image/jpeg"))
    assert read(path, CredentialPolicy(authority.anchors)).state == "trusted"
    stranger = CredentialPolicy(Authority.made("Another Root").anchors)
    assert read(path, stranger).state == "valid"  # untrusted, not broken


def test_bad_trust_anchors_are_refused_at_startup() -> None:
    CredentialPolicy().check()
    with pytest.raises(ValueError, match="no PEM certificate"):
        CredentialPolicy("junk").check()
    with pytest.raises(ValueError, match="trust anchors"):
        CredentialPolicy(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        ).check()


def test_signed_mp4_and_mov(authority: Authority, tmp_path: Path) -> None:
    """A shared clip signed in tmp (never written into ../shared), and the same clip as MOV."""
    signed = authority.sign(REAL_CLIP.read_bytes(), "video/mp4", AI_GENERATED)
    found = read(write(tmp_path, "clip.mp4", signed))
    assert found is not None and found.state == "valid" and found.ai_generated
    assert read(write(tmp_path, "edited.mp4", altered(signed))).state == "invalid"
    mov = remux_mov(REAL_CLIP, tmp_path / "clip.mov")
    assert sniff(mov) == "mov"
    found = read(write(tmp_path, "signed.mov", authority.sign(mov.read_bytes(), "video/quicktime")))
    assert found is not None and found.state == "valid" and not found.ai_generated


def test_no_credentials_is_none(tmp_path: Path) -> None:
    assert read(write(tmp_path, "plain.jpg", image_bytes())) is None
    assert read(REAL_CLIP) is None
    # formats C2PA is not read for here never reach the library
    assert read_credentials(REAL_CLIP, "mkv", UNTRUSTED) is None


def test_hostile_bytes_never_raise(authority: Authority, tmp_path: Path) -> None:
    """Truncations and bit flips anywhere in signed files (manifest included): None or a
    reading, never an exception."""
    rng = random.Random(27)
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        signed = authority.sign(image_bytes(fmt), mime, AI_GENERATED)
        cases = [signed[: rng.randrange(8, len(signed))] for _ in range(15)]
        for _ in range(40):
            flipped = bytearray(signed)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            cases.append(bytes(flipped))
        for n, data in enumerate(cases):
            path = write(tmp_path, f"h{n}", data)
            try:
                fmt_found = sniff(path)
            except UnsupportedMedia:
                continue
            found = read_credentials(path, fmt_found, UNTRUSTED)
            assert found is None or found.state in ("invalid", "valid")


def test_remote_manifest_is_never_fetched(authority: Authority, tmp_path: Path) -> None:
    """A file that only names its manifest's URL (here on loopback) is read without fetching
    it: no credentials, and no request reaches the server."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(404)

    with serve_http(Handler) as port:
        url = f"http://127.0.0.1:{port}/manifest.c2pa"
        signed = authority.sign(image_bytes(), "image/jpeg", AI_GENERATED, remote_url=url)
        assert url.encode() in signed
        assert read(write(tmp_path, "remote.jpg", signed)) is None
    assert asked == []


def test_actions_are_bounded_but_all_judged(authority: Authority, tmp_path: Path) -> None:
    created = {"action": "c2pa.created", "digitalSourceType": CAMERA}
    many = [created] + [{"action": "c2pa.edited"}] * (MAX_ACTIONS + 8)
    ai_last = [*many, {"action": "c2pa.edited", "digitalSourceType": AI_GENERATED}]
    signed = authority.sign(image_bytes(), "image/jpeg", actions=ai_last)
    found = read(write(tmp_path, "many.jpg", signed))
    assert found is not None
    assert len(found.actions) == MAX_ACTIONS
    assert found.ai_generated


def test_concurrent_reads_agree(authority: Authority, tmp_path: Path) -> None:
    """The gateway reads from its worker threads at once: each read has its own context."""
    files = [
        write(tmp_path, "ai.jpg", authority.sign(image_bytes(), "image/jpeg", AI_GENERATED)),
        write(tmp_path, "edited.jpg", altered(authority.sign(image_bytes(), "image/jpeg"))),
        write(tmp_path, "plain.jpg", image_bytes()),
    ]
    alone = [read(f) for f in files]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda n: read(files[n % 3]) == alone[n % 3], range(240)))
    assert all(together) and alone[0] and alone[1] and alone[2] is None
