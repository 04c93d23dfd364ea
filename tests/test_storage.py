"""Storage: migrations, WAL, atomic job writes, the content-addressed file store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage import AssetFiles, Store
from storage.schema import STEPS


def test_schema_is_migrated_once_and_recorded(db_location: str) -> None:
    store = Store(db_location)
    applied = store.schema_version()
    assert applied == [name for name, _ in STEPS]
    if not store.postgres:
        assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    store.close()
    again = Store(db_location)  # reopening applies nothing twice
    assert again.schema_version() == applied
    tables = {
        row[0]
        for row in again.db.execute(
            "select table_name from information_schema.tables"
            if again.postgres
            else "select name from sqlite_master where type = 'table'"
        ).fetchall()
    }
    assert {
        "requests",
        "jobs",
        "assets",
        "asset_parents",
        "gates",
        "ledger",
        "processed_events",
        "messages",
    } <= tables


def test_gates_and_event_ids_are_idempotent(db_location: str) -> None:
    store = Store(db_location)
    request = store.create_request(
        origin={"surface": "s", "team": "t", "channel": "c", "user": "u"},
        command="draft",
        prompt="p",
        options={},
    )
    asset = store.save_asset(
        {"request_id": request, "kind": "image", "stage": "draft", "path": "x", "model_id": "m"}
    )
    assert store.record_gate(asset, "selected", user="u", surface="s") is True
    assert store.record_gate(asset, "selected", user="v", surface="s") is False
    # QA is one current state with its history: ✅, ✅ again (no-op), ❌, ✅.
    assert store.record_qa(asset, "approved", user="u", surface="s") is True
    assert store.record_qa(asset, "approved", user="v", surface="s") is False
    assert store.record_qa(asset, "rejected", user="v", surface="s") is True
    assert store.qa_state(asset)["decision"] == "rejected"
    assert store.record_qa(asset, "approved", user="u", surface="s") is True
    assert store.qa_state(asset)["user"] == "u"
    assert [g["decision"] for g in store.gates(asset)] == [
        "selected",
        "approved",
        "rejected",
        "approved",
    ]
    assert store.receive("slack:Ev1", "slack", "reaction", {}) is True
    assert store.receive("slack:Ev1", "slack", "reaction", {}) is False
    store.record_message("s", "c", "m1", asset)
    assert store.asset_for_message("s", "c", "m1") == asset
    assert store.asset_for_message("s", "other", "m1") is None


def test_lineage_parents_keep_their_order(db_location: str) -> None:
    store = Store(db_location)
    request = store.create_request(
        origin={"surface": "s", "team": "t", "channel": "c", "user": "u"},
        command="draft",
        prompt="p",
        options={},
    )
    ids = [
        store.save_asset(
            {
                "request_id": request,
                "kind": "image",
                "stage": "draft",
                "path": str(i),
                "model_id": "m",
            }
        )
        for i in range(3)
    ]
    grid = store.save_asset(
        {"request_id": request, "kind": "grid", "stage": "draft", "path": "g", "model_id": "m"},
        parents=[ids[2], ids[0], ids[1]],
    )
    assert [p["id"] for p in store.parents(grid)] == [ids[2], ids[0], ids[1]]
    assert [c["id"] for c in store.children(ids[0])] == [grid]


def test_asset_files_are_content_addressed_and_contained(tmp_path: Path) -> None:
    files = AssetFiles(tmp_path / "assets")
    digest, relative = files.put(b"hello", "image/png")
    assert relative == f"{digest[:2]}/{digest[2:4]}/{digest}.png"
    assert files.put(b"hello", "image/png") == (digest, relative)
    assert files.path(relative).read_bytes() == b"hello"
    assert not list((tmp_path / "assets").rglob(".tmp-*"))
    with pytest.raises(ValueError, match="outside the asset store"):
        files.path("../../etc/passwd")


def _plans_of(store: Store, call: Callable[[], object]) -> str:
    """The query plans of the statements ``call`` makes the store run (traced, not copied)."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        store.db.conn.set_trace_callback(None)
    queries = [q for q in statements if q.lstrip().lower().startswith(("select", "update"))]
    assert queries, "the call ran no query"
    return " | ".join(
        " ".join(row[3] for row in store.db.execute(f"explain query plan {q}")) for q in queries
    )


def test_lookups_that_run_per_command_use_an_index_not_a_table_scan(tmp_path: Path) -> None:
    """These run on every /draft, reaction or threaded reply; a scan would make each command
    slower as history grows. The store's own statements are traced and explained."""
    store = Store(tmp_path / "t.db")  # SQLite's query plans (Postgres plans by statistics)
    origin = {"surface": "s", "team": "T", "channel": "C", "user": "u"}
    request_id = store.create_request(origin=origin, command="draft", prompt="p", options={})
    job = {"request_id": request_id, "stage": "draft", "model_id": "m", "provider": "p"}
    job_id = store.create_job({**job, "team": "T", "channel": "C"}, amount=1, limits=[])
    expected_plans = {
        # the budget check, inside the reservation's write lock: no table rows read at all
        "budget": (lambda: store.used("T", "C", ""), "COVERING INDEX"),
        # which message shows an asset (every threaded reply)
        "thread": (lambda: store.thread_for_asset("s", "C", "a"), "asset_id=?"),
        "release": (
            lambda: store.fail_job(job_id, state="failed", error="e", kind="k"),
            "job_id=?",
        ),
        "jobs of a request": (lambda: store.jobs_for_request("r"), "request_id=?"),
        # 🔁 counts the request's rejected grids; /tierbot budget counts approvals by date
        "rejected grids": (lambda: store.count_rejected_grids("r"), "request_id=?"),
        "approvals": (lambda: store.approved_finals("T", ""), "decision=? AND at>?"),
    }
    for name, (call, fragment) in expected_plans.items():
        plan = _plans_of(store, call)
        assert "SCAN" not in plan, (name, plan)
        assert fragment in plan, (name, plan)


def test_rows_written_through_the_store_read_back_after_a_restart(db_location: str) -> None:
    store = Store(db_location)
    origin = {"surface": "slack", "team": "T", "channel": "C", "user": "U"}
    request_id = store.create_request(origin=origin, command="draft", prompt="p", options={})
    store.update_request_options(request_id, {"n": 4})
    store.close()

    again = Store(db_location)
    assert again.get_request(request_id)["options"] == {"n": 4}


def test_a_lost_postgres_connection_is_made_again(database_url: str) -> None:
    """A restarted or failed-over server drops the connection; the next statement (between
    transactions) connects again instead of failing forever."""
    store = Store(database_url)
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", [store.db.conn.pg.info.backend_pid])
    store.heartbeat()
    origin = {"surface": "s", "team": "t", "channel": "c", "user": "u"}
    request_id = store.create_request(origin=origin, command="draft", prompt="p", options={})
    assert store.get_request(request_id)["prompt"] == "p"
    store.close()


def test_processes_starting_together_migrate_once(db_location: str) -> None:
    """Two bots (or a bot and a worker) started at the same moment on a new database."""
    import threading

    start = threading.Barrier(4)
    opened: list[Store] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store(db_location))
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for store in opened:
        assert store.schema_version() == [name for name, _ in STEPS]  # each once, in order
        store.close()
