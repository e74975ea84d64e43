"""Tenants stay apart (issue 24, findings 6 and 11).

6: without API keys every caller is one tenant, so the gateway serves open only on a
loopback address (`make run`), or where the operator says so (GATEWAY_ALLOW_OPEN);
the image's own settings without keys refuse to start.
11: each API key's webhooks are signed with that key's own secret (derived from the
master; two masters during a rotation), so one tenant cannot forge another's; the
queue's Redis wants a password, and its messages are JSON: a pickle planted in the
queue is refused by the real worker, never run.
"""

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.server.jobs import codec
from gateway.server.jobs.engine import Jobs, redis_url, webhook_secret_for_key, webhook_secrets
from gateway.server.jobs.webhook import signature, verify
from gateway.server.security import key_id
from gateway.server.serve import is_loopback, open_refusal
from tests.conftest import ROOT, free_port, gateway_process, gateway_settings
from tests.dockerfile import env_of
from tests.jobs_support import (
    BAD,
    REDIS_PASSWORD,
    Receiver,
    redis_server,
    submit,
    wait_job,
    worker_process,
)

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
MASTER, OLD_MASTER = "master-webhook-secret", "retiring-webhook-secret"
NO_TRITON = "127.0.0.1:1"  # settings only: never called


def no_triton() -> str:
    return f"127.0.0.1:{free_port()}"


# --- 6: open only on loopback, or when the operator says so --------------------------------


def test_loopback_is_told_from_every_other_host() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "192.168.1.5", "fe80::1"):
        assert not is_loopback(host), host


def test_open_is_refused_only_without_keys_on_a_public_address(tmp_path: Path) -> None:
    def refusal(**settings: object) -> str | None:
        return open_refusal(gateway_settings(NO_TRITON, tmp_path, **settings))

    assert refusal() is None  # `make run`: 127.0.0.1, no keys
    assert refusal(host="::1") is None
    reason = refusal(host="0.0.0.0")
    assert reason and "GATEWAY_API_KEYS" in reason and "GATEWAY_ALLOW_OPEN" in reason
    assert refusal(host="0.0.0.0", api_keys=[ALICE]) is None
    assert refusal(host="0.0.0.0", allow_open=True) is None


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A process in its own group (gateway.programs.local starts Triton under it), killed after."""
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def refused_start(args: list[str], tmp: Path, **settings: str) -> str:
    """The output of a gateway that must stop at once, non-zero; fails if it serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_PORT": str(free_port()), "GATEWAY_TRITON_URL": no_triton()}
    env |= {"GATEWAY_TMP_DIR": str(tmp), "GATEWAY_JOBS_DIR": str(tmp / "jobs")}
    env |= {f"GATEWAY_{k.upper()}": v for k, v in settings.items()}
    with process([sys.executable, "-m", *args], env) as proc:
        try:
            output, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{args} {settings} started (still running after 90 s)")
    assert proc.returncode == 2, output
    return output


@pytest.mark.stack
@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_gateway_without_keys_refuses_a_public_address(host: str, tmp_path: Path) -> None:
    output = refused_start(["gateway"], tmp_path, host=host)
    [event] = [json.loads(line) for line in output.splitlines() if "refusing" in line]
    assert event["level"] == "critical"
    assert "no GATEWAY_API_KEYS" in event["message"] and "GATEWAY_ALLOW_OPEN" in event["message"]


@pytest.mark.stack
def test_make_run_on_a_public_address_without_keys_stops_before_triton(tmp_path: Path) -> None:
    output = refused_start(["gateway.programs.local", "--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert "refusing to start" in output
    assert "Starting Triton" not in output


@pytest.mark.stack
def test_the_image_without_keys_refuses_to_start(tmp_path: Path) -> None:
    """The gateway image's own settings (deploy/docker/gateway.Dockerfile: 0.0.0.0)."""
    image = env_of(ROOT / "deploy/docker/gateway.Dockerfile")
    settings = {
        k.removeprefix("GATEWAY_").lower(): v
        for k, v in image.items()
        if k.startswith("GATEWAY_") and k not in ("GATEWAY_PORT", "GATEWAY_TMP_DIR")
    }
    assert settings["host"] == "0.0.0.0" and "api_keys" not in settings
    assert "refusing to start" in refused_start(["gateway"], tmp_path, **settings)


@pytest.mark.stack
def test_allowed_open_it_serves_and_says_so(tmp_path: Path) -> None:
    with gateway_process(no_triton(), tmp_path, host="0.0.0.0", allow_open="true") as gateway:
        jobs = httpx.get(gateway.url + "/api/jobs", timeout=30)
        assert jobs.status_code == 200  # open: no key needed
        log = gateway.log.read_text()
    [event] = [json.loads(line) for line in log.splitlines() if "the API is open" in line]
    assert event["level"] == "warning" and "GATEWAY_ALLOW_OPEN=true" in event["message"]


@pytest.mark.stack
def test_with_keys_a_public_address_serves_and_asks_for_a_key(tmp_path: Path) -> None:
    with gateway_process(no_triton(), tmp_path, host="0.0.0.0", api_keys=ALICE) as gateway:
        assert httpx.get(gateway.url + "/api/jobs", timeout=30).status_code == 401
        own = httpx.get(gateway.url + "/api/jobs", headers={"X-API-Key": ALICE}, timeout=30)
        assert own.status_code == 200
        assert "the API is open" not in gateway.log.read_text()


# --- 11: webhooks signed per key ----------------------------------------------------------


def test_each_key_has_its_own_webhook_secret(tmp_path: Path) -> None:
    settings = gateway_settings(NO_TRITON, tmp_path, jobs_webhook_secret=MASTER)
    alice, bob = webhook_secrets(settings, key_id(ALICE)), webhook_secrets(settings, key_id(BOB))
    assert alice == [webhook_secret_for_key(MASTER, ALICE)]
    assert alice != bob and MASTER not in alice + bob
    body, now = b'{"id":"j"}', str(int(time.time()))
    header = signature(alice, now, body)
    assert verify(alice[0], now, body, header, 300)
    assert not verify(bob[0], now, body, header, 300)  # Bob's secret: not Alice's webhook
    assert not verify(MASTER, now, body, header, 300)
    # Without keys, one tenant: the operator's own master signs.
    assert webhook_secrets(settings, "public") == [MASTER]


def test_a_rotation_signs_with_both_masters(tmp_path: Path) -> None:
    settings = gateway_settings(
        NO_TRITON, tmp_path, jobs_webhook_secret=MASTER, jobs_webhook_previous_secret=OLD_MASTER
    )
    secrets = webhook_secrets(settings, key_id(ALICE))
    assert secrets == [webhook_secret_for_key(m, ALICE) for m in (MASTER, OLD_MASTER)]
    body, now = b'{"id":"j"}', str(int(time.time()))
    header = signature(secrets, now, body)
    assert header.count("v1=") == 2
    for secret in secrets:  # a receiver still on the old secret, or already on the new one
        assert verify(secret, now, body, header, 300)
    for master in (MASTER, OLD_MASTER):
        assert not verify(webhook_secret_for_key(master, BOB), now, body, header, 300)


@pytest.mark.stack
def test_the_gateways_webhook_verifies_with_its_keys_secret_only(tmp_path: Path) -> None:
    """The real gateway (embedded worker, SQLite queue): Alice's job's webhook verifies
    with Alice's secrets (new and retiring master) and not with Bob's, nor the master."""
    settings = {
        "api_keys": f"{ALICE},{BOB}",
        "jobs_webhook_secret": MASTER,
        "jobs_webhook_previous_secret": OLD_MASTER,
        "jobs_allow_private_callbacks": "true",  # the receiver is on 127.0.0.1
    }
    alice_headers = {"X-API-Key": ALICE}
    with (
        Receiver().serving() as receiver,
        gateway_process(no_triton(), tmp_path, **settings) as gateway,
    ):
        files = [("notes.mp4", BAD["notes.mp4"])]  # fails undecoded: no Triton needed
        job = submit(gateway.url, files, alice_headers, callback_url=receiver.url).json()
        assert wait_job(gateway.url, job["id"], alice_headers, timeout=120)["status"] == "failed"
        assert receiver.received.wait(60), "no webhook delivered"
    [delivery] = receiver.deliveries
    stamp, header, body = delivery["signed"]
    assert json.loads(body)["id"] == job["id"]
    for master in (MASTER, OLD_MASTER):
        assert verify(webhook_secret_for_key(master, ALICE), stamp, body, header, 300)
        assert not verify(webhook_secret_for_key(master, BOB), stamp, body, header, 300)
        assert not verify(master, stamp, body, header, 300)


# --- 11: the queue: JSON messages, a Redis with a password ----------------------------------


def test_the_queue_codec_round_trips_our_tasks_only(tmp_path: Path) -> None:
    jobs = Jobs(gateway_settings(NO_TRITON, tmp_path))
    assert isinstance(jobs.huey.serializer, codec.JsonSerializer)
    task = jobs.analyze_item.s("a" * 32, 3)
    data = jobs.huey.serialize_task(task)
    assert json.loads(data)["name"] == codec.ANALYZE_ITEM
    assert json.loads(data)["args"] == ["a" * 32, 3]
    again = jobs.huey.deserialize_task(data)
    assert (again.name, again.args, again.id) == ("analyze_item", ("a" * 32, 3), task.id)
    hook = jobs.send_webhook.s("b" * 32)
    assert jobs.huey.deserialize_task(jobs.huey.serialize_task(hook)).retries == hook.retries
    with pytest.raises(TypeError):  # never written: an argument that is not ours
        jobs.huey.serialize_task(jobs.analyze_item.s("a", {"not": "an int"}))
    planted = [
        pickle.dumps(("anything",)),
        b'{"format":1,"id":"x","name":"os.system","eta":null,"retries":0,"retry_delay":0,'
        b'"retry_backoff":0,"priority":null,"args":["touch /tmp/x"]}',
        data.replace(b'["' + b"a" * 32 + b'",3]', b'["x","3"]'),  # "3" is not an int
        data[:-1] + b',"kwargs":{"a":1}}',
    ]
    for payload in planted:
        with pytest.raises(codec.RefusedMessage):
            jobs.huey.deserialize_task(payload)


def test_the_password_setting_goes_into_the_url(tmp_path: Path) -> None:
    def url(**settings: object) -> str:
        return redis_url(gateway_settings(NO_TRITON, tmp_path, **settings))

    assert url(jobs_redis_url="redis://redis:6379/0") == "redis://redis:6379/0"
    assert url(jobs_redis_url="redis://redis:6379/0", jobs_redis_password="p@ss/:") == (
        "redis://:p%40ss%2F%3A@redis:6379/0"
    )
    assert url(jobs_redis_url="redis://jobs@[::1]:6379/0", jobs_redis_password="pw") == (
        "redis://jobs:pw@[::1]:6379/0"
    )
    assert url(jobs_redis_url="redis://:inurl@redis/0", jobs_redis_password="pw") == (
        "redis://:inurl@redis/0"
    )


class Planted:
    """What someone who reaches Redis might push: unpickled, it creates `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def wait_log(path: Path, *words: str, timeout: float = 120) -> str:
    """The log once one of its lines has every word."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if any(all(w in line for w in words) for line in log.splitlines()):
            return log
        time.sleep(0.2)
    raise TimeoutError(f"{words} not in {path}: {path.read_text(errors='replace')[-3000:]}")


@pytest.mark.stack
def test_a_pickle_planted_in_redis_is_refused_by_the_worker(tmp_path: Path) -> None:
    """A real redis-server with a password, the real `python -m gateway.programs.worker` (password
    from GATEWAY_JOBS_REDIS_PASSWORD, as in Kubernetes): a planted pickle and a planted
    foreign task are dropped unrun; the worker's own message after them runs."""
    marker = tmp_path / "planted-code-ran"
    with redis_server(tmp_path) as url:
        bare = url.replace(f":{REDIS_PASSWORD}@", "")
        settings = {"jobs_redis_url": bare, "jobs_redis_password": REDIS_PASSWORD}
        settings |= {"jobs_dir": tmp_path / "jobs", "jobs_workers": 1}
        jobs = Jobs(gateway_settings(NO_TRITON, tmp_path, **settings))
        queue = jobs.huey.storage.queue_key
        client = redis.Redis.from_url(url)
        client.lpush(queue, pickle.dumps(Planted(marker)))
        foreign = {"format": 1, "id": "x", "name": "builtins.exec", "eta": None, "retries": 0}
        foreign |= {"retry_delay": 0, "retry_backoff": 0, "priority": None, "args": ["1"]}
        client.lpush(queue, json.dumps(foreign))
        ours = jobs.send_webhook.s("no-such-job")
        jobs.huey.enqueue(ours)  # after them in the queue (FIFO)
        with worker_process(no_triton(), tmp_path, **settings) as worker:
            log = wait_log(worker.log, ours.id, "executed in")
            assert worker.process.poll() is None, log
        assert client.llen(queue) == 0
    assert not marker.exists(), "the planted pickle ran in the worker"
    assert log.count("refused a job queue message") == 2, log


@pytest.mark.stack
def test_redis_refuses_a_client_without_the_password(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        bare = url.replace(f":{REDIS_PASSWORD}@", "")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(bare).lpush("huey.redis.deepfakejobs", b"x")
        assert redis.Redis.from_url(url).ping()
        settings = {"jobs_redis_url": bare, "jobs_dir": tmp_path / "jobs"}
        with worker_process(no_triton(), tmp_path, **settings) as worker:
            assert worker.process.wait(90) == 2
        log = worker.log.read_text()
        assert "refused this worker" in log and "GATEWAY_JOBS_REDIS_PASSWORD" in log
