"""Daily social batches: scheduled drafts posted for approval.

``/tierbot schedule add morning daily 09:00 --tz Europe/Berlin --days mon-fri --n 4 "..."``
stores a schedule (SQLite). On each scheduled day at that local time the bot posts a normal
draft grid in the schedule's channel, as the person who added it; approvals and escalation work
as for any grid. The prompt comes from the template (``{date}``, ``{weekday}``, ``{month}`` and
the columns of a content-calendar row) unless the content calendar has a row for that day, which
replaces it (its ``style``, ``ar`` and ``n`` too). A calendar is CSV (``date,prompt`` plus
optional ``style,ar,n`` and any extra columns the template uses), sent as a file with
``/tierbot schedule calendar <name>`` (Discord's ``calendar`` option, the web channel's 📎, or
``tierbot schedule calendar <name> <file.csv>`` in a terminal) or named in the policy file under
``[calendars]``. The core only takes the file's bytes from the surface: a path typed in a chat
is never read. With ``--summary 17:00`` a "ready to publish" summary is posted in the batch's
thread at that hour: the approved finals with links, and what is still waiting.

Timing: apscheduler 3's ``AsyncIOScheduler`` runs in the shared event loop with one
``CronTrigger`` per schedule (in the schedule's time zone, so daylight-saving changes keep the
local hour). Every batch is recorded (``schedule_runs``, one row per schedule and local date)
before it starts, so a batch never runs twice, even across a crash mid-batch. At start-up a run
missed while the bot was down runs once if it is at most ``TIERBOT_SCHEDULE_GRACE_S`` late.

Budget: the whole batch is priced and checked against what is left before anything starts,
and all its jobs are reserved together; a batch that does not fit posts a notice (price, what is
left, who can raise the cap) instead of a partial batch.
"""

from __future__ import annotations

import asyncio
import csv
import difflib
import io
import logging
import re
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.catalog import Catalog
from bot.commands import MAX_N, Invocation
from bot.domain import (
    ASPECT_RATIOS,
    DEFAULT_AR,
    DEFAULT_N,
    AssetKind,
    Decision,
    Origin,
    Reply,
    replies_of,
)
from bot.errors import UserError, guarded
from bot.ledger import utc_now
from bot.pipeline import Pipeline, durable
from bot.policy import Policy
from bot.runner import JobFailed
from storage import Store

log = logging.getLogger(__name__)

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TEMPLATE_FIELDS = ("date", "weekday", "month")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

Deliver = Callable[[Origin, AsyncIterator[Reply]], Awaitable[None]]
#: The largest content calendar taken from a chat; a year of daily rows is about 60 KB.
MAX_CALENDAR_BYTES = 256_000


def parse_time(value: str, what: str = "the time") -> str:
    """``"9:05"`` → ``"09:05"``.

    Raises:
        UserError: naming the bad value.
    """
    match = _TIME.match(value.strip())
    if not match:
        raise UserError(f"{what} must be HH:MM on a 24-hour clock, e.g. 09:00; got {value}")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def parse_tz(value: str) -> str:
    """A IANA time zone name, checked.

    Raises:
        UserError: unknown zone, with the nearest known one.
    """
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        hint = difflib.get_close_matches(value, sorted(available_timezones()), n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        raise UserError(
            f"--tz must be a time zone like Europe/Berlin; got {value}{suggestion}"
        ) from None
    return value


def parse_days(value: str | None) -> str:
    """``mon-fri``, ``mon,wed,fri``, ``sat-sun``, ``daily`` → ``"mon,tue,wed,thu,fri"``.

    Raises:
        UserError: naming the part that is not a day.
    """
    if value is None or value.strip().lower() in ("daily", "every-day", "all"):
        return ",".join(DAY_NAMES)
    days: list[str] = []
    for part in value.lower().replace(" ", "").split(","):
        first, sep, last = part.partition("-")
        for name in (first, last) if sep else (first,):
            if name[:3] not in DAY_NAMES:
                raise UserError(
                    f"--days must name days like mon-fri or mon,wed,fri; {name or part!r} is "
                    "not one of mon, tue, wed, thu, fri, sat, sun"
                )
        start = DAY_NAMES.index(first[:3])
        end = DAY_NAMES.index(last[:3]) if sep else start
        span = range(start, end + 1) if start <= end else [*range(start, 7), *range(0, end + 1)]
        days += [DAY_NAMES[i] for i in span if DAY_NAMES[i] not in days]
    return ",".join(d for d in DAY_NAMES if d in days)


def template_fields(template: str) -> list[str]:
    """The ``{fields}`` a template uses.

    Raises:
        UserError: unbalanced braces or a positional ``{}``.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UserError(f"the prompt template has a stray brace: {exc}") from None
    if "" in fields or any(f.isdigit() for f in fields):
        raise UserError(
            "the prompt template uses {} without a name; use {date}, {weekday} or {month}"
        )
    return fields


@dataclass(frozen=True)
class CalendarRow:
    day: date
    prompt: str
    style: str | None
    ar: str | None
    n: int | None
    fields: dict[str, str]


def parse_calendar(text: str, catalog: Catalog) -> dict[date, CalendarRow]:
    """A content calendar from CSV text, every row checked.

    Raises:
        UserError: naming the row (as a spreadsheet numbers it) and what is wrong.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in ("date", "prompt") if c not in header]
    if missing:
        raise UserError(
            f"the calendar needs the columns date and prompt; missing {', '.join(missing)}"
        )
    rows: dict[date, CalendarRow] = {}
    for number, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        where = f"calendar row {number}"
        try:
            day = date.fromisoformat(row["date"])
        except ValueError:
            raise UserError(f"{where}: date must be YYYY-MM-DD; got {row['date']!r}") from None
        if not row["prompt"]:
            raise UserError(f"{where}: the prompt is empty")
        ar = row.get("ar") or None
        if ar is not None and ar not in ASPECT_RATIOS:
            raise UserError(f"{where}: ar must be one of {', '.join(ASPECT_RATIOS)}; got {ar}")
        n: int | None = None
        if row.get("n"):
            if not row["n"].isdigit() or not 1 <= int(row["n"]) <= MAX_N:
                raise UserError(
                    f"{where}: n must be a whole number from 1 to {MAX_N}; got {row['n']}"
                )
            n = int(row["n"])
        style = row.get("style") or None
        if style is not None and style not in catalog.styles:
            raise UserError(
                f"{where}: style must be one of {', '.join(sorted(catalog.styles))}; got {style}"
            )
        if day in rows:
            raise UserError(f"{where}: {day} already has a row")
        rows[day] = CalendarRow(day, row["prompt"], style, ar, n, row)
    return rows


def trigger(schedule: dict[str, Any], at_time: str | None = None) -> CronTrigger:
    """The cron trigger of a schedule (or of its summary, with ``at_time``)."""
    hour, minute = (at_time or schedule["at_time"]).split(":")
    return CronTrigger(
        hour=int(hour),
        minute=int(minute),
        day_of_week=schedule["days"],
        timezone=ZoneInfo(schedule["tz"]),
    )


def _timing(schedule: dict[str, Any]) -> tuple[Any, ...]:
    """What a schedule's timers depend on: when one of these changes, it is armed again."""
    return tuple(schedule[k] for k in ("at_time", "tz", "days", "summary_time", "paused"))


def next_run(schedule: dict[str, Any], now: datetime) -> datetime:
    """The next local run time after ``now``."""
    fire = trigger(schedule).get_next_fire_time(None, now)
    assert fire is not None
    return fire


class Scheduler:
    """Schedules: the ``/tierbot schedule`` command, the timer, and the batches."""

    def __init__(
        self,
        *,
        store: Store,
        pipeline: Pipeline,
        catalog: Catalog,
        policy: Policy,
        grace_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.catalog = catalog
        self.policy = policy
        self.grace_s = grace_s
        self.clock = clock
        #: How each surface posts replies in a channel, registered by the surfaces at start.
        self.deliverers: dict[str, Deliver] = {}
        self._timer: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: What each armed schedule was armed with (see :meth:`sync`).
        self._armed: dict[str, tuple[Any, ...]] = {}

    # -- the timer ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Arm every schedule in the running loop, then run what was missed within the grace.

        Returns:
            How many missed batches were run.
        """
        self._timer = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")
        for schedule in self.store.schedules():
            self._arm(schedule)
        self._timer.start()
        return await self.catch_up()

    def stop(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.shutdown(wait=False)

    def sync(self) -> None:
        """Arm what other processes added or changed since, and disarm what they removed.

        Every ``tierbot run`` arms every schedule, so a batch fires while any of them is up;
        the batch (and its summary) is recorded in the store before it runs, so whichever
        process records it first is the only one that runs it.
        """
        if self._timer is None:
            return
        current = {schedule["id"]: schedule for schedule in self.store.schedules()}
        for schedule_id in set(self._armed) - set(current):
            self._disarm(schedule_id)
        for schedule in current.values():
            if self._armed.get(schedule["id"]) != _timing(schedule):
                self._arm(schedule)

    def _arm(self, schedule: dict[str, Any]) -> None:
        if self._timer is None:
            return
        self._disarm(schedule["id"])
        self._armed[schedule["id"]] = _timing(schedule)
        if schedule["paused"]:
            return
        self._timer.add_job(
            self._on_time,
            trigger(schedule),
            args=[schedule["id"]],
            id=f"batch:{schedule['id']}",
            misfire_grace_time=int(self.grace_s) or 1,
            coalesce=True,
            replace_existing=True,
        )
        if schedule["summary_time"]:
            self._timer.add_job(
                self._on_summary_time,
                trigger(schedule, schedule["summary_time"]),
                args=[schedule["id"]],
                id=f"summary:{schedule['id']}",
                coalesce=True,
                replace_existing=True,
            )

    def _disarm(self, schedule_id: str) -> None:
        if self._timer is None:
            return
        self._armed.pop(schedule_id, None)
        for job_id in (f"batch:{schedule_id}", f"summary:{schedule_id}"):
            if self._timer.get_job(job_id) is not None:
                self._timer.remove_job(job_id)

    async def _on_time(self, schedule_id: str) -> None:
        schedule = self.store.get_schedule(schedule_id)
        # Paused between the timer waking and this call: the pause wins.
        if schedule is not None and not schedule["paused"]:
            await self.fire(schedule, self.clock().astimezone(ZoneInfo(schedule["tz"])).date())

    async def _on_summary_time(self, schedule_id: str) -> None:
        schedule = self.store.get_schedule(schedule_id)
        if schedule is not None:
            await self.summarize(schedule, self.clock().astimezone(ZoneInfo(schedule["tz"])).date())

    async def catch_up(self) -> int:
        """Run, once, every batch whose time passed at most ``grace_s`` ago without a run."""
        now = self.clock()
        ran = 0
        for schedule in self.store.schedules():
            if schedule["paused"]:
                continue
            due = trigger(schedule).get_next_fire_time(None, now - timedelta(seconds=self.grace_s))
            if due is None or due > now:
                continue
            day = due.date()
            if self.store.schedule_run(schedule["id"], day.isoformat()) is None:
                log.info("running missed batch %s for %s", schedule["name"], day)
                await self.fire(schedule, day)
                ran += 1
        return ran

    # -- batches -----------------------------------------------------------------------------

    async def fire(self, schedule: dict[str, Any], day: date) -> None:
        """Post one day's batch of a schedule (at most once per day)."""
        if not self.store.start_schedule_run(schedule["id"], day.isoformat()):
            log.info("batch %s for %s already ran", schedule["name"], day)
            return
        origin = Origin(**schedule["origin"])
        replies = self._batch(schedule, origin, day)
        await self.deliver(origin, replies)

    async def _batch(
        self, schedule: dict[str, Any], origin: Origin, day: date
    ) -> AsyncIterator[Reply]:
        run = (schedule["id"], day.isoformat())
        try:
            # A thread: the calendar may be a file, and up to a year of rows to parse.
            inv = await asyncio.to_thread(self._invocation, schedule, day)
        except UserError as exc:
            self.store.update_schedule_run(*run, state="failed")
            yield Reply(text=f"📅 {schedule['name']} for {day}: {exc.message}", error=True)
            return
        label = f"📅 {schedule['name']} · {day:%A %d %B %Y}"
        try:
            async for reply in self.pipeline.batch(origin, inv, label):
                if reply.status and reply.request_id:
                    self.store.update_schedule_run(*run, request_id=reply.request_id)
                if reply.asset_id:
                    self.store.update_schedule_run(*run, grid_id=reply.asset_id, state="posted")
                if reply.error:
                    self.store.update_schedule_run(*run, state="refused")
                yield reply
        except JobFailed:
            self.store.update_schedule_run(*run, state="failed")
            raise  # said in the channel by ``deliver``

    def _invocation(self, schedule: dict[str, Any], day: date) -> Invocation:
        calendar = self._calendar(schedule)
        row = calendar.get(day)
        values = {"date": day.isoformat(), "weekday": f"{day:%A}", "month": f"{day:%B}"}
        if row is not None:
            values |= row.fields
            prompt = row.prompt
        else:
            prompt = schedule["template"]
        try:
            prompt = prompt.format_map(values)
        except (KeyError, ValueError, IndexError) as exc:
            raise UserError(f"the prompt template cannot be filled: {exc}") from None
        return Invocation(
            name="draft",
            prompt=prompt,
            n=(row.n if row and row.n else None) or schedule["n"],
            ar=(row.ar if row and row.ar else None) or schedule["ar"],
            style=(row.style if row and row.style else None) or schedule["style"],
        )

    def _calendar(self, schedule: dict[str, Any]) -> dict[date, CalendarRow]:
        text = schedule["calendar"]
        if not text and schedule["name"] in self.policy.calendars:
            path = self.policy.calendars[schedule["name"]]
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UserError(f"cannot read the calendar file {path}: {exc.strerror}") from None
        return parse_calendar(text, self.catalog) if text else {}

    async def summarize(self, schedule: dict[str, Any], day: date) -> None:
        """Post the "ready to publish" summary of a day's batch in its thread (once)."""
        run = self.store.schedule_run(schedule["id"], day.isoformat())
        if run is None or not run["grid_id"]:
            return
        if not self.store.claim_summary(schedule["id"], day.isoformat(), self.clock().isoformat()):
            return  # posted already (by this process or another)
        origin = Origin(**schedule["origin"])

        summary = Reply(
            text=self.summary_text(schedule, run["grid_id"], day), thread_of=run["grid_id"]
        )

        await self.deliver(origin, replies_of(summary))

    def summary_text(self, schedule: dict[str, Any], grid_id: str, day: date) -> str:
        ready, waiting = [], []
        for number, draft in enumerate(self.store.parents(grid_id), start=1):
            finals = [
                c
                for c in self.store.children(draft["id"])
                if c["stage"] == "final" and c["kind"] != AssetKind.GRID
            ]
            if not finals:
                waiting.append(f"draft {number}: not chosen")
            for final in finals:
                decisions = {g["decision"] for g in self.store.gates(final["id"])}
                if Decision.APPROVED in decisions:
                    ready.append(
                        f"✅ final {final['id']} (draft {number}) "
                        f"{self.pipeline.link(final['id'])}".rstrip()
                    )
                elif Decision.REJECTED not in decisions:
                    waiting.append(f"final {final['id']} (draft {number}): waiting for ✅")
        lines = [f"📣 Ready to publish · {schedule['name']} · {day:%A %d %B %Y}"]
        lines += ready or ["Nothing approved yet."]
        if waiting:
            lines.append("Still waiting: " + "; ".join(waiting))
        return "\n".join(lines)

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies nobody is waiting on (a batch, a summary, a result finished after a
        restart) through the surface ``origin`` names, or log them when it is not running.
        Errors become replies here, as for a command: a failed batch is said in the channel."""
        replies = durable(self.store, origin, guarded(replies))
        deliver = self.deliverers.get(origin.surface)
        if deliver is None:  # the surface is not running here (CLI): do the work, log it
            async for reply in replies:
                log.info(
                    "reply for %s/%s (that surface is not running here): %s",
                    origin.surface,
                    origin.channel,
                    reply.text.splitlines()[0],
                )
                if reply.delivery_id is not None:
                    self.store.outbox_done(reply.delivery_id)
            return
        await deliver(origin, replies)

    # -- the command -------------------------------------------------------------------------

    async def command(
        self, origin: Origin, inv: Invocation, attachment: bytes | None = None
    ) -> AsyncIterator[Reply]:
        """``/tierbot schedule <action> ...``; ``attachment`` is the CSV of ``calendar``."""
        action = inv.args[0].lower() if inv.args else "list"
        words = (inv.prompt or "").split()
        if action == "add":
            yield self._add(origin, inv, words)
        elif action == "list":
            yield Reply(text=self._list(origin), private=True)
        elif action in ("pause", "resume", "remove", "run-now", "calendar"):
            if not words:
                raise UserError(
                    f"/tierbot schedule {action} needs a schedule name; see /tierbot schedule list"
                )
            schedule = self._find(origin, words[0])
            if action == "run-now":
                day = self.clock().astimezone(ZoneInfo(schedule["tz"])).date()
                if self.store.schedule_run(schedule["id"], day.isoformat()):
                    raise UserError(f"{schedule['name']} already ran for {day}")
                yield Reply(text=f"📅 Running {schedule['name']} for {day} now.", private=True)
                task = asyncio.ensure_future(self.fire(schedule, day))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif action == "calendar":
                yield self._attach_calendar(schedule, attachment)
            else:
                yield self._change(schedule, action)
        else:
            raise UserError(
                f"unknown schedule action {action!r}; use add, list, pause, resume, "
                "remove, run-now or calendar"
            )

    def _add(self, origin: Origin, inv: Invocation, words: list[str]) -> Reply:
        usage = (
            "usage: /tierbot schedule add <name> daily HH:MM [--tz ZONE] [--days mon-fri] "
            '[--n N] [--ar W:H] [--style NAME] [--summary HH:MM] "<prompt template>"'
        )
        if len(words) < 4:
            raise UserError(usage)
        name, frequency, at, template = (
            words[0].lower(),
            words[1].lower(),
            words[2],
            " ".join(words[3:]),
        )
        if not _NAME.match(name):
            raise UserError(
                f"a schedule name is 1 to 40 lower-case letters, digits, - or _; got {name!r}"
            )
        if frequency != "daily":
            raise UserError(
                f"schedules are daily (pick days with --days); got {frequency!r}. {usage}"
            )
        unknown = [f for f in template_fields(template) if f not in TEMPLATE_FIELDS]
        if unknown:
            raise UserError(
                f"the template uses {{{unknown[0]}}}; it may use {{date}}, "
                "{weekday}, {month} (and a calendar's columns in calendar rows)"
            )
        self.pipeline.check_style(inv.style)
        row = {
            "name": name,
            "surface": origin.surface,
            "team": origin.team,
            "channel": origin.channel,
            "origin": origin.model_dump(mode="json"),
            "at_time": parse_time(at),
            "tz": parse_tz(inv.tz or "UTC"),
            "days": parse_days(inv.days),
            "n": inv.n or DEFAULT_N,
            "ar": inv.ar or DEFAULT_AR,
            "style": inv.style,
            "template": template,
            "summary_time": parse_time(inv.summary, "--summary") if inv.summary else None,
        }
        schedule_id = self.store.add_schedule(row)
        if schedule_id is None:
            raise UserError(
                f"a schedule named {name} exists in this channel; remove it first "
                "or pick another name"
            )
        schedule = self.store.get_schedule(schedule_id)
        assert schedule is not None
        self._arm(schedule)
        when = next_run(schedule, self.clock())
        return Reply(
            text=f"📅 Schedule {name} added: {row['n']} drafts at {row['at_time']} "
            f"{row['tz']} on {row['days']}; next run {when:%a %d %b %H:%M %Z}."
        )

    def _list(self, origin: Origin) -> str:
        schedules = self.store.schedules(origin.surface, origin.team, origin.channel)
        if not schedules:
            return "No schedules in this channel. Add one with /tierbot schedule add."
        now = self.clock()
        lines = []
        for s in schedules:
            state = "paused" if s["paused"] else f"next {next_run(s, now):%a %d %b %H:%M %Z}"
            summary = f", summary at {s['summary_time']}" if s["summary_time"] else ""
            lines.append(
                f"{s['name']}: {s['n']} × “{s['template']}” at {s['at_time']} "
                f"{s['tz']} on {s['days']}{summary} · {state}"
            )
        return "\n".join(lines)

    def _find(self, origin: Origin, name: str) -> dict[str, Any]:
        for schedule in self.store.schedules(origin.surface, origin.team, origin.channel):
            if schedule["name"] == name.lower():
                return schedule
        raise UserError(f"no schedule named {name} in this channel; see /tierbot schedule list")

    def _change(self, schedule: dict[str, Any], action: str) -> Reply:
        if action == "remove":
            self._disarm(schedule["id"])
            self.store.remove_schedule(schedule["id"])
            return Reply(text=f"📅 Schedule {schedule['name']} removed.")
        paused = action == "pause"
        self.store.update_schedule(schedule["id"], paused=int(paused))
        updated = self.store.get_schedule(schedule["id"])
        assert updated is not None
        self._arm(updated)
        if paused:
            return Reply(text=f"📅 Schedule {schedule['name']} paused.")
        return Reply(
            text=f"📅 Schedule {schedule['name']} resumed; next run "
            f"{next_run(updated, self.clock()):%a %d %b %H:%M %Z}."
        )

    def _attach_calendar(self, schedule: dict[str, Any], attachment: bytes | None) -> Reply:
        # A path typed in chat is never read: it would let anyone read the bot's own files.
        if attachment is None:
            raise UserError(
                "attach the calendar's CSV file (columns date, prompt; optional style, ar, n) "
                "to the command: Discord's calendar option, the web channel's 📎, or "
                "`tierbot schedule calendar <name> <file.csv>` in a terminal; or name the file "
                "in the policy file under [calendars]"
            )
        if len(attachment) > MAX_CALENDAR_BYTES:
            raise UserError(
                f"the calendar is {len(attachment) / 1000:,.0f} KB; the limit is "
                f"{MAX_CALENDAR_BYTES // 1000} KB (about a year of daily rows)"
            )
        try:
            text = attachment.decode("utf-8-sig")  # spreadsheets often add a BOM
        except UnicodeDecodeError:
            raise UserError("the calendar must be a CSV file saved as UTF-8 text") from None
        rows = parse_calendar(text, self.catalog)
        self.store.update_schedule(schedule["id"], calendar=text)
        span = f" from {min(rows)} to {max(rows)}" if rows else ""
        return Reply(
            text=f"📅 Calendar for {schedule['name']}: {len(rows)} day(s){span}.", private=True
        )
