"""A real PostgreSQL for the tests: one server per test session (pytest-postgresql's executor
runs Debian's ``pg_ctl``), one fresh database per test (its ``DatabaseJanitor``).

PostgreSQL refuses to run as root, and CI runs as root: there ``pg_ctl`` runs as the
``postgres`` user that Debian's package creates, through ``runuser``. With
``TEST_POSTGRES_URL`` set (``postgresql://user@host:port``) the tests use that server
instead. Without PostgreSQL installed the Postgres variants skip, except under CI, where a
missing server is a failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None = None

    def url(self, dbname: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"


def _pg_ctl() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    return found[-1] if found else shutil.which("pg_ctl")


def _major(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def session_server() -> Iterator[Server]:
    """A running server for this session (started and stopped here unless one is given)."""
    given = os.environ.get("TEST_POSTGRES_URL")
    if given:
        from urllib.parse import urlsplit

        parts = urlsplit(given)
        yield Server(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "")
        return
    pg_ctl = _pg_ctl()
    if pg_ctl is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    from pytest_postgresql.executors.proc import PostgreSQLExecutor

    home = Path(tempfile.mkdtemp(prefix="tierbot-pg-"))
    executable = pg_ctl
    if os.geteuid() == 0:  # postgres will not run as root
        account = pwd.getpwnam("postgres")
        os.chown(home, account.pw_uid, account.pw_gid)
        executable = str(home / "pg_ctl")
        Path(executable).write_text(f'#!/bin/sh\ncd /\nexec runuser -u postgres -- {pg_ctl} "$@"\n')
        os.chmod(executable, 0o755)
    port = _free_port()
    executor = PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(home / "data"),
        unixsocketdir=str(home),
        logfile=str(home / "server.log"),
        startparams="-w",
        dbname="tierbot",
        # Durability is not what these tests measure; a cluster test opens many connections.
        postgres_options="-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=200",
    )
    executor.start()
    try:
        yield Server("127.0.0.1", port, "postgres")
    finally:
        executor.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def fresh_database(server: Server) -> Iterator[str]:
    """A new, empty database on ``server`` for one test; dropped afterwards. Its URL."""
    from pytest_postgresql.janitor import DatabaseJanitor

    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        dbname=dbname,
        password=server.password,
    ):
        yield server.url(dbname)
