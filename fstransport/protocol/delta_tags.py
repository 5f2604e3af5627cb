"""The identities of a delta map's extents, sans I/O: a digest of each extent that does not
depend on any key (so a receiver can keep it with a snapshot), and the keyed tags a map carries,
derived from those digests with the transfer's key.  See ``docs/delta.md`` (never install wrong
bytes).

* ``digest = SHA-256(extent)``, all 32 bytes: collision-resistant, so two different extents
  never share one (a truncated digest would let a third party who writes into the state machine
  prepare a colliding pair offline).
* ``tag = first 4 bytes (little-endian u32) of SHA-256(key padded to 64 bytes || digest)``: a
  keyed pseudo-random function of the digest.  Content fixed before the key was drawn cannot aim
  at it; only 4 bytes are kept, so nothing can be extended.

Deriving the tags of a kept map costs one SHA-256 call over 96 bytes per extent instead of a
read of the whole base (``docs/delta.md`` has the numbers).
"""

from __future__ import annotations

import hashlib
from array import array
from sys import byteorder

from fstransport.messages import Buffer

__all__ = ["DIGEST_SIZE", "derive_tags", "extent_digest", "keyed_sha256"]

DIGEST_SIZE = 32
_TAG_SIZE = 4


def extent_digest(piece: Buffer) -> bytes:
    """The key-independent digest of one extent."""
    return hashlib.sha256(piece).digest()


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
