"""The ``tierbot`` command: the same commands as chat, from a shell (scripts and cron too).

``tierbot draft "a prompt" --ar 16:9`` is ``/draft`` and ``tierbot <sub> ...`` is
``/tierbot <sub> ...``: the text goes through the same parser and pipeline as every chat
surface, as the local user ``cli:<login>``. Three commands exist only here: ``demo`` (a
complete offline pass), ``doctor`` (the live check of keys and model ids) and ``run`` (serve
the configured surfaces). Exit status: 0 on success,
1 when a reply reports an error, 2 for invalid settings, 130 on Ctrl+C and 141 when the
reader of standard output goes away (``tierbot models | head``; see :func:`main`).

The shell has already split the words and removed the quotes, so :func:`command_text`
writes them back as chat text the shared parser reads as exactly those words (see there).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from itertools import pairwise
from pathlib import Path

from adapters import load_surfaces, surface_cli, wire
from adapters.http_server import http_server
from adapters.ops import add_ops_routes
from bot import cpu
from bot.app import Services, freeze_startup_objects
from bot.catalog import CatalogError
from bot.commands import COMMANDS, FLAGS, help_text, reference_values
from bot.doctor import live_check, take_out_missing
from bot.domain import CommandEvent, InboundFile, Origin, Reply
from bot.policy import PolicyError
from bot.settings import Settings, SettingsError, load_settings
from bot.surfaces import SurfaceUnavailable

log = logging.getLogger(__name__)

DEMO_PROMPT = "astronaut in an overgrown jungle"

#: Exit status when standard output is a pipe whose reader has gone: 128 + SIGPIPE, what a
#: shell reports for a program ended by that signal (and distinct from 1, "an error reply").
EXIT_BROKEN_PIPE = 141

#: The quote characters of the chat grammar (bot/commands.py): straight, smart and low-9.
_QUOTES = frozenset("\"'“”„‘’")

CLI_USAGE = """\
usage: tierbot <command> [...]

Only here:
  tierbot demo      a complete offline pass: drafts, grid, final, 2K upscale, 4 s video
  tierbot doctor    ask each configured provider whether its key works and each catalog
                    model exists there (spends nothing); one line per model
  tierbot run       serve the web channel (http://127.0.0.1:8765) and configured surfaces
  tierbot worker [--concurrency N]   run model calls that `tierbot run` processes queue
                    (TIERBOT_RUN_JOBS=workers, on TIERBOT_DATABASE_URL); /healthz, /metrics
  tierbot discord sync   publish the Discord commands globally (rate-limited; guilds in
                    DISCORD_GUILD_IDS are synced at every start)

The chat commands, from a shell (`tierbot draft ...` is /draft, `tierbot X ...` is /tierbot X):
"""


def _origin() -> Origin:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "local"
    return Origin(surface="cli", team="local", channel="cli", user=user)


def _print(reply: Reply) -> None:
    print(reply.text)
    for path in reply.files:
        print(f"  file: {path}")
    print(flush=True)


async def _collect(services: Services, replies: AsyncGenerator[Reply, None]) -> list[Reply]:
    """Print the replies as they come (printed is posted: the shell's outbox entry is done).
    If printing fails (a closed pipe), the command is closed here, in its own task, rather
    than left to the event loop's finaliser."""
    collected = []
    async with aclosing(replies):
        async for reply in replies:
            _print(reply)
            if reply.delivery_id is not None:
                services.store.outbox_done(reply.delivery_id)
            collected.append(reply)
    return collected


def _needs_quotes(word: str) -> bool:
    """Whether the parser would read ``word``, written as it is, as anything but itself.

    It would split it at whitespace, drop it when empty, open a quote at its start or right
    after ``=``, and read a backslash before a quote as an escape. Anything else is literal
    (the apostrophe in ``dog's``, the inch mark in ``12"``).
    """
    return (
        not word
        or any(ch.isspace() for ch in word)
        or word[0] in _QUOTES
        or any(a in "=\\" and b in _QUOTES for a, b in pairwise(word))
    )


def _quote(word: str) -> str:
    """``word`` as one chat token that the parser reads back as exactly ``word``.

    Words that need it are put in double quotes, with a backslash before every quote
    character inside (the parser removes exactly those). Trailing backslashes go after the
    closing quote, which they would otherwise escape. An option with an inline value
    (``--no=blurry text``) quotes only the value, so it stays an option.
    """
    if not _needs_quotes(word):
        return word
    name, eq, value = word.partition("=")
    if word.startswith("-") and eq and not _needs_quotes(name):
        return f"{name}={_quote(value)}"
    core = word.rstrip("\\")
    escaped = "".join("\\" + ch if ch in _QUOTES else ch for ch in core)
    return f'"{escaped}"{word[len(core) :]}'


def _takes_value(word: str) -> bool:
    """Whether ``word`` is an option whose value is the next word (``--style``)."""
    if not word.startswith("--") or "=" in word:
        return False
    flag = FLAGS.get(word[2:].lower())
    return flag is not None and flag.metavar is not None


def command_text(words: Sequence[str], *, beats: bool = False) -> str:
    """The chat text the shared parser reads as exactly these shell words.

    Each word becomes one token (:func:`_quote`), so ``tierbot draft "a red fox" --n 2``
    keeps its prompt and its options. With ``beats`` (``storyboard``), every ``|`` separates
    beats, whether it is a word of its own or inside a quoted word: a ``|`` reaches the
    program only when the person quoted it, so quoting cannot mean "literal |" here. An
    option and its value are left whole, as the parser leaves them in chat.
    """
    tokens = []
    value_next = False
    for word in words:
        if beats and not value_next and not word.startswith("--"):
            tokens.append(" | ".join(_quote(piece) if piece else "" for piece in word.split("|")))
        else:
            tokens.append(_quote(word))
        value_next = _takes_value(word)
    return " ".join(tokens)


async def run_command(services: Services, argv: Sequence[str]) -> int:
    """Run one chat command given as shell words; print its replies.

    The shell's user is the operator, so files are read from paths here (chat surfaces send
    the file itself): ``--file PATH`` (repeatable) attaches a file to any command, a
    ``--ref``/``--sref`` value that is an existing file is sent as that reference image, and
    ``schedule calendar <name> PATH`` attaches the calendar.
    """
    argv = list(argv)
    paths: list[tuple[str, str | None]] = []  # (path, the --ref value it is for)
    if argv[:2] == ["schedule", "calendar"] and len(argv) > 3:
        paths.append((argv[3], None))
        argv = argv[:3]
    while "--file" in argv:
        at = argv.index("--file")
        if at + 1 >= len(argv):
            print("--file needs a path", file=sys.stderr)
            return 2
        paths.append((argv[at + 1], None))
        del argv[at : at + 2]
    command = "draft" if argv[0] == "draft" else "tierbot"
    if command == "draft":
        text = command_text(argv[1:])
    else:
        spec = COMMANDS.get(argv[0].strip().removeprefix("/"))
        text = command_text(argv, beats=spec is not None and spec.beats)
    for value in reference_values(command, text):
        if Path(value).expanduser().is_file():
            paths.append((value, value))
    files = []
    for given, source in paths:
        path = Path(given).expanduser()
        try:
            files.append(InboundFile(name=path.name, data=path.read_bytes(), source=source))
        except OSError as exc:
            print(f"cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 2
    event = CommandEvent(origin=_origin(), command=command, text=text, files=files)
    replies = await _collect(services, services.bot.handle_command(event))
    return 1 if any(r.error for r in replies) else 0


async def demo(services: Services) -> int:
    """Drafts → grid → draft 2 to the final tier → 2K upscale → 4-second video → lineage."""
    origin = _origin()
    bot = services.bot
    started = time.perf_counter()

    async def step(title: str, command: str, text: str) -> Reply | None:
        print(f"── {title}: /{command} {text}".rstrip())
        t0 = time.perf_counter()
        replies = await _collect(
            services, bot.handle_command(CommandEvent(origin=origin, command=command, text=text))
        )
        print(f"   ({time.perf_counter() - t0:.1f} s)\n")
        if any(r.error for r in replies):
            return None
        return next((r for r in replies if r.asset_id), replies[-1] if replies else None)

    grid = await step(
        "1. four drafts on the draft tier",
        "draft",
        f'"{DEMO_PROMPT}" --ar 16:9 --n 4 --style cinematic',
    )
    if grid is None or grid.asset_id is None:
        return 1
    final = await step("2. draft 2 to the final tier", "tierbot", f"select {grid.asset_id} 2")
    if final is None or final.asset_id is None:
        return 1
    upscale = await step("3. a 2K upscale of the final", "tierbot", f"upscale {final.asset_id}")
    video = await step(
        "4. a 4-second video of the final", "tierbot", f"video {final.asset_id} --seconds 4"
    )
    if upscale is None or video is None or video.asset_id is None:
        return 1
    await step("5. lineage", "tierbot", f"lineage {video.asset_id}")
    await step("6. budget", "tierbot", "budget")
    print(
        f"Demo finished in {time.perf_counter() - started:.1f} s. "
        f"Files are under {services.settings.asset_dir}."
    )
    return 0


async def doctor(services: Services) -> int:
    """Print the live check, one line per model deployment; 1 when something needs fixing."""
    findings = await live_check(services.catalog, services.providers)
    for finding in findings:
        print(finding.line())
    problems = sum(1 for f in findings if f.ok is False)
    print(f"{problems} thing(s) to fix." if problems else "Nothing to fix.")
    return 1 if problems else 0


async def _check_providers(services: Services) -> None:
    """``tierbot run``'s live check, in the background: a model the provider says does not
    exist leaves routing (``/tierbot models`` shows why)."""
    findings = await live_check(services.catalog, services.providers)
    if gone := take_out_missing(services.router, findings):
        print(f"Live check: {', '.join(gone)} out of routing; see `tierbot doctor`.", flush=True)
    for finding in findings:
        if finding.ok is False and finding.missing is None:
            print(f"Live check: {finding.line()}", flush=True)


async def _sync_schedules(services: Services) -> None:
    """Pick up schedules other processes added, changed or removed, every lease."""
    while True:
        await asyncio.sleep(services.store.lease_s)
        try:
            services.scheduler.sync()
        except Exception:
            log.exception("reading the schedules failed")


async def serve(services: Services) -> int:
    """Serve the chat surfaces in one event loop until interrupted; resume unfinished jobs."""
    try:
        surfaces, off = load_surfaces(services)
    except SurfaceUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    services.store.describe("run")
    ops = services.ops
    ops.expect("queue")
    for surface in surfaces:
        ops.expect(surface.name)
    # /healthz and /metrics on this process's listener (created here if no surface uses it).
    server = http_server(services.surface_context())
    add_ops_routes(server, ops)
    started = []
    for surface in surfaces:
        try:
            print(await surface.start())
            started.append(surface)
            ops.up(surface.name)
        except SurfaceUnavailable as exc:
            off[surface.name] = str(exc)  # configured but not up: /healthz says so
    await server.start()
    for name, reason in sorted(off.items()):
        print(f"{name.capitalize()}: off ({reason})")
    if not started:
        print("No chat surface could start; see the reasons above.", file=sys.stderr)
        return 2
    for surface in started:
        services.scheduler.deliverers[surface.name] = surface.deliver
    if unfinished := len(services.store.unfinished_jobs()):
        print(f"Resuming {unfinished} unfinished job(s); results go where they were asked for.")
    # In the background, now and every lease: a resumed video may take minutes and the bot
    # serves meanwhile, and work a killed process held is taken over once its lease lapses.
    recovering = asyncio.create_task(services.bot.recover_forever(services.store.lease_s))
    syncing = asyncio.create_task(_sync_schedules(services))
    if services.queue is not None:
        await services.queue.open()
        print("Jobs: queued for `tierbot worker` processes (TIERBOT_RUN_JOBS=workers).")
    ops.up("queue")
    checking = asyncio.create_task(_check_providers(services))
    cpu.warm_up()
    missed = await services.scheduler.start()
    if missed:
        print(f"Ran {missed} scheduled batch(es) missed while the bot was down.")
    freeze_startup_objects()
    print("Press Ctrl+C to stop.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    recovering.cancel()  # unfinished jobs stay in the store; the next start resumes them
    checking.cancel()
    syncing.cancel()
    await asyncio.gather(recovering, checking, syncing, return_exceptions=True)
    for surface in started:
        await surface.stop()
    return 0


#: Jobs one worker process drives at once (each mostly waits on its provider).
DEFAULT_WORKER_CONCURRENCY = 16


async def work(services: Services, argv: Sequence[str]) -> int:
    """``tierbot worker``: drive the jobs ``tierbot run`` processes queue, until interrupted.
    Several workers share the queue; a job is driven by one at a time."""
    queue = services.queue
    if queue is None:
        print(
            "tierbot worker runs jobs from the Postgres job queue: set TIERBOT_DATABASE_URL "
            "and TIERBOT_RUN_JOBS=workers (on every bot and worker process).",
            file=sys.stderr,
        )
        return 2
    concurrency = DEFAULT_WORKER_CONCURRENCY
    if len(argv) == 2 and argv[0] == "--concurrency" and argv[1].isdigit() and int(argv[1]) > 0:
        concurrency = int(argv[1])
    elif argv:
        print("usage: tierbot worker [--concurrency N]", file=sys.stderr)
        return 2
    services.store.describe("worker")
    ops = services.ops
    ops.expect("queue")
    server = http_server(services.surface_context())
    add_ops_routes(server, ops)
    await server.start()
    await queue.open()
    ops.up("queue")
    cpu.warm_up()
    print(
        f"Worker {services.store.worker_id}: running queued jobs, {concurrency} at a time. "
        "Press Ctrl+C to stop.",
        flush=True,
    )
    working = asyncio.create_task(queue.work(services.runner.work, concurrency=concurrency))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    # Jobs still running are put back by procrastinate (or by another worker, if this one is
    # killed instead); their stored provider request ids are polled, not submitted again.
    for task in (working, stopping):
        task.cancel()
    await asyncio.gather(working, stopping, return_exceptions=True)
    return 0


async def _main_async(settings: Settings, argv: Sequence[str]) -> int:
    services = wire(settings)
    services.start()
    try:
        if argv[0] == "demo":
            return await demo(services)
        if argv[0] == "run":
            return await serve(services)
        if argv[0] == "worker":
            return await work(services, argv[1:])
        if argv[0] == "doctor":
            return await doctor(services)
        if argv[0] in ("discord", "slack", "web") and (command := surface_cli(argv[0])):
            return int(await command(services.surface_context(), list(argv[1:])))
        return await run_command(services, argv)
    finally:
        await services.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tierbot`` console script.

    When standard output is a pipe whose reader has gone (``tierbot models | head -1``),
    the command stops quietly and exits 141 (128 + SIGPIPE, as a shell reports a program
    ended by that signal), without a traceback. Standard output is then pointed at
    ``os.devnull`` so the interpreter's final flush cannot fail again.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout is not a file descriptor (e.g. captured)
            pass
        return EXIT_BROKEN_PIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(CLI_USAGE + help_text())
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(_main_async(settings, args))
    except (CatalogError, PolicyError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
