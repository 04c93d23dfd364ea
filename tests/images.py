"""Images for the tests of images people send in: good ones, and the hostile kinds every
surface must refuse the same way (too many pixels, animated, not an image at all)."""

from __future__ import annotations

import io
import logging
import struct
import zlib

from PIL import Image

log = logging.getLogger(__name__)


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(colour: tuple[int, int, int] = (20, 40, 220), size: tuple[int, int] = (48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def jpeg_with_location() -> bytes:
    """A photo as a phone takes it: EXIF with a GPS position."""
    image = Image.new("RGB", (80, 60), (30, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 18.0)}  # GPS
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def animated(kind: str = "GIF") -> bytes:
    """An animation (``GIF``, ``PNG`` or ``WEBP``) of three frames."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, kind, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def animated_gif() -> bytes:
    return animated("GIF")


#: The pixel count :func:`bomb` claims, as the refusal spells it.
BOMB_PIXELS = "2,500,000,000 pixels"


def bomb() -> bytes:
    """A 100-byte PNG whose header claims 50000x50000 pixels (2.5 Gpx, 7.5 GB decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )
