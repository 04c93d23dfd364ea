"""Storage: SQLite through sqlite-utils (the only place SQL lives) and the asset file store."""

from storage.files import AssetFiles
from storage.store import LimitReached, Store
from storage.web_history import WebHistory

__all__ = ["AssetFiles", "LimitReached", "Store", "WebHistory"]
