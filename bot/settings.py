"""Settings: one typed object read from the environment and ``.env``, validated at start.

Every variable is listed, with a one-line comment, in ``.env.example``. tierbot's own
settings carry the ``TIERBOT_`` prefix; platform and provider credentials keep the names
their vendors document (``SLACK_BOT_TOKEN``, ``FAL_KEY``, ...). Secrets are ``SecretStr``:
their values never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.shards import Shards, parse_shards
from storage.files import parse_asset_url
from storage.postgres import is_postgres_url

log = logging.getLogger(__name__)


def _secret(env_name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(env_name))


class Settings(BaseSettings):
    """Everything tierbot reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="TIERBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Field(default=Path("data"), description="SQLite file and asset store")
    #: ``postgresql://user:password@host/db``: every table in Postgres, shared by any number
    #: of ``tierbot run`` and ``tierbot worker`` processes. Unset: SQLite in the data dir.
    database_url: SecretStr | None = None
    #: Where jobs (model calls) run: ``here``, in this process (one machine, the default), or
    #: ``workers``: handed to ``tierbot worker`` processes through the Postgres job queue
    #: (needs ``database_url``).
    run_jobs: Literal["here", "workers"] = "here"
    #: Where asset files are kept for every machine: ``s3://bucket[/prefix]`` on AWS S3, or on
    #: any S3-compatible store at ``s3_endpoint_url``; the asset dir is then a local cache.
    #: Unset: the asset dir alone (one machine).
    asset_url: str | None = None
    #: Endpoint of an S3-compatible store (MinIO, Cloudflare R2, ...); unset: AWS S3.
    s3_endpoint_url: str | None = None
    #: The bucket's region; unset: boto3's own (``AWS_REGION``, ``AWS_DEFAULT_REGION``,
    #: ``~/.aws/config``). Credentials are never a tierbot setting: boto3 reads its own chain.
    s3_region: str | None = None
    catalog: Path | None = Field(
        default=None, description="catalog TOML merged over the shipped one"
    )
    policy: Path | None = Field(
        default=None, description="policy TOML: approvers, budgets, thresholds"
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8765, ge=1, le=65535)
    #: Required to bind the web channel to anything but loopback; the page asks for it.
    web_token: SecretStr | None = None
    #: Public base URL of this bot (e.g. https://tierbot.example.com): chat messages link to
    #: asset pages under it.
    public_url: str | None = None
    #: A scheduled batch missed while the bot was down runs at start-up if it is at most
    #: this many seconds late (and never twice).
    schedule_grace_s: float = Field(default=3600.0, ge=0)
    #: How long a stopped process's claims on work (jobs, received commands, posts) outlive
    #: its last heartbeat; then another process, or the next start, takes the work over.
    lease_s: float = Field(default=20.0, ge=0.2, le=3600)
    log_level: str = "INFO"
    #: Transient provider errors are retried this many times per candidate before falling back.
    retries: int = Field(default=2, ge=0, le=10)
    #: Upper bound, in seconds, of one backoff wait (Retry-After included).
    max_backoff_s: float = Field(default=30.0, gt=0)

    # Credentials: switched on by their presence. Names are the vendors' own.
    slack_bot_token: SecretStr | None = _secret("SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = _secret("SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = _secret("SLACK_SIGNING_SECRET")
    #: Slack Web API base URL (proxies, Enterprise Grid set-ups, tests).
    slack_api_url: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_API_URL"))
    discord_bot_token: SecretStr | None = _secret("DISCORD_BOT_TOKEN")
    #: Guilds whose commands are synced at start (instant); others need `tierbot discord sync`.
    discord_guild_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("DISCORD_GUILD_IDS")
    )
    #: This process's share of the bot's gateway shards, "IDS/COUNT" ("0,1/4", "2-3/4"), so
    #: replicas split one bot's guilds; unset: one connection for every guild.
    discord_shards: Annotated[Shards | None, NoDecode] = Field(
        default=None, validation_alias=AliasChoices("DISCORD_SHARDS")
    )
    discord_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_API_URL")
    )
    discord_gateway_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_GATEWAY_URL")
    )
    fal_key: SecretStr | None = _secret("FAL_KEY")
    gemini_api_key: SecretStr | None = _secret("GEMINI_API_KEY")
    replicate_api_token: SecretStr | None = _secret("REPLICATE_API_TOKEN")
    #: May carry user:password for a proxy, so it is kept out of repr() like a secret.
    comfyui_url: str | None = Field(
        default=None, validation_alias=AliasChoices("COMFYUI_URL"), repr=False
    )
    # Provider base URLs: proxies, regional endpoints, and tests.
    fal_queue_url: str = Field(
        default="https://queue.fal.run", validation_alias=AliasChoices("FAL_QUEUE_URL")
    )
    #: fal's Platform API (model metadata, for ``tierbot doctor``).
    fal_api_url: str = Field(
        default="https://api.fal.ai", validation_alias=AliasChoices("FAL_API_URL")
    )
    gemini_api_url: str = Field(
        default="https://generativelanguage.googleapis.com",
        validation_alias=AliasChoices("GEMINI_API_URL"),
    )
    replicate_api_url: str = Field(
        default="https://api.replicate.com", validation_alias=AliasChoices("REPLICATE_API_URL")
    )
    #: Download destinations the operator vouches for: outputs may come from them over plain
    #: http, and from their addresses even when loopback or private (otherwise refused).
    #: ``host`` allows every port, ``host:port`` that port only (IPv6: ``[::1]:8080``).
    #: COMFYUI_URL's own host and port always are, for ComfyUI downloads only.
    allow_http_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Largest provider output accepted, in bytes.
    max_download_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    #: Timeout of one HTTP call to a provider (connect, read, write), in seconds.
    provider_timeout_s: float = Field(default=60.0, gt=0)
    #: Seconds between two polls of a queued or running generation.
    poll_interval_s: float = Field(default=2.0, gt=0)
    #: Longest wait for one generation before it counts as a transient failure, in seconds.
    max_generation_s: float = Field(default=1800.0, gt=0)
    #: Per-provider request rates, requests per second: "fal=5,gemini=2".
    provider_rates: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    #: Per-provider concurrent jobs, overriding the catalog: "fal=8,comfyui=1".
    provider_concurrency: Annotated[dict[str, PositiveInt], NoDecode] = Field(default_factory=dict)

    @field_validator("database_url", "asset_url", "s3_endpoint_url", "s3_region", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """``TIERBOT_ASSET_URL=`` (as left in a copied ``.env.example``) means "not set"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("asset_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        """Checked here so a typo stops the start, not the first upload; kept as
        ``s3://bucket/prefix`` without stray slashes."""
        if value is None:
            return None
        bucket, prefix = parse_asset_url(value)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_postgres_url(value.get_secret_value()):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _workers_need_postgres(self) -> Settings:
        if self.run_jobs == "workers" and self.database_url is None:
            raise ValueError(
                "TIERBOT_RUN_JOBS=workers needs TIERBOT_DATABASE_URL (the job queue is in Postgres)"
            )
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("catalog", "policy")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("allow_http_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """``host`` or ``host:port`` entries separated by commas, lower-cased; IPv6 in brackets
        (a bare IPv6 address means every port of it)."""
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple):
            return value
        entries = []
        for part in value:
            text = str(part).strip().lower()
            if not text:
                continue
            if text.count(":") > 1 and not text.startswith("["):
                text = f"[{text}]"
            try:
                parts = urlsplit(f"//{text}")
                port = parts.port
            except ValueError:
                parts, port = None, None
            if (
                parts is None
                or not parts.hostname
                or port == 0
                or parts.path
                or parts.query
                or parts.fragment
                or "@" in text
            ):
                raise ValueError(
                    f"expected host or host:port entries separated by commas (IPv6 as "
                    f"[::1]:8080); got {str(part).strip()!r}"
                )
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            entries.append(f"{host}:{port}" if port else host)
        return entries

    @field_validator("provider_rates", "provider_concurrency", mode="before")
    @classmethod
    def _name_values(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs = {}
        for part in value.split(","):
            if not part.strip():
                continue
            name, sep, number = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"expected name=number pairs separated by commas; got {part!r}")
            pairs[name.strip()] = number.strip()
        return pairs

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [int(part) for part in value.replace(" ", "").split(",") if part]
            except ValueError:
                raise ValueError("must be guild ids separated by commas") from None
        return value

    @field_validator("discord_shards", mode="before")
    @classmethod
    def _shard_spec(cls, value: Any) -> Any:
        """``IDS/COUNT``: ``0,1/4`` runs shards 0 and 1 of 4; blank: unsharded."""
        return parse_shards(value) if isinstance(value, str) else value

    @field_validator(
        "public_url",
        "slack_api_url",
        "discord_api_url",
        "fal_queue_url",
        "fal_api_url",
        "gemini_api_url",
        "replicate_api_url",
        "comfyui_url",
        "s3_endpoint_url",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tierbot.db"

    @property
    def store_location(self) -> str:
        """What the store opens: the Postgres URL, or the SQLite file."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return str(self.db_path)

    @property
    def asset_dir(self) -> Path:
        return self.data_dir / "assets"


class SettingsError(Exception):
    """Settings failed validation; the message names each variable and what is wrong."""


def _env_name(field_name: str) -> str:
    """The variable a setting is read from (errors name it; they may name it already)."""
    if field_name not in Settings.model_fields and field_name.isupper():
        return field_name  # an alias such as DISCORD_SHARDS, as pydantic reports it
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"TIERBOT_{field_name.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings.

    Raises:
        SettingsError: one line per bad variable, naming it; secret values are never shown.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            name = _env_name(str(error["loc"][0])) if error["loc"] else "settings"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
