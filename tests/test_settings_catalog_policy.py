"""Settings from the environment, the catalog file and the policy file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters import wire
from bot.catalog import CatalogError, load_catalog
from bot.domain import Capability, Origin, Stage
from bot.policy import PolicyError, load_policy
from bot.settings import SettingsError, load_settings


def test_defaults_need_nothing() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8765)
    assert settings.slack_bot_token is None and settings.fal_key is None


def test_environment_and_dotenv_are_read(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIERBOT_HTTP_PORT=9000\nFAL_KEY=fal-secret-123\n")
    monkeypatch.setenv("TIERBOT_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings()
    assert settings.http_port == 9000 and settings.data_dir == tmp_path / "d"
    assert settings.fal_key.get_secret_value() == "fal-secret-123"
    assert "fal-secret-123" not in repr(settings) and "fal-secret-123" not in str(settings)


def test_errors_name_the_variable_and_never_echo_secrets(monkeypatch) -> None:
    monkeypatch.setenv("TIERBOT_HTTP_PORT", "eighty")
    monkeypatch.setenv("TIERBOT_POLICY", "/nowhere/policy.toml")
    monkeypatch.setenv("TIERBOT_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    with pytest.raises(SettingsError) as failed:
        load_settings()
    message = str(failed.value)
    assert "TIERBOT_HTTP_PORT: Input should be a valid integer" in message
    assert "TIERBOT_POLICY: Value error, no such file: /nowhere/policy.toml" in message
    assert "TIERBOT_LOG_LEVEL" in message
    assert "xoxb-very-secret" not in message


def test_secrets_never_reach_the_logs(monkeypatch, caplog, make_settings) -> None:
    from adapters import wire

    monkeypatch.setenv("GEMINI_API_KEY", "AIza-secret")
    caplog.set_level(logging.DEBUG)
    services = wire(make_settings())
    assert "AIza-secret" not in caplog.text
    services.store.close()


def test_shipped_catalog_has_the_seed_models_by_role() -> None:
    catalog = load_catalog()
    roles = {
        "nano-banana": Stage.DRAFT,
        "z-image-turbo": Stage.DRAFT,
        "nano-banana-pro": Stage.FINAL,
        "nano-banana-2": Stage.FINAL,
        "seedream-4": Stage.FINAL,
        "veo-3": Stage.VIDEO,
        "seedance": Stage.VIDEO,
        "seedvr-upscale": Stage.UPSCALE,
    }
    for model_id, stage in roles.items():
        assert stage in catalog.models[model_id].stages, model_id
    assert Capability.IMAGE_TO_VIDEO in catalog.models["veo-3"].capabilities
    assert not catalog.models["z-image-turbo"].multi_subject
    assert catalog.models["veo-3"].unit == "second"
    assert all(isinstance(m.price, int) for m in catalog.models.values())
    assert {"product", "portrait", "cinematic", "social"} <= set(catalog.styles)
    assert any(Stage.EDIT in m.stages for m in catalog.models.values())


def test_user_catalog_merges_over_the_shipped_one(tmp_path: Path) -> None:
    override = tmp_path / "mine.toml"
    override.write_text("""
[models.nano-banana]
price = 2000

[models.z-image-turbo]
enabled = false

[models.my-sdxl]
provider = "comfyui"
provider_model = "sdxl.json"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 100

[styles.noir]
adds = "black and white, hard shadows"
""")
    catalog = load_catalog(override)
    assert catalog.models["nano-banana"].price == 2000
    assert catalog.models["nano-banana"].providers[0].provider == "gemini"  # untouched kept
    assert "z-image-turbo" not in catalog.models
    assert catalog.models["my-sdxl"].providers[0].provider == "comfyui"
    assert catalog.styles["noir"].adds.startswith("black and white")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.x]\nprovider = 'p'\n", "models.x.providers.0.model: String should have"),
        ("[models.nano-banana]\nprice = -1\n", "models.nano-banana.price"),
        ("[models.nano-banana]\nstages = ['drafts']\n", "models.nano-banana.stages.0"),
        ("[models\n", "mine.toml"),
    ],
)
def test_malformed_catalog_names_the_entry(tmp_path: Path, text: str, message: str) -> None:
    override = tmp_path / "mine.toml"
    override.write_text(text)
    with pytest.raises(CatalogError) as failed:
        load_catalog(override)
    assert message in str(failed.value)


def test_policy_rules_resolve_channel_then_team_then_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("""
[default]
reroute_after_rejections = 3
daily_credits = 100

[teams.T1]
approvers = ["U1"]
monthly_credits = 2000

[teams.T1.channels.C9]
approvers = ["U9"]
open_spend_credits = 10
daily_credits = 5
""")
    policy = load_policy(path)
    general = policy.rules_for(Origin(team="T1", channel="C1", user="U1"))
    assert general.approvers == ("U1",) and general.reroute_after_rejections == 3
    special = policy.rules_for(Origin(team="T1", channel="C9", user="U1"))
    assert special.approvers == ("U9",) and special.open_spend == 10_000
    assert not policy.is_approver(Origin(team="T1", channel="C9", user="U1"))
    assert policy.is_approver(Origin(surface="slack", team="T1", channel="C9", user="U9"))
    assert policy.is_approver(Origin(team="T2", channel="C1", user="anyone"))  # no approvers
    caps = {(c.scope, c.window.value, c.limit) for c in policy.caps("T1", "C9")}
    assert caps == {
        ("team", "day", 100_000),
        ("team", "month", 2_000_000),
        ("channel", "day", 5_000),
    }


def test_policy_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[teams.T1]\ndaily_credits = 'lots'\n")
    with pytest.raises(PolicyError, match=r"teams\.T1\.daily_credits"):
        load_policy(path)


def test_provider_concurrency_overrides_the_catalog_and_must_be_positive(
    monkeypatch, make_settings
) -> None:
    services = wire(make_settings(provider_concurrency={"fal": 3}))
    assert services.catalog.concurrency("fal") == 3
    assert services.catalog.concurrency("local") == load_catalog().concurrency("local")
    monkeypatch.setenv("TIERBOT_PROVIDER_CONCURRENCY", "fal=0")
    with pytest.raises(SettingsError) as failed:
        load_settings()
    assert "TIERBOT_PROVIDER_CONCURRENCY" in str(failed.value)
