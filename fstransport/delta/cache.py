"""A receiver's kept maps: the key-independent part of a base's delta map (lengths, CRC32Cs and
BLAKE3 digests of its extents) in a sidecar under the store's bookkeeping
(``.fstransport/maps/``), so that an offer derives its keyed tags from it
(`DeltaMap.rekeyed`) instead of reading the base again.  See ``docs/delta.md``.

A block map's sidecar also holds its second level (super-blocks: CRC32Cs and digests).  The
format is versioned by its magic (``FSTDSUM2``): a sidecar of another version is ignored and
made again, never misread.  It holds no tags (they depend on each transfer's key), so the 64-bit
tags of ``FSTDMAP3`` maps left it as it was.  A sidecar names the file it describes by its size,
inode, device and mtime (nanoseconds; not the ctime, which installing by rename changes); any
difference and it is ignored (and replaced).  A snapshot assembled from a delta gets its sidecar
at once (`keep_assembled`: the base's digests for the copied blocks, the sent blocks read back
and hashed); any other base is read at its first offer.  It is written only by the receiver,
from bytes it read or wrote itself, never from anything a peer said.  A stale one (a base
rewritten in place within one clock tick) can only make an offer promise blocks the base no
longer has: the assembled snapshot's CRC32C, computed from its bytes, then differs, and the
snapshot is sent again in full (never installed wrong).  Blocking: run in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
from array import array

from fstransport.checksum import chunk_crc
from fstransport.delta.local import map_file
from fstransport.protocol.delta import (
    MAX_BLOCK_SIZE,
    SEND,
    SUPER_SHIFT,
    DeltaMap,
    Recipe,
    SuperLevel,
    choose_block_size,
)
from fstransport.protocol.delta_tags import DIGEST_SIZE, extent_digest, hash_pieces
from fstransport.protocol.delta_wire import u32_from_le, u32_le

__all__ = ["MAPS_DIR", "keep_assembled", "keep_map", "kept_map", "sidecar_path"]

log = logging.getLogger("fstransport.receiver")

MAPS_DIR = ".fstransport/maps"
_MAGIC = b"FSTDSUM2"
_HEADER = struct.Struct("<8sBBIQQQqQ")  # magic mode super-shift block size ino dev mtime count
_MODES = {"blocks": 1, "cdc": 2}


def sidecar_path(root: str, path: str, mode: str) -> str:
    """Where the kept map of the file at `path` in `mode` lives under the store at `root`."""
    name = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]
    return os.path.join(root, MAPS_DIR, f"{name}.{mode}")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns


def keep_map(
    root: str, path: str, delta_map: DeltaMap, st: os.stat_result, *, name: str | None = None
) -> None:
    """Write `delta_map`'s key-independent part as the sidecar of the file at `path`, whose
    state `st` was taken before it was read; nothing if the file changed since.  `name`: the
    path the file will have once installed (a rename keeps what the sidecar checks), if not
    `path`."""
    if len(delta_map.digests) != DIGEST_SIZE * len(delta_map):
        return
    with contextlib.suppress(OSError):
        if _identity(os.stat(path)) != _identity(st):
            return  # changed while it was read: keep nothing
        size, ino, dev, mtime = _identity(st)
        supers = delta_map.supers
        if supers is not None and len(supers.digests) != DIGEST_SIZE * len(supers.crcs):
            return
        shift = 0 if supers is None else supers.shift
        header = _HEADER.pack(
            _MAGIC, _MODES[delta_map.mode], shift, delta_map.block_size, size, ino, dev, mtime,
            len(delta_map),
        )  # fmt: skip
        lengths = u32_le(delta_map.lengths) if delta_map.mode == "cdc" else b""
        body = lengths + u32_le(delta_map.crcs) + delta_map.digests
        if supers is not None:
            body += u32_le(supers.crcs) + supers.digests
        target = sidecar_path(root, name or path, delta_map.mode)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temporary = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"  # (offers at once)
        try:
            with open(temporary, "wb") as fh:
                fh.write(header + body)
            os.replace(temporary, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _load(root: str, path: str, mode: str, st: os.stat_result) -> DeltaMap | None:
    """The kept map of `path` if its sidecar describes the file as `st` shows it."""
    try:
        with open(sidecar_path(root, path, mode), "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    if len(raw) < _HEADER.size:
        return None
    magic, code, shift, block, size, ino, dev, mtime, count = _HEADER.unpack_from(raw)
    if magic != _MAGIC or code != _MODES[mode] or (size, ino, dev, mtime) != _identity(st):
        return None
    if shift not in (0, SUPER_SHIFT) or (shift and (mode != "blocks" or not block)):
        return None
    supers = -(-size // (block << shift)) if shift else 0
    columns = 2 if mode == "cdc" else 1
    extra = supers * (4 + DIGEST_SIZE)
    if len(raw) != _HEADER.size + count * (4 * columns + DIGEST_SIZE) + extra:
        return None
    at = _HEADER.size
    if mode == "cdc":
        lengths = u32_from_le(raw[at : at + 4 * count])
        at += 4 * count
        if block != 0 or sum(lengths) != size:
            return None
    else:
        if block != choose_block_size(size) or block > MAX_BLOCK_SIZE or count != -(-size // block):
            return None
        lengths = array("I", [block] * count)
        if count:
            lengths[-1] = size - block * (count - 1)
    crcs = u32_from_le(raw[at : at + 4 * count])
    at += 4 * count
    digests = raw[at : at + DIGEST_SIZE * count]
    at += DIGEST_SIZE * count
    second = None
    if supers > 1:
        super_crcs = u32_from_le(raw[at : at + 4 * supers])
        second = SuperLevel(shift, super_crcs, array("Q"), raw[at + 4 * supers :])
    elif shift:
        return None
    key = b"\0" * 16
    return DeltaMap(mode, size, key, block, lengths, crcs, array("Q"), digests, second)


def kept_map(root: str, path: str, mode: str, *, key: bytes, write: bool = True) -> DeltaMap:
    """The map of the file at `path` in `mode` keyed by `key`: from its sidecar when that still
    describes the file, else read and mapped (`map_file`) and, if `write`, the sidecar written
    for next time.  Raises as `map_file`."""
    st = os.stat(path)
    found = _load(root, path, mode, st)
    if found is not None:
        return found.rekeyed(key)
    made = map_file(path, mode, key=key)
    if not write:
        return made
    try:
        keep_map(root, path, made, st)
    except Exception as exc:  # a map not kept is read again next time: log, go on
        log.warning("could not keep the delta map of %s: %s", path, exc)
    return made


def keep_assembled(root: str, name: str, path: str, recipe: Recipe, base_map: DeltaMap) -> None:
    """Keep the map of the file at `path`, just assembled by `recipe` from the base `base_map`
    describes (its whole CRC32C checked from its bytes), for the name `name` it is installed
    under: a block copied whole from a block of the base takes that block's CRC32C and digest,
    every other block is read back from `path` and hashed.  Blocks mode only (a CDC map would
    need the content cut again)."""
    block = base_map.block_size
    if base_map.mode != "blocks" or len(base_map.digests) != DIGEST_SIZE * len(base_map):
        return
    if choose_block_size(recipe.size) != block:
        return
    st = os.stat(path)
    count = -(-recipe.size // block)
    crcs, digests, have = (
        array("I", bytes(4 * count)),
        bytearray(DIGEST_SIZE * count),
        bytearray(count),
    )
    same = bytearray(count)  # copied from the base block at the same index
    for at, length, base_at in recipe.targets():
        if base_at == SEND or at % block or base_at % block:
            continue
        whole = length // block
        if length % block and at + length == recipe.size and base_at + length == base_map.size:
            whole += 1  # the last, short block of both
        first, src = at // block, base_at // block
        crcs[first : first + whole] = base_map.crcs[src : src + whole]
        digests[DIGEST_SIZE * first : DIGEST_SIZE * (first + whole)] = base_map.digests[
            DIGEST_SIZE * src : DIGEST_SIZE * (src + whole)
        ]
        have[first : first + whole] = b"\1" * whole
        if first == src:
            same[first : first + whole] = b"\1" * whole
    with open(path, "rb", buffering=0) as fh:
        i = have.find(0)
        while i != -1:
            piece = os.pread(fh.fileno(), block, i * block)
            crcs[i] = chunk_crc(piece)
            digests[DIGEST_SIZE * i : DIGEST_SIZE * (i + 1)] = extent_digest(piece)
            i = have.find(0, i + 1)
        supers = _assembled_supers(fh.fileno(), recipe.size, block, same, base_map)
    lengths = array("I", [block] * count)
    if count:
        lengths[-1] = recipe.size - block * (count - 1)
    made = DeltaMap(
        "blocks", recipe.size, b"\0" * 16, block, lengths, crcs, array("Q"), bytes(digests), supers
    )
    keep_map(root, path, made, st, name=name)


def _assembled_supers(
    fd: int, size: int, block: int, same: bytearray, base_map: DeltaMap
) -> SuperLevel | None:
    """The second level of a file just assembled: a super-block whose every block came from the
    same index of the base (and whose length is the base's) takes the base's entry, any other
    is read back from `fd` and hashed."""
    unit, per = block << SUPER_SHIFT, 1 << SUPER_SHIFT
    count = -(-size // unit)
    if count < 2:
        return None
    theirs = base_map.supers
    if theirs is not None and (
        theirs.shift != SUPER_SHIFT or len(theirs.digests) != DIGEST_SIZE * len(theirs.crcs)
    ):
        theirs = None
    crcs, digests = array("I", bytes(4 * count)), bytearray(DIGEST_SIZE * count)
    for s in range(count):
        length = min(unit, size - s * unit)
        blocks = same[s * per : s * per + -(-length // block)]
        if (
            theirs is not None
            and s < len(theirs.crcs)
            and length == min(unit, base_map.size - s * unit)
            and blocks.count(1) == len(blocks)
        ):
            crcs[s] = theirs.crcs[s]
            digests[DIGEST_SIZE * s : DIGEST_SIZE * (s + 1)] = theirs.digests[
                DIGEST_SIZE * s : DIGEST_SIZE * (s + 1)
            ]
            continue
        read_crcs, read_digests = hash_pieces(os.pread(fd, length, s * unit), unit)
        if len(read_crcs) != 1:
            raise EOFError("the assembled file ended early")
        crcs[s] = read_crcs[0]
        digests[DIGEST_SIZE * s : DIGEST_SIZE * (s + 1)] = read_digests
    return SuperLevel(SUPER_SHIFT, crcs, array("Q"), bytes(digests))
