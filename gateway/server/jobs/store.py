"""Where jobs and their items are recorded: SQLite beside the local queue, Redis in a cluster.

A job is a record (owner, options, callback, cancelled, finished) and one
document per item (file, status, attempts, heartbeat, result or error). Every
change to an item is atomic (a SQLite transaction, a Redis WATCH/MULTI), so two
workers, or a worker and the recovery sweep, never both move the same item.
"""

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Literal

import redis

Doc = dict
Change = Callable[[Doc], Doc | None]  # the item's new document, or None: leave it
TERMINAL = frozenset({"done", "failed", "cancelled"})
Full = Literal["owner", "all"]  # which cap of unfinished jobs a reservation found full


class JobStore(ABC):
    """Job records. `retention_s` after a job finished, it is gone (404)."""

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def reserve(
        self, job_id: str, owner: str, per_owner: int, total: int, ttl_s: float
    ) -> Full | None:
        """Hold a place for a job about to be uploaded, atomically against every gateway:
        None when taken, else the cap found full (unfinished jobs and places held, of the
        owner or of everyone). `create` turns it into the job, `release` frees it; a place
        a gateway never turned or freed (it died) lapses after `ttl_s`."""

    @abstractmethod
    def release(self, job_id: str, owner: str) -> None: ...

    @abstractmethod
    def create(self, job: Doc, items: list[Doc]) -> None:
        """The job and its items, in the place `reserve` held for it."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """The job, its items and its Idempotency-Key gone now (404 after)."""

    @abstractmethod
    def job(self, job_id: str) -> Doc | None:
        """The job's record with its items under "items"; None when unknown or expired."""

    @abstractmethod
    def owned(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """The owner's job ids, newest first, and how many there are."""

    @abstractmethod
    def update_item(self, job_id: str, n: int, change: Change) -> Doc | None:
        """Apply `change` atomically; the new document, or None when nothing changed."""

    @abstractmethod
    def cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def mark_finished(self, job_id: str) -> bool:
        """True for the first caller only: the one that sends the webhook."""

    @abstractmethod
    def unfinished(self) -> list[str]:
        """Every job not yet finished (the recovery sweep reads them)."""

    @abstractmethod
    def remember_key(self, owner: str, key: str, job_id: str) -> str:
        """The job already created under this Idempotency-Key, or `job_id` now recorded."""

    @abstractmethod
    def forget_key(self, owner: str, key: str) -> None: ...

    @abstractmethod
    def purge(self) -> list[str]:
        """Delete jobs past their retention; their ids."""

    def expired(self, job: Doc) -> bool:
        finished = job.get("finished")
        return finished is not None and finished + self.retention_s <= time.time()


class SqliteJobStore(JobStore):
    """One SQLite file; a connection per call (cheap), WAL so readers never wait for writers."""

    SCHEMA = (
        "create table if not exists jobs (id text primary key, owner text not null, "
        "created real not null, finished real, cancelled integer not null default 0, "
        "doc text not null)",
        "create index if not exists jobs_owner on jobs (owner, created)",
        "create table if not exists items (job_id text not null, n integer not null, "
        "doc text not null, primary key (job_id, n))",
        "create table if not exists idempotency (owner text not null, key text not null, "
        "job_id text not null, created real not null, primary key (owner, key))",
        "create index if not exists jobs_unfinished on jobs (finished)",
        "create table if not exists reservations (job_id text primary key, "
        "owner text not null, expires real not null)",
    )

    def __init__(self, path: Path, retention_s: float) -> None:
        super().__init__(retention_s)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("pragma journal_mode=wal")
            for statement in self.SCHEMA:
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def reserve(
        self, job_id: str, owner: str, per_owner: int, total: int, ttl_s: float
    ) -> Full | None:
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("begin immediate")  # one writer: two gateways never count the same room
            try:
                db.execute("delete from reservations where expires <= ?", (now,))
                (mine,) = db.execute(
                    "select (select count(*) from jobs where owner = ? and finished is null)"
                    " + (select count(*) from reservations where owner = ?)",
                    (owner, owner),
                ).fetchone()
                (everyone,) = db.execute(
                    "select (select count(*) from jobs where finished is null)"
                    " + (select count(*) from reservations)"
                ).fetchone()
                full: Full | None = (
                    "owner" if mine >= per_owner else "all" if everyone >= total else None
                )
                if full is None:
                    db.execute(
                        "insert into reservations values (?, ?, ?)", (job_id, owner, now + ttl_s)
                    )
            finally:
                db.execute("commit")
        return full

    def release(self, job_id: str, owner: str) -> None:
        with closing(self._connect()) as db:
            db.execute("delete from reservations where job_id = ?", (job_id,))

    def create(self, job: Doc, items: list[Doc]) -> None:
        with closing(self._connect()) as db:
            db.execute("begin immediate")
            db.execute("delete from reservations where job_id = ?", (job["id"],))
            db.execute(
                "insert into jobs (id, owner, created, doc) values (?, ?, ?, ?)",
                (job["id"], job["owner"], job["created"], json.dumps(job)),
            )
            db.executemany(
                "insert into items (job_id, n, doc) values (?, ?, ?)",
                [(job["id"], n, json.dumps(item)) for n, item in enumerate(items)],
            )
            db.execute("commit")

    def job(self, job_id: str) -> Doc | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "select doc, finished, cancelled from jobs where id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            items = db.execute(
                "select doc from items where job_id = ? order by n", (job_id,)
            ).fetchall()
        job = json.loads(row[0]) | {"finished": row[1], "cancelled": bool(row[2])}
        if self.expired(job):
            return None
        return job | {"items": [json.loads(doc) for (doc,) in items]}

    def owned(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        before = time.time() - self.retention_s
        live = "owner = ? and (finished is null or finished > ?)"
        with closing(self._connect()) as db:
            ids = db.execute(
                f"select id from jobs where {live} order by created desc limit ? offset ?",
                (owner, before, limit, offset),
            ).fetchall()
            (total,) = db.execute(
                f"select count(*) from jobs where {live}", (owner, before)
            ).fetchone()
        return [i for (i,) in ids], total

    def update_item(self, job_id: str, n: int, change: Change) -> Doc | None:
        with closing(self._connect()) as db:
            db.execute("begin immediate")
            row = db.execute(
                "select doc from items where job_id = ? and n = ?", (job_id, n)
            ).fetchone()
            new = None if row is None else change(json.loads(row[0]))
            if new is not None:
                db.execute(
                    "update items set doc = ? where job_id = ? and n = ?",
                    (json.dumps(new), job_id, n),
                )
            db.execute("commit")
        return new

    def cancel(self, job_id: str) -> None:
        with closing(self._connect()) as db:
            db.execute("update jobs set cancelled = 1 where id = ?", (job_id,))

    def mark_finished(self, job_id: str) -> bool:
        with closing(self._connect()) as db:
            cursor = db.execute(
                "update jobs set finished = ? where id = ? and finished is null",
                (time.time(), job_id),
            )
            return cursor.rowcount == 1

    def unfinished(self) -> list[str]:
        with closing(self._connect()) as db:
            return [i for (i,) in db.execute("select id from jobs where finished is null")]

    def delete(self, job_id: str) -> None:
        with closing(self._connect()) as db:
            db.execute("begin immediate")
            for table, column in (("items", "job_id"), ("jobs", "id"), ("idempotency", "job_id")):
                db.execute(f"delete from {table} where {column} = ?", (job_id,))
            db.execute("commit")

    def remember_key(self, owner: str, key: str, job_id: str) -> str:
        with closing(self._connect()) as db:
            db.execute("begin immediate")
            db.execute(
                "delete from idempotency where owner = ? and key = ? and created <= ?",
                (owner, key, time.time() - self.retention_s),
            )
            db.execute(
                "insert or ignore into idempotency values (?, ?, ?, ?)",
                (owner, key, job_id, time.time()),
            )
            (known,) = db.execute(
                "select job_id from idempotency where owner = ? and key = ?", (owner, key)
            ).fetchone()
            db.execute("commit")
        return known

    def forget_key(self, owner: str, key: str) -> None:
        with closing(self._connect()) as db:
            db.execute("delete from idempotency where owner = ? and key = ?", (owner, key))

    def purge(self) -> list[str]:
        before = time.time() - self.retention_s
        with closing(self._connect()) as db:
            db.execute("begin immediate")
            ids = [
                i
                for (i,) in db.execute(
                    "select id from jobs where finished is not null and finished <= ?", (before,)
                )
            ]
            db.executemany("delete from items where job_id = ?", [(i,) for i in ids])
            db.executemany("delete from jobs where id = ?", [(i,) for i in ids])
            db.execute("delete from idempotency where created <= ?", (before,))
            db.execute("commit")
        return ids


# KEYS: the owner's job ids, the unfinished job ids, every reservation, the owner's
# reservations (sorted sets scored by when they lapse). ARGV: job id, now, lapses at, the
# owner's cap, the cap of all. One script: Redis runs it alone, so no two gateways both
# take the last place.
RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[2])
local mine = redis.call('ZCARD', KEYS[4])
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  mine = mine + redis.call('SISMEMBER', KEYS[2], id)
end
if mine >= tonumber(ARGV[4]) then return 'owner' end
if redis.call('SCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return 'all'
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return false
"""


class RedisJobStore(JobStore):
    """A hash per job (its record and one field per item); Redis expires finished jobs."""

    PREFIX = "deepfake:jobs:"

    def __init__(self, url: str, retention_s: float) -> None:
        super().__init__(retention_s)
        self.redis = redis.Redis.from_url(url)
        self._reserve = self.redis.register_script(RESERVE)

    def _key(self, job_id: str) -> str:
        return f"{self.PREFIX}job:{job_id}"

    def _owner(self, owner: str) -> str:
        return f"{self.PREFIX}owner:{owner}"

    def _reservations(self, owner: str | None = None) -> str:
        return f"{self.PREFIX}reserved" + (f":{owner}" if owner is not None else "")

    def _idempotency(self, owner: str, key: str) -> str:
        return f"{self.PREFIX}idempotency:{owner}:{key}"

    def reserve(
        self, job_id: str, owner: str, per_owner: int, total: int, ttl_s: float
    ) -> Full | None:
        now = time.time()
        keys = [
            self._owner(owner),
            f"{self.PREFIX}unfinished",
            self._reservations(),
            self._reservations(owner),
        ]
        full = self._reserve(keys=keys, args=[job_id, now, now + ttl_s, per_owner, total])
        return full.decode() if full else None  # type: ignore[return-value]

    def release(self, job_id: str, owner: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.zrem(self._reservations(), job_id)
            pipe.zrem(self._reservations(owner), job_id)
            pipe.execute()

    def create(self, job: Doc, items: list[Doc]) -> None:
        fields = {"doc": json.dumps(job)} | {
            f"item:{n}": json.dumps(item) for n, item in enumerate(items)
        }
        with self.redis.pipeline() as pipe:  # MULTI: the reservation becomes the job at once
            pipe.hset(self._key(job["id"]), mapping=fields)
            pipe.zadd(self._owner(job["owner"]), {job["id"]: job["created"]})
            pipe.sadd(f"{self.PREFIX}unfinished", job["id"])
            pipe.zrem(self._reservations(), job["id"])
            pipe.zrem(self._reservations(job["owner"]), job["id"])
            pipe.execute()

    def delete(self, job_id: str) -> None:
        raw = self.redis.hget(self._key(job_id), "doc")
        if raw is None:
            return
        job = json.loads(raw)
        with self.redis.pipeline() as pipe:
            pipe.delete(self._key(job_id))
            pipe.zrem(self._owner(job["owner"]), job_id)
            pipe.srem(f"{self.PREFIX}unfinished", job_id)
            pipe.execute()
        if job.get("idempotency_key"):  # unless the key already names a newer job
            name = self._idempotency(job["owner"], job["idempotency_key"])
            if self.redis.get(name) == job_id.encode():
                self.redis.delete(name)

    def job(self, job_id: str) -> Doc | None:
        fields = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(job_id)).items()}
        if "doc" not in fields:
            return None
        finished = float(fields["finished"]) if "finished" in fields else None
        job = json.loads(fields["doc"]) | {
            "finished": finished,
            "cancelled": "cancelled" in fields,
        }
        if self.expired(job):
            return None
        count = sum(1 for k in fields if k.startswith("item:"))
        return job | {"items": [json.loads(fields[f"item:{n}"]) for n in range(count)]}

    def owned(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        key = self._owner(owner)
        # Expired jobs leave their id in the index: drop those first.
        ids = [i.decode() for i in self.redis.zrange(key, 0, -1)]
        gone = [i for i in ids if not self.redis.exists(self._key(i))]
        if gone:
            self.redis.zrem(key, *gone)
        page = self.redis.zrevrange(key, offset, offset + limit - 1)
        return [i.decode() for i in page], self.redis.zcard(key)

    def update_item(self, job_id: str, n: int, change: Change) -> Doc | None:
        key, field = self._key(job_id), f"item:{n}"

        def transaction(pipe: redis.client.Pipeline) -> Doc | None:
            raw = pipe.hget(key, field)
            new = None if raw is None else change(json.loads(raw))
            pipe.multi()
            if new is not None:
                pipe.hset(key, field, json.dumps(new))
            return new

        return self.redis.transaction(transaction, key, value_from_callable=True)

    def cancel(self, job_id: str) -> None:
        self.redis.hset(self._key(job_id), "cancelled", "1")

    def mark_finished(self, job_id: str) -> bool:
        key = self._key(job_id)
        if not self.redis.hsetnx(key, "finished", repr(time.time())):
            return False
        with self.redis.pipeline() as pipe:
            pipe.srem(f"{self.PREFIX}unfinished", job_id)
            pipe.expire(key, max(1, round(self.retention_s)))
            pipe.execute()
        return True

    def unfinished(self) -> list[str]:
        return [i.decode() for i in self.redis.smembers(f"{self.PREFIX}unfinished")]

    def remember_key(self, owner: str, key: str, job_id: str) -> str:
        name = self._idempotency(owner, key)
        self.redis.set(name, job_id, nx=True, ex=max(1, round(self.retention_s)))
        known = self.redis.get(name)
        return known.decode() if known else job_id

    def forget_key(self, owner: str, key: str) -> None:
        self.redis.delete(self._idempotency(owner, key))

    def purge(self) -> list[str]:
        return []  # Redis expires finished jobs itself (mark_finished sets the TTL)
