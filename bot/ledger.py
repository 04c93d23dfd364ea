"""The credit ledger: reserve before a job, settle on success, release on failure or cancel.

Caps come from the policy (per team and per channel, per day and per month, in UTC). A
reservation counts against every cap at once and is written in the same SQLite transaction as
its job (see :meth:`storage.Store.create_job`), so concurrent jobs can never overspend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.policy import Cap, Policy, Window
from storage import LimitReached, Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def credits(milli: int) -> str:
    """Milli-credits as people read them: ``12.5 credits``."""
    value = milli / 1000
    text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{text} credit" if text == "1" else f"{text} credits"


@dataclass(frozen=True)
class Headroom:
    """What is left under the tightest cap, or ``None`` left when no cap applies."""

    left: int | None
    cap: Cap | None

    def describe(self) -> str:
        if self.left is None or self.cap is None:
            return "no cap"
        return f"{credits(self.left)} left of the {self.cap.describe()}"


class BudgetExceeded(Exception):
    """A reservation would take a cap over its limit."""

    def __init__(self, cap: Cap, used: int, amount: int) -> None:
        super().__init__(f"{cap.describe()}: {used} used + {amount} > {cap.limit}")
        self.cap = cap
        self.used = used
        self.amount = amount

    @property
    def left(self) -> int:
        return max(0, self.cap.limit - self.used)


class Ledger:
    """Budget arithmetic over the store."""

    def __init__(self, store: Store, policy: Policy, clock: Clock = utc_now) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def window_start(self, window: Window) -> str:
        now = self.clock().astimezone(UTC)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if window is Window.MONTH:
            start = start.replace(day=1)
        return start.isoformat(timespec="microseconds")

    def caps_with_windows(self, team: str, channel: str) -> list[tuple[Cap, str]]:
        return [(cap, self.window_start(cap.window)) for cap in self.policy.caps(team, channel)]

    def headroom(self, team: str, channel: str) -> Headroom:
        tightest: Headroom = Headroom(None, None)
        for cap, since in self.caps_with_windows(team, channel):
            left = max(0, cap.limit - self.store.used(cap.team, cap.channel, since))
            if tightest.left is None or left < tightest.left:
                tightest = Headroom(left, cap)
        return tightest

    def reserve_job(
        self,
        job: dict[str, Any],
        amount: int,
        replaces: str | None = None,
        replaced_because: str = "",
    ) -> str:
        """Insert ``job`` with ``amount`` reserved against every cap that applies, at once.
        ``replaces`` is the job this one falls back from, failed for ``replaced_because``.

        Raises:
            BudgetExceeded: a cap would be overspent; nothing is written.
        """
        caps = self.caps_with_windows(job["team"], job["channel"])
        try:
            return self.store.create_job(
                job,
                amount=amount,
                limits=[(cap.team, cap.channel, since, cap.limit) for cap, since in caps],
                replaces=replaces,
                replaced_because=replaced_because,
            )
        except LimitReached as reached:
            raise BudgetExceeded(caps[reached.index][0], reached.used, amount) from None

    def report(self, team: str) -> dict[str, Any]:
        """Spend by stage today and this month, and the cost per approved final this month."""
        day = self.store.spend_by_stage(team, self.window_start(Window.DAY))
        month = self.store.spend_by_stage(team, self.window_start(Window.MONTH))
        month_settled = sum(v.get("settled", 0) for v in month.values())
        approved = self.store.approved_finals(team, self.window_start(Window.MONTH))
        return {
            "day": day,
            "month": month,
            "approved_finals": approved,
            "per_approved_final": (month_settled // approved) if approved else None,
        }
