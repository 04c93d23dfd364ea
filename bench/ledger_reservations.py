"""Ledger: reservations per second with 50 concurrent writers, and proof none overspent, on
SQLite and (where PostgreSQL is installed) on Postgres.

Each writer is a thread with its own database connection (as separate processes would be),
racing for a cap that fits a known number of reservations. Prints figures; never fails on time.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests` is not an installed package

from bot.ledger import BudgetExceeded, Ledger  # noqa: E402
from bot.policy import Policy  # noqa: E402
from storage import Store  # noqa: E402

WRITERS = 50
PER_WRITER = 40
CAP_RESERVATIONS = 1500  # fewer than WRITERS * PER_WRITER: some must be refused


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        race("SQLite", str(Path(folder) / "bench.db"))
    try:
        from tests.postgres import fresh_database, session_server

        servers = session_server()
        server = servers.__enter__()
    except BaseException as exc:  # pytest.skip when PostgreSQL is missing
        print(f"ledger on Postgres: skipped ({exc})")
        return
    try:
        with fresh_database(server) as url:
            race("Postgres", url)
    finally:
        servers.__exit__(None, None, None)


def race(name: str, db: str) -> None:
    Store(db).close()
    policy = Policy.model_validate({"teams": {"T": {"daily_credits": CAP_RESERVATIONS}}})
    granted = [0] * WRITERS
    barrier = threading.Barrier(WRITERS + 1)

    def writer(index: int) -> None:
        store = Store(db)
        ledger = Ledger(store, policy)
        request = store.create_request(
            origin={"surface": "b", "team": "T", "channel": "C", "user": "u"},
            command="draft",
            prompt="p",
            options={},
        )
        barrier.wait()
        for _ in range(PER_WRITER):
            try:
                ledger.reserve_job(
                    {
                        "request_id": request,
                        "stage": "draft",
                        "model_id": "m",
                        "provider": "p",
                        "params": {},
                        "inputs": [],
                        "fallbacks": [],
                        "reason": "",
                        "team": "T",
                        "channel": "C",
                    },
                    1000,
                )
                granted[index] += 1
            except BudgetExceeded:
                pass
        store.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    store = Store(db)
    reserved = store.used("T", None, "0")
    attempts = WRITERS * PER_WRITER
    print(
        f"ledger on {name}: {attempts} reservation attempts by {WRITERS} writers in "
        f"{elapsed:.2f} s "
        f"= {attempts / elapsed:,.0f}/s; granted {sum(granted)} of a cap of "
        f"{CAP_RESERVATIONS}; reserved {reserved // 1000} credits; overspent: "
        f"{'NO' if reserved <= CAP_RESERVATIONS * 1000 else 'YES'}"
    )


if __name__ == "__main__":
    main()
