"""Daily social batches: timing (DST, grace, never twice), calendars, budget, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapters import wire
from bot.catalog import load_catalog
from bot.errors import UserError
from bot.providers import PermanentError
from bot.schedules import next_run, parse_calendar, parse_days, parse_time, parse_tz
from tests.conftest import Chat, ScriptedProvider, registry_with, write_policy

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at

    def __call__(self) -> datetime:
        return self.now


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


@pytest.fixture
def rig(make_settings, tmp_path: Path) -> Iterator[tuple[Chat, Clock]]:
    services = wire(make_settings(public_url="https://tierbot.example.com", schedule_grace_s=1800))
    clock = Clock(berlin(2026, 11, 23, 8, 0))  # a Monday
    services.scheduler.clock = clock
    chat = Chat(services)
    services.scheduler.deliverers["test"] = lambda origin, replies: chat._post(replies)
    yield chat, clock
    services.store.close()


def grids(chat: Chat) -> list:
    return [r for r in chat.posted.values() if r.asset_id and r.reactions[:1] == ["1️⃣"]]


ADD = (
    "schedule add morning daily 09:00 --tz Europe/Berlin --days mon-fri --n 2 --ar 4:5 "
    '"a {weekday} coffee flat lay in {month}"'
)


async def test_add_and_list_show_the_next_run_in_the_schedules_zone(rig) -> None:
    chat, _clock = rig
    (added,) = await chat.command("tierbot", ADD)
    assert (
        "Schedule morning added: 2 drafts at 09:00 Europe/Berlin on mon,tue,wed,thu,fri"
        in added.text
    )
    assert "next run Mon 23 Nov 09:00 CET" in added.text
    (listing,) = await chat.command("tierbot", "schedule list")
    assert (
        listing.private
        and "morning: 2 × “a {weekday} coffee flat lay in {month}”" in listing.text
        and "next Mon 23 Nov 09:00 CET" in listing.text
    )
    (again,) = await chat.command("tierbot", ADD)
    assert again.private and "a schedule named morning exists" in again.text


def test_local_hour_holds_across_daylight_saving_changes() -> None:
    schedule = {"at_time": "09:00", "tz": "Europe/Berlin", "days": parse_days("daily")}
    spring = next_run(schedule, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert spring == berlin(2026, 3, 29, 9, 0)
    assert spring.astimezone(UTC).hour == 7  # summer time: UTC+2
    before = next_run(schedule, datetime(2026, 3, 27, 12, 0, tzinfo=UTC))
    assert before.astimezone(UTC).hour == 8  # winter time: UTC+1
    autumn = next_run(schedule, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert autumn == berlin(2026, 10, 25, 9, 0) and autumn.astimezone(UTC).hour == 8
    weekdays = {"at_time": "09:00", "tz": "Europe/Berlin", "days": parse_days("mon-fri")}
    assert next_run(weekdays, berlin(2026, 11, 21, 10, 0)) == berlin(2026, 11, 23, 9, 0)


async def test_missed_run_within_grace_runs_once_and_never_twice(rig) -> None:
    chat, clock = rig
    await chat.command("tierbot", ADD)
    scheduler = chat.services.scheduler
    clock.now = berlin(2026, 11, 23, 9, 20)  # the bot was down at 09:00; grace is 30 min
    assert await scheduler.catch_up() == 1
    (grid,) = grids(chat)
    assert "📅 morning · Monday 23 November 2026" in grid.text
    assert "a Monday coffee flat lay in November" in grid.text
    drafts = chat.services.store.parents(grid.asset_id)
    assert len(drafts) == 2 and (drafts[0]["width"], drafts[0]["height"]) == (816, 1024)
    assert await scheduler.catch_up() == 0  # recorded: never twice
    clock.now = berlin(2026, 11, 24, 10, 0)  # next day, 60 min late: beyond the grace
    assert await scheduler.catch_up() == 0
    assert len(grids(chat)) == 1


async def test_a_missed_batch_whose_drafts_fail_is_said_and_the_bot_starts(
    make_settings,
) -> None:
    settings = make_settings(schedule_grace_s=1800)
    broken = ScriptedProvider("local", [PermanentError("model unavailable")] * 4)
    services = wire(settings, providers=registry_with(settings, local=broken))
    clock = Clock(berlin(2026, 11, 23, 8, 0))
    services.scheduler.clock = clock
    chat = Chat(services)
    services.scheduler.deliverers["test"] = lambda origin, replies: chat._post(replies)
    await chat.command("tierbot", ADD)
    clock.now = berlin(2026, 11, 23, 9, 20)  # missed while down: runs at start-up

    assert await services.scheduler.catch_up() == 1  # the failure does not stop the bot

    failure = list(chat.posted.values())[-1]
    assert failure.error and "⚠️ Failed" in failure.text and "model unavailable" in failure.text
    (schedule,) = services.store.schedules()
    assert services.store.schedule_run(schedule["id"], "2026-11-23")["state"] == "failed"
    await services.aclose()


async def test_restart_mid_batch_does_not_post_it_again(rig) -> None:
    chat, clock = rig
    await chat.command("tierbot", ADD)
    services = chat.services
    (schedule,) = services.store.schedules()
    # The batch was recorded, then the process died before it posted anything.
    assert services.store.start_schedule_run(schedule["id"], "2026-11-23")
    clock.now = berlin(2026, 11, 23, 9, 5)
    assert await services.scheduler.catch_up() == 0
    await services.scheduler.fire(schedule, date(2026, 11, 23))
    assert grids(chat) == []


async def test_calendar_row_replaces_the_template_for_its_day(rig, tmp_path: Path) -> None:
    chat, _clock = rig
    await chat.command("tierbot", ADD)
    csv = tmp_path / "calendar.csv"
    csv.write_text(
        "date,prompt,style,ar,n,product\n"
        "2026-11-23,launch day: {product} teaser for {weekday},product,16:9,3,Oat Latte\n"
        "2026-11-25,a rainy {weekday} window,,,,\n"
    )
    (attached,) = await chat.command(
        "tierbot", "schedule calendar morning", attachment=csv.read_bytes()
    )
    assert "Calendar for morning: 2 day(s) from 2026-11-23 to 2026-11-25" in attached.text
    (schedule,) = chat.services.store.schedules()
    await chat.services.scheduler.fire(schedule, date(2026, 11, 23))
    await chat.services.scheduler.fire(schedule, date(2026, 11, 24))
    first, second = grids(chat)
    assert "launch day: Oat Latte teaser for Monday" in first.text
    drafts = chat.services.store.parents(first.asset_id)
    assert len(drafts) == 3 and (drafts[0]["width"], drafts[0]["height"]) == (1024, 576)
    assert "a Tuesday coffee flat lay in November" in second.text  # no row: the template


async def test_a_path_typed_in_chat_is_never_read(rig, tmp_path: Path) -> None:
    chat, _clock = rig
    await chat.command("tierbot", ADD)
    secret = tmp_path / "secret.csv"
    secret.write_text("date,prompt\n2026-11-23,do not leak me\n")
    (refused,) = await chat.command("tierbot", f"schedule calendar morning {secret}")
    assert refused.error and refused.private and "attach the calendar's CSV file" in refused.text
    (schedule,) = chat.services.store.schedules()
    assert schedule["calendar"] is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"date,prompt\n2026-11-23,caf\xe9\n", "saved as UTF-8 text"),
        (b"date,prompt\n" + b"2026-11-23,x\n" * 30_000, "the limit is 256 KB"),
        (b"day,text\n2026-11-23,x\n", "needs the columns date and prompt"),
    ],
)
async def test_a_bad_calendar_file_is_named_and_nothing_is_kept(rig, data, message) -> None:
    chat, _clock = rig
    await chat.command("tierbot", ADD)
    (refused,) = await chat.command("tierbot", "schedule calendar morning", attachment=data)
    assert refused.error and message in refused.text
    assert chat.services.store.schedules()[0]["calendar"] is None


async def test_a_spreadsheet_bom_is_fine(rig) -> None:
    chat, _clock = rig
    await chat.command("tierbot", ADD)
    data = "\ufeffdate,prompt\n2026-11-23,café au lait\n".encode()
    (attached,) = await chat.command("tierbot", "schedule calendar morning", attachment=data)
    assert "Calendar for morning: 1 day(s)" in attached.text


async def test_batch_that_does_not_fit_the_budget_posts_a_notice(
    make_settings, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path, '[teams.T1]\ndaily_credits = 1\n[teams.T1.channels.C1]\napprovers = ["bob"]\n'
    )
    services = wire(make_settings(policy=policy))
    services.scheduler.clock = Clock(berlin(2026, 11, 23, 8, 0))
    chat = Chat(services).as_user("bob")
    services.scheduler.deliverers["test"] = lambda origin, replies: chat._post(replies)
    await chat.command("tierbot", ADD)
    (schedule,) = services.store.schedules()
    await services.scheduler.fire(schedule, date(2026, 11, 23))
    notices = [r for r in chat.posted.values() if "Not posted" in r.text]
    assert len(notices) == 1 and not notices[0].private
    assert (
        "the batch of 2 drafts costs 2 credits and only 1 credit left of the team T1 "
        "daily cap; an approver (bob) can raise it"
    ) in notices[0].text
    assert grids(chat) == []
    assert services.store.db.execute("select count(*) from ledger").fetchone()[0] == 0
    assert services.store.schedule_run(schedule["id"], "2026-11-23")["state"] == "refused"
    services.store.close()


async def test_ready_to_publish_summary_lists_approved_finals_and_what_waits(rig) -> None:
    chat, _clock = rig
    await chat.command("tierbot", ADD.replace("--n 2", "--n 2 --summary 17:00"))
    (schedule,) = chat.services.store.schedules()
    assert schedule["summary_time"] == "17:00"
    await chat.services.scheduler.fire(schedule, date(2026, 11, 23))
    (grid,) = grids(chat)
    final = next(r for r in await chat.react(grid.asset_id, "1️⃣") if r.asset_id)
    await chat.react(final.asset_id, "✅")
    await chat.services.scheduler.summarize(schedule, date(2026, 11, 23))
    summary = next(r for r in chat.posted.values() if r.text.startswith("📣"))
    assert summary.thread_of == grid.asset_id
    assert (
        f"✅ final {final.asset_id} (draft 1) https://tierbot.example.com/assets/"
        f"{final.asset_id}" in summary.text
    )
    assert "Still waiting: draft 2: not chosen" in summary.text
    await chat.services.scheduler.summarize(schedule, date(2026, 11, 23))  # once
    assert len([r for r in chat.posted.values() if r.text.startswith("📣")]) == 1


async def test_pause_resume_remove_and_run_now(rig) -> None:
    chat, clock = rig
    await chat.command("tierbot", ADD)
    (paused,) = await chat.command("tierbot", "schedule pause morning")
    assert "paused" in paused.text
    (listing,) = await chat.command("tierbot", "schedule list")
    assert "· paused" in listing.text
    clock.now = berlin(2026, 11, 23, 9, 10)
    assert await chat.services.scheduler.catch_up() == 0  # paused schedules do not run
    (resumed,) = await chat.command("tierbot", "schedule resume morning")
    assert "resumed; next run Tue 24 Nov 09:00 CET" in resumed.text
    (running,) = await chat.command("tierbot", "schedule run-now morning")
    assert "Running morning for 2026-11-23 now" in running.text
    for task in list(chat.services.scheduler._tasks):
        await task
    assert len(grids(chat)) == 1
    (twice,) = await chat.command("tierbot", "schedule run-now morning")
    assert twice.private and "already ran for 2026-11-23" in twice.text
    (removed,) = await chat.command("tierbot", "schedule remove morning")
    assert "removed" in removed.text and chat.services.store.schedules() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('schedule add morning daily 25:00 "x"', "the time must be HH:MM on a 24-hour clock"),
        (
            'schedule add morning daily 09:00 --tz Europe/Berln "x"',
            "--tz must be a time zone like Europe/Berlin; got Europe/Berln; did you mean "
            "Europe/Berlin?",
        ),
        ('schedule add morning daily 09:00 --days mon-fry "x"', "'fry' is not one of mon"),
        ('schedule add morning daily 09:00 "a {wekday} post"', "the template uses {wekday}"),
        ('schedule add morning weekly 09:00 "x"', "schedules are daily"),
        ('schedule add Morning! daily 09:00 "x"', "a schedule name is 1 to 40"),
        (
            'schedule add morning daily 09:00 --summary 5pm "x"',
            "--summary must be HH:MM on a 24-hour clock",
        ),
        ("schedule add morning daily", "usage: /tierbot schedule add <name> daily HH:MM"),
        ("schedule pause nope", "no schedule named nope in this channel"),
        ("schedule frobnicate", "unknown schedule action 'frobnicate'"),
    ],
)
async def test_bad_input_is_named_in_the_reply(rig, text: str, message: str) -> None:
    chat, _ = rig
    (reply,) = await chat.command("tierbot", text)
    assert reply.private and reply.error
    assert message in reply.text
    assert chat.services.store.schedules() == []


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("day,prompt\n2026-11-23,x\n", "needs the columns date and prompt; missing date"),
        (
            "date,prompt\n23/11/2026,x\n",
            "calendar row 2: date must be YYYY-MM-DD; got '23/11/2026'",
        ),
        ("date,prompt\n2026-11-23,\n", "calendar row 2: the prompt is empty"),
        ("date,prompt,ar\n2026-11-23,x,16x9\n", "calendar row 2: ar must be one of"),
        (
            "date,prompt,n\n2026-11-23,x,12\n",
            "calendar row 2: n must be a whole number from 1 to 9",
        ),
        ("date,prompt,style\n2026-11-23,x,noir\n", "calendar row 2: style must be one of"),
        ("date,prompt\n2026-11-23,x\n2026-11-23,y\n", "calendar row 3: 2026-11-23 already has"),
    ],
)
def test_bad_calendar_rows_are_named(csv: str, message: str) -> None:
    with pytest.raises(UserError) as failed:
        parse_calendar(csv, load_catalog())
    assert message in failed.value.message


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("mon,wed,fri", "mon,wed,fri"),
        ("sat-sun", "sat,sun"),
        ("fri-mon", "mon,fri,sat,sun"),
        (None, "mon,tue,wed,thu,fri,sat,sun"),
        ("Monday-Wednesday", "mon,tue,wed"),
    ],
)
def test_day_lists(days, expected) -> None:
    assert parse_days(days) == expected


def test_times_and_zones() -> None:
    assert parse_time("9:05") == "09:05"
    assert parse_tz("America/New_York") == "America/New_York"


async def test_the_timer_arms_each_schedule_in_the_running_loop(rig) -> None:
    chat, clock = rig
    await chat.command("tierbot", ADD.replace("--n 2", "--n 2 --summary 17:00"))
    scheduler = chat.services.scheduler
    clock.now = berlin(2026, 11, 23, 8, 0)
    assert await scheduler.start() == 0
    (schedule,) = chat.services.store.schedules()
    batch = scheduler._timer.get_job(f"batch:{schedule['id']}")
    summary = scheduler._timer.get_job(f"summary:{schedule['id']}")
    assert batch.trigger.get_next_fire_time(None, clock.now) == berlin(2026, 11, 23, 9, 0)
    assert summary.trigger.get_next_fire_time(None, clock.now) == berlin(2026, 11, 23, 17, 0)
    await chat.command("tierbot", "schedule pause morning")
    assert scheduler._timer.get_job(f"batch:{schedule['id']}") is None
    clock.now = berlin(2026, 11, 23, 9, 0)
    await scheduler._on_time(schedule["id"])  # a timer that woke just before the pause
    assert grids(chat) == []
    await chat.command("tierbot", "schedule resume morning")
    await scheduler._on_time(schedule["id"])  # what the timer calls at 09:00
    assert len(grids(chat)) == 1
    scheduler.stop()


async def test_calendar_named_in_the_policy_file(make_settings, tmp_path: Path) -> None:
    calendar = tmp_path / "morning.csv"
    calendar.write_text("date,prompt\n2026-11-23,pumpkin spice {weekday}\n")
    policy = write_policy(tmp_path, f'[calendars]\nmorning = "{calendar}"\n')
    services = wire(make_settings(policy=policy))
    services.scheduler.clock = Clock(berlin(2026, 11, 23, 8, 0))
    chat = Chat(services)
    services.scheduler.deliverers["test"] = lambda origin, replies: chat._post(replies)
    await chat.command("tierbot", ADD)
    (schedule,) = services.store.schedules()
    await services.scheduler.fire(schedule, date(2026, 11, 23))
    (grid,) = grids(chat)
    assert "pumpkin spice Monday" in grid.text
    services.store.close()
