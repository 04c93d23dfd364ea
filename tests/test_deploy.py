"""docs/compose.yaml against the code, as far as a machine without a Docker engine allows:
every variable it sets is a setting tierbot (or boto3) reads, its settings validate, and each
command it runs exists. The cluster itself runs without containers in test_cluster.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from adapters.shell import CLI_USAGE
from bot.settings import Settings, _env_name, load_settings

COMPOSE = Path(__file__).resolve().parent.parent / "docs" / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _tierbot_environment() -> dict[str, str]:
    return {k: str(v) for k, v in _compose()["x-tierbot"]["environment"].items()}


def test_every_variable_in_the_compose_file_is_read_by_someone() -> None:
    ours = {_env_name(name) for name in Settings.model_fields}
    for name in _tierbot_environment():
        assert name in ours or name.startswith("AWS_"), f"{name} is not a setting"


def test_the_compose_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _tierbot_environment().items():
        monkeypatch.setenv(name, re.sub(r"\$\{\w+\}", "from-the-shell", value))
    settings = load_settings(_env_file=None)
    assert settings.run_jobs == "workers"
    assert settings.store_location.startswith("postgresql://")
    assert settings.asset_url == "s3://tierbot-assets/prod"


def test_two_bots_and_two_workers_run_commands_that_exist() -> None:
    services = _compose()["services"]
    commands = [
        " ".join(s["command"]) for s in services.values() if "tierbot" in s.get("image", "")
    ]
    assert sorted(c.split()[1] for c in commands) == ["run", "run", "worker", "worker"]
    for command in {c.split(" --")[0] for c in commands}:
        assert command in CLI_USAGE
    assert {"postgres", "minio"} <= set(services)
