"""Sources: read a snapshot's bytes by range, from a file object or an fsspec URL.

Each source is picked by what the data can do, so that no chunk is copied more than the
backend forces and the event loop never blocks:

- `BufferSource`: in-memory data (``bytes``, ``io.BytesIO``, ``memory://``) — chunks are
  zero-copy ``memoryview`` slices.
- `PreadSource`: a real file descriptor (local files) — each chunk is mapped (``mmap``) in a
  worker thread and handed out as a ``memoryview`` of the page cache, so the only copy of the
  data is the one into the target; several chunks can be read at once.  ``os.pread`` where a
  file cannot be mapped.
- `AsyncFsSource`: an asynchronous fsspec filesystem (``http://``, ``s3://``, ...) — ranged
  ``_cat_file`` calls on this event loop, several at once, no thread.
- `FileObjectSource`: any other readable, seekable file object (an fsspec file of a
  synchronous filesystem) — ``seek`` + ``read`` in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import io
import mmap
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from fstransport.checksum import chunk_crc
from fstransport.messages import Buffer
from fstransport.options import (
    DEFAULT_RANGED_THRESHOLD,
    DEFAULT_READ_PART_SIZE,
    DEFAULT_READ_STREAMS,
    RetryPolicy,
)
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.base import (  # the interfaces live in base.py (no fsspec); kept here
    CheckedSource,
    ChunkSource,
    is_checked_source,
    read_checked,
    source_checksum,
)

__all__ = [
    "AsyncFsSource",
    "BufferSource",
    "CheckedSource",
    "ChunkSource",
    "FileObjectSource",
    "PreadSource",
    "ReadSettings",
    "is_checked_source",
    "open_source",
    "read_checked",
    "source_checksum",
    "source_for_file",
]


class BufferSource:
    """Chunks of an in-memory buffer, as zero-copy ``memoryview`` slices."""

    def __init__(self, buffer: Buffer, description: str = "<memory>") -> None:
        self._view = memoryview(buffer).cast("B")
        self.size = self._view.nbytes
        self.description = description

    async def read(self, offset: int, length: int) -> Buffer:
        return self._view[offset : offset + length]

    async def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """`read` of each ``(offset, length)`` of `ranges`."""
        return [self._view[offset : offset + length] for offset, length in ranges]

    async def close(self) -> None:
        # Slices handed out keep the underlying buffer alive on their own.
        self._view.release()


_CAN_MAP = os.name == "posix" and hasattr(mmap, "MAP_SHARED")
_MAP_FLAGS = getattr(mmap, "MAP_SHARED", 0) | getattr(mmap, "MAP_POPULATE", 0)


def map_range(fd: int, offset: int, length: int) -> memoryview:
    """Bytes ``[offset, offset + length)`` of `fd` as a read-only view of a fresh mapping.

    The pages are faulted in now (``MAP_POPULATE``), in the calling (worker) thread, so that
    reading the view later does not wait for the disk.  The mapping lives exactly as long as
    some view of it does, and is unmapped with the last one: nothing is ever reused, so a view
    handed out stays valid however long a receiver or a network keeps it.  A file that ends
    before `offset + length` gives a shorter view (mapping past the end of a file would turn
    every later read of those pages into ``SIGBUS``).

    The file must not be truncated while a view of it is alive: reading a page cut off the file
    raises ``SIGBUS``, which ends the process.  Snapshots are immutable and replaced by rename
    (a renamed or deleted file keeps its pages for the mappings), so this only concerns a
    writer that truncates a snapshot in place while it is shipped; for such files, read with
    ``TransferOptions(map_files=False)`` (``os.pread``: a short read is a `StorageError`).
    """
    length = max(0, min(length, os.fstat(fd).st_size - offset))
    if length == 0:
        return memoryview(b"")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(fd, length + offset - start, _MAP_FLAGS, mmap.PROT_READ, offset=start)
    return memoryview(mapping)[offset - start :]


class PreadSource:
    """Chunks of a file descriptor: mapped views (see `map_range`) read in a worker thread.

    Where the file cannot be mapped (not POSIX, a descriptor open for writing only, a special
    file) chunks are read with ``os.pread`` into fresh ``bytes`` instead.
    """

    def __init__(
        self, fd: int, size: int, description: str, *, owns_fd: bool, map_file: bool = True
    ) -> None:
        self._fd = fd
        self.size = size
        self.description = description
        self._owns_fd = owns_fd
        self._map = _CAN_MAP and map_file

    @classmethod
    async def open(cls, path: str, *, map_file: bool = True) -> PreadSource:
        def _open() -> tuple[int, int]:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(path)
            except BaseException:
                os.close(fd)
                raise
            return fd, st.st_size

        with storage_errors(path, "open"):
            fd, size = await asyncio.to_thread(_open)
        return cls(fd, size, path, owns_fd=True, map_file=map_file)

    def _read_at(self, offset: int, length: int) -> Buffer:
        if self._map:
            try:
                return map_range(self._fd, offset, length)
            except (OSError, ValueError, OverflowError):
                self._map = False  # this descriptor cannot be mapped: read it instead
        return os.pread(self._fd, length, offset)

    def _read_checked_at(self, offset: int, length: int) -> tuple[Buffer, int]:
        data = self._read_at(offset, length)
        return data, chunk_crc(data)  # crc32c releases the GIL: the event loop runs meanwhile

    async def read(self, offset: int, length: int) -> Buffer:
        if length == 0:
            return b""
        with storage_errors(self.description, "read"):
            return await asyncio.to_thread(self._read_at, offset, length)

    async def read_checked(self, offset: int, length: int) -> tuple[Buffer, int]:
        """`read`, and the chunk's CRC32C computed in the same worker thread."""
        if length == 0:
            return b"", 0
        with storage_errors(self.description, "read"):
            return await asyncio.to_thread(self._read_checked_at, offset, length)

    async def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """`read` of each ``(offset, length)`` of `ranges` (short ones: a delta's changed
        pages), with ``os.pread`` in one worker thread, not a mapping and a thread each."""
        fd = self._fd
        with storage_errors(self.description, "read"):
            return await asyncio.to_thread(lambda: [os.pread(fd, n, at) for at, n in ranges])

    async def close(self) -> None:
        # Views handed out keep their mappings (and so the file) alive on their own.
        if self._owns_fd and self._fd >= 0:
            fd, self._fd = self._fd, -1
            with storage_errors(self.description, "close"):
                os.close(fd)


class FileObjectSource:
    """Chunks of a readable, seekable file object, read in a worker thread one at a time."""

    def __init__(
        self,
        fileobj: IO[bytes],
        size: int,
        description: str,
        *,
        owns_file: bool,
        filesystem: object = None,
    ) -> None:
        self._file = fileobj
        self._filesystem = filesystem  # some filesystems close their files when collected
        self.size = size
        self.description = description
        self._owns_file = owns_file
        self._lock = asyncio.Lock()

    def _read_at(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        parts: list[bytes] = []
        remaining = length
        while remaining > 0:
            part = self._file.read(remaining)
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read(self, offset: int, length: int) -> Buffer:
        async with self._lock:
            with storage_errors(self.description, "read"):
                return await asyncio.to_thread(self._read_at, offset, length)

    async def close(self) -> None:
        if self._owns_file:
            with storage_errors(self.description, "close"):
                await asyncio.to_thread(self._file.close)


class AsyncFsSource:
    """Chunks of a file on an asynchronous fsspec filesystem, read with ranged ``_cat_file``.

    The filesystem is created for this event loop (``asynchronous=True``, not shared with other
    loops through fsspec's instance cache) and its session is closed by `close`.
    """

    def __init__(self, fs: Any, path: str, size: int, description: str) -> None:
        self._fs = fs
        self._path = path
        self.size = size
        self.description = description

    @classmethod
    async def open(cls, url: str, **storage_options: Any) -> AsyncFsSource:
        import fsspec  # at the edge: the sender reads files and buffers without fsspec

        with storage_errors(url, "open"):
            fs, path = fsspec.core.url_to_fs(
                url, asynchronous=True, skip_instance_cache=True, **storage_options
            )
            source = cls(fs, path, 0, url)
            try:
                info = await fs._info(path)
                if info.get("type") == "directory":
                    raise IsADirectoryError(url)
                size = info.get("size")
                if not isinstance(size, int):
                    raise OSError(f"{url} reports no size")
            except BaseException:
                await source.close()
                raise
        source.size = size
        return source

    async def read(self, offset: int, length: int) -> Buffer:
        if length == 0:
            return b""
        with storage_errors(self.description, "read"):
            data: bytes = await self._fs._cat_file(self._path, start=offset, end=offset + length)
        return data

    async def close(self) -> None:
        await close_async_filesystem(self._fs)


def _real_fd(fileobj: IO[bytes]) -> int | None:
    try:
        fd = fileobj.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


async def source_for_file(fileobj: IO[bytes], description: str | None = None) -> ChunkSource:
    """A source over an open binary file object; the caller keeps ownership of the file.

    The size is where the data ends (``seek(0, SEEK_END)``), as in openraft.
    """
    what = description or getattr(fileobj, "name", None) or repr(fileobj)
    what = str(what)
    if isinstance(fileobj, io.BytesIO):
        return BufferSource(fileobj.getbuffer(), what)
    with storage_errors(what, "seek"):
        size = await asyncio.to_thread(fileobj.seek, 0, io.SEEK_END)
    fd = _real_fd(fileobj)
    if fd is not None:
        return PreadSource(fd, size, what, owns_fd=False)
    return FileObjectSource(fileobj, size, what, owns_file=False)


@dataclass(frozen=True)
class ReadSettings:
    """How `open_source` reads: the options it takes besides the storage options."""

    map_files: bool = True
    read_streams: int = DEFAULT_READ_STREAMS
    read_part_size: int = DEFAULT_READ_PART_SIZE
    ranged_read_threshold: int = DEFAULT_RANGED_THRESHOLD
    retry: RetryPolicy | None = None
    """How a source that reads over the network retries a failed read (None: its default)."""


async def open_source(
    url: str,
    *,
    map_files: bool = True,
    read_streams: int = DEFAULT_READ_STREAMS,
    read_part_size: int = DEFAULT_READ_PART_SIZE,
    ranged_read_threshold: int = DEFAULT_RANGED_THRESHOLD,
    retry: RetryPolicy | None = None,
    **storage_options: object,
) -> ChunkSource:
    """Open the snapshot at fsspec `url` for ranged reads; close it with ``await source.close()``.

    The backend that serves the URL's filesystem picks the source (see
    `fstransport.storage.backends`).  A local file is read through memory maps unless
    `map_files` is False (see `map_range`: fastest, but the file must not be truncated while it
    is read).  An S3 object of at least `ranged_read_threshold` bytes is read with
    `read_streams` ranged GETs of `read_part_size` bytes at once (`S3RangedSource`), a smaller
    one with one streaming GET (`S3StreamSource`); both retry a failed read by `retry`.
    Another asynchronous filesystem is read with ranged ``_cat_file`` calls (`AsyncFsSource`),
    a synchronous one through a file object.
    Raises `StorageError` (verb ``"open"``) if it does not exist or cannot be opened.
    """
    import fsspec  # at the edge: the sender reads files and buffers without fsspec

    from fstransport.storage.backends import backend_class

    read = ReadSettings(map_files, read_streams, read_part_size, ranged_read_threshold, retry)
    with storage_errors(url, "open"):
        if "::" not in url:  # (a chained URL is opened by fsspec, and read through its result)
            fs_class = fsspec.get_filesystem_class(fsspec.core.split_protocol(url)[0] or "file")
            opened = await backend_class(fs_class).open_url(
                fs_class, url, read, dict(storage_options)
            )
            if opened is not None:
                return opened
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return await backend_class(fs).open_path(fs, path, url, read)
