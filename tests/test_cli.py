"""The ``tierbot`` command from a shell: the same pipeline as chat, and the offline demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.shell import main, run_command
from bot.commands import parse
from bot.domain import CommandEvent, Reply


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
    assert "veo-3.1 · fal (fal-ai/veo3.1/image-to-video) · video" in out
    assert "also on gemini, replicate" in out
    assert "veo-3.0-generate-001 on gemini is retired: retired on Vertex on 2026-06-30" in out
    assert "unavailable: provider fal not configured" in out
    # A video model's price is per second of video, not 0 (it was priced without a duration),
    # and for its default clip; finals by resolution, the default marked.
    assert (
        "local-video · local (panzoom) · video · image-to-video · 2 credits/second, "
        "8 credits for 4 s" in out
    )
    assert "veo-3.1 · fal" in out and "20 credits/second, 80 credits for 4 s, no sound" in out
    assert (
        "13.4 credits/image at 1K, 13.4 credits/image at 2K (default), 24 credits/image at 4K"
        in out
    )


def test_help_without_settings(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "tierbot demo" in out and "upscale" in out


def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """The console script itself, in a fresh process, as `make run` starts it."""
    done = subprocess.run(
        [sys.executable, "-m", "adapters.shell", "demo"],
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


async def _parsed(argv: list[str]) -> dict[str, Any]:
    """What the shared parser makes of the chat text the CLI builds from these shell words."""
    events: list[CommandEvent] = []

    async def handle_command(event: CommandEvent) -> AsyncIterator[Reply]:
        events.append(event)
        return
        yield

    services: Any = SimpleNamespace(bot=SimpleNamespace(handle_command=handle_command))
    assert await run_command(services, argv) == 0
    (event,) = events
    return parse(event.command, event.text).model_dump(exclude_defaults=True)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # storyboard: a "|" word of its own, and "|" inside one quoted shell word
        (
            ["storyboard", "a", "fox", "wakes", "|", "it", "sees", "snow"],
            {"beats": ["a fox wakes", "it sees snow"]},
        ),
        (
            ["storyboard", "a fox wakes | it sees snow", "--ar", "16:9"],
            {"beats": ["a fox wakes", "it sees snow"], "ar": "16:9"},
        ),
        (["storyboard", "a fox|it leaps", "|", "snow"], {"beats": ["a fox", "it leaps", "snow"]}),
        # an option's value is never split into beats, as in chat
        (
            ["storyboard", "a | b", "--style", "noir|pulp", "--model=x|y"],
            {"beats": ["a", "b"], "style": "noir|pulp", "model": "x|y"},
        ),
        # every other word stays one token, exactly as the shell passed it
        (["draft", "a red fox", "--n", "2"], {"prompt": "a red fox", "n": 2}),
        (["draft", "a fox's den", "--n", "2"], {"prompt": "a fox's den", "n": 2}),
        (
            ["draft", "fox", "--style", "film noir", "at", "dusk"],
            {"prompt": "fox at dusk", "style": "film noir"},
        ),
        (["draft", "fox", "--no=blurry text"], {"prompt": "fox", "negative": "blurry text"}),
        (
            ["draft", 'a "big" sign', "'90s", "“hi”", "C:\\x\\", 'a\\"b'],
            {"prompt": 'a "big" sign \'90s “hi” C:\\x\\ a\\"b'},
        ),
    ],
    ids=[
        "storyboard-bar-word",
        "storyboard-quoted",
        "storyboard-bar-inside-words",
        "storyboard-option-values-whole",
        "draft-quoted-prompt",
        "draft-apostrophe",
        "draft-option-value-with-space",
        "draft-inline-option-value-with-space",
        "draft-quotes-and-backslashes",
    ],
)
async def test_shell_words_reach_the_parser_as_typed(argv: list[str], expected: dict) -> None:
    if "beats" in expected:
        expected = {"prompt": " | ".join(expected["beats"]), **expected}
    assert await _parsed(argv) == {"name": argv[0], **expected}


@pytest.mark.parametrize(
    "words",
    [["a", "fox", "wakes", "|", "it", "sees", "snow"], ["a fox wakes | it sees snow"]],
    ids=["bar-word", "quoted"],
)
def test_storyboard_from_a_shell(capsys, words: list[str]) -> None:
    assert main(["storyboard", *words]) == 0
    out = capsys.readouterr().out
    assert "Drafting 2 × “a fox wakes | it sees snow”" in out
    assert "got 1" not in out


@pytest.mark.parametrize("args", [[], ["help"], ["models"]], ids=["usage", "help", "models"])
def test_closed_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`tierbot models | head -1`: the reader is gone before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed first, so the very first write fails whatever the buffering
    try:
        done = subprocess.run(
            [sys.executable, "-m", "adapters.shell", *args],
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                "TIERBOT_DATA_DIR": str(tmp_path / "data"),
            },
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141
