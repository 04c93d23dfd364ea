"""The status line shared by Slack and Discord: edits only on change, paced per channel."""

from __future__ import annotations

import asyncio
import time

from adapters.delivery import Pace, StatusLine


async def test_status_lines_sharing_a_channel_pace_take_turns() -> None:
    sent: list[tuple[int, str, float]] = []
    tasks: set[asyncio.Task[None]] = set()

    def spawn(work: object) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)  # type: ignore[arg-type]
        tasks.add(task)
        return task

    pace = Pace(spawn, interval=0.2)

    def line(number: int) -> StatusLine:
        async def send(text: str) -> None:
            sent.append((number, text, time.monotonic()))

        return StatusLine(send, pace)

    first, second = line(1), line(2)
    posted = time.monotonic()
    first.opened("⏳ one")
    second.opened("⏳ two")
    first.on_progress("j1", "running", None)
    second.on_progress("j2", "running", None)
    first.on_progress("j1", "succeeded", None)  # still waiting: it will send its latest text
    await asyncio.sleep(0.7)
    assert len(tasks) == 1  # one sender for the channel, not a task per line

    assert [(n, text) for n, text, _ in sent] == [
        (1, "⏳ one\n_finishing_"),
        (2, "⏳ two\n_running_"),
    ]
    (_, _, at_first), (_, _, at_second) = sent
    assert at_first - posted >= 0.19 and at_second - at_first >= 0.19  # one turn each

    await first.finish(failed=False)  # the end is not paced: it goes out at once
    assert sent[-1][0] == 1 and sent[-1][1].startswith("⏳ one\n_done in ")
    await first.finish(failed=False)
    second.on_progress("j2", "succeeded", None)
    await second.interrupt()  # closed while waiting for its turn: only the final goes out
    await asyncio.sleep(0.3)
    assert [text for _, text, _ in sent[3:]] == [
        "⏳ two\n_interrupted by a restart: the result follows once the bot is back_"
    ]
