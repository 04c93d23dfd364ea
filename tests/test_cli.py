"""The ``tierbot`` command from a shell: the same pipeline as chat, and the offline demo."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bot.cli import main


def _ids(text: str, label: str) -> list[str]:
    return re.findall(rf"{label} ([0-9a-f]{{8}})", text)


def test_shell_commands_walk_the_pipeline(capsys, tmp_path: Path) -> None:
    assert main(["draft", "astronaut in an overgrown jungle", "--ar", "16:9", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "draft on local-draft" in out and "4 credits" in out
    (grid,) = _ids(out, "grid")
    assert main(["select", grid, "2"]) == 0
    out = capsys.readouterr().out
    (final,) = _ids(out, "Final")
    assert "local-final" in out and "file: " in out
    assert main(["upscale", final]) == 0
    assert main(["video", final]) == 0
    out = capsys.readouterr().out
    (video,) = _ids(out, "Video")
    assert main(["lineage", video]) == 0
    lineage = capsys.readouterr().out
    assert final in lineage and video in lineage
    assert main(["budget"]) == 0
    assert "Today: 19 credits" in capsys.readouterr().out
    assert (tmp_path / "data" / "tierbot.db").exists()


def test_errors_exit_1_with_the_message(capsys) -> None:
    assert main(["draft", "a cat", "--n", "12"]) == 1
    assert "--n must be a whole number from 1 to 9; got 12" in capsys.readouterr().out


def test_invalid_settings_exit_2_naming_the_variable(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TIERBOT_HTTP_PORT", "0")
    assert main(["models"]) == 2
    assert "TIERBOT_HTTP_PORT" in capsys.readouterr().err


def test_models_lists_the_catalog_with_availability(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "local-draft · local (preview) · draft" in out
    assert "veo-3.1 · gemini (veo-3.1-generate-preview) · video" in out
    assert "also on fal, replicate" in out
    assert "unavailable: provider gemini not configured" in out


def test_help_without_settings(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "tierbot demo" in out and "upscale" in out


def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """The console script itself, in a fresh process, as `make run` starts it."""
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for step in (
        "draft on local-draft",
        "final on local-final",
        "upscale on local-upscale",
        "video on local-video",
        "Lineage of",
        "Demo finished",
    ):
        assert step in out
    assert out.count("file: ") >= 4
    assert len(list((tmp_path / "data" / "assets").rglob("*.mp4"))) == 1


def test_calendar_file_is_read_from_the_operators_disk(capsys, tmp_path: Path) -> None:
    assert main(["schedule", "add", "morning", "daily", "09:00", "a {weekday} coffee"]) == 0
    csv = tmp_path / "calendar.csv"
    csv.write_text("date,prompt\n2026-11-23,a launch day teaser\n")
    assert main(["schedule", "calendar", "morning", str(csv)]) == 0
    assert "Calendar for morning: 1 day(s) from 2026-11-23" in capsys.readouterr().out
    assert main(["schedule", "calendar", "morning", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
