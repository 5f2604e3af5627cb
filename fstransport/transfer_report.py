"""`TransferReport`: what `ship` did (importable from `fstransport` and `fstransport.transfer`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TransferReport"]


@dataclass(frozen=True)
class TransferReport:
    """What `ship` did: sizes, counts, time and the whole snapshot's checksum."""

    source: str
    target: str
    size: int
    bytes_sent: int
    chunks_sent: int
    retries: int
    rewinds: int
    bytes_skipped: int
    elapsed: float
    checksum: str | None
    server_side: bool = False
    """True when the S3 server copied the data itself (`ship(server_side=...)`): then no
    byte passed through this process, `bytes_sent` is 0 and `chunks_sent` counts part copies
    (0: the server copied the object with one ``CopyObject``)."""
    files: int | None = None
    """For a directory snapshot, how many files it holds (`size` is its packed stream's
    length: the files' bytes plus the table); None for a file."""
    bytes_read: int = 0
    """Bytes read from the source: once for all targets of a fan-out (a chunk sent again
    after a rewind may be read again).  In a report of `targets`, the bytes that target's
    sender read itself (the others took them from the shared chunks)."""
    bytes_uploaded: int = 0
    """Bytes uploaded to the relay's staging bucket (0 without a relay).  In a report of
    `targets`, the bytes that target's send uploaded itself (a chunk is uploaded by the first
    send that stages it and reused by the others): they add up to the fan-out's."""
    bytes_reused: int = 0
    """Bytes the receiver took from a snapshot it held already (a delta base, see
    ``docs/delta.md``) instead of receiving them; `bytes_sent` counts only what crossed the
    network: chunk data plus the delta map and recipe."""
    bytes_fetched: int = 0
    """Bytes the receiver fetched from the relay's staging bucket (0 without a relay), block
    maps included; what its base held it did not fetch (`bytes_reused`).  Known for receivers
    that say so in their answers (this version's); a fan-out's is the sum of its targets'."""
    targets: tuple[TransferReport, ...] = ()
    """With several targets (`ship` given a list), one report per target, in order; empty
    for a `ship` to one target given as a string."""

    @property
    def throughput(self) -> float:
        """Bytes per second of snapshot data this call sent: neither re-sent bytes nor the
        bytes a resumed transfer found already at the receiver count."""
        sent = self.size - self.bytes_skipped
        return sent / self.elapsed if self.elapsed > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report, throughput included."""
        return {**asdict(self), "throughput": self.throughput}
