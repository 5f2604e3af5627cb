"""Delta transfer for directory snapshots, I/O: the receiver maps a base tree for its offer and
fills the copied ranges of the packed stream from the base tree's files before install; the
sender maps its packed tree file by file and sends the recipe.  The rules are in
`fstransport.protocol.delta_tree` (sans I/O); ``docs/delta.md`` has the exchange.

Bases are trees installed in local folders (`PwriteSink` stores) and ``memory://`` stores (a
manifest and a generation); anything else offers nothing and the tree is sent in full.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from dataclasses import replace
from typing import Any

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.local import copy_range, file_crc
from fstransport.delta.receive import _kind, _memory_file, _recipe_of
from fstransport.delta.send import Ask, DeltaPlan
from fstransport.errors import ChecksumMismatch, FstransportError, SourceChanged, StorageError
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta, Vote
from fstransport.options import TransferOptions
from fstransport.protocol.delta import SEND, DeltaMap, Recipe, choose_block_size, new_key
from fstransport.protocol.delta_session import MAX_OFFER_FACTOR
from fstransport.protocol.delta_tree import (
    FileIdentity,
    TreeMap,
    TreeMapBuilder,
    TreeReceiverDelta,
    decode_tree_offer,
    encode_tree_offer,
    max_tree_offer_bytes,
    plan_tree_recipe,
    whole_matches,
    whole_tree_crc,
)
from fstransport.protocol.delta_wire import encode_recipe
from fstransport.storage.source import ChunkSource
from fstransport.tree.install import load_manifest
from fstransport.tree.source import _walk_local
from fstransport.tree.table import HEADER_SIZE, TreeTable, parse_header, parse_table

__all__ = ["assemble_tree", "find_tree_base", "identify_files", "map_files", "negotiate_tree"]

log = logging.getLogger("fstransport.delta")

_PIECE = 8 * 1024 * 1024
BaseFiles = list[tuple[str, int]]
"""``(path relative to the base's root, size)`` of a base tree's files, in order."""


# -- the receiver: a base tree and its offer --------------------------------------------------


def _map_files(read: Any, files: BaseFiles, mode: str, key: bytes) -> TreeMap:
    """The `TreeMap` of `files`, each read whole through ``read(path, size)`` (an iterator of
    pieces that raises `SourceChanged` when the file is no longer `size` bytes)."""
    total = sum(size for _, size in files)
    builder = TreeMapBuilder(mode, key=key, block_size=choose_block_size(total))
    for path, size in files:
        if size:
            for piece in read(path, size):
                builder.update(piece)
        builder.end_file()
    return builder.finish()


def _read_local(root: str) -> Any:
    def read(path: str, size: int) -> Any:
        full = os.path.join(root, *path.split("/"))
        with open(full, "rb", buffering=0) as fh:  # (the walk refused symbolic links)
            if os.fstat(fh.fileno()).st_size != size:
                raise SourceChanged(full, "map", ValueError("the file changed size"))
            left = size
            while left:
                piece = fh.read(min(_PIECE, left))
                if not piece:
                    raise SourceChanged(full, "map", EOFError("the file shrank"))
                left -= len(piece)
                yield piece

    return read


def _local_base(folder: str, mode: str, key: bytes) -> tuple[TreeMap, BaseFiles, str] | None:
    if not os.path.isdir(folder) or os.path.islink(folder):
        return None
    _, files = _walk_local(folder)  # UnsupportedEntry for anything but folders and files
    files = [(path, size) for path, size in files if size]
    return _map_files(_read_local(folder), files, mode, key), files, folder


def _memory_base(store: Any, tree_path: str, mode: str, key: bytes) -> Any:
    try:
        manifest = load_manifest(store.backend.fs, tree_path)
    except FileNotFoundError:
        return None
    generation = manifest.get("generation")
    listed = manifest.get("files")
    if not isinstance(generation, str) or "/" in generation or not isinstance(listed, list):
        return None
    files = [(str(entry[0]), int(entry[1])) for entry in listed if int(entry[1])]
    root = f"{tree_path.rstrip('/')}/{generation}"

    def read(path: str, size: int) -> Any:
        found = _memory_file(store, f"{root}/{path}")
        data = b"" if found is None else found.getvalue()
        if len(data) != size:
            raise SourceChanged(f"{root}/{path}", "map", ValueError("the file changed"))
        yield data

    return _map_files(read, files, mode, key), files, root


async def find_tree_base(
    store: Any, candidates: list[str], mode: str, key: bytes | None, size: int
) -> tuple[TreeReceiverDelta, bytes] | None:
    """The first of `candidates` `store` holds as a tree, mapped in `mode` with `key` (the
    sender's, else a fresh one), with its encoded offer; None when there is none, the store
    cannot serve as a base, or the offer would be longer than a sender of a `size`-byte packed
    tree takes."""
    key = key or new_key()
    kind = _kind(store)
    if kind is None:
        return None
    for base_id in dict.fromkeys(candidates):
        try:
            path = store.path(base_id)
        except Exception:  # an id the store would refuse: never a base
            continue
        try:
            if kind == "local":
                found = await asyncio.to_thread(_local_base, path, mode, key)
            else:
                found = await asyncio.to_thread(_memory_base, store, path, mode, key)
        except Exception as exc:  # a base that cannot be read whole is no base
            log.warning("tree delta base %r could not be mapped: %s", base_id, exc)
            continue
        if found is None:
            continue
        tree, files, root = found
        if tree.size > max(MAX_OFFER_FACTOR * size, 64 * 1024 * 1024):
            return None
        encoded = encode_tree_offer(tree)
        if len(encoded) > max_tree_offer_bytes(size):
            return None
        placed = tuple(
            (path, at, length)
            for (path, length), at in zip(files, tree.file_offsets(), strict=True)
        )
        # (kept under the request's mode, which a recipe must name; only its extents are read)
        extents = replace(tree.extents, mode=tree.mode)
        crc = whole_tree_crc(0, list(zip(tree.sizes, tree.crcs, tree.tags, strict=True)))
        delta = TreeReceiverDelta(
            base_id, tree.size, extents, files=placed, root=root, stream_crc=crc
        )
        return delta, encoded
    return None


# -- the receiver: assembly -------------------------------------------------------------------


def _pieces(delta: TreeReceiverDelta, recipe: Recipe) -> list[tuple[int, int, int, int]]:
    """``(target offset, length, base file index, offset in that file)`` of every copied byte
    range, split where the base stream passes from one file to the next."""
    starts = [at for _, at, _ in delta.files]
    out = []
    for at, length, base_at in recipe.targets():
        while base_at != SEND and length:
            index = bisect.bisect_right(starts, base_at) - 1
            _, start, size = delta.files[index]
            take = min(length, start + size - base_at)
            out.append((at, take, index, base_at - start))
            at, base_at, length = at + take, base_at + take, length - take
    return out


def _assemble_local(delta: TreeReceiverDelta, recipe: Recipe, target: str, fsync: bool) -> int:
    """Fill `target`'s copied ranges from the base tree's files (``copy_file_range``); return
    its CRC32C from its bytes.  `SourceChanged` when a base file is gone or of another size."""
    fds: dict[int, int] = {}
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        out = os.open(target, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StorageError(target, "assemble", exc) from exc
    try:
        for at, length, index, file_at in _pieces(delta, recipe):
            path, _, size = delta.files[index]
            full = os.path.join(delta.root, *path.split("/"))
            if index not in fds:
                try:
                    fds[index] = os.open(full, flags)
                except OSError as exc:
                    raise SourceChanged(full, "reuse", exc) from exc
                if os.fstat(fds[index]).st_size != size:
                    raise SourceChanged(full, "reuse", ValueError("the base file changed size"))
            try:
                copy_range(fds[index], out, file_at, at, length, kernel=True)
            except EOFError as exc:
                raise SourceChanged(full, "reuse", exc) from exc
        os.ftruncate(out, recipe.size)
        crc = file_crc(out, recipe.size)
        if fsync:
            os.fsync(out)
        return crc
    except OSError as exc:
        raise StorageError(target, "assemble", exc) from exc
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


def _assemble_memory(store: Any, delta: TreeReceiverDelta, recipe: Recipe, path: str) -> int:
    target = _memory_file(store, path)
    if target is None:
        raise SourceChanged(path, "assemble", FileNotFoundError(path))
    for at, length, index, file_at in _pieces(delta, recipe):
        name, _, size = delta.files[index]
        found = _memory_file(store, f"{delta.root}/{name}")
        data = b"" if found is None else found.getvalue()
        if len(data) != size:
            raise SourceChanged(f"{delta.root}/{name}", "reuse", ValueError("the base changed"))
        target.seek(at)
        target.write(data[file_at : file_at + length])
    target.truncate(recipe.size)
    with target.getbuffer() as view:
        return chunk_crc(view[: recipe.size])


async def assemble_tree(
    store: Any, sink: Any, delta: TreeReceiverDelta, copied: Any, checksum: str
) -> int:
    """Fill the packed stream's copied ranges (those of `copied` the ledger still holds) from
    the base tree and check its CRC32C, from its bytes, against `checksum`; return the bytes
    copied.  `ChecksumMismatch` (``whole=True``) or `SourceChanged` when the base changed."""
    recipe = _recipe_of(delta, copied)
    if _kind(store) == "local":
        fsync = bool(getattr(store, "fsync", False))
        crc = await asyncio.to_thread(_assemble_local, delta, recipe, sink.path, fsync)
    else:
        crc = _assemble_memory(store, delta, recipe, sink.path)
    if format_checksum(crc) != checksum:
        raise ChecksumMismatch(
            f"directory snapshot assembled from base {delta.base_id!r}",
            checksum,
            format_checksum(crc),
            whole=True,
        )
    return recipe.reused


# -- the sender ---------------------------------------------------------------------------------


async def _read(source: ChunkSource, offset: int, length: int) -> bytes:
    data = bytes(await source.read(offset, length))
    if len(data) != length:
        raise EOFError(f"{source.description} ended at {offset + len(data)}")
    return data


async def source_table(source: ChunkSource) -> tuple[TreeTable, bytes]:
    """The table of the packed tree `source` sends (read from its first bytes and checked as
    any table), and its header and table bytes."""
    length = parse_header(await _read(source, 0, HEADER_SIZE), source.size)
    head = await _read(source, 0, HEADER_SIZE + length)
    return parse_table(head[HEADER_SIZE:], source.size, None), head


async def identify_files(
    source: ChunkSource, table: TreeTable, key: bytes, piece: int
) -> list[tuple[int, int, int]]:
    """The `FileIdentity` of each file of the packed tree `source`, in the table's order, read
    once in `piece`-byte reads."""
    out = []
    for entry in table.files:
        ident, at, end = FileIdentity(key), entry.offset, entry.offset + entry.size
        while at < end:
            data = await _read(source, at, min(piece, end - at))
            ident.update(data)
            at += len(data)
        out.append(ident.identity())
    return out


async def map_files(
    source: ChunkSource, table: TreeTable, numbers: list[int], base: TreeMap, piece: int
) -> dict[int, DeltaMap]:
    """The extents of the files `numbers` (indexes into `table.files`) of `source`, cut as
    `base`'s (its mode, key and block size)."""
    cutter = TreeMapBuilder(base.mode, key=base.key, block_size=base.block_size)
    out = {}
    for number in numbers:
        entry = table.files[number]
        builder, at, end = cutter.file_builder(), entry.offset, entry.offset + entry.size
        while at < end:
            data = await _read(source, at, min(piece, end - at))
            builder.update(data)
            at += len(data)
        out[number] = builder.finish()
    return out


def _base_of(answer: object, meta: SnapshotMeta, vote: Vote) -> TreeMap | None:
    if not isinstance(answer, InstallSnapshotResponse) or answer.vote > vote:
        return None
    offer, size = answer.offer, meta.size
    if offer is None or size is None:
        return None
    if not isinstance(offer.map, bytes) or len(offer.map) > max_tree_offer_bytes(size):
        return None
    limit = max(MAX_OFFER_FACTOR * size, 64 * 1024 * 1024)
    if not isinstance(offer.size, int) or not 0 <= offer.size <= limit:
        return None
    base = decode_tree_offer(offer.map, max_size=limit)
    return base if base.size == offer.size else None


async def negotiate_tree(
    ask: Ask, vote: Vote, meta: SnapshotMeta, source: ChunkSource, options: TransferOptions
) -> DeltaPlan | None:
    """`fstransport.delta.send.negotiate` for a directory snapshot: ask for a base tree, map
    the packed tree's files against it, send the recipe.  None leaves a full transfer."""
    mode, key, piece = options.delta, new_key(), options.chunk_size
    first = InstallSnapshotRequest(vote, meta, 0, b"", False, 0, delta=mode, delta_key=key)
    try:
        table, head = await source_table(source)
        # the files' identities are read while the receiver maps its base
        identities = asyncio.ensure_future(identify_files(source, table, key, piece))
        try:
            answer = await ask(first)
            base = _base_of(answer, meta, vote)
            if base is None or answer.offer is None:
                return None  # (no base: the identities are not waited for)
            files = await identities
        finally:
            if not identities.done():
                identities.cancel()
                with contextlib.suppress(BaseException):
                    await identities
        map_bytes = len(answer.offer.map)
        checksum = format_checksum(whole_tree_crc(chunk_crc(head), files))
        if meta.checksum is not None and meta.checksum != checksum:
            return None  # the data is not what the caller named: the full transfer says so
        whole = whole_matches(base)
        changed = [i for i, ident in enumerate(files) if ident[0] and ident not in whole]
        extents = await map_files(source, table, changed, base, piece)
        recipe = plan_tree_recipe(base, files, extents, table.body_offset)
        if not recipe.reused:
            return DeltaPlan((), checksum, 0, map_bytes)
        raw = encode_recipe(recipe)
        named = replace(meta, checksum=checksum)
        second = InstallSnapshotRequest(vote, named, 0, b"", False, 0, delta=mode, recipe=raw)
        answer = await ask(second)
        if not isinstance(answer, InstallSnapshotResponse) or answer.vote > vote:
            return None
        log.info("tree delta: %d of %d bytes reused", recipe.reused, meta.size)
        return DeltaPlan(tuple(answer.held or ()), checksum, recipe.reused, map_bytes + len(raw))
    except (FstransportError, EOFError) as exc:
        log.warning("tree delta exchange failed (%s); sending the whole tree", exc)
        return None
