"""Team policy: who may approve spending, budget caps, escalation thresholds, health rules.

Read from the TOML file named by ``TIERBOT_POLICY``; with no file every person may approve
and no cap applies. Rules resolve from the most specific level: channel, then team, then
``[default]``. Credits in the file are whole credits (people's unit); the code works in
milli-credits. Example::

    [default]
    reroute_after_rejections = 2   # rejected grids before drafts route up a tier
    daily_credits = 500            # per-team cap unless the team sets its own
    drift_alert = 10               # palette CIEDE2000 from a result's source that offers 🎨
    seam_alert = 3                 # seam CIEDE2000 after matching that offers 🪄

    [teams.T0123ABCD]              # Slack team id, Discord guild id, or "local"
    approvers = ["U024BE7LH", "S0614TZR7"]   # user ids, "surface:user", or group/role ids
    monthly_credits = 8000

    [teams.T0123ABCD.channels.C0456]
    approvers = ["U024BE7LH"]
    open_spend_credits = 10        # spending reactions at or under this need no approver
    daily_credits = 100

    [calendars]
    morning = "calendars/morning.csv"   # content calendar of the schedule named "morning"

    [health]
    failures = 3                   # a model failing this often ...
    window_s = 60                  # ... within this window ...
    cooldown_s = 120               # ... is skipped for this long
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from bot.domain import Origin

log = logging.getLogger(__name__)

MILLI = 1000


class Rules(BaseModel):
    """One level of rules; a field left out inherits from the level above."""

    approvers: list[str] | None = None
    open_spend_credits: int | None = Field(default=None, ge=0)
    reroute_after_rejections: int | None = Field(default=None, ge=1)
    daily_credits: int | None = Field(default=None, ge=0)
    monthly_credits: int | None = Field(default=None, ge=0)
    #: CIEDE2000 between a result's palette and its source's above which 🎨 is offered.
    drift_alert: float | None = Field(default=None, gt=0)
    #: CIEDE2000 of a region edit's seam (after matching) above which 🪄 is offered.
    seam_alert: float | None = Field(default=None, gt=0)


class TeamRules(Rules):
    channels: dict[str, Rules] = Field(default_factory=dict)


class HealthRules(BaseModel):
    failures: int = Field(default=3, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    cooldown_s: float = Field(default=120.0, ge=0)


class Window(StrEnum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True)
class Cap:
    """A budget limit: ``limit`` milli-credits per ``window`` for one team or one channel."""

    scope: str  # "team" or "channel"
    team: str
    channel: str | None
    window: Window
    limit: int

    def describe(self) -> str:
        where = f"channel {self.channel}" if self.scope == "channel" else f"team {self.team}"
        return f"{where} {'daily' if self.window is Window.DAY else 'monthly'} cap"


@dataclass(frozen=True)
class EffectiveRules:
    approvers: tuple[str, ...]
    open_spend: int  # milli-credits
    reroute_after_rejections: int
    drift_alert: float = 10.0
    seam_alert: float = 3.0


class PolicyError(Exception):
    """The policy file is malformed; the message names the entry."""


class Policy(BaseModel):
    default: Rules = Field(default_factory=Rules)
    teams: dict[str, TeamRules] = Field(default_factory=dict)
    health: HealthRules = Field(default_factory=HealthRules)
    #: Content calendars by schedule name: CSV files (date, prompt, optional style, ar, n).
    calendars: dict[str, Path] = Field(default_factory=dict)

    def _levels(self, team: str, channel: str) -> list[Rules]:
        team_rules = self.teams.get(team)
        levels: list[Rules] = []
        if team_rules is not None:
            channel_rules = team_rules.channels.get(channel)
            if channel_rules is not None:
                levels.append(channel_rules)
            levels.append(team_rules)
        levels.append(self.default)
        return levels

    def rules_for(self, origin: Origin) -> EffectiveRules:
        levels = self._levels(origin.team, origin.channel)

        def first(field: str, fallback: object) -> object:
            for level in levels:
                value = getattr(level, field)
                if value is not None:
                    return value
            return fallback

        return EffectiveRules(
            approvers=tuple(first("approvers", [])),  # type: ignore[arg-type]
            open_spend=int(first("open_spend_credits", 0)) * MILLI,  # type: ignore[call-overload]
            reroute_after_rejections=int(first("reroute_after_rejections", 2)),  # type: ignore[call-overload]
            drift_alert=float(first("drift_alert", 10.0)),  # type: ignore[arg-type]
            seam_alert=float(first("seam_alert", 3.0)),  # type: ignore[arg-type]
        )

    def is_approver(self, origin: Origin) -> bool:
        """Whether this person may approve here; everyone may where no approvers are named."""
        approvers = self.rules_for(origin).approvers
        if not approvers:
            return True
        names = {origin.user, f"{origin.surface}:{origin.user}", *origin.groups}
        return bool(names & set(approvers))

    def may_spend(self, origin: Origin, price: int) -> bool:
        """Whether this person may trigger a spending action of ``price`` milli-credits here."""
        return price <= self.rules_for(origin).open_spend or self.is_approver(origin)

    def caps(self, team: str, channel: str) -> list[Cap]:
        """Every cap that a spend in ``team``/``channel`` counts against."""
        caps: list[Cap] = []
        team_rules = self.teams.get(team)
        for window, field in ((Window.DAY, "daily_credits"), (Window.MONTH, "monthly_credits")):
            team_limit = getattr(team_rules, field, None) if team_rules else None
            if team_limit is None:
                team_limit = getattr(self.default, field)
            if team_limit is not None:
                caps.append(Cap("team", team, None, window, team_limit * MILLI))
            channel_rules = team_rules.channels.get(channel) if team_rules else None
            channel_limit = getattr(channel_rules, field, None) if channel_rules else None
            if channel_limit is not None:
                caps.append(Cap("channel", team, channel, window, channel_limit * MILLI))
        return caps


def load_policy(path: Path | None) -> Policy:
    """Read the policy file; no file means the permissive default.

    Raises:
        PolicyError: naming the file and the entry that is wrong.
    """
    if path is None:
        return Policy()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return Policy.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        raise PolicyError(f"{path}:\n  " + "\n  ".join(problems)) from None
