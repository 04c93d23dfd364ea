"""Storage: SQLite through sqlite-utils (the only place SQL lives) and the asset file store."""

from storage.files import AssetFiles
from storage.store import LimitReached, Store

__all__ = ["AssetFiles", "LimitReached", "Store"]
