"""Content-addressed asset files under ``<data dir>/assets``.

A file's name is the SHA-256 of its bytes, fanned out into two levels of folders, so the same
output stored twice takes space once and a path can never be guessed into another file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
}


class AssetFiles:
    """Write and resolve asset files by content hash."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, mime: str) -> tuple[str, str]:
        """Store ``data`` and return ``(sha256, path relative to the store)``.

        The write goes to a temporary file first and is renamed into place, so a crash
        never leaves a half-written asset under its final name.
        """
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest[2:4]}/{digest}.{EXTENSIONS.get(mime, 'bin')}"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest, relative

    def path(self, relative: str) -> Path:
        """The absolute path of a stored file.

        Raises:
            ValueError: if ``relative`` points outside the store.
        """
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise ValueError("asset path outside the asset store")
        return resolved
