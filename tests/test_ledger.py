"""Credits: caps per team and channel, per day and month; atomic under concurrency."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from bot.ledger import BudgetExceeded, Ledger, credits
from bot.policy import Policy
from storage import Store


def _policy(**team) -> Policy:
    return Policy.model_validate({"teams": {"T1": team}})


def _job(store: Store, channel: str = "C1") -> dict:
    request_id = store.create_request(
        origin={"surface": "t", "team": "T1", "channel": channel, "user": "u"},
        command="draft",
        prompt="p",
        options={},
    )
    return {
        "request_id": request_id,
        "stage": "draft",
        "model_id": "m",
        "provider": "p",
        "params": {},
        "inputs": [],
        "fallbacks": [],
        "reason": "",
        "team": "T1",
        "channel": channel,
    }


def test_fifty_concurrent_reservations_never_overspend(db_location: str) -> None:
    """50 threads, each with its own connection, race for a cap that fits 10."""
    db = db_location
    Store(db).close()  # migrate once
    policy = _policy(daily_credits=10)
    start = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def reserve() -> None:
        store = Store(db)
        ledger = Ledger(store, policy)
        job = _job(store)
        start.wait()
        try:
            ledger.reserve_job(job, 1000)
            result = "ok"
        except BudgetExceeded:
            result = "refused"
        with lock:
            outcomes.append(result)
        store.close()

    threads = [threading.Thread(target=reserve) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 40
    store = Store(db)
    ledger = Ledger(store, policy)
    assert ledger.headroom("T1", "C1").left == 0
    assert store.db.execute("select count(*) from jobs").fetchone()[0] == 10  # no half rows


async def test_concurrent_asyncio_reservations_and_release_returns_credit(db_location: str) -> None:
    store = Store(db_location)
    ledger = Ledger(store, _policy(daily_credits=10))

    async def reserve() -> str | None:
        await asyncio.sleep(0)
        try:
            return ledger.reserve_job(_job(store), 1000)
        except BudgetExceeded:
            return None

    ids = [i for i in await asyncio.gather(*(reserve() for _ in range(50))) if i]
    assert len(ids) == 10
    for _ in range(2):  # failing a job releases its credit once, never twice
        store.fail_job(ids[0], state="cancelled", error="cancelled", kind="cancelled")
        assert ledger.headroom("T1", "C1").left == 1000
    ledger.reserve_job(_job(store), 1000)  # the released credit is spendable again
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve_job(_job(store), 1000)
    assert refused.value.left == 0


def test_completing_a_job_charges_the_actual_amount_once(db_location: str) -> None:
    store = Store(db_location)
    ledger = Ledger(store, Policy())
    job_id = ledger.reserve_job(_job(store), 4000)
    store.complete_job(job_id, [], [], 3000)
    store.complete_job(job_id, [], [], 5000)  # a second completion charges nothing more
    store.fail_job(job_id, state="failed", error="late", kind="transient")  # settled stays
    entry = store.ledger_entry(job_id)
    assert (entry["state"], entry["amount"]) == ("settled", 3000)


def test_channel_cap_and_monthly_cap_apply_alongside_the_team_cap(db_location: str) -> None:
    store = Store(db_location)
    policy = _policy(monthly_credits=5, channels={"C1": {"daily_credits": 2}})
    ledger = Ledger(store, policy)
    ledger.reserve_job(_job(store, "C1"), 2000)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve_job(_job(store, "C1"), 1000)
    assert refused.value.cap.scope == "channel"
    ledger.reserve_job(_job(store, "C2"), 3000)  # another channel: only the team cap
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve_job(_job(store, "C2"), 1000)
    assert refused.value.cap.scope == "team" and refused.value.cap.window.value == "month"


def test_daily_window_starts_at_utc_midnight(db_location: str) -> None:
    store = Store(db_location)
    now = [datetime(2026, 11, 20, 23, 0, tzinfo=UTC)]
    ledger = Ledger(store, _policy(daily_credits=1), clock=lambda: now[0])
    store_job = _job(store)
    # Rows are stamped with the real clock; move our clock to "tomorrow" relative to them.
    ledger.reserve_job(store_job, 1000)
    now[0] = datetime.now(UTC) + timedelta(days=1)
    assert ledger.headroom("T1", "C1").left == 1000


@pytest.mark.parametrize(
    ("milli", "text"),
    [
        (1000, "1 credit"),
        (4000, "4 credits"),
        (3900, "3.9 credits"),
        (0, "0 credits"),
        (1234567, "1,234.567 credits"),
    ],
)
def test_credits_read_like_people_write_them(milli: int, text: str) -> None:
    assert credits(milli) == text
