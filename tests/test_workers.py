"""Jobs run by worker processes (``TIERBOT_RUN_JOBS=workers``): the bot reserves and waits,
a worker takes the job from the Postgres job queue (procrastinate) and drives it. Here the
bot and the worker are two wired cores in one test, each with its own store connection, on
one fresh database; tests/test_cluster.py runs real processes and kills one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters import wire
from bot.app import Services
from bot.domain import AssetKind
from bot.progress import listen
from bot.runner import HAND_ATTEMPTS
from bot.settings import Settings
from tests.conftest import Chat, ScriptedProvider, registry_with
from tests.test_resume import stalled


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], database_url: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(database_url=database_url, run_jobs="workers", **overrides)

    return make


@contextlib.asynccontextmanager
async def working(settings: Settings, model: Any | None = None) -> AsyncIterator[Services]:
    """A worker process's core, working the queue (``model`` stands in for the local one)."""
    providers = registry_with(settings, local=model) if model is not None else None
    services = wire(settings, providers=providers)
    services.start()
    assert services.queue is not None
    task = asyncio.create_task(services.queue.work(services.runner.work, concurrency=4))
    try:
        yield services
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await services.aclose()


@pytest.fixture
async def worker(settings_for: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with working(settings_for()) as services:
        yield services


def refusing() -> ScriptedProvider:
    """The bot's own model: any call to it would fail the test's checks."""
    return ScriptedProvider("local", [AssertionError("the bot ran a job itself")] * 10)


async def test_a_draft_runs_on_a_worker_and_the_bot_posts_its_grid(
    settings_for: Callable[..., Settings], worker: Services
) -> None:
    settings = settings_for()
    bot = wire(settings, providers=registry_with(settings, local=refusing()))
    bot.start()
    try:
        replies = await Chat(bot).command("draft", "a lighthouse at dusk --n 4")
        grids = [r for r in replies if r.asset_id and bot.store.get_asset(r.asset_id)]
        grid = bot.store.get_asset(grids[-1].asset_id)
        assert grid["kind"] == AssetKind.GRID
        assert bot.runner.providers.get("local").submits == []  # the worker made them
        jobs = bot.store.jobs_for_request(grid["request_id"])
        assert jobs and all(j["state"] == "succeeded" for j in jobs)
        charges = [bot.store.ledger_entry(j["id"]) for j in jobs]
        assert all(c["state"] == "settled" for c in charges)
    finally:
        await bot.aclose()


class LocalModel:
    """The real local model, counting submissions; ``busy`` answers the first poll as an
    overloaded provider does."""

    def __init__(self, settings: Settings, *, busy: bool = False) -> None:
        from adapters import load_providers

        self.real = load_providers({"local"}, settings).get("local")
        self.busy = busy
        self.submits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def submit(self, request: Any) -> str:
        self.submits += 1
        return await self.real.submit(request)

    async def result(self, provider_request_id: str, request: Any) -> Any:
        if self.busy:
            from bot.providers import TransientError

            self.busy = False
            raise TransientError("503 busy", retry_after=0)
        return await self.real.result(provider_request_id, request)


async def test_a_job_handed_again_while_it_waits_runs_once(
    settings_for: Callable[..., Settings],
) -> None:
    """A bot that restarts hands its unfinished jobs again: the queue keeps one run waiting,
    so the worker that comes along submits the job once and it is charged once."""
    import psycopg

    settings = settings_for()
    bot = wire(settings, providers=registry_with(settings, local=refusing()))
    bot.start()
    try:
        asking = asyncio.create_task(Chat(bot).command("draft", "a harbour --n 1"))
        for _ in range(200):  # no worker yet: the job waits in the queue
            if bot.store.unfinished_jobs():
                break
            await asyncio.sleep(0.05)
        (job,) = bot.store.unfinished_jobs()
        for _ in range(3):
            await bot.queue.hand(job["id"])
        with psycopg.connect(settings.store_location) as db:
            (waiting,) = db.execute(
                "select count(*) from procrastinate_jobs where status = 'todo' "
                "and args->>'job_id' = %s",
                [job["id"]],
            ).fetchone()
        assert waiting == 1
        model = LocalModel(settings)
        async with working(settings, model):
            replies = await asyncio.wait_for(asking, 30)
        assert any(r.asset_id for r in replies)
        assert model.submits == 1
        assert bot.store.ledger_entry(job["id"])["state"] == "settled"
    finally:
        await bot.aclose()


async def test_the_bot_shows_a_workers_progress_and_its_cancel_stops_the_worker(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for()
    model = stalled()  # the worker's model never answers
    async with working(settings, model) as worker:
        bot = wire(settings, providers=registry_with(settings, local=refusing()))
        bot.start()
        seen: list[str] = []
        chat = Chat(bot)

        async def draft() -> list[Any]:
            listen(lambda job_id, state, detail: seen.append(state))
            return await chat.command("draft", "a slow comet --n 1")

        asking = asyncio.create_task(draft())
        try:
            await asyncio.wait_for(model.entered.wait(), 20)
            for _ in range(100):  # the bot sees the worker's job start running
                if "running" in seen:
                    break
                await asyncio.sleep(0.05)
            assert seen[-1] == "running"
            (job,) = bot.store.unfinished_jobs()
            (cancelled,) = [r async for r in bot.bot.cancel(chat.origin, job["request_id"])]
            assert "1 job(s) stopped" in cancelled.text
            replies = await asyncio.wait_for(asking, 10)
            assert any("cancelled" in r.text.lower() for r in replies)
            for _ in range(60):  # the worker notices within a second and stops driving it
                if not worker.runner._running:
                    break
                await asyncio.sleep(0.05)
            assert worker.runner._running == {}
            row = bot.store.get_job(job["id"])
            assert row["state"] == "cancelled"
            assert bot.store.ledger_entry(job["id"])["state"] == "released"
        finally:
            asking.cancel()
            await bot.aclose()


def test_workers_need_postgres(make_settings: Callable[..., Settings]) -> None:
    from bot.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="TIERBOT_DATABASE_URL"):
        load_settings(data_dir=".", run_jobs="workers", _env_file=None)
    with pytest.raises(SettingsError, match="postgresql://"):
        load_settings(database_url="mysql://x", _env_file=None)


async def test_a_job_the_queue_cannot_take_fails_with_its_credits_released(
    settings_for: Callable[..., Settings],
) -> None:
    """Postgres out of reach when the job is handed over: the person is told, nothing is
    charged, and no job is left waiting for a worker that will never hear of it."""
    import psycopg

    settings = settings_for()
    bot = wire(settings, providers=registry_with(settings, local=refusing()))
    bot.start()
    attempts: list[str] = []

    async def unreachable(job_id: str) -> None:
        attempts.append(job_id)
        raise psycopg.OperationalError("connection refused")

    async def no_wait(seconds: float) -> None:
        pass

    bot.queue.hand = unreachable  # type: ignore[method-assign]
    bot.runner.sleep = no_wait
    try:
        replies = await Chat(bot).command("draft", "a quiet pond --n 1")
        assert any("job queue could not be reached" in r.text for r in replies)
        assert len(attempts) == HAND_ATTEMPTS
        (job,) = bot.store.jobs_for_request(bot.store.get_job(attempts[0])["request_id"])
        assert job["state"] == "failed"
        assert bot.store.ledger_entry(job["id"])["state"] == "released"
    finally:
        await bot.aclose()


async def test_a_workers_retry_shows_why_on_the_bots_status_line(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for()
    model = LocalModel(settings, busy=True)
    async with working(settings, model):
        bot = wire(settings, providers=registry_with(settings, local=refusing()))
        bot.start()
        seen: list[tuple[str, str | None]] = []

        async def draft() -> list[Any]:
            listen(lambda job_id, state, detail: seen.append((state, detail)))
            return await Chat(bot).command("draft", "a windmill --n 1")

        try:
            replies = await asyncio.wait_for(draft(), 30)
            assert any(r.asset_id for r in replies)
            assert ("retrying", "503 busy; retrying in 0 s") in seen
            assert seen[-1][0] == "succeeded"
        finally:
            await bot.aclose()
