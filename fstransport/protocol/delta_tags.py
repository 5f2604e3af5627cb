"""The identities of a delta map's extents, sans I/O: a digest of each extent that does not
depend on any key (so a receiver can keep it with a snapshot), and the keyed tags a map carries,
derived from those digests with the transfer's key.  See ``docs/delta.md`` (never install wrong
bytes).

* ``digest = BLAKE3(extent)``, all 32 bytes: collision-resistant, so two different extents
  never share one (a truncated digest would let a third party who writes into the state machine
  prepare a colliding pair offline).  BLAKE3 (the ``blake3`` package) hashes a 64 KiB
  super-block about three times as fast as SHA-256 does here, even with SHA extensions
  (``docs/delta.md`` has the numbers).
* ``tag = (a * digest mod 2**256) >> 192``, the digest read as a little-endian integer and
  ``a`` an odd 256-bit number drawn from the transfer's key (`tag_multiplier`): multiply-shift
  hashing with 64 output bits, a universal family (Dietzfelbinger et al., 1997): for two
  different digests fixed before the key is drawn, their tags agree with probability at most
  2 * 2**-64 = 2**-63 over the key.  Content fixed before the key was drawn cannot aim at it.
  (Maps before ``FSTDMAP3`` kept 32 bits, 2**-31 a pair: too few for matching anywhere.)

Deriving the tags of a kept map needs no read of the base, and no call per extent: thousands of
digests are multiplied in one integer product (``docs/delta.md`` has the numbers).

`hash_pieces` gives the CRC32C and digest of each fixed-size piece of a buffer (the super-blocks
of a two-level block map: one call each over 64 KiB, where BLAKE3 runs at its bulk speed).
"""

from __future__ import annotations

import hashlib
from array import array
from sys import byteorder

import crc32c
from blake3 import blake3

from fstransport.messages import Buffer

__all__ = [
    "DIGEST_SIZE",
    "EXTENT_HASH",
    "TAG_SIZE",
    "derive_tags",
    "extent_digest",
    "hash_pieces",
    "keyed_sha256",
    "tag_multiplier",
]

DIGEST_SIZE = 32
TAG_SIZE = 8
"""Bytes of a tag: the top 64 bits of the low 256 of the product."""
_TAG_WORD = (DIGEST_SIZE - TAG_SIZE) // 8  # the tag's 64-bit word in a slot's product
EXTENT_HASH = blake3
"""The hash of an extent's digest (``EXTENT_HASH(piece).digest()``, `DIGEST_SIZE` bytes)."""


def extent_digest(piece: Buffer) -> bytes:
    """The key-independent digest of one extent."""
    return blake3(piece).digest()


def keyed_sha256(key: bytes) -> hashlib._Hash:
    """SHA-256 with `key` (padded to one 64-byte block) absorbed: the start of every keyed
    hash of a transfer (copy it, then feed the extent's digest or a file's bytes)."""
    return hashlib.sha256(key.ljust(64, b"\0"))


_TAG_DOMAIN = b"fstransport delta tag v2\0"
_BATCH = 4096  # digests multiplied at once (one integer of 256 KiB)


def tag_multiplier(key: bytes) -> int:
    """The odd 256-bit multiplier that `key` selects: SHA-256 of a domain string and the key."""
    return int.from_bytes(hashlib.sha256(_TAG_DOMAIN + key).digest(), "little") | 1


def derive_tags(key: bytes, digests: Buffer) -> array[int]:
    """The tags keyed by `key` of the extents whose digests are joined in `digests`: the top 64
    bits of ``a * digest mod 2**256`` (the digest read as a little-endian integer, `a` the
    key's `tag_multiplier`), multiply-shift hashing.  Many digests are multiplied in one
    integer product, each in its own 64-byte slot (a 512-bit product never reaches the next);
    digests go in and tags come out as strided copies of 64-bit words (no call per digest)."""
    view = memoryview(digests).cast("B")
    if len(view) % DIGEST_SIZE:
        raise ValueError(f"digests come in {DIGEST_SIZE}-byte pieces")
    multiplier, slot = tag_multiplier(key), 2 * DIGEST_SIZE
    words, per_slot = DIGEST_SIZE // 8, slot // 8
    tags = array("Q", bytes(len(view) // DIGEST_SIZE * TAG_SIZE))
    out = memoryview(tags)
    for start in range(0, len(view), DIGEST_SIZE * _BATCH):
        part = memoryview(bytes(view[start : start + DIGEST_SIZE * _BATCH])).cast("Q")
        count = len(part) // words
        slots = bytearray(slot * count)
        into = memoryview(slots).cast("Q")
        for j in range(words):  # each digest's words into the low half of its slot
            into[j::per_slot] = part[j::words]
        product = (int.from_bytes(slots, "little") * multiplier).to_bytes(slot * count, "little")
        at = start // DIGEST_SIZE
        out[at : at + count] = memoryview(product).cast("Q")[_TAG_WORD::per_slot]
    if byteorder == "big":  # (the words were copied as little-endian bytes)
        tags.byteswap()
    return tags


Pieces = tuple["array[int]", bytes]
"""CRC32Cs (u32) and joined digests of consecutive pieces."""


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
