"""Images from outside, checked before anything decodes them: provider outputs, references
and uploads people send, all go through :func:`check_image_pixels` first."""

from __future__ import annotations

import io
import logging
import re

from PIL import Image

from bot.providers import PermanentError

log = logging.getLogger(__name__)

#: Pillow's format names of the image types accepted, and their MIME types.
FORMAT_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
#: Largest image accepted, in pixels (width x height), read from the header before anything is
#: decoded. The biggest legitimate outputs are 4K squares (4096x4096, 16.8 MP) and 8K-wide
#: frames (8192x4608, 37.7 MP). Pillow's own limit is far looser (it warns from 89.5 MP and
#: refuses only above 179 MP): a 144 MP PNG of 445 KB took a worker to over a gigabyte.
MAX_IMAGE_PIXELS = 40_000_000


class NotAnImageError(PermanentError):
    """Pillow does not recognise the bytes as an image (raised by :func:`check_image_pixels`)."""


def check_image_pixels(
    data: bytes, *, subject: str = "the image", limit: int = MAX_IMAGE_PIXELS
) -> tuple[str, int, int]:
    """``(format, width, height)`` of an image, read from its header and refused when it
    has more than ``limit`` pixels. Nothing is decoded: run this on any bytes from outside
    before anything decodes them (provider outputs, ``data:`` URIs, references, uploads).

    Args:
        data: the file's bytes.
        subject: what the bytes are, to begin the error messages (``"reference image 'a.png'"``).
        limit: the most pixels (width x height) accepted.

    Returns:
        Pillow's format name (``PNG``, ``JPEG``...; any type Pillow recognises), the width and
        the height.

    Raises:
        NotAnImageError: not an image Pillow recognises.
        PermanentError: more pixels than ``limit``; the message names the count and the limit.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind = (image.format or "").upper()
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow will not even open an image over twice its own limit (nor one over it when
        # warnings are errors); its message holds the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"is {int(found.group(1)):,} pixels" if found else "has too many pixels for Pillow"
        raise _too_many_pixels(f"{subject} {size}", limit) from None
    except Exception:
        raise NotAnImageError(f"{subject} is not a readable image") from None
    if width * height > limit:
        size = f"is {width:,}x{height:,} = {width * height:,} pixels"
        raise _too_many_pixels(f"{subject} {size}", limit)
    return kind, width, height


def _too_many_pixels(what: str, limit: int) -> PermanentError:
    return PermanentError(f"{what}, over the limit of {limit:,} pixels: refused before decoding")
