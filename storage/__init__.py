"""Storage: the store (the only place SQL lives: SQLite through sqlite-utils, or Postgres
through ``storage.postgres``), the job queue to worker processes (``storage.queue``) and the
asset file store (local, or an S3 bucket with a local cache)."""

from storage.files import AssetFiles, AssetStoreError, S3Bucket
from storage.store import LimitReached, Store
from storage.web_history import WebHistory

__all__ = ["AssetFiles", "AssetStoreError", "LimitReached", "S3Bucket", "Store", "WebHistory"]
