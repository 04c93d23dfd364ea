"""Images people send in: reference images, named references' pictures, hand-fixed versions.

Every inbound image is untrusted. :func:`clean_image` (run in a worker process: it decodes)
checks it in this order, and each refusal is a message for the person who sent it:

1. the size in bytes (:data:`MAX_UPLOAD_BYTES`), before anything reads it;
2. the type, sniffed from the bytes (never the name or the platform's content type): PNG,
   JPEG or WebP; an animated GIF/PNG/WebP is refused (a reference is one still);
3. the pixel count from the header (``bot.imaging.check_image_pixels``), before decoding;
4. the full decode, under Pillow's decompression-bomb limit made an error;
5. the EXIF orientation applied to the pixels and every metadata block dropped (EXIF with
   its GPS location, XMP, comments): what is stored is the picture and nothing else.

The clean bytes are stored content-addressed as an asset of kind ``upload`` (stage
``upload``) with the person who sent it; a generation that uses it lists it as a parent, so
the lineage shows which image shaped what.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from bot import cpu
from bot.domain import UPLOAD_STAGE, AssetKind, InboundFile, Origin
from bot.errors import UserError
from bot.imaging import FORMAT_MIME, check_image_pixels
from bot.providers import PermanentError
from storage import AssetFiles, Store

log = logging.getLogger(__name__)

#: Largest image accepted, in bytes (Slack and Discord allow bigger files; a reference needs
#: no more than this).
MAX_UPLOAD_BYTES = 20_000_000
#: Most images one command may bring.
MAX_FILES = 9
#: How long a surface waits for one file a person sent to come from its platform (at most
#: ``MAX_UPLOAD_BYTES``).
DOWNLOAD_TIMEOUT_S = 60.0
#: Types kept as sent (re-encoded without metadata); the rest are refused.
KEPT_FORMATS = {"PNG", "JPEG", "WEBP"}


def too_big(name: str) -> str:
    """Why an image over :data:`MAX_UPLOAD_BYTES` is refused: said by the core, and by a
    surface that knows the size before downloading (Discord declares it)."""
    cap = f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB"
    label = f"{name!r}" if name else "the image"
    return f"{label} is over {cap}; images up to {cap} are accepted"


@dataclass(frozen=True)
class CleanImage:
    """An inbound image after :func:`clean_image`: safe to store and to send on."""

    data: bytes
    mime: str
    width: int
    height: int


def clean_image(data: bytes, name: str) -> CleanImage:
    """Check an inbound image and re-encode it without metadata (see the module docstring).

    Raises:
        PermanentError: why it is refused, naming the file.
    """
    label = f"{name!r}" if name else "the image"
    if len(data) > MAX_UPLOAD_BYTES:
        # Surfaces stop reading one byte past the limit: the size past it is unknown.
        raise PermanentError(too_big(name))
    kind, _, _ = check_image_pixels(data, subject=label)
    if kind not in KEPT_FORMATS:
        allowed = ", ".join(sorted(KEPT_FORMATS))
        raise PermanentError(f"{label} is a {kind or 'unknown'} file; send a {allowed} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if getattr(image, "is_animated", False):
                    raise PermanentError(f"{label} is animated; send a still image")
                image.load()
                upright = ImageOps.exif_transpose(image)
    except PermanentError:
        raise
    except Exception:
        raise PermanentError(f"{label} could not be decoded as an image") from None
    if upright.mode not in ("RGB", "RGBA", "L", "LA"):
        upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
    out = io.BytesIO()
    if kind == "JPEG":
        upright.convert("RGB").save(out, "JPEG", quality=95)
    else:
        upright.save(out, kind)  # no exif=, no pnginfo=: the metadata is gone
    return CleanImage(out.getvalue(), FORMAT_MIME[kind], upright.width, upright.height)


class Uploads:
    """Stores checked inbound images as upload assets."""

    def __init__(self, store: Store, files: AssetFiles) -> None:
        self.store = store
        self.files = files

    async def take(self, origin: Origin, inbound: list[InboundFile]) -> list[InboundFile]:
        """Check and store every image of ``inbound`` not stored yet; ``inbound`` with each
        file's ``asset_id`` set and its bytes dropped. Every file is checked before any is
        stored: one refused file stores none.

        Raises:
            UserError: too many files, a file lost in a restart, or one refused.
        """
        if len(inbound) > MAX_FILES:
            raise UserError(f"{len(inbound)} files sent; a command takes at most {MAX_FILES}")
        cleaned: dict[int, CleanImage] = {}
        for index, file in enumerate(inbound):
            if file.asset_id is not None:
                continue
            data = file.data or await asyncio.to_thread(self.read_kept, file)
            try:
                cleaned[index] = await cpu.run(clean_image, data, file.name)
            except PermanentError as exc:
                raise UserError(f"Not used: {exc.message}. Nothing was spent.") from None
        taken = []
        for index, file in enumerate(inbound):
            if index in cleaned:
                image = cleaned[index]
                # The file in a thread; the row here: the store's one connection is the
                # event loop's (a transaction of another thread would interleave with ours).
                stored = await asyncio.to_thread(self.files.put, image.data, image.mime)
                asset_id = self._save(origin, file.name, image, stored)
                file = file.model_copy(update={"asset_id": asset_id, "data": b""})
            taken.append(file)
        return taken

    def read_kept(self, file: InboundFile) -> bytes:
        """The bytes kept when the command was received (see ``Tierbot.keep``).

        Raises:
            UserError: none were kept (the process stopped before it had them).
        """
        try:
            if file.kept:
                return self.files.path(file.kept).read_bytes()
        except (OSError, ValueError):
            pass
        raise UserError(
            f"{file.name or 'an image'} was lost when the bot restarted before reading it; "
            "send the command with the image again. Nothing was spent."
        )

    def _save(self, origin: Origin, name: str, image: CleanImage, stored: tuple[str, str]) -> str:
        digest, relative = stored
        row: dict[str, Any] = {
            "kind": AssetKind.UPLOAD.value,
            "stage": UPLOAD_STAGE,
            "sha256": digest,
            "path": relative,
            "mime": image.mime,
            "width": image.width,
            "height": image.height,
            "bytes": len(image.data),
            "prompt": name[:200],
            "sent_by": f"{origin.surface}:{origin.user}",
            "cost": 0,
        }
        return self.store.save_asset(row)
