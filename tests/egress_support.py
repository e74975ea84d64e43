"""Shared by the egress tests: a stub DNS server (rebinding on demand), a listener that
records who connects, a one-reply RTSP server and a test CA for HTTPS. Everything on
loopback: a "public" address is only ever an answer, never connected to."""

import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class StubDns:
    """A DNS server on 127.0.0.1 (UDP): the n-th A query for a name gets its n-th answer
    (the last one from then on); AAAA gets none; other names NXDOMAIN."""

    answers: dict[str, list[str]]
    queries: list[str] = field(default_factory=list)
    server: str = ""  # "127.0.0.1:PORT", for GATEWAY_EGRESS_DNS_SERVER

    @contextlib.contextmanager
    def serving(self) -> Iterator["StubDns"]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.server = f"127.0.0.1:{sock.getsockname()[1]}"
        thread = threading.Thread(target=self.serve, args=(sock,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            sock.close()

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            response = dns.message.make_response(query)
            if name not in self.answers:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                n = sum(1 for q in self.queries if q == name)
                self.queries.append(name)
                given = self.answers[name]
                address = given[min(n, len(given) - 1)]
                response.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", address))
            sock.sendto(response.to_wire(), peer)


@dataclass
class Listener:
    """A TCP listener that records every connection (and what it was sent first), answers
    nothing and closes: the place a test says must never be reached."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[bytes] = field(default_factory=list)

    @contextlib.contextmanager
    def serving(self) -> Iterator["Listener"]:
        def record(conn: socket.socket) -> None:
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(4096) or b"(connected)")
            except OSError:
                self.received.append(b"(connected)")

        with tcp_server(self.host, self.port, record) as port:
            self.port = port
            yield self


@contextlib.contextmanager
def tcp_server(
    host: str, port: int, on_connection: Callable[[socket.socket], None]
) -> Iterator[int]:
    """A TCP server on `host` handing each connection, one at a time, to `on_connection`
    (which may read and answer; the connection is closed after); its port."""
    server = socket.create_server((host, port))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                on_connection(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@contextlib.contextmanager
def rtsp_redirecting(location: str, host: str = "127.0.0.1") -> Iterator[int]:
    """An RTSP server whose every reply is `302 Moved` to `location`; its port."""

    def redirect(conn: socket.socket) -> None:
        conn.settimeout(2)
        with contextlib.suppress(OSError):
            request = conn.recv(4096).decode("latin-1")
            cseq = next(
                (line.split(":", 1)[1].strip() for line in request.split("\r\n")
                 if line.lower().startswith("cseq:")),
                "1",
            )  # fmt: skip
            reply = f"RTSP/1.0 302 Moved\r\nCSeq: {cseq}\r\nLocation: {location}\r\n\r\n"
            conn.sendall(reply.encode())

    with tcp_server(host, 0, redirect) as port:
        yield port


class TestCa:
    """A certificate authority made for one test (EC P-256, a day's validity) and the server
    certificates it signs: HTTPS on loopback that only a client given `bundle`
    (GATEWAY_EGRESS_CA_BUNDLE) trusts."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deepfake tests CA")])
        self.cert = (
            self.builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = folder / "ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def builder(
        subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def server(self, *names: str) -> ssl.SSLContext:
        """A server context whose certificate, signed by this CA, names `names` (DNS)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            self.builder(subject, self.cert.subject, key.public_key())
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        pem = self.folder / f"{names[0]}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        return context
