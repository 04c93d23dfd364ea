"""Images in: a team's named references (``/tierbot ref``) and the editor round trip
(``/tierbot upload``). The images themselves are checked and stored by :mod:`bot.uploads`
before any use case sees them; variations live with the other grids in ``drafting``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence

from bot.commands import Invocation
from bot.domain import (
    FINAL_REACTIONS,
    MANUAL_STAGE,
    PICTURES,
    AssetKind,
    InboundFile,
    Origin,
    Reaction,
    Reply,
)
from bot.errors import UserError
from bot.pipeline.base import UseCases
from bot.uploads import Uploads
from storage import AssetStoreError

log = logging.getLogger(__name__)

#: A reference's name: short, lower case, and never eight hex digits (an asset id's shape).
_REF_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_ASSET_ID = re.compile(r"[0-9a-f]{8}")
#: What a hand-fixed version is offered: it goes on like a final, but is not re-rendered.
MANUAL_REACTIONS = [r.value for r in FINAL_REACTIONS if r != Reaction.REROLL]


class ImagesIn(UseCases):
    """Named references and hand-fixed versions."""

    async def take_files(self, origin: Origin, files: Sequence[InboundFile]) -> list[InboundFile]:
        """Check and store the images sent with a command (see :mod:`bot.uploads`)."""
        return await Uploads(self.store, self.files).take(origin, list(files))

    async def restore_files(self, files: Sequence[InboundFile]) -> list[InboundFile]:
        """Files passed on as sent (a calendar's CSV), their bytes read back from where
        they were kept when a restart came between receiving and running the command."""
        uploads = Uploads(self.store, self.files)
        return [
            f
            if f.data
            else f.model_copy(update={"data": await asyncio.to_thread(uploads.read_kept, f)})
            for f in files
        ]

    def forget_kept(self, kept: Sequence[str]) -> None:
        """Delete the raw bytes kept with a command once its images were checked (stored as
        uploads, or refused): only its inbox entry pointed at them. (Two commands sending the
        very same bytes at the same moment share the file; the later one, were it re-run
        after a crash, would ask for its image again.)"""
        for relative in kept:
            try:
                self.files.remove(relative)
            except (OSError, ValueError, AssetStoreError) as exc:  # only space is lost
                log.warning("could not delete kept bytes %s: %s", relative, exc)

    async def ref(
        self, origin: Origin, inv: Invocation, files: Sequence[InboundFile] = ()
    ) -> AsyncIterator[Reply]:
        """``/tierbot ref add <name>`` (images attached, or ``--ref`` values), ``ref list``,
        ``ref remove <name>``: the team's named references, used as ``--ref <name>``."""
        action = inv.args[0].lower()
        name = inv.args[1].lower() if len(inv.args) > 1 else ""
        if action == "list":
            yield Reply(text=self._ref_list(origin), private=True)
            return
        if action not in ("add", "remove"):
            raise UserError(f"/tierbot ref takes add, list or remove; got {inv.args[0][:20]}")
        if not name:
            raise UserError(f"/tierbot ref {action} needs a name, e.g. /tierbot ref {action} mug")
        if action == "remove":
            if not self.store.remove_ref(origin.team, name):
                raise UserError(f"there is no reference called {name}; see /tierbot ref list")
            yield Reply(text=f"🗑️ Reference {name} removed by {origin.user}.")
            return
        if not _REF_NAME.fullmatch(name) or _ASSET_ID.fullmatch(name):
            raise UserError(
                f"a reference name is 1 to 40 of a-z, 0-9, - and _, and not 8 hex digits (an "
                f"asset id's shape); got {name[:40]}"
            )
        images = self.references(origin, inv, files).content
        if not images:
            raise UserError(
                f"attach the images of {name} to the command (or give --ref <asset-id>); "
                "nothing was stored"
            )
        if not self.store.save_ref(origin.team, name, images, f"{origin.surface}:{origin.user}"):
            raise UserError(
                f"a reference called {name} exists already; /tierbot ref remove {name} first"
            )
        paths = await self.files.paths(
            [a["path"] for i in images if (a := self.store.get_asset(i))]
        )
        yield Reply(
            text=f"📌 Reference {name} saved by {origin.user}: {len(images)} image(s) "
            f"({', '.join(images)}). Use it with --ref {name} (or --sref {name} for its style).",
            files=paths,
        )

    def _ref_list(self, origin: Origin) -> str:
        refs = self.store.refs(origin.team)
        if not refs:
            return "No named references yet. Add one: /tierbot ref add <name> with images attached."
        lines = ["Named references (use with --ref <name> or --sref <name>):"]
        for ref in refs:
            count = len(ref["asset_ids"])
            lines.append(
                f"• {ref['name']}: {count} image(s), {', '.join(ref['asset_ids'])} · added by "
                f"{ref['created_by'].split(':', 1)[-1]} on {ref['created_at'][:10]}"
            )
        return "\n".join(lines)

    async def upload(
        self, origin: Origin, asset_id: str, files: Sequence[InboundFile] = ()
    ) -> AsyncIterator[Reply]:
        """``/tierbot upload <asset-id>`` with an image attached: a version fixed by hand in
        an editor, recorded as a child of ``asset_id`` (stage ``manual``); upscale, video and
        QA go on from it, and the lineage shows the hand step."""
        source = self._existing(asset_id)
        if source["kind"] not in PICTURES:
            raise UserError(f"{asset_id} is a {source['kind']}; upload a fixed version of an image")
        sent = [f.asset_id for f in files if f.asset_id]
        if len(sent) != 1:
            raise UserError(
                f"attach exactly one image: the fixed version of {asset_id} "
                f"(got {len(sent)}); nothing was recorded"
            )
        upload = self.store.get_asset(sent[0])
        assert upload is not None
        version_id = self.store.save_asset(
            {
                "request_id": source["request_id"],
                "kind": AssetKind.IMAGE.value,
                "stage": MANUAL_STAGE,
                "sha256": upload["sha256"],
                "path": upload["path"],
                "mime": upload["mime"],
                "width": upload["width"],
                "height": upload["height"],
                "bytes": upload["bytes"],
                "prompt": source["prompt"],
                "seed": source["seed"],
                "sent_by": f"{origin.surface}:{origin.user}",
                "cost": 0,
            },
            parents=[asset_id, upload["id"]],
        )
        yield Reply(
            text=f"🖌️ Hand-fixed version {version_id} of {asset_id} by {origin.user} "
            f"({upload['width']}×{upload['height']}). React 🎬 ⬆️ ✅ 🔀 or ❌ as on a final.",
            files=[await self.files.local(upload["path"])],
            reactions=MANUAL_REACTIONS,
            asset_id=version_id,
            thread_of=asset_id,
        )
