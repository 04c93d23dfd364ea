"""Postgres for the store: every difference from SQLite lives here.

The store is written once, against the small part of sqlite-utils it uses: ``db.execute``,
``db.query``, ``db.conn`` (``BEGIN IMMEDIATE``, ``commit``, ``rollback``, ``in_transaction``,
``executemany``) and, in the migrations, ``db[table].create / create_index / add_column``.
:class:`PostgresDatabase` offers the same over one psycopg 3 connection, turning SQLite's
SQL into Postgres' as it goes (:func:`to_postgres`), so the same statements and the same
migrations run on both.

What differs, and how it is bridged:

- Placeholders ``?`` become ``%s``; ``insert or ignore`` becomes ``on conflict do nothing``.
- ``BEGIN IMMEDIATE`` (SQLite's write lock, taken before the first read) becomes ``BEGIN``
  plus a transaction-scoped advisory lock: write transactions are serialised across every
  process on the database, so two reservations can never both see the same remaining budget.
- Text columns are ``collate "C"``: comparisons are by code point, as in SQLite (ISO times and
  key prefixes compare the same way on both).
- SQLite's implicit ``rowid`` (insertion order) is an identity column here, hidden from
  results as SQLite hides its own; an integer ``id`` key is an identity column, and an insert
  into such a table returns it as ``lastrowid``.
- ``user`` is a reserved word in Postgres and is quoted; ``cross join ... on`` (a SQLite
  planner hint) is a plain join; booleans are stored as integers, as SQLite stores them.
- A migration and its record commit together, under the same lock, so two processes starting
  at once migrate once.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import pq

log = logging.getLogger(__name__)

#: The advisory lock every write transaction takes (any constant; "tierbot" in ASCII).
WRITE_LOCK = 0x74696572626F74
#: The lock held while migrating ("tierbotm").
MIGRATION_LOCK = 0x74696572626F746D
MIGRATIONS_TABLE = "_tierbot_migrations"

_TYPES = {str: 'text collate "C"', int: "bigint", float: "double precision", bytes: "bytea"}


def is_postgres_url(location: object) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


# -- SQL -------------------------------------------------------------------------------------

_INSERT_OR_IGNORE = re.compile(r"^\s*insert\s+or\s+ignore\s+into", re.IGNORECASE)
_USER = re.compile(r'(?<!["\w])user(?!["\w])')
_CROSS_JOIN = re.compile(r"\bcross\s+join\b(?=[^()]*?\bon\b)", re.IGNORECASE)


def to_postgres(sql: str) -> str:
    """SQLite's dialect of ``sql`` as Postgres reads it (see the module's list)."""
    converted = sql.replace("%", "%%").replace("?", "%s")
    converted = _USER.sub('"user"', converted)
    converted = _CROSS_JOIN.sub("join", converted)
    if _INSERT_OR_IGNORE.match(converted):
        converted = _INSERT_OR_IGNORE.sub("insert into", converted) + " on conflict do nothing"
    return converted


def _param(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _params(parameters: Sequence[Any] | None) -> list[Any] | None:
    return None if parameters is None else [_param(v) for v in parameters]


# -- connection and cursor -------------------------------------------------------------------


class Cursor:
    """A statement's results, shaped like sqlite3's cursor (``rowid`` hidden)."""

    def __init__(self, cursor: psycopg.Cursor[Any], lastrowid: int | None = None) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = lastrowid
        columns = [c.name for c in cursor.description or ()]
        self._keep = [i for i, name in enumerate(columns) if name != "rowid"]
        self.description = [(columns[i],) for i in self._keep] if cursor.description else None

    def _row(self, row: Sequence[Any] | None) -> tuple[Any, ...] | None:
        return None if row is None else tuple(row[i] for i in self._keep)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row(self._cursor.fetchone()) if self.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        if not self.description:
            return []
        return [tuple(row[i] for i in self._keep) for row in self._cursor.fetchall()]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class Connection:
    """The part of ``sqlite3.Connection`` the store uses, over psycopg in autocommit mode:
    a statement outside ``BEGIN ... COMMIT`` commits on its own, as sqlite-utils' do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = psycopg.connect(url, autocommit=True)
        self.identity_tables: set[str] = set()
        self._began = False  # inside BEGIN ... COMMIT (a lost connection cannot be retried)

    def _run(self, statement: str, parameters: Sequence[Any] | None) -> psycopg.Cursor[Any]:
        """Execute, connecting again once if the connection was lost between transactions
        (a restarted or failed-over server): nothing was half done, so the statement is
        simply sent again. Inside a transaction the loss is the caller's error."""
        try:
            return self.pg.execute(statement, parameters)  # type: ignore[arg-type]
        except psycopg.OperationalError:
            if not self.pg.broken or self._began:
                raise
            log.warning("the database connection was lost; connecting again")
            self.pg = psycopg.connect(self.url, autocommit=True)
            return self.pg.execute(statement, parameters)  # type: ignore[arg-type]

    @property
    def in_transaction(self) -> bool:
        status = self.pg.info.transaction_status
        return self._began or status not in (
            pq.TransactionStatus.IDLE,
            pq.TransactionStatus.UNKNOWN,
        )

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            self._run("BEGIN", None)
            self._began = True
            self.pg.execute("select pg_advisory_xact_lock(%s)", [WRITE_LOCK])
            return Cursor(self.pg.cursor())
        statement = to_postgres(sql)
        table = _inserted_table(statement)
        returning = table in self.identity_tables and "returning" not in statement.lower()
        if returning:
            statement += " returning id"
        cursor = self._run(statement, _params(parameters))
        lastrowid = None
        if returning:
            row = cursor.fetchone()
            lastrowid = int(row[0]) if row else None
        return Cursor(cursor, lastrowid)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.pg.cursor() as cursor:
            cursor.executemany(to_postgres(sql), [_params(row) for row in rows])

    def commit(self) -> None:
        self._began = False
        if self.in_transaction:
            self.pg.execute("COMMIT")

    def rollback(self) -> None:
        self._began = False
        if self.in_transaction and not self.pg.broken:
            self.pg.execute("ROLLBACK")

    def close(self) -> None:
        self.pg.close()


_INSERT_INTO = re.compile(r"^\s*insert\s+into\s+(\w+)", re.IGNORECASE)


def _inserted_table(statement: str) -> str | None:
    match = _INSERT_INTO.match(statement)
    return match.group(1) if match else None


# -- the database ----------------------------------------------------------------------------


class PostgresDatabase:
    """What the store and its migrations call on a sqlite-utils ``Database``, on Postgres."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url)

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        return self.conn.execute(sql, parameters)

    def query(self, sql: str, parameters: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
        cursor = self.execute(sql, parameters)
        names = [c[0] for c in cursor.description or ()]
        for row in cursor.fetchall():
            yield dict(zip(names, row, strict=True))

    def __getitem__(self, name: str) -> Table:
        return Table(self, name)

    @contextlib.contextmanager
    def pg_transaction(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``'s equivalent), committed at the end."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        else:
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    # -- migrations --------------------------------------------------------------------------

    def migrate(self, steps: Sequence[tuple[str, Callable[[Any], None]]]) -> None:
        """Apply the steps not yet recorded, each with its record in one transaction; the
        whole under a lock, so processes starting together migrate once (even ``create
        table if not exists`` races in Postgres)."""
        pg = self.conn.pg
        pg.execute("select pg_advisory_lock(%s)", [MIGRATION_LOCK])
        try:
            pg.execute(
                f"create table if not exists {MIGRATIONS_TABLE} "
                "(name text primary key, applied_at text not null)"
            )
            self._apply(steps)
        finally:
            pg.execute("select pg_advisory_unlock(%s)", [MIGRATION_LOCK])

    def _apply(self, steps: Sequence[tuple[str, Callable[[Any], None]]]) -> None:
        for name, step in steps:
            with self.pg_transaction():
                if self.conn.pg.execute(
                    f"select 1 from {MIGRATIONS_TABLE} where name = %s", [name]
                ).fetchone():
                    continue
                step(self)
                self.conn.pg.execute(
                    f"insert into {MIGRATIONS_TABLE} (name, applied_at) values (%s, %s)",
                    [name, datetime.now(UTC).isoformat()],
                )
        self.conn.identity_tables = {
            row[0]
            for row in self.conn.pg.execute(
                "select table_name from information_schema.columns where column_name = 'id' "
                "and is_identity = 'YES' and table_schema = current_schema()"
            ).fetchall()
        }

    def applied_migrations(self) -> list[str]:
        rows = self.conn.pg.execute(
            f"select name from {MIGRATIONS_TABLE} order by applied_at, name"
        ).fetchall()
        return [row[0] for row in rows]


class Table:
    """The migrations' view of a table: ``create``, ``create_index``, ``add_column``, written
    as sqlite-utils writes them (same index names, so later migrations can drop them)."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self.db = db
        self.name = name

    def create(
        self,
        columns: dict[str, type],
        *,
        pk: str | tuple[str, ...],
        foreign_keys: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        keys = [pk] if isinstance(pk, str) else list(pk)
        serial = keys == ["id"] and columns.get("id") is int
        lines = []
        for column, kind in columns.items():
            if serial and column == "id":
                lines.append("id bigint generated by default as identity")
            else:
                lines.append(f"{_quoted(column)} {_TYPES[kind]}")
        if not serial:
            lines.append("rowid bigint generated always as identity")
        lines.append(f"primary key ({', '.join(map(_quoted, keys))})")
        for column, other, other_column in foreign_keys:
            lines.append(f"foreign key ({_quoted(column)}) references {other} ({other_column})")
        self.db.conn.pg.execute(f"create table {self.name} ({', '.join(lines)})")

    def create_index(self, columns: Sequence[str], *, unique: bool = False) -> None:
        name = f"idx_{self.name}_{'_'.join(columns)}"
        self.db.conn.pg.execute(
            f"create {'unique ' if unique else ''}index {name} on {self.name} "
            f"({', '.join(map(_quoted, columns))})"
        )

    def add_column(self, column: str, kind: type) -> None:
        self.db.conn.pg.execute(
            f"alter table {self.name} add column {_quoted(column)} {_TYPES[kind]}"
        )


def _quoted(column: str) -> str:
    return f'"{column}"'
