"""Tests of the slash-command parser shared by every surface (bot/commands.py)."""

from __future__ import annotations

import contextlib
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.commands import (
    ASPECT_RATIOS,
    COMMANDS,
    FLAGS,
    MAX_N,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    VIDEO_SECONDS,
    CommandError,
    CommandRegistry,
    CommandSpec,
    DuplicateCommandError,
    Invocation,
    RegistrationError,
    help_text,
    parse,
    register,
)


def parsed(command: str, text: str) -> dict[str, object]:
    """The invocation as a dict of the fields that differ from their defaults."""
    return parse(command, text).model_dump(exclude_defaults=True)


def error_of(command: str, text: str) -> str:
    with pytest.raises(CommandError) as caught:
        parse(command, text)
    assert str(caught.value) == caught.value.message
    return caught.value.message


# ------------------------------------------------------------------ valid commands

VALID = [
    # plain prompts, flags anywhere, --x=y
    ("draft", "a cat on a mat", {"name": "draft", "prompt": "a cat on a mat"}),
    (
        "draft",
        "a cat --ar 16:9 on a mat",
        {"name": "draft", "prompt": "a cat on a mat", "ar": "16:9"},
    ),
    ("draft", "--ar 16:9 a cat", {"name": "draft", "prompt": "a cat", "ar": "16:9"}),
    ("draft", "a cat --ar=21:9", {"name": "draft", "prompt": "a cat", "ar": "21:9"}),
    (
        "draft",
        "a cat --n 2 --seed 0 --model nano-banana --style noir --hero",
        {
            "name": "draft",
            "prompt": "a cat",
            "n": 2,
            "seed": 0,
            "model": "nano-banana",
            "style": "noir",
            "hero": True,
        },
    ),
    ("draft", f"x --seed {MAX_SEED}", {"name": "draft", "prompt": "x", "seed": MAX_SEED}),
    ("draft", "x --seed=007", {"name": "draft", "prompt": "x", "seed": 7}),
    ("draft", "x --n 9", {"name": "draft", "prompt": "x", "n": 9}),
    ("draft", "x --n 1", {"name": "draft", "prompt": "x", "n": 1}),
    # case-insensitive names, slash and command
    ("DRAFT", "x --AR 4:5 --Hero", {"name": "draft", "prompt": "x", "ar": "4:5", "hero": True}),
    ("/draft", "x --N 3", {"name": "draft", "prompt": "x", "n": 3}),
    ("/tierbot", "DRAFT x", {"name": "draft", "prompt": "x"}),
    ("tierbot", "/draft x", {"name": "draft", "prompt": "x"}),
    # em dash / en dash for --
    ("draft", "—ar 16:9 a cat", {"name": "draft", "prompt": "a cat", "ar": "16:9"}),
    ("draft", "a cat –n 2", {"name": "draft", "prompt": "a cat", "n": 2}),
    (
        "draft",
        "a cat —AR=9:16 —hero",
        {"name": "draft", "prompt": "a cat", "ar": "9:16", "hero": True},
    ),
    (
        "draft",
        "a cat —no rain —seed 4",
        {"name": "draft", "prompt": "a cat", "negative": "rain", "seed": 4},
    ),
    ("draft", "a cat ---ar 1:1", {"name": "draft", "prompt": "a cat", "ar": "1:1"}),
    ("draft", "a cat —-ar 1:1", {"name": "draft", "prompt": "a cat", "ar": "1:1"}),
    # a dash used as prose stays in the prompt
    ("draft", "a cat — on a mat", {"name": "draft", "prompt": "a cat — on a mat"}),
    ("draft", "dawn —the quiet hour", {"name": "draft", "prompt": "dawn —the quiet hour"}),
    ("draft", "a cat -- on a mat", {"name": "draft", "prompt": "a cat -- on a mat"}),
    ("draft", "a well-lit -ish room", {"name": "draft", "prompt": "a well-lit -ish room"}),
    ("draft", "minus -3 degrees", {"name": "draft", "prompt": "minus -3 degrees"}),
    # full-width forms from CJK keyboards
    ("draft", "猫 －－ａｒ　１６：９", {"name": "draft", "prompt": "猫", "ar": "16:9"}),
    ("draft", "猫 --n ３", {"name": "draft", "prompt": "猫", "n": 3}),
    # --no takes the words up to the next flag, or one quoted string
    (
        "draft",
        "a cat --no blurry, text",
        {"name": "draft", "prompt": "a cat", "negative": "blurry, text"},
    ),
    (
        "draft",
        "a cat --no blurry text --ar 1:1",
        {"name": "draft", "prompt": "a cat", "negative": "blurry text", "ar": "1:1"},
    ),
    (
        "draft",
        'a cat --no "blurry text" on a mat',
        {"name": "draft", "prompt": "a cat on a mat", "negative": "blurry text"},
    ),
    (
        "draft",
        "a cat --no=blurry text --hero",
        {"name": "draft", "prompt": "a cat", "negative": "blurry text", "hero": True},
    ),
    (
        "draft",
        'a cat --no="blurry text" on a mat',
        {"name": "draft", "prompt": "a cat on a mat", "negative": "blurry text"},
    ),
    # quoting: straight, smart, apostrophes
    (
        "draft",
        '"a cat" --style "film noir"',
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "“a cat” --style “film noir”",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "a cat --style ‘film noir’",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "a cat --style 'film noir'",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "a cat --style=„film noir“",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "a cat --style ”film noir”",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "a cat --style='film noir'",
        {"name": "draft", "prompt": "a cat", "style": "film noir"},
    ),
    (
        "draft",
        "the dog's bone --ar 1:1",
        {"name": "draft", "prompt": "the dog's bone", "ar": "1:1"},
    ),
    ("draft", "the dog’s bone", {"name": "draft", "prompt": "the dog’s bone"}),
    ("draft", "rock'n'roll poster", {"name": "draft", "prompt": "rock'n'roll poster"}),
    ("draft", "'90s style poster", {"name": "draft", "prompt": "'90s style poster"}),
    ("draft", "’90s style poster", {"name": "draft", "prompt": "’90s style poster"}),
    ("draft", "the dogs' bones", {"name": "draft", "prompt": "the dogs' bones"}),
    ("draft", "'it's a dog' story", {"name": "draft", "prompt": "it's a dog story"}),
    ("draft", 'a 12" vinyl sleeve', {"name": "draft", "prompt": 'a 12" vinyl sleeve'}),
    ("draft", r"a sign saying \"OPEN\"", {"name": "draft", "prompt": 'a sign saying "OPEN"'}),
    ("draft", '"--ar 16:9" poster', {"name": "draft", "prompt": "--ar 16:9 poster"}),
    ("draft", 'a "" cat', {"name": "draft", "prompt": "a cat"}),
    # whitespace and control characters
    ("draft", "  a\n\ncat\t on \u00a0a   mat  ", {"name": "draft", "prompt": "a cat on a mat"}),
    (
        "draft",
        "a c\x00a\x07t\u200b --a\x1br 1:1",
        {"name": "draft", "prompt": "a cat", "ar": "1:1"},
    ),
    ("draft", "abc\u202edef", {"name": "draft", "prompt": "abcdef"}),
    ("draft", "👩‍🚀 in a jungle", {"name": "draft", "prompt": "👩‍🚀 in a jungle"}),
    ("draft", "x" * MAX_PROMPT_CHARS, {"name": "draft", "prompt": "x" * MAX_PROMPT_CHARS}),
    # the other commands
    ("tierbot", "final g1 3", {"name": "final", "args": ["g1"], "index": 3}),
    ("tierbot", "select g1 3 --hero", {"name": "final", "args": ["g1"], "index": 3, "hero": True}),
    (
        "tierbot",
        "SELECT --model m g1 9",
        {"name": "final", "args": ["g1"], "index": 9, "model": "m"},
    ),
    (
        "tierbot",
        "final g1 1 --style noir",
        {"name": "final", "args": ["g1"], "index": 1, "style": "noir"},
    ),
    (
        "tierbot",
        "edit a1 make the sky --seed 3 stormy",
        {"name": "edit", "args": ["a1"], "prompt": "make the sky stormy", "seed": 3},
    ),
    (
        "tierbot",
        "edit --model m a1 add a hat",
        {"name": "edit", "args": ["a1"], "prompt": "add a hat", "model": "m"},
    ),
    ("tierbot", "upscale a1", {"name": "upscale", "args": ["a1"]}),
    ("tierbot", "upscale a1 --model topaz", {"name": "upscale", "args": ["a1"], "model": "topaz"}),
    ("tierbot", "video a1", {"name": "video", "args": ["a1"]}),
    ("tierbot", "video a1 --seconds 10", {"name": "video", "args": ["a1"], "seconds": 10}),
    ("tierbot", "video —seconds=1 a1", {"name": "video", "args": ["a1"], "seconds": 1}),
    ("tierbot", "reroll g1", {"name": "reroll", "args": ["g1"]}),
    ("tierbot", "discard g1", {"name": "discard", "args": ["g1"]}),
    ("tierbot", "approve a1", {"name": "approve", "args": ["a1"]}),
    ("tierbot", "reject a1", {"name": "reject", "args": ["a1"]}),
    ("tierbot", "lineage a1", {"name": "lineage", "args": ["a1"]}),
    ("tierbot", "budget", {"name": "budget"}),
    ("tierbot", "models", {"name": "models"}),
    ("tierbot", "help", {"name": "help"}),
    ("tierbot", "", {"name": "help"}),
    ("tierbot", "   \n ", {"name": "help"}),
    ("tierbot", "help upscale", {"name": "help", "args": ["upscale"]}),
    ("tierbot", "help select", {"name": "help", "args": ["final"]}),
    ("tierbot", "help /Draft", {"name": "help", "args": ["draft"]}),
    # storyboard beats
    (
        "tierbot",
        "storyboard a fox wakes | it sees snow",
        {
            "name": "storyboard",
            "prompt": "a fox wakes | it sees snow",
            "beats": ["a fox wakes", "it sees snow"],
        },
    ),
    (
        "tierbot",
        "storyboard a|b|c --ar 16:9",
        {"name": "storyboard", "prompt": "a | b | c", "beats": ["a", "b", "c"], "ar": "16:9"},
    ),
    (
        "tierbot",
        "storyboard  a fox --seed 5 wakes  |\n it  leaps --style noir",
        {
            "name": "storyboard",
            "prompt": "a fox wakes | it leaps",
            "beats": ["a fox wakes", "it leaps"],
            "seed": 5,
            "style": "noir",
        },
    ),
    (
        "tierbot",
        'storyboard a sign "A|B" | a door',
        {"name": "storyboard", "prompt": "a sign A|B | a door", "beats": ["a sign A|B", "a door"]},
    ),
    (
        "tierbot",
        "storyboard " + " | ".join("abcdefghi"),
        {"name": "storyboard", "prompt": " | ".join("abcdefghi"), "beats": list("abcdefghi")},
    ),
]


@pytest.mark.parametrize(("command", "text", "expected"), VALID)
def test_valid(command: str, text: str, expected: dict[str, object]) -> None:
    assert parsed(command, text) == expected


@pytest.mark.parametrize("ar", ASPECT_RATIOS)
def test_every_aspect_ratio(ar: str) -> None:
    assert parse("draft", f"x --ar {ar}").ar == ar


@pytest.mark.parametrize(
    "text",
    [
        "a cat --ar 16:9 --n 2",
        "  a cat   —ar 16:9 –n 2",
        "--n=2 a cat --ar=16:9",
        "a “cat” --ar 16:9 --n 2",
    ],
)
def test_draft_shortcut_equals_tierbot_draft(text: str) -> None:
    assert parse("draft", text) == parse("tierbot", "draft " + text)
    assert parse("/draft", text) == parse("draft", text)


def test_unset_options_stay_none() -> None:
    inv = parse("draft", "a cat")
    assert (inv.ar, inv.n, inv.seed, inv.model, inv.style, inv.negative) == (None,) * 6
    assert (inv.seconds, inv.index, inv.hero, inv.args, inv.beats) == (None, None, False, [], [])


def test_invocation_is_a_pydantic_model() -> None:
    inv = parse("tierbot", "video a1 --seconds 6")
    assert isinstance(inv, Invocation)
    assert Invocation.model_validate(inv.model_dump()) == inv


# ------------------------------------------------------------------------- errors

AR_ALLOWED = "1:1, 4:3, 3:4, 16:9, 9:16, 4:5, 21:9"
DRAFT_OPTIONS = "--ar, --n, --seed, --model, --style, --no, --hero, --ref, --sref"

ERRORS = [
    # values out of range, exactly as documented
    ("draft", "a --ar 16x9", f"--ar must be one of {AR_ALLOWED}; got 16x9"),
    ("draft", "a --ar=3:2", f"--ar must be one of {AR_ALLOWED}; got 3:2"),
    ("draft", "a --n 12", "--n must be a whole number from 1 to 9; got 12"),
    ("draft", "a --n 0", "--n must be a whole number from 1 to 9; got 0"),
    ("draft", "a --n two", "--n must be a whole number from 1 to 9; got two"),
    ("draft", "a --n 2.5", "--n must be a whole number from 1 to 9; got 2.5"),
    ("draft", "a --seed -3", "--seed must be a whole number from 0 to 4294967295; got -3"),
    (
        "draft",
        "a --seed 4294967296",
        "--seed must be a whole number from 0 to 4294967295; got 4294967296",
    ),
    (
        "draft",
        "a --seed " + "9" * 5000,
        "--seed must be a whole number from 0 to 4294967295; got " + "9" * 39 + "…",
    ),
    ("tierbot", "video a1 --seconds 30", "--seconds must be a whole number from 1 to 10; got 30"),
    ("tierbot", "video a1 --seconds 0", "--seconds must be a whole number from 1 to 10; got 0"),
    # unknown options: nearest known one, or the list, or none
    ("draft", "a --arr 16:9", "unknown option --arr; did you mean --ar?"),
    ("draft", "a --ARR 16:9", "unknown option --arr; did you mean --ar?"),
    ("draft", "a —arr 16:9", "unknown option --arr; did you mean --ar?"),
    ("draft", "a --heroo", "unknown option --heroo; did you mean --hero?"),
    ("draft", "a --hero,", "unknown option --hero,; did you mean --hero?"),
    ("tierbot", "video a1 --second 3", "unknown option --second; did you mean --seconds?"),
    ("draft", "a --quality high", f"unknown option --quality; draft takes {DRAFT_OPTIONS}"),
    ("tierbot", "upscale a1 --xyz", "unknown option --xyz; upscale takes --model"),
    ("tierbot", "budget --xyz", "unknown option --xyz; budget takes no options"),
    # options the command does not take
    ("tierbot", "upscale a1 --ar 1:1", "--ar does not apply to upscale"),
    ("tierbot", "upscale a1 —ar 1:1", "--ar does not apply to upscale"),
    ("tierbot", "final g1 2 --n 4", "--n does not apply to final"),
    ("tierbot", "edit a1 redo --no rain", "--no does not apply to edit"),
    ("tierbot", "storyboard a | b --hero", "--hero does not apply to storyboard"),
    ("tierbot", "approve a1 --seed 3", "--seed does not apply to approve"),
    ("tierbot", "help --ar 1:1", "--ar does not apply to help"),
    # missing values, values where none is taken, repeats
    ("draft", "a --seed", "--seed needs a value"),
    ("draft", "a --seed --hero", "--seed needs a value"),
    ("draft", "a --seed=", "--seed needs a value"),
    ("draft", 'a --style ""', "--style needs a value"),
    ("draft", "a --no", "--no needs a value"),
    ("draft", "a --no --hero", "--no needs a value"),
    ("draft", "a —ar", "--ar needs a value"),
    ("draft", "a --hero=yes", "--hero takes no value; got yes"),
    ("draft", "a --n 1 --n 2", "--n is given twice; give it once"),
    ("draft", "a --ar 1:1 —AR 1:1", "--ar is given twice; give it once"),
    ("draft", "a --hero --hero", "--hero is given twice; give it once"),
    ("draft", "a --model " + "m" * 101, "--model is 101 characters; the limit is 100"),
    # quoting
    (
        "draft",
        '"a cat --ar 16:9',
        "unclosed quote \" before 'a cat --ar 16:9'; close it or remove it",
    ),
    (
        "draft",
        "a cat --style “film noir",
        "unclosed quote “ before 'film noir'; close it or remove it",
    ),
    ("draft", 'a cat "', 'unclosed quote " at the end; close it or remove it'),
    # prompts
    ("draft", "", "/draft needs a prompt, e.g. /draft astronaut in an overgrown jungle --ar 16:9"),
    (
        "draft",
        "  --ar 16:9 ",
        "/draft needs a prompt, e.g. /draft astronaut in an overgrown jungle --ar 16:9",
    ),
    (
        "tierbot",
        "draft",
        "/draft needs a prompt, e.g. /draft astronaut in an overgrown jungle --ar 16:9",
    ),
    ("draft", "x" * 1204, "the prompt is 1204 characters; the limit is 1000"),
    ("draft", "x " * 600, "the prompt is 1199 characters; the limit is 1000"),
    (
        "tierbot",
        "edit a1",
        "/tierbot edit needs an instruction, e.g. /tierbot edit 3fa2c1d0 make the sky stormy",
    ),
    ("tierbot", "edit a1 " + "y" * 1001, "the prompt is 1001 characters; the limit is 1000"),
    # commands
    ("tierbot", "upscal a1", "unknown command 'upscal'; did you mean 'upscale'? Try /tierbot help"),
    ("tierbot", "selct g1 2", "unknown command 'selct'; did you mean 'select'? Try /tierbot help"),
    ("tierbot", "a cat on a mat", "unknown command 'a'. Try /tierbot help"),
    (
        "tierbot",
        "help upscal",
        "unknown command 'upscal'; did you mean 'upscale'? Try /tierbot help",
    ),
    (
        "tierbot",
        "--ar 16:9 draft a cat",
        "start with a command, e.g. /tierbot draft a red fox --ar 16:9; got --ar first. "
        "Try /tierbot help",
    ),
    ("paint", "a cat", "unknown slash command /paint; tierbot answers /draft and /tierbot"),
    # positionals
    (
        "tierbot",
        "upscale",
        "/tierbot upscale needs an asset id; usage: /tierbot upscale <asset-id> [--model ID]",
    ),
    (
        "tierbot",
        "upscale --model m",
        "/tierbot upscale needs an asset id; usage: /tierbot upscale <asset-id> [--model ID]",
    ),
    (
        "tierbot",
        "video",
        "/tierbot video needs an asset id; "
        "usage: /tierbot video <asset-id> [motion text] [--seconds 1..10] "
        "[--motion subtle|dynamic] [--model ID] [--ref REF] [--sref REF]",
    ),
    (
        "tierbot",
        "edit",
        "/tierbot edit needs an asset id; "
        "usage: /tierbot edit <asset-id> <instruction> [--model ID] [--seed N] [--res 1k|2k|4k] "
        "[--ref REF] [--sref REF] [--region BOX] [--mask]",
    ),
    ("tierbot", "reroll", "/tierbot reroll needs a grid id; usage: /tierbot reroll <grid-id>"),
    (
        "tierbot",
        "approve",
        "/tierbot approve needs an asset id; usage: /tierbot approve <asset-id>",
    ),
    (
        "tierbot",
        "final g1",
        "/tierbot final needs a grid id and a draft number from 1 to 9; "
        "usage: /tierbot final <grid-id> <k> [--model ID] [--style NAME] [--hero] [--res 1k|2k|4k] "
        "[--ref REF] [--sref REF]",
    ),
    ("tierbot", "final g1 12", "the draft number <k> must be a whole number from 1 to 9; got 12"),
    (
        "tierbot",
        "select g1 two",
        "the draft number <k> must be a whole number from 1 to 9; got two",
    ),
    ("tierbot", "budget now", "/tierbot budget takes no arguments; got 'now'"),
    ("tierbot", "models all of them", "/tierbot models takes no arguments; got 'all of them'"),
    (
        "tierbot",
        "reroll g1 g2",
        "/tierbot reroll takes only a grid id; got extra 'g2'; usage: /tierbot reroll <grid-id>",
    ),
    (
        "tierbot",
        "final g1 2 3",
        "/tierbot final takes only a grid id and a draft number from 1 to 9; got extra '3'; "
        "usage: /tierbot final <grid-id> <k> [--model ID] [--style NAME] [--hero] [--res 1k|2k|4k] "
        "[--ref REF] [--sref REF]",
    ),
    (
        "tierbot",
        "help draft final",
        "/tierbot help takes only a command name; got extra 'final'; "
        "usage: /tierbot help [command]",
    ),
    # storyboard
    ("tierbot", "storyboard a fox", "a storyboard needs 2 to 9 beats separated by |; got 1"),
    (
        "tierbot",
        "storyboard " + " | ".join("abcdefghij"),
        "a storyboard needs 2 to 9 beats separated by |; got 10",
    ),
    (
        "tierbot",
        "storyboard a || b",
        "storyboard beat 2 is empty; write something between each pair of |",
    ),
    (
        "tierbot",
        "storyboard a | b |",
        "storyboard beat 3 is empty; write something between each pair of |",
    ),
    (
        "tierbot",
        "storyboard | a",
        "storyboard beat 1 is empty; write something between each pair of |",
    ),
    (
        "tierbot",
        "storyboard",
        "/tierbot storyboard needs 2 to 9 beats separated by |, e.g. "
        "/tierbot storyboard a fox wakes | it sees snow | it leaps into a drift --ar 16:9",
    ),
    (
        "tierbot",
        "storyboard a | " + "b" * 1001,
        "storyboard beat 2 is 1001 characters; the limit is 1000",
    ),
]


@pytest.mark.parametrize(("command", "text", "message"), ERRORS)
def test_error_message(command: str, text: str, message: str) -> None:
    assert error_of(command, text) == message


def test_command_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse("draft", "")


def test_echoed_input_is_truncated_and_one_line() -> None:
    message = error_of("draft", "a --ar " + "z" * 500)
    assert message.endswith("got " + "z" * 39 + "…")
    message = error_of("tierbot", "budget line one\nline two")
    assert message == "/tierbot budget takes no arguments; got 'line one line two'"


@pytest.mark.parametrize(
    "text",
    [
        "' " * 30_000,
        '" ' * 30_000 + '"',
        "’" * 60_000,
        "—a " * 20_000,
        "a" * 200_000,
        "|" * 100_000,
    ],
)
def test_large_inputs_stay_fast(text: str) -> None:
    start = time.perf_counter()
    for command in ("draft", "tierbot"):
        with contextlib.suppress(CommandError):
            parse(command, text)
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------- help, registry


@pytest.mark.parametrize("spec", list(COMMANDS), ids=lambda spec: spec.name)
def test_help_for_every_command(spec: CommandSpec) -> None:
    assert spec.usage.strip() and spec.help.strip()
    assert spec.usage.startswith(spec.invoke)
    detail = help_text(spec.name)
    assert detail.splitlines()[:2] == [spec.usage, spec.help]
    for flag in spec.flags:
        assert f"--{flag}" in spec.usage and f"--{flag}" in detail
    for alias in spec.aliases:
        assert help_text(alias) == detail
        assert help_text(alias.upper()) == detail
    assert spec.usage in help_text()
    assert spec.help in help_text()
    # the example parses to this command
    command, _, text = spec.example.removeprefix("/").partition(" ")
    assert parse(command, text).name == spec.name


def test_help_overview_lists_every_command_once() -> None:
    overview = help_text()
    assert help_text(None) == overview == help_text("  ")
    for spec in COMMANDS:
        assert overview.count(spec.usage + "\n") == 1
    assert "/draft <prompt>" in overview


def test_help_is_a_command() -> None:
    assert "help" in COMMANDS
    assert parse("tierbot", "help").name == "help"


def test_help_unknown_command() -> None:
    with pytest.raises(CommandError) as caught:
        help_text("upscal")
    assert (
        caught.value.message
        == "unknown command 'upscal'; did you mean 'upscale'? Try /tierbot help"
    )


def test_expected_commands_are_registered() -> None:
    names = {spec.name for spec in COMMANDS}
    assert names == {
        "draft",
        "final",
        "edit",
        "upscale",
        "video",
        "reroll",
        "discard",
        "approve",
        "reject",
        "storyboard",
        "schedule",
        "lineage",
        "budget",
        "models",
        "help",
        "vary",
        "ref",
        "upload",
        "shots",
        "reshoot",
        "order",
        "match",
        "unify",
    }
    assert COMMANDS.get("select") is COMMANDS.get("final")
    assert set(FLAGS) == {
        "ar",
        "n",
        "seed",
        "model",
        "style",
        "no",
        "hero",
        "res",
        "seconds",
        "tz",
        "days",
        "summary",
        "ref",
        "sref",
        "strong",
        "prompt",
        "region",
        "mask",
        "motion",
        "finals",
    }


@pytest.mark.parametrize(
    "spec",
    [
        CommandSpec("draft", "again"),
        CommandSpec("select", "clashes with final's alias"),
        CommandSpec("pick", "alias clashes with a name", aliases=("upscale",)),
        CommandSpec("choose", "alias clashes with an alias", aliases=("select",)),
    ],
    ids=["name", "name-vs-alias", "alias-vs-name", "alias-vs-alias"],
)
def test_duplicate_registration_raises(spec: CommandSpec) -> None:
    before = [(s.name, s.aliases) for s in COMMANDS]
    names = COMMANDS.names()
    with pytest.raises(DuplicateCommandError, match="already taken"):
        register(spec)
    assert [(s.name, s.aliases) for s in COMMANDS] == before
    assert COMMANDS.names() == names


def test_registry_rules_on_a_fresh_registry() -> None:
    registry = CommandRegistry()
    first = CommandSpec("alpha", "first", aliases=("a",))
    assert register(first, registry) is first
    assert registry.get("ALPHA") is first and registry.get("a") is first
    assert len(registry) == 1 and list(registry) == [first]
    with pytest.raises(DuplicateCommandError):
        registry.register(CommandSpec("beta", "second", aliases=("a",)))
    with pytest.raises(DuplicateCommandError):
        registry.register(CommandSpec("gamma", "repeats itself", aliases=("gamma",)))
    with pytest.raises(RegistrationError):
        registry.register(CommandSpec("delta", "bad flag", flags=("nope",)))
    with pytest.raises(RegistrationError):
        registry.register(CommandSpec("Bad Name", "bad name"))
    with pytest.raises(RegistrationError):
        registry.register(CommandSpec("eps", "beats without prompt", beats=True))
    assert registry.names() == ["alpha", "a"]


def test_duplicate_is_an_import_time_error() -> None:
    source = (
        "from bot.commands import CommandRegistry, CommandSpec, register\n"
        "REG = CommandRegistry()\n"
        "register(CommandSpec('x', 'one'), REG)\n"
        "register(CommandSpec('x', 'two'), REG)\n"
    )
    with pytest.raises(DuplicateCommandError):
        exec(compile(source, "plugin_module.py", "exec"), {})


# ------------------------------------------------------------------------ properties

FRAGMENTS = st.sampled_from(
    [
        "--ar", "—ar", "–n", "--n", "--no", "—no", "--hero", "--HERO=", "--seed=", "--seconds",
        "--model", "--style=", "--arr", "--", "—", "–", "-", "---", "=", '"', "'", "“", "”",
        "‘", "’", "„", "\\", '\\"', "|", "||", "16:9", "1:1", "16x9", "-3", "0", "9", "12",
        "4294967296", "\n", "\t", "\x00", "\x1b", "\u200b", "\u202e", "\u00a0", "dog's",
        "é", "東京", "🙂", "👩‍🚀", "１６：９", "－－ａｒ", "help", "draft", "select", "final",
        "storyboard", "video", "edit", "a1", "budget", "help", "x" * 300,
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from(["", " ", "  ", "\n", "=", "|"])
MIXED_TEXT = st.lists(st.tuples(FRAGMENTS | st.text(max_size=6), SEPARATORS), max_size=40).map(
    lambda parts: "".join(a + b for a, b in parts)
)
SLASHES = st.sampled_from(["draft", "tierbot", "/draft", "/Tierbot", "imagine", ""])
SUBCOMMANDS = st.sampled_from([*COMMANDS.names(), "upscal", ""])


def _check_outcome(command: str, text: str) -> None:
    try:
        inv = parse(command, text)
    except CommandError as exc:
        assert exc.message and exc.message == str(exc)
        assert "\n" not in exc.message
        assert not any(unicodedata.category(c) == "Cc" for c in exc.message)
        return
    assert isinstance(inv, Invocation)
    assert COMMANDS.get(inv.name) is not None and COMMANDS.get(inv.name).name == inv.name
    if inv.prompt is not None:
        assert inv.prompt == inv.prompt.strip() and "  " not in inv.prompt
        assert not any(unicodedata.category(c) == "Cc" for c in inv.prompt)
        if inv.name != "storyboard":
            assert 0 < len(inv.prompt) <= MAX_PROMPT_CHARS
    if inv.name == "storyboard":
        assert 2 <= len(inv.beats) <= 9 and all(inv.beats)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(command=SLASHES, text=st.text())
def test_arbitrary_text_parses_or_raises_command_error(command: str, text: str) -> None:
    _check_outcome(command, text)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(command=SLASHES, sub=SUBCOMMANDS, text=MIXED_TEXT)
def test_mixed_text_parses_or_raises_command_error(command: str, sub: str, text: str) -> None:
    _check_outcome(command, text)
    _check_outcome("tierbot", f"{sub} {text}")


# Round trip: options rendered in every accepted spelling parse back to the same values.

WORD = st.from_regex(r"[A-Za-z][a-z]{0,7}(?:'[a-z]{1,2})?", fullmatch=True) | st.sampled_from(
    ["café", "東京", "🙂", "naïve", "dog's", "dog’s", '12"', "—", "--", "—the", "a-b", "x|y", "-3"]
)
PLAIN_WORD = st.from_regex(r"[A-Za-z][a-z]{0,7}(?:'[a-z]{1,2})?", fullmatch=True)
DASH = st.sampled_from(["--", "—", "–"])
CASE = st.sampled_from([str.lower, str.upper, str.title])
QUOTES = st.sampled_from([('"', '"'), ("“", "”"), ("”", "”"), ("„", "“"), ("'", "'"), ("‘", "’")])
GAP = st.sampled_from([" ", "  ", "\n", "\t", "\u00a0", " \n "])


@st.composite
def flag_text(draw: st.DrawFn, name: str, value: str | None, greedy_last: bool = False) -> str:
    """One option as a person might type it: any dash, any case, space or '='.

    Values with spaces are quoted; so is ``--no`` unless it comes last (it is greedy).
    """
    flag = draw(DASH) + draw(CASE)(name)
    if value is None:
        return flag
    if (" " in value or name == "no") and not greedy_last:
        opening, closing = draw(QUOTES)
        value = f"{opening}{value}{closing}"
    return flag + draw(st.sampled_from([" ", "="])) + value


@st.composite
def interleave(draw: st.DrawFn, words: list[str], options: list[str], tail: str | None) -> str:
    """The words in order with the options shuffled in between, and ``tail`` last."""
    pieces = list(words)
    for option in draw(st.permutations(options)):
        pieces.insert(draw(st.integers(0, len(pieces))), option)
    if tail is not None:
        pieces.append(tail)
    return "".join(piece + draw(GAP) for piece in pieces)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_draft_round_trip(data: st.DataObject) -> None:
    words = data.draw(st.lists(WORD, min_size=1, max_size=12))
    values = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "ar": st.sampled_from(ASPECT_RATIOS),
                "n": st.integers(1, MAX_N),
                "seed": st.integers(0, MAX_SEED),
                "model": st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,20}", fullmatch=True),
                "style": st.lists(PLAIN_WORD, min_size=1, max_size=3).map(" ".join),
                "negative": st.lists(PLAIN_WORD, min_size=1, max_size=4).map(" ".join),
                "hero": st.just(True),
            },
        )
    )
    negative_last = "negative" in values and data.draw(st.booleans())
    options, tail = [], None
    for field, value in values.items():
        name = {"negative": "no"}.get(field, field)
        shown = None if value is True else str(value)
        if field == "negative" and negative_last:
            tail = data.draw(flag_text(name, shown, greedy_last=True))
        else:
            options.append(data.draw(flag_text(name, shown)))
    text = data.draw(interleave(words, options, tail))
    command, prefix = data.draw(
        st.sampled_from([("draft", ""), ("/draft", ""), ("tierbot", "draft ")])
    )
    assert parsed(command, prefix + text) == {"name": "draft", "prompt": " ".join(words), **values}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_storyboard_round_trip(data: st.DataObject) -> None:
    beats = data.draw(
        st.lists(st.lists(PLAIN_WORD, min_size=1, max_size=4).map(" ".join), min_size=2, max_size=9)
    )
    values = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "ar": st.sampled_from(ASPECT_RATIOS),
                "seed": st.integers(0, MAX_SEED),
                "style": st.lists(PLAIN_WORD, min_size=1, max_size=3).map(" ".join),
                "model": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
            },
        )
    )
    options = [data.draw(flag_text(field, str(value))) for field, value in values.items()]
    words = " | ".join(beats).split(" ")
    text = data.draw(interleave(words, options, None))
    expected = {"name": "storyboard", "prompt": " | ".join(beats), "beats": beats, **values}
    assert parsed("tierbot", "storyboard " + text) == expected


@settings(max_examples=200)
@given(
    data=st.data(),
    asset=st.from_regex(r"[0-9a-f]{8}", fullmatch=True),
    index=st.integers(1, MAX_N),
    seconds=st.integers(*VIDEO_SECONDS),
)
def test_final_and_video_round_trip(
    data: st.DataObject, asset: str, index: int, seconds: int
) -> None:
    alias = data.draw(st.sampled_from(["final", "select", "Final", "SELECT"]))
    options = [data.draw(flag_text("hero", None)), data.draw(flag_text("model", "m-1"))]
    text = data.draw(interleave([asset, str(index)], options, None))
    assert parsed("tierbot", f"{alias} {text}") == {
        "name": "final",
        "args": [asset],
        "index": index,
        "hero": True,
        "model": "m-1",
    }
    text = data.draw(interleave([asset], [data.draw(flag_text("seconds", str(seconds)))], None))
    assert parsed("tierbot", f"video {text}") == {
        "name": "video",
        "args": [asset],
        "seconds": seconds,
    }


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        # Text typed without a command (the web page's box): how to draft it.
        (
            "",
            "a red fox in snow",
            "Commands start with / — to draft this, type: /draft a red fox in snow",
        ),
        ("", "  a red   fox ", "Commands start with / — to draft this, type: /draft a red fox"),
        ("", "x" * 300, "Commands start with / — to draft this, type /draft and then your prompt"),
        # ... or, when it starts with a command's name, the slash it lacks.
        ("", "draft a fox --n 2", "Commands start with / — type: /draft a fox --n 2"),
        ("", "help", "Commands start with / — type: /tierbot help"),
        ("", "select g1 2", "Commands start with / — type: /tierbot final g1 2"),
        ("", "tierbot budget", "Commands start with / — type: /tierbot budget"),
        # Near misses and other bots' commands: did you mean.
        (
            "imagine",
            "a cat",
            "unknown slash command /imagine; did you mean /draft? "
            "tierbot answers /draft and /tierbot",
        ),
        (
            "/final",
            "g1 2",
            "unknown slash command /final; did you mean /tierbot final? "
            "tierbot answers /draft and /tierbot",
        ),
        (
            "upscal",
            "a1",
            "unknown slash command /upscal; did you mean /tierbot upscale? "
            "tierbot answers /draft and /tierbot",
        ),
        (
            "drafts",
            "a cat",
            "unknown slash command /drafts; did you mean /draft? "
            "tierbot answers /draft and /tierbot",
        ),
        (
            "tierbots",
            "help",
            "unknown slash command /tierbots; did you mean /tierbot? "
            "tierbot answers /draft and /tierbot",
        ),
        (
            "tierbot",
            "upscal a1",
            "unknown command 'upscal'; did you mean 'upscale'? Try /tierbot help",
        ),
    ],
)
def test_unknown_and_missing_slash_commands_say_what_was_meant(
    command: str, text: str, message: str
) -> None:
    assert error_of(command, text) == message
