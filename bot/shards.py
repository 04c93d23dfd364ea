"""``DISCORD_SHARDS``: which of a bot's Discord gateway shards this process runs.

Discord splits a bot's guilds over ``count`` gateway connections (shards): a guild's events go
to shard ``(guild_id >> 22) % count``, DMs to shard 0. Several ``tierbot run`` replicas share
one bot by each running some of the shards, all with the same count: ``0,1/4`` on one,
``2-3/4`` on another. Unset, a process opens Discord's default single connection.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[0-9]+")
#: How the setting is written, for error messages.
FORMAT = "IDS/COUNT, e.g. 0,1/4 or 2-3/4 (this process's shard ids, then the bot's shard count)"


@dataclass(frozen=True)
class Shards:
    """Shards ``ids`` (sorted, each once) of a bot sharded ``count`` ways.

    Raises:
        ValueError: ``count`` is below 1, an id is outside ``0..count-1``, or listed twice.
    """

    ids: tuple[int, ...]
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the shard count must be at least 1; got {self.count}")
        if not self.ids:
            raise ValueError(f"no shard ids; expected {FORMAT}")
        seen: set[int] = set()
        for shard in self.ids:
            if not 0 <= shard < self.count:
                raise ValueError(_outside(shard, self.count))
            if shard in seen:
                raise ValueError(f"shard {shard} is listed twice")
            seen.add(shard)
        object.__setattr__(self, "ids", tuple(sorted(self.ids)))

    def __str__(self) -> str:
        return f"{','.join(map(str, self.ids))}/{self.count}"

    def owns(self, guild_id: int) -> bool:
        """Whether this process's shards receive ``guild_id``'s events."""
        return (guild_id >> 22) % self.count in self.ids


def _outside(shard: int, count: int) -> str:
    return f"shard {shard} is not one of the {count} shard(s) (ids go from 0 to {count - 1})"


def parse_shards(text: str) -> Shards | None:
    """``"0,1/4"`` → shards 0 and 1 of 4; ``"2-3/4"`` → 2 and 3 of 4; blank → None (unsharded).

    Raises:
        ValueError: naming what is wrong with ``text``.
    """
    text = text.strip().replace(" ", "")
    if not text:
        return None
    ids_text, slash, count_text = text.partition("/")
    if not slash or "/" in count_text:
        raise ValueError(f"expected {FORMAT}; got {text!r}")
    if not _NUMBER.fullmatch(count_text):
        raise ValueError(
            f"the shard count after '/' must be a whole number of at least 1; got {count_text!r}"
        )
    count = int(count_text)
    if count < 1:
        raise ValueError(f"the shard count must be at least 1; got {count}")
    ids: list[int] = []
    for part in ids_text.split(","):
        first, dash, last = part.partition("-")
        if not _NUMBER.fullmatch(first) or (dash and not _NUMBER.fullmatch(last)):
            raise ValueError(
                "shard ids must be whole numbers or ranges such as 2-3, separated by commas; "
                f"got {part!r} in {text!r}"
            )
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"the range {part!r} goes down; write it low-high")
        if high >= count:  # before the range is spelled out ("0-99999999/4")
            raise ValueError(_outside(high, count))
        ids.extend(range(low, high + 1))
    return Shards(tuple(ids), count)
