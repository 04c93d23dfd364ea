"""Schema migrations, applied in order at start-up and recorded in ``_sqlite_migrations``
(on Postgres in ``_tierbot_migrations``: the same steps, see ``storage.postgres``).

Add a migration by appending a new decorated function; never edit one that has shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlite_utils import Database, Migrations

log = logging.getLogger(__name__)

migrations = Migrations("tierbot")
#: Every migration in order, as ``(name, function)``: Postgres applies the same ones
#: (``storage.postgres``) with its own record of them.
STEPS: list[tuple[str, Callable[[Database], None]]] = []


def migration(step: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register ``step`` as the next migration (for SQLite and for Postgres)."""
    STEPS.append((step.__name__, step))
    return migrations()(step)


@migration
def m001_initial(db: Database) -> None:
    db["requests"].create(
        {
            "id": str,
            "created_at": str,
            "surface": str,
            "team": str,
            "channel": str,
            "user": str,
            "command": str,
            "prompt": str,
            "options": str,
        },
        pk="id",
    )
    db["jobs"].create(
        {
            "id": str,
            "request_id": str,
            "stage": str,
            "model_id": str,
            "provider": str,
            "state": str,
            "provider_request_id": str,
            "attempts": int,
            "last_error": str,
            "error_kind": str,
            "params": str,  # the GenerationRequest, JSON: enough to resubmit after a restart
            "inputs": str,  # JSON list of input asset ids (lineage parents)
            "fallbacks": str,  # JSON list of model ids still to try after this one
            "reason": str,  # the router's one-line reason
            "team": str,
            "channel": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "requests", "id")],
    )
    db["jobs"].create_index(["state"])
    db["jobs"].create_index(["request_id"])
    db["assets"].create(
        {
            "id": str,
            "job_id": str,
            "request_id": str,
            "kind": str,
            "stage": str,
            "sha256": str,
            "path": str,
            "mime": str,
            "width": int,
            "height": int,
            "duration_s": float,
            "bytes": int,
            "prompt": str,
            "model_id": str,
            "seed": int,
            "cost": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "requests", "id")],
    )
    db["assets"].create_index(["job_id"])
    db["asset_parents"].create(
        {"asset_id": str, "parent_id": str, "position": int},
        pk=("asset_id", "position"),
        foreign_keys=[("asset_id", "assets", "id"), ("parent_id", "assets", "id")],
    )
    db["asset_parents"].create_index(["parent_id"])
    db["gates"].create(
        {"id": int, "asset_id": str, "decision": str, "user": str, "surface": str, "at": str},
        pk="id",
        foreign_keys=[("asset_id", "assets", "id")],
    )
    # One decision of each kind per asset: recording it twice is a no-op.
    db["gates"].create_index(["asset_id", "decision"], unique=True)
    db["ledger"].create(
        {
            "job_id": str,
            "team": str,
            "channel": str,
            "stage": str,
            "model_id": str,
            "amount": int,  # milli-credits
            "state": str,  # reserved -> settled | released
            "created_at": str,
            "updated_at": str,
        },
        pk="job_id",
    )
    db["ledger"].create_index(["team", "created_at"])
    db["processed_events"].create({"key": str, "at": str}, pk="key")
    db["messages"].create(
        {"surface": str, "channel": str, "message_id": str, "asset_id": str, "posted_at": str},
        pk=("surface", "channel", "message_id"),
    )


@migration
def m002_web_messages(db: Database) -> None:
    # The local web channel's history: it has no platform to keep messages for it.
    db["web_messages"].create(
        {
            "id": int,
            "at": str,
            "author": str,  # a person's name, or "tierbot"
            "text": str,
            "files": str,  # JSON list of asset ids shown with the message
            "reactions": str,  # JSON list of reaction chips
            "thread_root": int,  # the message this one is threaded under
            "asset_id": str,  # the asset the message presents
            "private_to": str,  # shown only to this person
            "state": str,  # status lines: queued | running | done | failed
            "started_at": str,
            "finished_at": str,
            "detail": str,  # failure reason or progress detail of a status line
            "error": int,
        },
        pk="id",
    )


@migration
def m003_threads_and_outbox(db: Database) -> None:
    # The thread a posted message lives in, so later results thread under the same root.
    db["messages"].add_column("thread_id", str)
    # Replies a surface could not post yet (platform down, rate limits exhausted): retried.
    db["outbox"].create(
        {
            "id": int,
            "surface": str,
            "origin": str,  # JSON Origin
            "reply": str,  # JSON Reply
            "attempts": int,
            "last_error": str,
            "next_at": str,
            "created_at": str,
        },
        pk="id",
    )


@migration
def m004_status_messages(db: Database) -> None:
    # A status message belongs to a request: ❌ on it cancels the request's running jobs.
    db["messages"].add_column("request_id", str)


@migration
def m005_schedules(db: Database) -> None:
    db["schedules"].create(
        {
            "id": str,
            "name": str,
            "surface": str,
            "team": str,
            "channel": str,
            "origin": str,  # JSON Origin of the person who added it (batches run as them)
            "at_time": str,  # "HH:MM" local time
            "tz": str,
            "days": str,  # "mon,tue,..." (cron day names)
            "n": int,
            "ar": str,
            "style": str,
            "template": str,
            "summary_time": str,  # "HH:MM" of the ready-to-publish summary, or null
            "calendar": str,  # CSV text attached with /tierbot schedule calendar, or null
            "paused": int,
            "created_at": str,
        },
        pk="id",
    )
    db["schedules"].create_index(["surface", "team", "channel", "name"], unique=True)
    # One row per schedule per local date, written before the batch starts: never twice.
    db["schedule_runs"].create(
        {
            "schedule_id": str,
            "run_date": str,
            "started_at": str,
            "request_id": str,
            "grid_id": str,
            "state": str,  # started | posted | refused | failed
            "summary_at": str,
        },
        pk=("schedule_id", "run_date"),
    )


@migration
def m006_lookup_indexes(db: Database) -> None:
    """Lookups that scanned whole tables, so every command got slower as history grew."""
    # Which message shows an asset (every threaded reply asks): newest first.
    db["messages"].create_index(["surface", "channel", "asset_id", "posted_at"])
    # The budget check sums today's reservations inside the write lock; with the amount in the
    # index it reads no table rows. It serves every query the (team, created_at) index did.
    db["ledger"].create_index(["team", "created_at", "state", "channel", "amount"])
    db.execute("drop index if exists idx_ledger_team_created_at")


@migration
def m007_decision_indexes(db: Database) -> None:
    """🔁 counts a request's rejected grids and /tierbot budget counts approvals since a date;
    both scanned every decision ever recorded."""
    db["assets"].create_index(["request_id"])
    db["gates"].create_index(["decision", "at"])


@migration
def m008_exactly_once(db: Database) -> None:
    """Claims, durable inbound events and durable posting (see ``Store`` "exactly once")."""
    # Each process that drives jobs or posts results is a worker with a heartbeat; a claim
    # (jobs, inbox, outbox) is held while its worker's heartbeat is fresh.
    db["workers"].create(
        {"id": str, "pid": int, "host": str, "started_at": str, "heartbeat_at": str}, pk="id"
    )
    db["jobs"].add_column("claimed_by", str)
    # 1 once the job's outcome was handed over for posting (a result, or why it failed).
    db["jobs"].add_column("delivered", int)
    # The inbound event (inbox key) that asked for the job.
    db["jobs"].add_column("cause", str)
    db.execute("update jobs set delivered = 1 where state not in ('queued', 'running')")
    db["jobs"].create_index(["cause"])
    db["jobs"].create_index(["delivered", "state"])
    # Commands and reactions, written before they are acknowledged and marked done once
    # acted on or answered; the key is the platform's delivery id (event_id, trigger_id,
    # interaction id), so a redelivery or replay is acted on once.
    db["inbox"].create(
        {
            "key": str,
            "surface": str,
            "kind": str,  # command | reaction
            "event": str,  # JSON CommandEvent / ReactionEvent
            "state": str,  # pending | done
            "claimed_by": str,
            "received_at": str,
            "done_at": str,
        },
        pk="key",
    )
    db["inbox"].create_index(["state"])
    for row in db.execute("select key, at from processed_events").fetchall():
        db.execute(
            "insert or ignore into inbox (key, surface, kind, event, state, received_at, "
            "done_at) values (?, ?, 'reaction', '{}', 'done', ?, ?)",
            [row[0], row[0].split(":", 1)[0], row[1], row[1]],
        )
    # A reply being posted: which of its steps (anchor, files, reactions) already landed, and
    # the worker posting it now.
    db["outbox"].add_column("progress", str)
    db["outbox"].add_column("claimed_by", str)
    # The text a message was posted with, so a QA decision can edit it to show its state.
    db["messages"].add_column("text", str)
    # QA decisions are a history (✅ then ❌ then ✅); "once" is enforced where it matters
    # (a draft is selected once, a grid is rejected once) inside a write transaction.
    db.execute("drop index if exists idx_gates_asset_id_decision")
    db["gates"].create_index(["asset_id", "decision"])


@migration
def m009_images_in(db: Database) -> None:
    """Images people send in: who sent an upload, and a team's named references."""
    db["assets"].add_column("sent_by", str)  # "surface:user" of an upload or a manual version
    db["refs"].create(
        {
            "team": str,
            "name": str,  # lower case
            "asset_ids": str,  # JSON list of upload asset ids, in the order given
            "created_by": str,
            "created_at": str,
        },
        pk=("team", "name"),
    )


@migration
def m010_asset_facts(db: Database) -> None:
    """What the core measured on an asset (a region edit's seam, drift from its source)."""
    db["assets"].add_column("facts", str)  # JSON object


@migration
def m011_sequences(db: Database) -> None:
    """Shot sequences: a storyboard's beats, each beat's shot, the order they are stitched in."""
    db["sequences"].create(
        {
            "id": str,
            "request_id": str,
            "grid_id": str,
            "beats": str,  # JSON list of the beats' words
            "sources": str,  # JSON list: each beat's image (its draft, or its final)
            "shots": str,  # JSON list: each beat's shot (asset id) or null
            "failures": str,  # JSON object: beat index → why its shot failed
            "shot_order": str,  # JSON list of beat indices, or null for beat order
            "spec": str,  # JSON: seconds, motion, finals, seed
            "asset_id": str,  # the latest stitch
            "created_at": str,
        },
        pk="id",
    )
    db["sequences"].create_index(["request_id"])


@migration
def m012_fallback_links(db: Database) -> None:
    """A failed job's fallback, written with it: whoever waits on the job (another process,
    when workers run jobs) follows it to the job that carries on."""
    db["jobs"].add_column("replaced_by", str)


@migration
def m013_process_roles(db: Database) -> None:
    """What each process that opened the store does (``run``, ``worker``, a shell command):
    operators count the live ones by role."""
    db["workers"].add_column("role", str)
