"""The identities of a delta map's extents, sans I/O: a digest of each extent that does not
depend on any key (so a receiver can keep it with a snapshot), and the keyed tags a map carries,
derived from those digests with the transfer's key.  See ``docs/delta.md`` (never install wrong
bytes).

* ``digest = BLAKE3(extent)``, all 32 bytes: collision-resistant, so two different extents
  never share one (a truncated digest would let a third party who writes into the state machine
  prepare a colliding pair offline).  BLAKE3 (the ``blake3`` package) hashes a 64 KiB
  super-block about three times as fast as SHA-256 does here, even with SHA extensions
  (``docs/delta.md`` has the numbers).
* ``tag = first 4 bytes (little-endian u32) of SHA-256(key padded to 64 bytes || digest)``: a
  keyed pseudo-random function of the digest.  Content fixed before the key was drawn cannot aim
  at it; only 4 bytes are kept, so nothing can be extended.

Deriving the tags of a kept map costs one SHA-256 call over 96 bytes per extent instead of a
read of the whole base (``docs/delta.md`` has the numbers).

`hash_pieces` gives the CRC32C and digest of each fixed-size piece of a buffer (the super-blocks
of a two-level block map: one call each over 64 KiB, where BLAKE3 runs at its bulk speed), and
`hash_pieces_in_pool` does it in a worker thread (both hashes release the GIL on such pieces, so
two threads use two cores).
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from sys import byteorder

import crc32c
from blake3 import blake3

from fstransport.messages import Buffer

__all__ = [
    "DIGEST_SIZE",
    "EXTENT_HASH",
    "derive_tags",
    "extent_digest",
    "hash_pieces",
    "hash_pieces_in_pool",
    "hash_pieces_parallel",
    "keyed_sha256",
]

DIGEST_SIZE = 32
_TAG_SIZE = 4
EXTENT_HASH = blake3
"""The hash of an extent's digest (``EXTENT_HASH(piece).digest()``, `DIGEST_SIZE` bytes)."""


def extent_digest(piece: Buffer) -> bytes:
    """The key-independent digest of one extent."""
    return blake3(piece).digest()


def keyed_sha256(key: bytes) -> hashlib._Hash:
    """SHA-256 with `key` (padded to one 64-byte block) absorbed: the start of every keyed
    hash of a transfer (copy it, then feed the extent's digest or a file's bytes)."""
    return hashlib.sha256(key.ljust(64, b"\0"))


def derive_tags(key: bytes, digests: Buffer) -> array[int]:
    """The tags keyed by `key` of the extents whose digests are joined in `digests`."""
    view = memoryview(digests).cast("B")
    if len(view) % DIGEST_SIZE:
        raise ValueError(f"digests come in {DIGEST_SIZE}-byte pieces")
    keyed = keyed_sha256(key)
    out = bytearray(len(view) // DIGEST_SIZE * _TAG_SIZE)
    at = 0
    for start in range(0, len(view), DIGEST_SIZE):
        hasher = keyed.copy()
        hasher.update(view[start : start + DIGEST_SIZE])
        out[at : at + _TAG_SIZE] = hasher.digest()[:_TAG_SIZE]
        at += _TAG_SIZE
    tags = array("I")
    tags.frombytes(out)
    if byteorder == "big":
        tags.byteswap()
    return tags


Pieces = tuple["array[int]", bytes]
"""CRC32Cs (u32) and joined SHA-256 digests of consecutive pieces."""
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
PARALLEL_MIN = 1 << 20
"""Below this many bytes, pieces are hashed in the calling thread only."""


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(2, thread_name_prefix="fstransport-hash")
        return _pool


def hash_pieces(data: Buffer, size: int) -> Pieces:
    """The CRC32C and digest of each `size`-byte piece of `data` (the last may be shorter)."""
    view = memoryview(data).cast("B")
    crcs, digests = array("I"), bytearray()
    crc, digest, add = crc32c.crc32c, blake3, crcs.append
    for at in range(0, len(view), size):
        piece = view[at : at + size]
        add(crc(piece))
        digests += digest(piece).digest()
    return crcs, bytes(digests)


def hash_pieces_in_pool(data: Buffer, size: int) -> Callable[[], Pieces]:
    """`hash_pieces` started in a worker thread; call the result to wait for it (`data` must
    stay unchanged until then)."""
    if len(memoryview(data)) < PARALLEL_MIN:
        done = hash_pieces(data, size)
        return lambda: done
    return _executor().submit(hash_pieces, data, size).result


def hash_pieces_parallel(data: Buffer, size: int) -> Pieces:
    """`hash_pieces` on two threads: the first half of the pieces in a worker, the rest here."""
    view = memoryview(data).cast("B")
    half = (len(view) // size + 1) // 2 * size
    if len(view) < PARALLEL_MIN or half >= len(view):
        return hash_pieces(view, size)
    first = _executor().submit(hash_pieces, view[:half], size)
    crcs, digests = hash_pieces(view[half:], size)
    head_crcs, head_digests = first.result()
    head_crcs.extend(crcs)
    return head_crcs, head_digests + digests
