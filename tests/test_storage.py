"""Storage: migrations, WAL, atomic job writes, the content-addressed file store."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import AssetFiles, Store
from storage.schema import migrations


def test_schema_is_migrated_once_and_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    applied = store.schema_version()
    assert applied == [m.name for m in migrations._migrations]
    assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    store.close()
    again = Store(tmp_path / "t.db")  # reopening applies nothing twice
    assert again.schema_version() == applied
    assert {
        "requests",
        "jobs",
        "assets",
        "asset_parents",
        "gates",
        "ledger",
        "processed_events",
        "messages",
    } <= set(again.db.table_names())


def test_gates_and_event_ids_are_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    request = store.create_request(
        origin={"surface": "s", "team": "t", "channel": "c", "user": "u"},
        command="draft",
        prompt="p",
        options={},
    )
    asset = store.save_asset(
        {"request_id": request, "kind": "image", "stage": "draft", "path": "x", "model_id": "m"}
    )
    assert store.record_gate(asset, "approved", user="u", surface="s") is True
    assert store.record_gate(asset, "approved", user="v", surface="s") is False
    assert store.first_delivery("slack:Ev1") is True
    assert store.first_delivery("slack:Ev1") is False
    store.record_message("s", "c", "m1", asset)
    assert store.asset_for_message("s", "c", "m1") == asset
    assert store.asset_for_message("s", "other", "m1") is None


def test_lineage_parents_keep_their_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
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


def test_lookups_that_run_per_command_use_an_index_not_a_table_scan(tmp_path: Path) -> None:
    """These run on every /draft; a scan would make each command slower as history grows."""
    store = Store(tmp_path / "t.db")
    expected_plans = {
        # the budget check, inside the reservation's write lock: no table rows read at all
        "select coalesce(sum(amount), 0) from ledger where team = 'T' and created_at >= '' "
        "and channel = 'C' and state in ('reserved', 'settled')": "COVERING INDEX",
        # which message shows an asset (every threaded reply)
        "select message_id, thread_id from messages where surface = 's' and channel = 'C' "
        "and asset_id = 'a' order by posted_at desc limit 1": "asset_id=?",
        "update ledger set state = 'settled' where job_id = 'j' and state = 'reserved'": (
            "job_id=?"
        ),
        "select * from jobs where request_id = 'r'": "request_id=?",
    }
    for sql, fragment in expected_plans.items():
        plan = " ".join(row[3] for row in store.db.execute(f"explain query plan {sql}"))
        assert "SCAN" not in plan, (sql, plan)
        assert fragment in plan, (sql, plan)


def test_rows_written_through_the_store_read_back_after_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    origin = {"surface": "slack", "team": "T", "channel": "C", "user": "U"}
    request_id = store.create_request(origin=origin, command="draft", prompt="p", options={})
    store.update_request_options(request_id, {"n": 4})
    store.close()

    again = Store(tmp_path / "t.db")
    assert again.get_request(request_id)["options"] == {"n": 4}
