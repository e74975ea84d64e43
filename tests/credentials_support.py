"""Media signed with content credentials (C2PA) at test time, offline: a self-made root and
an ES256 leaf it issues (emailProtection key usage, key identifiers, a country in the subject:
what c2pa-rs asks of a signing certificate), signed through the library's Builder and Signer.
Nothing here is committed as a binary: every file is made in the test's tmp dir."""

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import av
import c2pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from tests.egress_support import TestCa

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_GENERATED = IPTC + "trainedAlgorithmicMedia"
CAMERA = IPTC + "digitalCapture"
CREATED_AT = "2026-01-02T03:04:05Z"
GENERATOR = {"name": "credentials-test", "version": "1.0"}


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Authority"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """A root and the signer it issued; `anchors` is the root as the gateway's setting reads it."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    signer_name: str = "Test Camera"

    @classmethod
    def made(cls, root_name: str = "Test Root") -> "Authority":
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        root = (
            _builder(_name(root_name), _name(root_name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, root)

    @property
    def anchors(self) -> str:
        return _pem(self.root).decode()

    @cached_property
    def _leaf(self) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        leaf = (
            _builder(_name(self.signer_name), self.root.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA256())
        )
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _pem(leaf) + _pem(self.root), private

    def sign(
        self,
        media: bytes,
        mime: str,
        source_type: str = CAMERA,
        actions: list[dict] | None = None,
        remote_url: str | None = None,
    ) -> bytes:
        """`media` with a manifest whose actions (by default one, c2pa.created) declare
        `source_type`; with `remote_url`, the manifest is kept there, the file only names it."""
        chain, key = self._leaf
        created = {"action": "c2pa.created", "digitalSourceType": source_type, "when": CREATED_AT}
        manifest = {
            "claim_generator_info": [GENERATOR],
            "title": "test media",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": actions or [created]}}],
        }
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None)
        out = io.BytesIO()
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(json.dumps(manifest)) as b:
            if remote_url:
                b.set_no_embed()
                b.set_remote_url(remote_url)
            b.sign(signer, mime, io.BytesIO(media), out)
        return out.getvalue()


@pytest.fixture(scope="module")
def authority() -> Authority:
    """One signing authority per test module (each makes its own keys: slow to make)."""
    return Authority.made()


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """The test CA's certificate scaffolding, plus the subject key identifier C2PA asks for."""
    return TestCa.builder(subject, issuer, public).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(public), critical=False
    )


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (96, 64)) -> bytes:
    """A small faceless picture in Pillow's `fmt` (a gradient, so JPEG has data to hash)."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def altered(signed: bytes) -> bytes:
    """`signed` edited after signing: one byte of its last pixels changed, manifest intact."""
    edited = bytearray(signed)
    edited[-64] ^= 0xFF
    return bytes(edited)


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def remux_mov(clip: Path, out: Path) -> Path:
    """`clip`'s video stream copied, not re-encoded, into a QuickTime (MOV) file."""
    with av.open(str(clip)) as source, av.open(str(out), "w", format="mov") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return out
