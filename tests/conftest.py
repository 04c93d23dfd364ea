"""Shared fixtures: a clean environment, a wired core on a temporary data dir, a scripted
provider for runner tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import load_providers, wire
from bot.app import Services
from bot.delivery import Steps
from bot.domain import CommandEvent, InboundFile, Origin, ReactionEvent, Reply
from bot.providers import GeneratedFile, GenerationRequest, ProviderRegistry
from bot.settings import Settings

_OUR_PREFIXES = ("TIERBOT_", "SLACK_", "DISCORD_", "FAL_", "GEMINI_", "REPLICATE_", "COMFYUI_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's keys, tokens or .env file."""
    for name in list(os.environ):
        if name.startswith(_OUR_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # a stray .env in the checkout is not read
    yield


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return Settings(data_dir=tmp_path / "data", _env_file=None, **overrides)

    return make


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    wired = wire(make_settings())
    yield wired
    await wired.aclose()


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def collect(replies: Any) -> list[Reply]:
    return [reply async for reply in replies]


class Chat:
    """Drives the core like a chat surface: commands and reactions in, posts recorded."""

    def __init__(self, services: Services, origin: Origin | None = None) -> None:
        self.services = services
        self.origin = origin or Origin(surface="test", team="T1", channel="C1", user="alice")
        self.posted: dict[str, Reply] = {}  # message id -> reply
        self._events = 0

    def as_user(self, user: str, groups: tuple[str, ...] = ()) -> Chat:
        other = Chat(self.services, self.origin.model_copy(update={"user": user, "groups": groups}))
        other.posted = self.posted
        return other

    async def _post(self, replies: Any) -> list[Reply]:
        out = []
        async for reply in replies:
            message_id = f"m{len(self.posted) + 1}"
            self.posted[message_id] = reply
            Steps(self.services.store, self.origin, reply).posted(message_id)
            out.append(reply)
        return out

    async def command(
        self,
        command: str,
        text: str,
        attachment: bytes | None = None,
        files: list[InboundFile] | None = None,
    ) -> list[Reply]:
        files = list(files or [])
        if attachment is not None:
            files.append(InboundFile(name="attachment", data=attachment))
        return await self._post(
            self.services.bot.handle_command(
                CommandEvent(origin=self.origin, command=command, text=text, files=files)
            )
        )

    def message_of(self, asset_id: str) -> str:
        return next(m for m, r in self.posted.items() if r.asset_id == asset_id)

    async def react(self, asset_id: str, emoji: str, event_id: str | None = None) -> list[Reply]:
        return await self.react_to(self.message_of(asset_id), emoji, event_id)

    async def react_to(
        self, message_id: str, emoji: str, event_id: str | None = None
    ) -> list[Reply]:
        self._events += 1
        event = ReactionEvent(
            origin=self.origin,
            event_id=event_id or f"{self.origin.user}-{self._events}-{message_id}-{emoji}",
            message_id=message_id,
            emoji=emoji,
        )
        return await self._post(self.services.bot.handle_reaction(event))


@pytest.fixture
def chat(services: Services) -> Chat:
    return Chat(services)


@pytest.fixture
async def channel(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Any]:
    """The web channel on a fresh bot, "alice" its approver (tests/test_web.py's ``Channel``)."""
    from tests.test_web import _open  # the web channel's rig lives with its tests

    policy = write_policy(tmp_path, '[teams.local.channels.web]\napprovers = ["alice"]\n')
    services = wire(make_settings(policy=policy))
    async for opened in _open(services):
        yield opened
    await services.aclose()


class ScriptedProvider:
    """A provider double for runner tests: each call pops the next scripted outcome.

    An outcome is an exception to raise from ``result`` or ``None`` for success. ``gate``
    (when set) makes ``result`` wait, to stop a runner in the middle of a job.
    """

    def __init__(
        self, name: str = "scripted", script: list[BaseException | None] | None = None
    ) -> None:
        self.name = name
        self.script = list(script or [])
        self.submits: list[GenerationRequest] = []
        self.results: list[str] = []
        self.cancelled: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def submit(self, request: GenerationRequest) -> str:
        self.submits.append(request)
        return f"{self.name}-req-{len(self.submits)}"

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        self.results.append(provider_request_id)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return [
            GeneratedFile(
                data=f"{request.model_id}-{request.seed + i}".encode(),
                mime="image/png",
                width=64,
                height=64,
                seed=request.seed + i,
            )
            for i in range(request.n)
        ]

    async def cancel(self, provider_request_id: str) -> None:
        self.cancelled.append(provider_request_id)

    async def aclose(self) -> None:
        return None


def registry_with(settings: Settings, **extra: Any) -> ProviderRegistry:
    """The real provider discovery plus extra providers under the given names."""
    real = load_providers({"local"}, settings)
    providers = {"local": real.get("local"), **extra}
    return ProviderRegistry(providers, {})


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (see tests/postgres.py)."""
    from tests.postgres import session_server

    with session_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store lives, once per database: a SQLite file, then a fresh Postgres
    database. The store suite runs against both."""
    if request.param == "sqlite":
        yield str(tmp_path / "tierbot.db")
        return
    yield request.getfixturevalue("database_url")


@pytest.fixture
def database_url(postgres_server: Any) -> Iterator[str]:
    """A fresh Postgres database for one test (dropped afterwards)."""
    from tests.postgres import fresh_database

    with fresh_database(postgres_server) as url:
        yield url
