"""Assembling a delta on a local file system: reused ranges come from the base file with
``os.copy_file_range`` (a reflink or an in-kernel copy where the file system has one), the sent
ranges are already in the target (the receiver wrote them at their offsets, like any chunk).
`map_file` makes the map of a base or a source file, reading it once in pieces.

The result is then read once to compute its CRC32C from the bytes; the caller compares it with
the snapshot's checksum before installing (a base that changed after its map was made is caught
here, never installed).  Ranges a `Prefill` already copied at their own offsets are not copied
again (`assemble_local`'s `done`); the result's read covers them like every other byte.  The
write-back of what is copied starts as it is copied (`Writeback`), so the install's rename does
not wait for a whole file to reach the disk.  Blocking: run it in a thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

from fstransport.checksum import chunk_crc, combine
from fstransport.errors import ChecksumMismatch, SourceChanged, StorageError
from fstransport.protocol.delta import SEND, DeltaMap, MapBuilder, Recipe, choose_block_size
from fstransport.protocol.ranges import RangeSet
from fstransport.storage.backends.local.writeback import Writeback

__all__ = ["LocalAssembly", "assemble_local", "copy_range", "file_crc", "map_file"]

_FALLBACK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EXDEV", "ENOSYS", "EINVAL", "EOPNOTSUPP", "ENOTSUP", "EBADF")
    if hasattr(errno, name)
)
_BUFFER = 1 << 20


@dataclass
class LocalAssembly:
    """What `assemble_local` did."""

    bytes_reused: int = 0
    copied_in_kernel: int = 0
    """Of `bytes_reused`, bytes ``os.copy_file_range`` copied (the rest: read and written)."""
    crc32c: int = 0
    """The CRC32C of the assembled target, from its bytes."""


def _pread_pwrite(src: int, dst: int, src_at: int, dst_at: int, length: int) -> None:
    left = length
    while left:
        block = os.pread(src, min(left, _BUFFER), src_at)
        if not block:
            raise EOFError("the base ended early")
        os.pwrite(dst, block, dst_at)
        src_at, dst_at, left = src_at + len(block), dst_at + len(block), left - len(block)


def copy_range(src: int, dst: int, src_at: int, dst_at: int, length: int, *, kernel: bool) -> int:
    """Copy `length` bytes from fd `src` at `src_at` to fd `dst` at `dst_at`; returns how many
    the kernel copied (``os.copy_file_range``, when `kernel` and the system allows it; the rest
    falls back to pread/pwrite).  `EOFError` when `src` ends early."""
    in_kernel = 0
    copy_file_range = getattr(os, "copy_file_range", None)
    while kernel and copy_file_range is not None and in_kernel < length:
        try:
            done = copy_file_range(
                src, dst, length - in_kernel, src_at + in_kernel, dst_at + in_kernel
            )
        except OSError as exc:
            if exc.errno not in _FALLBACK_ERRNOS:
                raise
            break
        if done == 0:
            raise EOFError("the base ended early")
        in_kernel += done
    if in_kernel < length:
        _pread_pwrite(src, dst, src_at + in_kernel, dst_at + in_kernel, length - in_kernel)
    return in_kernel


def map_file(
    path: str,
    mode: str,
    *,
    key: bytes,
    block_size: int | None = None,
    segments: Sequence[int] = (),
    piece: int = 8 * _BUFFER,
) -> DeltaMap:
    """The delta map of the file at `path`, read once in `piece`-byte reads (never held whole).

    `segments` are offsets where CDC starts afresh (`fstransport.delta.tree_segments`); a
    block map without them has its second level (`MapBuilder`'s `supers`).
    Raises `StorageError`, or `SourceChanged` when the file changes size while it is read.
    """
    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            block = block_size or choose_block_size(size)
            builder = MapBuilder(mode, key=key, block_size=block, supers=not segments)
            bounds = sorted({0, size, *(s for s in segments if 0 < s < size)})
            buffer = bytearray(piece)
            for start, end in pairwise(bounds):
                at = start
                while at < end:
                    got = fh.readinto(memoryview(buffer)[: min(piece, end - at)])
                    if not got:
                        raise SourceChanged(path, "map", EOFError("the file shrank"))
                    builder.update(memoryview(buffer)[:got])
                    at += got
                builder.segment()
            if fh.read(1):
                raise SourceChanged(path, "map", ValueError("the file grew"))
    except OSError as exc:
        raise StorageError(path, "map", exc) from exc
    return builder.finish()


def _crc_span(fd: int, start: int, end: int) -> int:
    crc, at = 0, start
    while at < end:
        block = os.pread(fd, min(_BUFFER, end - at), at)
        if not block:
            raise EOFError("the file ended early")
        crc = chunk_crc(block, crc)
        at += len(block)
    return crc


_CRC_SPLIT = 64 * _BUFFER
"""Files at least this long are read for their CRC32C by two threads, a half each."""


def file_crc(fd: int, size: int) -> int:
    """The CRC32C of the first `size` bytes of fd `fd`, read from the start (a long file by two
    threads at once: ``pread`` and CRC32C release the GIL)."""
    if size < _CRC_SPLIT:
        return _crc_span(fd, 0, size)
    half = size // 2
    with ThreadPoolExecutor(1, thread_name_prefix="fstransport-crc") as pool:
        second = pool.submit(_crc_span, fd, half, size)
        first = _crc_span(fd, 0, half)
        return combine(first, second.result(), size - half)


def assemble_local(
    recipe: Recipe,
    base_path: str,
    target_path: str,
    *,
    expected_crc: int | None = None,
    kernel_copy: bool = True,
    fsync: bool = False,
    done: RangeSet | None = None,
) -> LocalAssembly:
    """Fill the reused ranges of `target_path` (which already holds the sent ranges at their
    offsets) from `base_path`, cut it to the recipe's size, and compute its CRC32C.  `done`:
    target ranges that already hold the base's bytes from the same offsets (a `Prefill`'s), not
    copied again where a reused range comes from its own offset.

    Raises `SourceChanged` when the base is no longer the size the recipe was made for (or
    ends early), `ChecksumMismatch` (``whole=True``) when `expected_crc` is given and the
    assembled bytes do not have it, `StorageError` for other I/O failures.  The target is
    left in place either way: the caller drops it.
    """
    result = LocalAssembly()
    try:
        base = os.open(base_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StorageError(base_path, "open the delta base", exc) from exc
    try:
        if os.fstat(base).st_size != recipe.base_size:
            raise SourceChanged(
                base_path, "reuse", ValueError("the base changed size since its map was made")
            )
        target = os.open(target_path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            writeback = Writeback(target)
            for at, length, base_at in recipe.targets():
                if base_at == SEND:
                    continue
                result.bytes_reused += length
                parts = [(at, at + length)]
                if done is not None and base_at == at:
                    parts = done.gaps(at, at + length)
                for start, end in parts:
                    shift = base_at - at
                    result.copied_in_kernel += copy_range(
                        base, target, start + shift, start, end - start, kernel=kernel_copy
                    )
                    writeback.wrote(start, end - start)
            writeback.flush()
            os.ftruncate(target, recipe.size)
            result.crc32c = file_crc(target, recipe.size)
            if fsync:
                os.fsync(target)
        finally:
            os.close(target)
    except EOFError as exc:
        raise SourceChanged(base_path, "reuse", exc) from exc
    except OSError as exc:
        raise StorageError(target_path, "assemble", exc) from exc
    finally:
        os.close(base)
    if expected_crc is not None and result.crc32c != expected_crc:
        raise ChecksumMismatch(
            f"{target_path} assembled from a delta",
            f"crc32c:{expected_crc:08x}",
            f"crc32c:{result.crc32c:08x}",
            whole=True,
        )
    return result
