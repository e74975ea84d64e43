"""A real PostgreSQL server (Debian's `postgresql` package) for the review store's tests:
a private cluster in a temporary folder, on a free loopback port, with a password (as in
Kubernetes), killed after. PostgreSQL refuses to run as root: under root it runs as the
package's `postgres` user, in a folder of its own under /tmp (pytest's are root's alone)."""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.stack import free_port

USER, PASSWORD, DATABASE = "reviews", "reviews-test-password", "postgres"


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"no {name}: install Debian's postgresql (make system-packages)")
    return str(found[-1])


def as_server_user(args: list[str]) -> list[str]:
    """Under root, `args` as the postgres user; setpriv execs, so the process is the server's
    own and gets its signals."""
    if os.geteuid() != 0:
        return args
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The server's SQLAlchemy URL without the password (PASSWORD: the Secret's part)."""
    with tempfile.TemporaryDirectory(prefix="reviews-pg-") as folder:
        tmp = Path(folder)
        data, sockets = tmp / "data", tmp / "sockets"
        sockets.mkdir()
        (tmp / "pwfile").write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            for path in (tmp, sockets, tmp / "pwfile"):
                shutil.chown(path, "postgres")
        with _running(tmp, data, sockets) as url:
            yield url


@contextlib.contextmanager
def _running(tmp: Path, data: Path, sockets: Path) -> Iterator[str]:
    subprocess.run(
        as_server_user([pg_bin("initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                        f"--pwfile={tmp / 'pwfile'}", "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        as_server_user([pg_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                        "-k", str(sockets), "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(
                    host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname=DATABASE
                ).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline and process.poll() is None, "postgres not up"
                time.sleep(0.2)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for pooled connections).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
