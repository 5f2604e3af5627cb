"""Where a URL points, asked of its filesystem: the folder and file name a target names, and
whether a source is a folder.  `ship` asks these here so that it never calls fsspec itself."""

from __future__ import annotations

import asyncio
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fstransport.errors import ConfigurationError, StorageError
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.local import refuse_special
from fstransport.storage.backends.s3 import is_s3

__all__ = ["is_directory", "split_target"]


async def split_target(
    target_url: str, storage_options: dict[str, Any], *, tree: bool = False
) -> tuple[fsspec.AbstractFileSystem, str, str]:
    """The filesystem, folder and file name `target_url` names.  Raises `ConfigurationError` when
    it names a folder (ends in ``/``, is a root, or is an existing local or ``memory://``
    folder) unless `tree` (a directory snapshot replaces the folder it names)."""
    with storage_errors(target_url, "open"):
        fs, path = fsspec.core.url_to_fs(target_url, **storage_options)
        path = str(path)
        if tree:
            path = path.rstrip("/")
            is_dir = False
        else:
            # (object stores have no folders to mistake for a file: no round trip to ask)
            is_dir = (
                bool(path.strip("/")) and not is_s3(fs) and await asyncio.to_thread(fs.isdir, path)
            )
    if (target_url.endswith("/") and not tree) or not path.strip("/") or is_dir:
        raise ConfigurationError(f"target {target_url!r} must name a file, not a folder")
    if isinstance(fs, LocalFileSystem) and not tree:
        try:  # installing renames over the name: found now, before anything is sent
            await asyncio.to_thread(refuse_special, path)
        except StorageError as exc:
            raise ConfigurationError(f"target {target_url!r}: {exc}") from None
    parent, _, name = path.rpartition("/")
    return fs, parent or "/", name


async def is_directory(url: str, storage_options: dict[str, Any]) -> bool:
    """Whether `url` names a folder (shipped as a directory snapshot).  Asked of local and
    ``memory://`` paths only; elsewhere (S3, HTTP, ...), where asking costs a request for every
    file shipped, only a URL ending in ``/`` names a folder."""
    if url == "-" or "::" in url:
        return False
    with storage_errors(url, "open"):
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if not isinstance(fs, (LocalFileSystem, MemoryFileSystem)):
        return url.endswith("/")
    with storage_errors(url, "stat"):
        return bool(await asyncio.to_thread(fs.isdir, path))
