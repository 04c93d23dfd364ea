"""Content-addressed asset files under ``<data dir>/assets``, optionally kept in S3.

A file's name is the SHA-256 of its bytes, fanned out into two levels of folders, so the same
output stored twice takes space once and a path can never be guessed into another file.

With ``TIERBOT_ASSET_URL=s3://bucket/prefix`` the bucket (AWS S3 or anything that speaks its
API: MinIO, R2, ...) is the source of truth and the local folder a cache: ``put`` writes the
local file and uploads the object, ``path`` returns the local file and first downloads it when
this machine has not got it yet. So a bot and its workers on any number of machines read each
other's assets, while everything else keeps using plain local paths (surfaces upload from them,
providers read references from them). Without the setting nothing but the local folder is used
and boto3 is never imported.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
}

#: S3's naming rules for buckets (MinIO and R2 share them): 3 to 63 lower-case letters, digits,
#: dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


class AssetStoreError(OSError):
    """The object store could not be read or written (network, permissions, a corrupt object).

    An ``OSError``, like a local disk failing, so callers that already treat an unreadable
    file as an error (and not as a crash) treat the bucket the same way.
    """


def parse_asset_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as ``(bucket, prefix)``, the prefix without outer slashes.

    Checked when the settings load, so a typo stops the start instead of failing the first
    upload. The messages never repeat the URL: someone may have pasted credentials into it.

    Raises:
        ValueError: anything but ``s3://bucket`` or ``s3://bucket/prefix``.
    """
    expected = "expected s3://bucket or s3://bucket/prefix"
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
        raise ValueError(f"{expected} (the scheme must be s3)")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(
            f"{expected}: no credentials or port in the URL (credentials come from the AWS "
            "environment variables, an S3-compatible endpoint from TIERBOT_S3_ENDPOINT_URL)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{expected}: no ?query or #fragment")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{expected}: the bucket name must be 3 to 63 lower-case letters, digits, dots or "
            "hyphens, starting and ending with a letter or digit"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"{expected}: the prefix may not have empty, '.' or '..' parts")
    return bucket, prefix


class S3Bucket:
    """The bucket and key prefix assets are kept under, through one boto3 client.

    Credentials, and retry and checksum behaviour, come from boto3's own chain (the
    ``AWS_*`` environment variables, ``~/.aws``, an instance role), so nothing secret passes
    through tierbot's settings or its logs. boto3 clients are thread-safe: ``AssetFiles`` is
    called from ``asyncio.to_thread`` workers at the same time.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket, self.prefix = parse_asset_url(url)
        if client is None:
            import boto3  # only a process configured for S3 pays for importing it

            # A session of its own: boto3's default session is not safe to share across threads.
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region
            )
        self.client = client
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)

    def __repr__(self) -> str:
        return f"S3Bucket({self.url(self.prefix)!r})"

    def key(self, relative: str) -> str:
        """The object key of a file at ``relative`` in the local store."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def url(self, key: str) -> str:
        """``s3://bucket/key``, to name an object in logs and errors."""
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def exists(self, key: str) -> bool:
        """Whether the object is there already (content-addressed: then it is the same bytes).

        A 403 reads as "not known to exist": credentials that may write but not list the bucket
        get 403 rather than 404 for a missing key, and writing again is harmless.
        """
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self._errors as exc:
            if _status(exc) in (403, 404):
                return False
            raise self._failed("check", key, exc) from None
        return True

    def upload(self, key: str, data: bytes, mime: str) -> None:
        """Write the object with its content type (so a browser or CDN serves it right)."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)
        except self._errors as exc:
            raise self._failed("upload", key, exc) from None

    def delete(self, key: str) -> None:
        """Remove the object (nothing happens if it is not there)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except self._errors as exc:
            raise self._failed("delete", key, exc) from None

    def download(self, key: str, handle: IO[bytes]) -> str:
        """Stream the object into ``handle`` and return the SHA-256 of what was written.

        Raises:
            FileNotFoundError: no such object.
            AssetStoreError: anything else went wrong.
        """
        digest = hashlib.sha256()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                handle.write(chunk)
        except self._errors as exc:
            if _code(exc) == "NoSuchKey" or (_status(exc) == 404 and _code(exc) != "NoSuchBucket"):
                raise FileNotFoundError(f"asset object {self.url(key)} does not exist") from None
            raise self._failed("download", key, exc) from None
        return digest.hexdigest()

    def _failed(self, action: str, key: str, exc: Exception) -> AssetStoreError:
        # botocore's message names the operation and S3's error, never the credentials.
        return AssetStoreError(f"could not {action} asset object {self.url(key)}: {exc}")


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code")


class AssetFiles:
    """Write and resolve asset files by content hash; with ``remote``, kept in a bucket too."""

    def __init__(self, root: Path, remote: S3Bucket | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.remote = remote
        if remote is not None:
            log.info("asset files kept in %s, cached in %s", remote.url(remote.prefix), self.root)

    def put(self, data: bytes, mime: str) -> tuple[str, str]:
        """Store ``data`` and return ``(sha256, path relative to the store)``.

        The write goes to a temporary file first and is renamed into place, so a crash
        never leaves a half-written asset under its final name. With a bucket the object is
        uploaded too unless it is there already; that is checked even when the local file
        exists, so a put that failed to upload before (or a file from before the bucket was
        configured) reaches the bucket now.

        Raises:
            AssetStoreError: the upload failed (the local file stays, as a cache).
        """
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest[2:4]}/{digest}.{EXTENSIONS.get(mime, 'bin')}"
        target = self.root / relative
        if not target.exists():
            _write_into_place(target, lambda handle: handle.write(data))
        if self.remote is not None:
            key = self.remote.key(relative)
            if not self.remote.exists(key):
                self.remote.upload(key, data, mime)
                log.debug("uploaded %s", self.remote.url(key))
        return digest, relative

    def path(self, relative: str) -> Path:
        """The absolute path of a stored file, downloaded from the bucket first if this
        machine does not have it yet.

        Raises:
            ValueError: if ``relative`` points outside the store.
            FileNotFoundError: with a bucket, when the object is not in it either.
            AssetStoreError: the download failed or its bytes do not match their name.
        """
        resolved = self.location(relative)
        if self.remote is not None and not resolved.exists():
            self._fetch(resolved)
        return resolved

    def location(self, relative: str) -> Path:
        """Where a stored file is kept on this machine (not fetched: see :meth:`path`);
        ValueError if ``relative`` points outside the store."""
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise ValueError("asset path outside the asset store")
        return resolved

    def remove(self, relative: str) -> None:
        """Delete a stored file here and in the bucket (a command's raw bytes once checked:
        nothing else refers to them). Content-addressed files are otherwise never deleted."""
        self.location(relative).unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.delete(self.remote.key(relative))

    async def paths(self, relatives: Sequence[str]) -> list[Path]:
        """:meth:`path` of each, from async code: with a bucket a file new to this machine is
        a download, so then they are resolved in a thread (never on the event loop)."""
        if self.remote is None:
            return [self.path(relative) for relative in relatives]
        return await asyncio.to_thread(lambda: [self.path(relative) for relative in relatives])

    async def local(self, relative: str) -> Path:
        """:meth:`path` from async code (see :meth:`paths`)."""
        (path,) = await self.paths([relative])
        return path

    def _fetch(self, target: Path) -> None:
        assert self.remote is not None
        remote = self.remote
        key = remote.key(target.relative_to(self.root).as_posix())
        expected = target.stem if _SHA256.fullmatch(target.stem) else None

        def download(handle: IO[bytes]) -> None:
            digest = remote.download(key, handle)
            if expected is not None and digest != expected:
                raise AssetStoreError(
                    f"asset object {remote.url(key)} does not match its content hash"
                )

        _write_into_place(target, download)
        log.info("fetched %s", remote.url(key))


def _write_into_place(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``target`` through a temporary file in its folder, renamed into place only once
    complete: a crash or a failed download never leaves a partial file under the real name,
    and two threads writing the same content-addressed file both end with the whole of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
