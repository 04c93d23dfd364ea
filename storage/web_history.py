"""The web channel's history: the web channel is its own platform, so its messages (and
their status lines) are rows here, in the same database as everything else."""

from __future__ import annotations

import json
import logging
from typing import Any

from storage.store import Store, _json, insert_row, update_row, utcnow

log = logging.getLogger(__name__)


class WebHistory:
    """The messages of the local web channel, oldest first; a status line is a message with
    a ``state`` (queued, running, done, failed, cancelled, interrupted)."""

    def __init__(self, store: Store) -> None:
        self.db = store.db
        self.transaction = store.transaction

    def add(self, message: dict[str, Any]) -> int:
        return insert_row(self.db, "web_messages", {"at": utcnow(), **_columns(message)})

    def update(self, message_id: int, *, stamp: str | None = None, **fields: Any) -> None:
        """Set ``fields``, and the time column ``stamp`` (``started_at``, ``finished_at``)
        to now."""
        if stamp in ("started_at", "finished_at"):
            fields[stamp] = utcnow()
        update_row(self.db, "web_messages", message_id, _columns(fields))

    def interrupt_statuses(self, detail: str) -> int:
        """Mark status lines still queued or running (a killed process left them moving)
        as interrupted; returns how many."""
        with self.transaction():
            cursor = self.db.execute(
                "update web_messages set state = 'interrupted', detail = ?, finished_at = ? "
                "where state in ('queued', 'running')",
                [detail, utcnow()],
            )
            return cursor.rowcount

    def get(self, message_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from web_messages where id = ?", [message_id]))
        return _decoded(rows[0]) if rows else None

    def visible_to(self, viewer: str | None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` messages ``viewer`` may see, oldest first."""
        rows = self.db.query(
            "select * from (select * from web_messages where private_to is null "
            "or private_to = ? order by id desc limit ?) as newest order by id",
            [viewer or "", limit],
        )
        return [_decoded(r) for r in rows]


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: _json(v) for k, v in fields.items()}


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for field in ("files", "reactions"):
        row[field] = json.loads(row[field]) if row.get(field) else []
    row["error"] = bool(row.get("error"))
    return row
