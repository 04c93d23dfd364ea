"""The store: every table and every SQL statement of tierbot.

SQLite in WAL mode through sqlite-utils by default; Postgres when opened with a
``postgresql://`` URL (``TIERBOT_DATABASE_URL``), through ``storage.postgres``, which runs these
same statements and the same migrations (``storage.schema``) and keeps every difference
between the two in one place. Writes that must be all-or-nothing (a job and its credit
reservation, a settlement) run inside ``BEGIN IMMEDIATE``, which takes the database's write
lock before reading (SQLite's own; on Postgres an advisory lock), so two processes or threads
reserving at once are serialised and can never both see the same remaining budget.

Calls are synchronous and short (sub-millisecond in WAL with ``synchronous=NORMAL``); the
asyncio core calls them directly rather than paying a thread hop per row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlite_utils import Database

from storage.postgres import PostgresDatabase, is_postgres_url
from storage.schema import STEPS, migrations

log = logging.getLogger(__name__)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id(nbytes: int = 4) -> str:
    """A short random id: 8 hex characters by default, short enough to type in a command."""
    return secrets.token_hex(nbytes)


class LimitReached(Exception):
    """A reservation would take one of its limits over (``index`` into the limits given,
    with what was already ``used``); the ledger says what that means."""

    def __init__(self, index: int, used: int) -> None:
        super().__init__(f"limit {index} reached ({used} used)")
        self.index = index
        self.used = used


#: How long a worker's claims outlive its last heartbeat (``TIERBOT_LEASE_S``).
DEFAULT_LEASE_S = 20.0


#: A row that would repeat a unique key, on either database.
_DUPLICATE = (sqlite3.IntegrityError, psycopg.IntegrityError)


class Store:
    """Repositories over one database connection (a SQLite file, or Postgres by URL).

    **Exactly once.** Every process that opens the store is a *worker* with a heartbeat
    (:meth:`heartbeat`, every third of ``lease_s``). Work is claimed by a worker: a job
    (``claim_job``), an inbound command or reaction (``claim_inbox``), a reply being posted
    (``claim_outbox``). A claim is held while its worker's heartbeat is younger than
    ``lease_s``; a killed process stops beating and loses its claims, so another process
    (or the same one restarted) takes the work over, while a live one is never doubled. A
    worker that stops cleanly retires (:meth:`retire`) and its claims free at once.
    """

    def __init__(self, location: Path | str, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        """Open (and migrate) the database at ``location``: a SQLite file path, ``:memory:``,
        or a ``postgresql://`` URL."""
        self.db: Any
        if is_postgres_url(location):
            self.db = PostgresDatabase(str(location))
            self.db.migrate(STEPS)
        else:
            if str(location) != ":memory:":
                Path(location).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(location), timeout=30.0, check_same_thread=False)
            self.db = Database(conn)
            _wal(self.db)
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # Under the write lock from the first statement: sqlite-utils reads, then writes,
            # and two processes starting together on a new file would both fail to upgrade
            # their read lock ("database is locked") instead of waiting for each other.
            with self._immediate():
                migrations.apply(self.db)
        self.lease_s = lease_s
        self.worker_id = new_id(8)
        now = utcnow()
        self._insert(
            "workers",
            {
                "id": self.worker_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": now,
                "heartbeat_at": now,
            },
        )

    @property
    def postgres(self) -> bool:
        return isinstance(self.db, PostgresDatabase)

    def close(self) -> None:
        self.retire()
        self.db.close()

    # -- workers and claims ------------------------------------------------------------------

    def heartbeat(self) -> None:
        """This worker is alive: its claims hold for another ``lease_s``."""
        self.db.execute(
            "update workers set heartbeat_at = ? where id = ?", [utcnow(), self.worker_id]
        )

    def retire(self) -> None:
        """This worker stops: its claims are free for others at once (and old rows go)."""
        stale = _ago(max(3600.0, self.lease_s * 10))
        with contextlib.suppress(sqlite3.ProgrammingError, psycopg.OperationalError):  # closed
            self.db.execute(
                "delete from workers where id = ? or heartbeat_at < ?", [self.worker_id, stale]
            )

    def describe(self, role: str) -> None:
        """Say what this process does (``run``, ``worker``), for :meth:`live_processes`."""
        self.db.execute("update workers set role = ? where id = ?", [role, self.worker_id])

    def live_processes(self) -> dict[str, int]:
        """Processes beating on this database, by role (one machine: this one)."""
        rows = self.db.execute(
            "select coalesce(role, 'other'), count(*) from workers where heartbeat_at >= ? "
            "group by 1",
            [_ago(self.lease_s)],
        ).fetchall()
        return {str(role): int(count) for role, count in rows}

    def _free(self, column: str = "claimed_by") -> tuple[str, list[Any]]:
        """SQL (and its parameters) for "nobody live holds this row's claim"."""
        return (
            f"({column} is null or {column} not in "
            "(select id from workers where heartbeat_at >= ?))",
            [_ago(self.lease_s)],
        )

    def _claim(self, table: str, key_column: str, key: Any) -> bool:
        free, params = self._free()
        cursor = self.db.execute(
            f"update {table} set claimed_by = ? where {key_column} = ? "
            f"and (claimed_by = ? or {free})",
            [self.worker_id, key, self.worker_id, *params],
        )
        return cursor.rowcount == 1

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        else:
            self.db.conn.commit()

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Several store writes as one (a post's step and the link of its message)."""
        return self._immediate()

    def schema_version(self) -> list[str]:
        if isinstance(self.db, PostgresDatabase):
            return self.db.applied_migrations()
        return [m.name for m in migrations.applied(self.db)]

    # -- requests ---------------------------------------------------------------------------

    def create_request(
        self, *, origin: dict[str, Any], command: str, prompt: str | None, options: dict[str, Any]
    ) -> str:
        request_id = new_id()
        self.db.execute(
            "insert into requests (id, created_at, surface, team, channel, user, command, "
            "prompt, options) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                request_id,
                utcnow(),
                origin["surface"],
                origin["team"],
                origin["channel"],
                origin["user"],
                command,
                prompt,
                json.dumps(options),
            ],
        )
        return request_id

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        row = self._get("requests", request_id)
        if row is not None:
            row["options"] = json.loads(row["options"])
        return row

    def update_request_options(self, request_id: str, options: dict[str, Any]) -> None:
        self._update("requests", request_id, {"options": json.dumps(options)})

    # -- jobs and the credit ledger ----------------------------------------------------------

    def create_job(
        self,
        job: dict[str, Any],
        *,
        amount: int,
        limits: Sequence[tuple[str, str | None, str, int]],
        replaces: str | None = None,
        replaced_because: str = "",
    ) -> str:
        """Insert a queued job claimed by this worker and reserve ``amount`` milli-credits
        for it, atomically.

        Args:
            job: the job's columns (``id`` is generated when absent).
            amount: the price to reserve.
            limits: ``(team, channel or None, window_start_iso, limit)`` the reservation
                counts against (the ledger's caps).
            replaces: a job this one falls back from (``replaced_because`` says why): in the
                same transaction it is failed, its reservation released, and it points to
                this job, whose outcome is now the one to report.

        Raises:
            LimitReached: nothing is written.
        """
        job = {"id": new_id(8), "claimed_by": self.worker_id, **job}
        now = utcnow()
        with self._immediate():
            if replaces is not None:
                self._release(replaces)  # before the caps are read: its credits are free
            for index, (team, channel, since, limit) in enumerate(limits):
                used = self.used(team, channel, since)
                if used + amount > limit:
                    raise LimitReached(index, used)
            self._insert(
                "jobs",
                {
                    "state": "queued",
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    **{k: _json(v) for k, v in job.items()},
                },
            )
            self._insert(
                "ledger",
                {
                    "job_id": job["id"],
                    "team": job["team"],
                    "channel": job["channel"],
                    "stage": job["stage"],
                    "model_id": job["model_id"],
                    "amount": amount,
                    "state": "reserved",
                    "created_at": now,
                    "updated_at": now,
                },
            )
            if replaces is not None:
                self.db.execute(
                    "update jobs set delivered = 1, state = 'failed', error_kind = 'transient', "
                    "last_error = ?, replaced_by = ?, updated_at = ? where id = ?",
                    [replaced_because, job["id"], now, replaces],
                )
        return job["id"]

    def used(self, team: str, channel: str | None, since: str) -> int:
        """Milli-credits reserved or settled in ``team`` (and ``channel``) since ``since``."""
        sql = "select coalesce(sum(amount), 0) from ledger where team = ? and created_at >= ?"
        params: list[Any] = [team, since]
        if channel is not None:
            sql += " and channel = ?"
            params.append(channel)
        sql += " and state in ('reserved', 'settled')"
        return int(self.db.execute(sql, params).fetchone()[0])

    def _settle(self, job_id: str, amount: int) -> None:
        """Turn a job's reservation into a charge of ``amount`` (once: a settled or released
        entry stays as it is). Call inside a transaction."""
        self.db.execute(
            "update ledger set state = 'settled', amount = ?, updated_at = ? "
            "where job_id = ? and state = 'reserved'",
            [amount, utcnow(), job_id],
        )

    def _release(self, job_id: str) -> None:
        """Return a job's reservation to the budget, if it is still reserved. Call inside a
        transaction."""
        self.db.execute(
            "update ledger set state = 'released', updated_at = ? "
            "where job_id = ? and state = 'reserved'",
            [utcnow(), job_id],
        )

    def ledger_entry(self, job_id: str) -> dict[str, Any] | None:
        return self._one("select * from ledger where job_id = ?", [job_id])

    def spend_by_stage(self, team: str, since: str) -> dict[str, dict[str, int]]:
        """Settled and reserved milli-credits per stage for ``team`` since ``since``."""
        report: dict[str, dict[str, int]] = {}
        for stage, state, total in self.db.execute(
            "select stage, state, sum(amount) from ledger where team = ? and created_at >= ? "
            "and state in ('reserved', 'settled') group by stage, state",
            [team, since],
        ).fetchall():
            report.setdefault(stage, {})[state] = int(total)
        return report

    def complete_job(
        self, job_id: str, assets: Sequence[dict[str, Any]], parents: Sequence[str], amount: int
    ) -> list[str]:
        """Record a job's outputs, settle its charge and mark it succeeded, all at once.

        A crash before this commits leaves the job unfinished and uncharged, so resuming it
        neither loses the outputs nor charges twice. Returns the new asset ids.
        """
        ids: list[str] = []
        with self._immediate():
            state = self._one("select state from jobs where id = ?", [job_id])
            if state is None or state["state"] not in ("queued", "running"):
                # Finished elsewhere (a second run of a job whose worker was thought dead,
                # or a cancellation): nothing is recorded or charged twice.
                return [a["id"] for a in self.assets_for_job(job_id)]
            for asset in assets:
                ids.append(self.save_asset(asset, parents))
            self._settle(job_id, amount)
            self._update(
                "jobs", job_id, {"state": "succeeded", "last_error": None, "updated_at": utcnow()}
            )
        return ids

    def fail_job(self, job_id: str, *, state: str, error: str, kind: str) -> None:
        """Mark a job failed or cancelled and release its reservation, at once. A cancelled
        job needs no posting (whoever cancelled it was answered)."""
        fields = {"state": state, "last_error": error, "error_kind": kind, "updated_at": utcnow()}
        if state == "cancelled":
            fields["delivered"] = 1
        assignments = ", ".join(f"{column} = ?" for column in fields)
        with self._immediate():
            # Only an unfinished job: a cancelled job stays cancelled when the worker that
            # was driving it notices too late.
            self.db.execute(
                f"update jobs set {assignments} where id = ? and state in ('queued', 'running')",
                [*fields.values(), job_id],
            )
            self._release(job_id)

    def claim_job(self, job_id: str) -> bool:
        """Take ``job_id`` for this worker; False while another live worker holds it."""
        return self._claim("jobs", "id", job_id)

    def claimable_jobs(self) -> list[dict[str, Any]]:
        """Jobs nobody live holds that still need work: unfinished ones, and finished ones
        whose outcome was never handed over for posting (oldest first)."""
        free, params = self._free()
        rows = self.db.query(
            "select * from jobs where (state in ('queued', 'running') or delivered is null) "
            f"and {free} order by created_at",
            params,
        )
        return [_decode_job(r) for r in rows]

    def job_states(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of ``job_ids`` (one statement: a process waiting on many jobs asks
        about all of them at once)."""
        if not job_ids:
            return []
        marks = ", ".join("?" * len(job_ids))
        return [
            _decode_job(r)
            for r in self.db.query(f"select * from jobs where id in ({marks})", list(job_ids))
        ]

    def jobs_caused_by(self, key: str) -> int:
        row = self.db.execute("select count(*) from jobs where cause = ?", [key]).fetchone()
        return int(row[0])

    def hand_over(
        self, surface: str, origin: dict[str, Any], reply: dict[str, Any], job_ids: Sequence[str]
    ) -> int:
        """Make a reply durable before it is posted: an outbox entry claimed by this worker,
        and its jobs marked delivered, in one transaction. Returns the entry's id."""
        with self._immediate():
            if job_ids:
                marks = ", ".join("?" * len(job_ids))
                self.db.execute(
                    f"update jobs set delivered = 1 where id in ({marks})", list(job_ids)
                )
            return self.add_to_outbox(surface, origin, reply)

    def update_job(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = utcnow()
        self._update("jobs", job_id, {k: _json(v) for k, v in fields.items()})

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._get("jobs", job_id)
        return _decode_job(row) if row else None

    def unfinished_jobs_for_request(self, request_id: str) -> list[dict[str, Any]]:
        rows = self._rows("jobs", "request_id = ? and state in ('queued', 'running')", [request_id])
        return [_decode_job(r) for r in rows]

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        rows = self._rows("jobs", "state in ('queued', 'running')", [], order_by="created_at")
        return [_decode_job(r) for r in rows]

    def jobs_for_request(self, request_id: str) -> list[dict[str, Any]]:
        rows = self._rows("jobs", "request_id = ?", [request_id], order_by="created_at")
        return [_decode_job(r) for r in rows]

    # -- assets and lineage ------------------------------------------------------------------

    def save_asset(self, asset: dict[str, Any], parents: Sequence[str] = ()) -> str:
        """Insert an asset row and its ordered parent links in one transaction."""
        asset = {"created_at": utcnow(), **asset}
        columns = ", ".join(["id", *asset])
        marks = ", ".join("?" * (len(asset) + 1))
        # Plain statements: sqlite-utils' insert looks the table up and opens a savepoint per
        # call, which was most of a grid's cost in the store. Inside a caller's transaction
        # (complete_job) no savepoint is needed: a failed insert rolls back only itself.
        with contextlib.nullcontext() if self.db.conn.in_transaction else self._immediate():
            for attempt in range(5):  # 8-hex ids: retry the rare collision
                asset_id = asset.get("id") or new_id()
                try:
                    self.db.execute(
                        f"insert into assets ({columns}) values ({marks})",
                        [asset_id, *asset.values()],
                    )
                    break
                except _DUPLICATE:
                    if "id" in asset or attempt == 4:
                        raise
            if parents:
                self.db.conn.executemany(
                    "insert into asset_parents (asset_id, parent_id, position) values (?, ?, ?)",
                    [(asset_id, parent, i) for i, parent in enumerate(parents, start=1)],
                )
        return asset_id

    def get_asset(self, asset_id: str) -> dict[str, Any] | None:
        asset = self._get("assets", asset_id)
        return _asset(asset) if asset is not None else None

    def add_facts(self, asset_id: str, **facts: Any) -> None:
        """Record measurements on an asset (merged into what it has)."""
        with self._immediate():
            row = self._one("select facts from assets where id = ?", [asset_id])
            known = json.loads(row["facts"]) if row and row["facts"] else {}
            self.db.execute(
                "update assets set facts = ? where id = ?",
                [json.dumps({**known, **facts}), asset_id],
            )

    def parents(self, asset_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "select a.*, p.position from asset_parents p join assets a on a.id = p.parent_id "
            "where p.asset_id = ? order by p.position",
            [asset_id],
        )
        return [_asset(row) for row in rows]

    def children(self, asset_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "select a.* from asset_parents p join assets a on a.id = p.asset_id "
            "where p.parent_id = ? order by a.created_at",
            [asset_id],
        )
        return [_asset(row) for row in rows]

    def assets_for_job(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._rows("assets", "job_id = ?", [job_id], order_by="rowid")
        return [_asset(row) for row in rows]

    # -- gates -------------------------------------------------------------------------------

    def record_gate(self, asset_id: str, decision: str, *, user: str, surface: str) -> bool:
        """Record a decision that is taken once (a draft selected, a grid rejected); False
        if it is already on the asset."""
        with self._immediate():
            if self.db.execute(
                "select 1 from gates where asset_id = ? and decision = ?", [asset_id, decision]
            ).fetchone():
                return False
            self._insert_gate(asset_id, decision, user, surface)
        return True

    def record_qa(self, asset_id: str, decision: str, *, user: str, surface: str) -> bool:
        """Record a QA decision (approved or rejected) as the asset's current state, keeping
        the earlier ones as history; False if it is already the current state."""
        with self._immediate():
            if self._qa_state(asset_id) == decision:
                return False
            self._insert_gate(asset_id, decision, user, surface)
        return True

    def qa_state(self, asset_id: str) -> dict[str, Any] | None:
        """The latest QA decision on an asset (its current state), or None."""
        rows = list(
            self.db.query(
                "select * from gates where asset_id = ? and decision in ('approved', 'rejected') "
                "order by id desc limit 1",
                [asset_id],
            )
        )
        return rows[0] if rows else None

    def _qa_state(self, asset_id: str) -> str | None:
        row = self.qa_state(asset_id)
        return row["decision"] if row else None

    def _insert_gate(self, asset_id: str, decision: str, user: str, surface: str) -> None:
        self.db.execute(
            "insert into gates (asset_id, decision, user, surface, at) values (?, ?, ?, ?, ?)",
            [asset_id, decision, user, surface, utcnow()],
        )

    def remove_gate(self, asset_id: str, decision: str) -> None:
        self.db.execute(
            "delete from gates where asset_id = ? and decision = ?", [asset_id, decision]
        )

    def gates(self, asset_id: str) -> list[dict[str, Any]]:
        return self._rows("gates", "asset_id = ?", [asset_id], order_by="at")

    def count_rejected_grids(self, request_id: str) -> int:
        row = self.db.execute(
            # CROSS JOIN keeps SQLite from starting at every rejection ever recorded.
            "select count(*) from assets a cross join gates g on g.asset_id = a.id "
            "where a.request_id = ? and a.kind = 'grid' and g.decision = 'rejected'",
            [request_id],
        ).fetchone()
        return int(row[0])

    def approved_finals(self, team: str, since: str) -> int:
        row = self.db.execute(
            "select count(distinct g.asset_id) from gates g join assets a on a.id = g.asset_id "
            "join requests r on r.id = a.request_id "
            "where g.decision = 'approved' and r.team = ? and g.at >= ? and not exists "
            "(select 1 from gates later where later.asset_id = g.asset_id "
            "and later.decision = 'rejected' and later.id > g.id)",
            [team, since],
        ).fetchone()
        return int(row[0])

    # -- chat bookkeeping --------------------------------------------------------------------

    def receive(self, key: str, surface: str, kind: str, event: dict[str, Any]) -> bool:
        """Write an inbound command or reaction, claimed by this worker, before it is
        acknowledged; False if that delivery (``key``) was received before."""
        cursor = self.db.execute(
            "insert or ignore into inbox (key, surface, kind, event, state, claimed_by, "
            "received_at) values (?, ?, ?, ?, 'pending', ?, ?)",
            [key, surface, kind, json.dumps(event), self.worker_id, utcnow()],
        )
        return cursor.rowcount == 1

    def note_received(self, key: str, surface: str) -> None:
        """Record an event that needs no action (a reaction removed), as done."""
        now = utcnow()
        self.db.execute(
            "insert or ignore into inbox (key, surface, kind, event, state, received_at, "
            "done_at) values (?, ?, 'note', '{}', 'done', ?, ?)",
            [key, surface, now, now],
        )

    def count_received(self, prefix: str) -> int:
        """How many inbound events have keys starting with ``prefix``."""
        row = self.db.execute(
            "select count(*) from inbox where key >= ? and key < ?", [prefix, prefix + "\uffff"]
        ).fetchone()
        return int(row[0])

    def update_received(self, key: str, event: dict[str, Any]) -> None:
        """Replace a pending event's stored form (the surface learnt more about its sender)."""
        self.db.execute(
            "update inbox set event = ? where key = ? and state = 'pending'",
            [json.dumps(event), key],
        )

    def received_done(self, key: str) -> None:
        """The event was acted on or answered."""
        self.db.execute(
            "update inbox set state = 'done', done_at = ? where key = ?", [utcnow(), key]
        )

    def claimable_inbox(self) -> list[dict[str, Any]]:
        """Received events nobody live is handling and nobody finished (oldest first)."""
        free, params = self._free()
        rows = self.db.query(
            f"select * from inbox where state = 'pending' and {free} order by received_at",
            params,
        )
        return [{**r, "event": json.loads(r["event"])} for r in rows]

    def claim_inbox(self, key: str) -> bool:
        return self._claim("inbox", "key", key)

    def record_message(
        self,
        surface: str,
        channel: str,
        message_id: str,
        asset_id: str | None,
        thread_id: str | None = None,
        request_id: str | None = None,
        text: str | None = None,
    ) -> None:
        self.db.execute(
            "insert into messages (surface, channel, message_id, asset_id, thread_id, "
            "request_id, posted_at, text) values (?, ?, ?, ?, ?, ?, ?, ?) "
            "on conflict (surface, channel, message_id) do update set "
            "asset_id = excluded.asset_id, thread_id = excluded.thread_id, "
            "request_id = excluded.request_id, posted_at = excluded.posted_at, "
            "text = excluded.text",
            [surface, channel, message_id, asset_id, thread_id, request_id, utcnow(), text],
        )

    def message_link(
        self, surface: str, channel: str, message_id: str
    ) -> tuple[str | None, str] | tuple[str, str | None] | None:
        """What a message of ours presents: ``(asset_id, request_id)``, one of them set (a
        result, or a status line); None for a message we never linked."""
        row = self.db.execute(
            "select asset_id, request_id from messages where surface = ? and channel = ? "
            "and message_id = ? and (asset_id is not null or request_id is not null)",
            [surface, channel, message_id],
        ).fetchone()
        return (row[0], row[1]) if row else None

    def thread_for_asset(self, surface: str, channel: str, asset_id: str) -> str | None:
        """The thread root of the newest message presenting ``asset_id`` (itself if a root)."""
        row = self.db.execute(
            "select message_id, thread_id from messages where surface = ? and channel = ? "
            "and asset_id = ? order by posted_at desc limit 1",
            [surface, channel, asset_id],
        ).fetchone()
        if row is None:
            return None
        return row[1] or row[0]

    def message_for_asset(self, surface: str, channel: str, asset_id: str) -> dict[str, Any] | None:
        """The newest message presenting ``asset_id`` (its id, thread and posted text)."""
        rows = list(
            self.db.query(
                "select message_id, thread_id, text from messages where surface = ? and "
                "channel = ? and asset_id = ? order by posted_at desc limit 1",
                [surface, channel, asset_id],
            )
        )
        return rows[0] if rows else None

    def asset_for_message(self, surface: str, channel: str, message_id: str) -> str | None:
        row = self.db.execute(
            "select asset_id from messages where surface = ? and channel = ? and message_id = ? "
            "and asset_id is not null",
            [surface, channel, message_id],
        ).fetchone()
        return row[0] if row else None

    # -- the outbox: replies waiting to be posted ---------------------------------------------

    def add_to_outbox(self, surface: str, origin: dict[str, Any], reply: dict[str, Any]) -> int:
        """A reply about to be posted, claimed by this worker; returns the entry's id."""
        now = utcnow()
        return self._insert(
            "outbox",
            {
                "surface": surface,
                "origin": json.dumps(origin),
                "reply": json.dumps(reply),
                "attempts": 0,
                "next_at": now,
                "created_at": now,
                "progress": "{}",
                "claimed_by": self.worker_id,
            },
        )

    def due_in_outbox(self, surface: str, now: str) -> list[dict[str, Any]]:
        """Entries of ``surface`` due for another try that nobody live is posting."""
        free, params = self._free()
        rows = self.db.query(
            f"select * from outbox where surface = ? and next_at <= ? and {free} order by id",
            [surface, now, *params],
        )
        return [
            {**r, "origin": json.loads(r["origin"]), "reply": json.loads(r["reply"])} for r in rows
        ]

    def claim_outbox(self, entry_id: int) -> bool:
        return self._claim("outbox", "id", entry_id)

    def outbox_progress(self, entry_id: int) -> dict[str, Any]:
        """The steps of an entry's post that already landed (e.g. the anchor's id)."""
        row = self.db.execute("select progress from outbox where id = ?", [entry_id]).fetchone()
        return json.loads(row[0] or "{}") if row else {}

    def outbox_step(self, entry_id: int, progress: dict[str, Any]) -> None:
        self.db.execute(
            "update outbox set progress = ? where id = ?", [json.dumps(progress), entry_id]
        )

    def outbox_retry_later(self, entry_id: int, error: str, next_at: str) -> None:
        """The post failed: try again at ``next_at``, by whichever worker is up then."""
        self.db.execute(
            "update outbox set attempts = attempts + 1, last_error = ?, next_at = ?, "
            "claimed_by = null where id = ?",
            [error, next_at, entry_id],
        )

    def outbox_done(self, entry_id: int) -> None:
        self.db.execute("delete from outbox where id = ?", [entry_id])

    # -- schedules ---------------------------------------------------------------------------

    def add_schedule(self, row: dict[str, Any]) -> str | None:
        """Insert a schedule; None if its name is taken in its channel."""
        schedule_id = new_id()
        try:
            self._insert(
                "schedules",
                {
                    "id": schedule_id,
                    "paused": 0,
                    "created_at": utcnow(),
                    **{k: _json(v) for k, v in row.items()},
                },
            )
        except _DUPLICATE:
            return None
        return schedule_id

    def schedules(
        self, surface: str | None = None, team: str | None = None, channel: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("surface", surface), ("team", team), ("channel", channel)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._rows("schedules", " and ".join(where) or "1 = 1", params, order_by="name")
        return [{**r, "origin": json.loads(r["origin"])} for r in rows]

    def get_schedule(self, schedule_id: str) -> dict[str, Any] | None:
        row = self._get("schedules", schedule_id)
        return {**row, "origin": json.loads(row["origin"])} if row else None

    def update_schedule(self, schedule_id: str, **fields: Any) -> None:
        self._update("schedules", schedule_id, fields)

    def remove_schedule(self, schedule_id: str) -> None:
        with self._immediate():
            self.db.execute("delete from schedule_runs where schedule_id = ?", [schedule_id])
            self.db.execute("delete from schedules where id = ?", [schedule_id])

    # -- what operators watch (bot.metrics) ------------------------------------------------

    def job_counts(self) -> list[tuple[str, str, int]]:
        """``(state, stage, count)`` of every job."""
        rows = self.db.execute("select state, stage, count(*) from jobs group by state, stage")
        return [tuple(row) for row in rows.fetchall()]  # type: ignore[misc]

    def settled_spend(self) -> list[tuple[str, str, int]]:
        """``(stage, team, milli-credits)`` charged."""
        rows = self.db.execute(
            "select stage, team, coalesce(sum(amount), 0) from ledger where state = 'settled' "
            "group by stage, team"
        )
        return [tuple(row) for row in rows.fetchall()]  # type: ignore[misc]

    def queue_depths(self) -> dict[str, int]:
        """Work waiting: unfinished jobs, inbound events not acted on, replies not posted."""
        queries = {
            "jobs": "select count(*) from jobs where state in ('queued', 'running')",
            "inbox": "select count(*) from inbox where state != 'done'",
            "outbox": "select count(*) from outbox",
        }
        return {name: self.db.execute(sql).fetchone()[0] for name, sql in queries.items()}

    def answers(self) -> bool:
        """Whether the database answers."""
        return self.db.execute("select 1").fetchone() is not None

    # -- sequences -----------------------------------------------------------------------------

    def create_sequence(
        self,
        *,
        request_id: str,
        grid_id: str,
        beats: Sequence[str],
        sources: Sequence[str],
        spec: dict[str, Any],
    ) -> str:
        """A new shot sequence of ``beats`` (no shots yet); its id."""
        row = {
            "request_id": request_id,
            "grid_id": grid_id,
            "beats": json.dumps(list(beats)),
            "sources": json.dumps(list(sources)),
            "shots": json.dumps([None] * len(beats)),
            "failures": "{}",
            "shot_order": None,
            "spec": json.dumps(spec),
            "asset_id": None,
            "created_at": utcnow(),
        }
        for attempt in range(5):  # 8-hex ids: retry the rare collision
            sequence_id = new_id()
            try:
                insert_row(self.db, "sequences", {"id": sequence_id, **row})
                return sequence_id
            except _DUPLICATE:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def get_sequence(self, sequence_id: str) -> dict[str, Any] | None:
        return _sequence(self._one("select * from sequences where id = ?", [sequence_id]))

    def sequence_for_request(self, request_id: str) -> dict[str, Any] | None:
        return _sequence(self._one("select * from sequences where request_id = ?", [request_id]))

    def update_sequence(self, sequence_id: str, **fields: Any) -> None:
        """Set fields of a sequence (``order`` is stored as ``shot_order``)."""
        if "order" in fields:
            fields["shot_order"] = fields.pop("order")
        encoded = {k: v if k == "asset_id" else json.dumps(v) for k, v in fields.items()}
        update_row(self.db, "sequences", sequence_id, encoded)

    # -- named references --------------------------------------------------------------------

    def save_ref(self, team: str, name: str, asset_ids: Sequence[str], created_by: str) -> bool:
        """Store a team's named reference; False if the name is taken (nothing changed)."""
        cursor = self.db.execute(
            "insert or ignore into refs (team, name, asset_ids, created_by, created_at) "
            "values (?, ?, ?, ?, ?)",
            [team, name, json.dumps(list(asset_ids)), created_by, utcnow()],
        )
        return cursor.rowcount == 1

    def get_ref(self, team: str, name: str) -> dict[str, Any] | None:
        row = self._one("select * from refs where team = ? and name = ?", [team, name])
        if row is not None:
            row["asset_ids"] = json.loads(row["asset_ids"])
        return row

    def refs(self, team: str) -> list[dict[str, Any]]:
        rows = list(self.db.query("select * from refs where team = ? order by name", [team]))
        for row in rows:
            row["asset_ids"] = json.loads(row["asset_ids"])
        return rows

    def remove_ref(self, team: str, name: str) -> bool:
        cursor = self.db.execute("delete from refs where team = ? and name = ?", [team, name])
        return cursor.rowcount == 1

    def start_schedule_run(self, schedule_id: str, run_date: str) -> bool:
        """Record a batch before it starts; False if that day's batch was already recorded."""
        cursor = self.db.execute(
            "insert or ignore into schedule_runs (schedule_id, run_date, started_at, state) "
            "values (?, ?, ?, 'started')",
            [schedule_id, run_date, utcnow()],
        )
        return cursor.rowcount == 1

    def update_schedule_run(self, schedule_id: str, run_date: str, **fields: Any) -> None:
        assignments = ", ".join(f"{column} = ?" for column in fields)
        self.db.execute(
            f"update schedule_runs set {assignments} where schedule_id = ? and run_date = ?",
            [*fields.values(), schedule_id, run_date],
        )

    def claim_summary(self, schedule_id: str, run_date: str, at: str) -> bool:
        """Record that a day's summary is being posted; False if it already was."""
        cursor = self.db.execute(
            "update schedule_runs set summary_at = ? where schedule_id = ? and run_date = ? "
            "and summary_at is null",
            [at, schedule_id, run_date],
        )
        return cursor.rowcount == 1

    def schedule_run(self, schedule_id: str, run_date: str) -> dict[str, Any] | None:
        return self._one(
            "select * from schedule_runs where schedule_id = ? and run_date = ?",
            [schedule_id, run_date],
        )

    # -- helpers -----------------------------------------------------------------------------

    def _rows(
        self, table: str, where: str, params: Sequence[Any], *, order_by: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` matching ``where`` as dicts. Plain SQL: sqlite-utils' table
        methods look the table and its columns up before almost every statement."""
        order = f" order by {order_by}" if order_by else ""
        return list(self.db.query(f"select * from {table} where {where}{order}", params))

    def _get(self, table: str, pk: str) -> dict[str, Any] | None:
        return self._one(f"select * from {table} where id = ?", [pk])

    def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        """The first row of ``sql`` as a dict, or None."""
        cursor = self.db.execute(sql, params)
        row = cursor.fetchone()
        return dict(zip((c[0] for c in cursor.description), row, strict=True)) if row else None

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        return insert_row(self.db, table, row)

    def _update(self, table: str, pk: str, fields: dict[str, Any]) -> None:
        update_row(self.db, table, pk, fields)


def _sequence(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A sequence row with its JSON read (``shot_order`` as ``order``)."""
    if row is None:
        return None
    for key in ("beats", "sources", "shots", "failures", "spec"):
        row[key] = json.loads(row[key])
    row["order"] = json.loads(row.pop("shot_order")) if row.get("shot_order") else None
    return row


def insert_row(db: Database, table: str, row: dict[str, Any]) -> int:
    """One row as one plain statement (no table lookup, no savepoint: sqlite-utils' insert
    does both, and commits when it is done, even inside a transaction of ours); its rowid."""
    cursor = db.execute(
        f"insert into {table} ({', '.join(row)}) values ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    return int(cursor.lastrowid or 0)


def update_row(db: Database, table: str, pk: Any, fields: dict[str, Any]) -> None:
    """Set ``fields`` of the row whose ``id`` is ``pk``, as one plain statement."""
    assignments = ", ".join(f"{column} = ?" for column in fields)
    db.execute(f"update {table} set {assignments} where id = ?", [*fields.values(), pk])


def _wal(db: Database) -> None:
    """Switch to WAL (kept in the file once set). On a new file another process may be
    switching it at the same moment; SQLite then answers "locked" at once, without waiting
    out the busy timeout, so wait and ask again."""
    for attempt in range(50):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def _json(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _asset(row: dict[str, Any]) -> dict[str, Any]:
    """An asset row with its facts read (an empty dict when it has none)."""
    row["facts"] = json.loads(row["facts"]) if row.get("facts") else {}
    return row


def _decode_job(row: dict[str, Any]) -> dict[str, Any]:
    for field in ("params", "fallbacks", "inputs"):
        if isinstance(row.get(field), str):
            row[field] = json.loads(row[field])
    return row
