"""A directory delta's file identities, sans I/O: a key-independent digest of each file, which a
receiver keeps with an installed tree, and the keyed tag a transfer derives from it.  See
``docs/delta.md`` (Directory snapshots, and Never install wrong bytes).

* ``digest = BLAKE3(file)`` (`EXTENT_HASH`, all 32 bytes): it depends on no key, so a receiver
  can record it when it installs a tree (on S3: in the manifest, beside the ETag it installed)
  and offer that tree later without reading the file again.
* ``tag`` = the first 8 bytes (little-endian) of SHA-256 over the transfer's key (zero-padded to
  one block, as every keyed hash of a transfer: `keyed_sha256`), `_DOMAIN`, the file's size (u64
  little-endian) and its digest: one call per file, 64 bits.

A file's identity is ``(size, crc32c, tag)`` (`FileIdentity`); both ends derive the tag the same
way, the sender from the bytes it sends, the receiver from its base's bytes or from a digest it
recorded for exactly those bytes.
"""

from __future__ import annotations

from fstransport.checksum import chunk_crc, combine
from fstransport.messages import Buffer
from fstransport.protocol.delta_tags import DIGEST_SIZE, EXTENT_HASH, keyed_sha256

__all__ = ["PIECE", "FileIdentity", "file_tag"]

PIECE = 1 << 30
"""A file the base offers whole (not cut) is listed as extents of this size, the last shorter
(an extent's length is 32 bits)."""
_DOMAIN = b"fstransport tree file tag v2\0"


def file_tag(key: bytes, size: int, digest: bytes) -> int:
    """The 64-bit tag under the transfer's `key` of a file of `size` bytes whose BLAKE3 digest
    is `digest`."""
    if len(digest) != DIGEST_SIZE or size < 0:
        raise ValueError("a file tag needs a 32-byte digest and a size")
    hasher = keyed_sha256(key)
    hasher.update(_DOMAIN + size.to_bytes(8, "little") + digest)
    return int.from_bytes(hasher.digest()[:8], "little")


class FileIdentity:
    """A file's strong identity fed in pieces: its size, its CRC32C (and that of each `PIECE`),
    its BLAKE3 digest, and the tag `key` derives from them (`file_tag`).  One pass at hashing
    speed (large pieces, not one call per block)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._hasher = EXTENT_HASH()
        self.pieces: list[tuple[int, int]] = []
        """``(length, crc32c)`` of each `PIECE` of the file (the last one shorter)."""

    def update(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        while len(view):
            if not self.pieces or self.pieces[-1][0] == PIECE:
                self.pieces.append((0, 0))
            length, crc = self.pieces[-1]
            take = view[: PIECE - length]
            self.pieces[-1] = (length + len(take), chunk_crc(take, crc))
            view = view[len(take) :]

    def digest(self) -> bytes:
        """The file's BLAKE3 digest (key-independent: what a receiver records)."""
        return bytes(self._hasher.digest())

    def identity(self) -> tuple[int, int, int]:
        """``(size, crc32c, tag)``."""
        size = crc = 0
        for length, part in self.pieces:
            crc = combine(crc, part, length)
            size += length
        return size, crc, file_tag(self.key, size, self.digest())
