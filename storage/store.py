"""The store: every table and every SQL statement of tierbot.

SQLite in WAL mode through sqlite-utils; the schema comes from ``storage.schema``'s
migrations, recorded in ``_sqlite_migrations``. Writes that must be all-or-nothing (a job and
its credit reservation, a settlement) run inside ``BEGIN IMMEDIATE``, which takes SQLite's
write lock before reading, so two processes or threads reserving at once are serialised and
can never both see the same remaining budget.

Calls are synchronous and short (sub-millisecond in WAL with ``synchronous=NORMAL``); the
asyncio core calls them directly rather than paying a thread hop per row.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import Column, Table

from storage.schema import migrations

log = logging.getLogger(__name__)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id(nbytes: int = 4) -> str:
    """A short random id: 8 hex characters by default, short enough to type in a command."""
    return secrets.token_hex(nbytes)


class BudgetExceeded(Exception):
    """A reservation would take a cap over its limit."""

    def __init__(self, cap: Any, used: int, amount: int) -> None:
        super().__init__(f"{cap.describe()}: {used} used + {amount} > {cap.limit}")
        self.cap = cap
        self.used = used
        self.amount = amount

    @property
    def left(self) -> int:
        return max(0, self.cap.limit - self.used)


class Store:
    """Repositories over one SQLite connection."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        self.db = Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        migrations.apply(self.db)
        self._tables: dict[str, Table] = {}

    def close(self) -> None:
        self.db.close()

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

    def schema_version(self) -> list[str]:
        return [m.name for m in migrations.applied(self.db)]

    # -- requests ---------------------------------------------------------------------------

    def create_request(
        self, *, origin: dict[str, Any], command: str, prompt: str | None, options: dict[str, Any]
    ) -> str:
        request_id = new_id()
        self._table("requests").insert(
            {
                "id": request_id,
                "created_at": utcnow(),
                "surface": origin["surface"],
                "team": origin["team"],
                "channel": origin["channel"],
                "user": origin["user"],
                "command": command,
                "prompt": prompt,
                "options": json.dumps(options),
            }
        )
        return request_id

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        row = self._get("requests", request_id)
        if row is not None:
            row["options"] = json.loads(row["options"])
        return row

    def update_request_options(self, request_id: str, options: dict[str, Any]) -> None:
        self._table("requests").update(request_id, {"options": json.dumps(options)})

    # -- jobs and the credit ledger ----------------------------------------------------------

    def create_job(
        self,
        job: dict[str, Any],
        *,
        amount: int,
        caps: Sequence[tuple[Any, str]],
    ) -> str:
        """Insert a queued job and reserve ``amount`` milli-credits for it, atomically.

        Args:
            job: the job's columns (``id`` is generated when absent).
            amount: the price to reserve.
            caps: ``(cap, window_start_iso)`` pairs the reservation counts against.

        Raises:
            BudgetExceeded: nothing is written.
        """
        job = {"id": new_id(8), **job}
        now = utcnow()
        with self._immediate():
            for cap, since in caps:
                used = self.used(cap.team, cap.channel, since)
                if used + amount > cap.limit:
                    raise BudgetExceeded(cap, used, amount)
            self._table("jobs").insert(
                {
                    "state": "queued",
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    **{k: _json(v) for k, v in job.items()},
                }
            )
            self._table("ledger").insert(
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
                }
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
        rows = list(self._table("ledger").rows_where("job_id = ?", [job_id]))
        return rows[0] if rows else None

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
            for asset in assets:
                ids.append(self.save_asset(asset, parents))
            self._settle(job_id, amount)
            self._table("jobs").update(
                job_id, {"state": "succeeded", "last_error": None, "updated_at": utcnow()}
            )
        return ids

    def fail_job(self, job_id: str, *, state: str, error: str, kind: str) -> None:
        """Mark a job failed or cancelled and release its reservation, at once."""
        with self._immediate():
            self._table("jobs").update(
                job_id,
                {"state": state, "last_error": error, "error_kind": kind, "updated_at": utcnow()},
            )
            self._release(job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = utcnow()
        self._table("jobs").update(job_id, {k: _json(v) for k, v in fields.items()})

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._get("jobs", job_id)
        return _decode_job(row) if row else None

    def unfinished_jobs_for_request(self, request_id: str) -> list[dict[str, Any]]:
        rows = self._table("jobs").rows_where(
            "request_id = ? and state in ('queued', 'running')", [request_id]
        )
        return [_decode_job(r) for r in rows]

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        rows = self._table("jobs").rows_where(
            "state in ('queued', 'running')", order_by="created_at"
        )
        return [_decode_job(r) for r in rows]

    def jobs_for_request(self, request_id: str) -> list[dict[str, Any]]:
        rows = self._table("jobs").rows_where("request_id = ?", [request_id], order_by="created_at")
        return [_decode_job(r) for r in rows]

    # -- assets and lineage ------------------------------------------------------------------

    def save_asset(self, asset: dict[str, Any], parents: Sequence[str] = ()) -> str:
        """Insert an asset row and its ordered parent links in one transaction."""
        asset = {"created_at": utcnow(), **asset}
        with self.db.atomic():
            for _ in range(5):  # 8-hex ids: retry the rare collision
                asset_id = asset.get("id") or new_id()
                if self._get("assets", asset_id) is None:
                    break
            self._table("assets").insert({**asset, "id": asset_id})
            self._table("asset_parents").insert_all(
                {"asset_id": asset_id, "parent_id": parent, "position": i}
                for i, parent in enumerate(parents, start=1)
            )
        return asset_id

    def get_asset(self, asset_id: str) -> dict[str, Any] | None:
        return self._get("assets", asset_id)

    def parents(self, asset_id: str) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "select a.*, p.position from asset_parents p join assets a on a.id = p.parent_id "
                "where p.asset_id = ? order by p.position",
                [asset_id],
            )
        )

    def children(self, asset_id: str) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "select a.* from asset_parents p join assets a on a.id = p.asset_id "
                "where p.parent_id = ? order by a.created_at",
                [asset_id],
            )
        )

    def assets_for_job(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._table("assets").rows_where("job_id = ?", [job_id], order_by="rowid"))

    # -- gates -------------------------------------------------------------------------------

    def record_gate(self, asset_id: str, decision: str, *, user: str, surface: str) -> bool:
        """Record a human decision once; False if that decision was already on the asset."""
        cursor = self.db.execute(
            "insert or ignore into gates (asset_id, decision, user, surface, at) "
            "values (?, ?, ?, ?, ?)",
            [asset_id, decision, user, surface, utcnow()],
        )
        return cursor.rowcount == 1

    def remove_gate(self, asset_id: str, decision: str) -> None:
        self.db.execute(
            "delete from gates where asset_id = ? and decision = ?", [asset_id, decision]
        )

    def gates(self, asset_id: str) -> list[dict[str, Any]]:
        return list(self._table("gates").rows_where("asset_id = ?", [asset_id], order_by="at"))

    def count_rejected_grids(self, request_id: str) -> int:
        row = self.db.execute(
            "select count(*) from gates g join assets a on a.id = g.asset_id "
            "where a.request_id = ? and a.kind = 'grid' and g.decision = 'rejected'",
            [request_id],
        ).fetchone()
        return int(row[0])

    def approved_finals(self, team: str, since: str) -> int:
        row = self.db.execute(
            "select count(distinct g.asset_id) from gates g join assets a on a.id = g.asset_id "
            "join requests r on r.id = a.request_id "
            "where g.decision = 'approved' and r.team = ? and g.at >= ?",
            [team, since],
        ).fetchone()
        return int(row[0])

    # -- chat bookkeeping --------------------------------------------------------------------

    def first_delivery(self, key: str) -> bool:
        """Mark an inbound event as processed; False if it was seen before."""
        cursor = self.db.execute(
            "insert or ignore into processed_events (key, at) values (?, ?)", [key, utcnow()]
        )
        return cursor.rowcount == 1

    def record_message(
        self,
        surface: str,
        channel: str,
        message_id: str,
        asset_id: str | None,
        thread_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self._table("messages").upsert(
            {
                "surface": surface,
                "channel": channel,
                "message_id": message_id,
                "asset_id": asset_id,
                "thread_id": thread_id,
                "request_id": request_id,
                "posted_at": utcnow(),
            },
            pk=("surface", "channel", "message_id"),
        )

    def request_for_message(self, surface: str, channel: str, message_id: str) -> str | None:
        """The request whose status a message shows, if it is a status message."""
        row = self.db.execute(
            "select request_id from messages where surface = ? and channel = ? and message_id = ?",
            [surface, channel, message_id],
        ).fetchone()
        return row[0] if row else None

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

    def asset_for_message(self, surface: str, channel: str, message_id: str) -> str | None:
        row = self.db.execute(
            "select asset_id from messages where surface = ? and channel = ? and message_id = ? "
            "and asset_id is not null",
            [surface, channel, message_id],
        ).fetchone()
        return row[0] if row else None

    # -- the outbox: replies waiting to be posted ---------------------------------------------

    def add_to_outbox(
        self, surface: str, origin: dict[str, Any], reply: dict[str, Any], error: str, next_at: str
    ) -> int:
        row = {
            "surface": surface,
            "origin": json.dumps(origin),
            "reply": json.dumps(reply),
            "attempts": 1,
            "last_error": error,
            "next_at": next_at,
            "created_at": utcnow(),
        }
        return int(self._table("outbox").insert(row).last_pk)

    def due_in_outbox(self, surface: str, now: str) -> list[dict[str, Any]]:
        rows = self._table("outbox").rows_where(
            "surface = ? and next_at <= ?", [surface, now], order_by="id"
        )
        return [
            {**r, "origin": json.loads(r["origin"]), "reply": json.loads(r["reply"])} for r in rows
        ]

    def outbox_retry_later(self, entry_id: int, error: str, next_at: str) -> None:
        self.db.execute(
            "update outbox set attempts = attempts + 1, last_error = ?, next_at = ? where id = ?",
            [error, next_at, entry_id],
        )

    def outbox_done(self, entry_id: int) -> None:
        self.db.execute("delete from outbox where id = ?", [entry_id])

    # -- schedules ---------------------------------------------------------------------------

    def add_schedule(self, row: dict[str, Any]) -> str:
        """Insert a schedule; raises ``sqlite3.IntegrityError`` if the name is taken here."""
        schedule_id = new_id()
        self._table("schedules").insert(
            {
                "id": schedule_id,
                "paused": 0,
                "created_at": utcnow(),
                **{k: _json(v) for k, v in row.items()},
            }
        )
        return schedule_id

    def schedules(
        self, surface: str | None = None, team: str | None = None, channel: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("surface", surface), ("team", team), ("channel", channel)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._table("schedules").rows_where(
            " and ".join(where) or None, params, order_by="name"
        )
        return [{**r, "origin": json.loads(r["origin"])} for r in rows]

    def get_schedule(self, schedule_id: str) -> dict[str, Any] | None:
        row = self._get("schedules", schedule_id)
        return {**row, "origin": json.loads(row["origin"])} if row else None

    def update_schedule(self, schedule_id: str, **fields: Any) -> None:
        self._table("schedules").update(schedule_id, fields)

    def remove_schedule(self, schedule_id: str) -> None:
        with self.db.atomic():
            self.db.execute("delete from schedule_runs where schedule_id = ?", [schedule_id])
            self.db.execute("delete from schedules where id = ?", [schedule_id])

    def start_schedule_run(self, schedule_id: str, run_date: str) -> bool:
        """Record a batch before it starts; False if that day's batch was already recorded."""
        cursor = self.db.execute(
            "insert or ignore into schedule_runs (schedule_id, run_date, started_at, state) "
            "values (?, ?, ?, 'started')",
            [schedule_id, run_date, utcnow()],
        )
        return cursor.rowcount == 1

    def update_schedule_run(self, schedule_id: str, run_date: str, **fields: Any) -> None:
        self._table("schedule_runs").update((schedule_id, run_date), fields)

    def schedule_run(self, schedule_id: str, run_date: str) -> dict[str, Any] | None:
        rows = list(
            self._table("schedule_runs").rows_where(
                "schedule_id = ? and run_date = ?", [schedule_id, run_date]
            )
        )
        return rows[0] if rows else None

    # -- the web channel's history -----------------------------------------------------------

    def add_web_message(self, message: dict[str, Any]) -> int:
        row = {"at": utcnow(), **{k: _json(v) for k, v in message.items()}}
        return int(self._table("web_messages").insert(row).last_pk)

    def update_web_message(self, message_id: int, **fields: Any) -> None:
        self._table("web_messages").update(message_id, {k: _json(v) for k, v in fields.items()})

    def interrupt_web_statuses(self, detail: str, at: str) -> int:
        """Mark the web channel's status lines still queued or running as interrupted."""
        with self._immediate():
            cursor = self.db.execute(
                "update web_messages set state = 'interrupted', detail = ?, finished_at = ? "
                "where state in ('queued', 'running')",
                [detail, at],
            )
            return cursor.rowcount

    def web_message(self, message_id: int) -> dict[str, Any] | None:
        rows = list(self._table("web_messages").rows_where("id = ?", [message_id]))
        return _decode_web(rows[0]) if rows else None

    def web_messages(self, viewer: str | None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` messages ``viewer`` may see, oldest first."""
        rows = self.db.query(
            "select * from (select * from web_messages where private_to is null "
            "or private_to = ? order by id desc limit ?) order by id",
            [viewer or "", limit],
        )
        return [_decode_web(r) for r in rows]

    # -- helpers -----------------------------------------------------------------------------

    def _table(self, name: str) -> Table:
        """The table ``name``, made once (``db[name]`` asks SQLite whether it is a view on
        every access)."""
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _MigratedTable(self.db, name)
        return table

    def _get(self, table: str, pk: str) -> dict[str, Any] | None:
        rows = list(self._table(table).rows_where("id = ?", [pk]))
        return rows[0] if rows else None


class _MigratedTable(Table):
    """A table of the migrated schema: it exists and its columns stay put while we run.

    sqlite-utils looks both up before almost every statement (the table list before each
    insert and select, ``PRAGMA table_info`` before each update); for us that was two thirds
    of a command's statements.
    """

    def exists(self) -> bool:
        return True

    @functools.cached_property
    def columns(self) -> list[Column]:  # type: ignore[override]
        return super().columns


def _json(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _decode_web(row: dict[str, Any]) -> dict[str, Any]:
    for field in ("files", "reactions"):
        row[field] = json.loads(row[field]) if row.get(field) else []
    row["error"] = bool(row.get("error"))
    return row


def _decode_job(row: dict[str, Any]) -> dict[str, Any]:
    for field in ("params", "fallbacks", "inputs"):
        if isinstance(row.get(field), str):
            row[field] = json.loads(row[field])
    return row
