"""Knobs of a transfer: chunk size, window, deadlines and the retry policy.

The defaults were chosen by measurement on a 2-core machine (see ``docs/benchmarks.md``):
8 MiB chunks with 4 in flight keep memory, local and S3 targets busy while the window's memory
stays at 32 MiB.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fstransport.errors import ConfigurationError

__all__ = [
    "DEFAULT_RANGED_THRESHOLD",
    "DEFAULT_READ_PART_SIZE",
    "DEFAULT_READ_STREAMS",
    "KiB",
    "MiB",
    "RetryPolicy",
    "TransferOptions",
]

KiB = 1024
MiB = 1024 * KiB
MAX_COPY_OBJECT = 5 * 1024 * MiB
"""The largest object S3 copies with one ``CopyObject`` request (5 GiB)."""

# How an S3 source is read (`S3RangedSource`, ``docs/s3.md``).  Here rather than in the S3
# backend so that the sender and `storage.source` take them without importing any backend.
DEFAULT_READ_STREAMS = 4
"""Ranged GETs in flight at once for a large S3 source (as rclone's download streams)."""
DEFAULT_READ_PART_SIZE = 8 * MiB
"""Bytes per ranged GET: the default chunk size, so that a chunk is one part, without a copy."""
DEFAULT_RANGED_THRESHOLD = 256 * MiB
"""Objects of at least this many bytes are read with ranged GETs; smaller ones with one GET."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed chunk is tried again.

    A chunk that failed ``n`` times waits ``min(max_backoff, initial_backoff * multiplier**(n-1))``
    seconds, shortened by up to ``jitter`` (a fraction) at random, before it is sent again.
    After ``max_attempts`` failed attempts of one chunk, or ``give_up_after`` seconds without
    any chunk being acknowledged, the transfer ends in `RetryExhausted`.
    With the defaults an unreachable peer is given up on after 8 attempts, 3 to 5 seconds.
    """

    max_attempts: int = 8
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    give_up_after: float = 25.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError("backoff times must not be negative")
        if self.multiplier < 1:
            raise ConfigurationError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within [0, 1], got {self.jitter}")
        if self.give_up_after <= 0:
            raise ConfigurationError(f"give_up_after must be > 0, got {self.give_up_after}")

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt of a chunk that failed `failures` times."""
        if failures <= 0:
            return 0.0
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        draw = (rng or random).random()
        return base * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class TransferOptions:
    """Options of one transfer, shared by the sender and handed to the network adapter.

    - `chunk_size`: bytes per request (the last chunk may be shorter).
    - `max_in_flight`: chunks sent and not yet answered; 1 reproduces openraft's serial order.
    - `hard_ttl`: seconds one chunk may take before it counts as lost (openraft's ``hard_ttl``).
    - `install_timeout`: seconds the final chunk may take; it includes the receiver's verification
      and install, so it is longer than `hard_ttl`.
    - `min_chunk_size`: the floor `PayloadTooLarge` halves the chunk down to (a peer that names
      its limit gets chunks of that limit, however small).
    - `retry`: the `RetryPolicy`.
    - `deadline`: seconds the whole transfer may take (None: no limit); then `Timeout`.
    - `rate_limit`: bytes per second the sender sends at most, on average (None: no limit).
    - `map_files`: `ship()` reads a local source file through memory maps (no copy on the way
      to the receiver).  The file must then not be truncated in place while it is shipped (a
      truncated mapping ends the process with ``SIGBUS``; replacing the file by rename is
      safe); False reads it with ``os.pread`` instead, about a quarter slower.
    - `read_streams`, `read_part_size`, `ranged_read_threshold`: `ship()` reads an S3 source
      of at least `ranged_read_threshold` bytes with `read_streams` ranged GETs of
      `read_part_size` bytes at once (memory: `read_streams` x `read_part_size`); smaller
      objects, or `read_streams=1`, with one streaming GET (see ``docs/s3.md``).
    - `copy_cutoff`: a server-side S3 -> S3 copy (`ship(server_side=True)`) of at most this
      many bytes is one ``CopyObject`` request; a larger one is assembled from ``UploadPartCopy``
      parts (``docs/s3.md``).  At most 5 GiB, S3's limit for one ``CopyObject`` (the default).
    - `delta`: how a file snapshot is compared with what the receiver holds already, so that
      only what differs is sent (``docs/delta.md``): ``"blocks"`` (fixed 4 KiB blocks, for
      page files), ``"cdc"`` (content-defined chunks, for content that shifts) or ``"off"``.
    """

    chunk_size: int = 8 * MiB
    max_in_flight: int = 4
    hard_ttl: float = 10.0
    install_timeout: float = 60.0
    min_chunk_size: int = 4 * KiB
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    deadline: float | None = None
    rate_limit: int | None = None
    map_files: bool = True
    read_streams: int = DEFAULT_READ_STREAMS
    read_part_size: int = DEFAULT_READ_PART_SIZE
    ranged_read_threshold: int = DEFAULT_RANGED_THRESHOLD
    delta: str = "blocks"
    copy_cutoff: int = MAX_COPY_OBJECT

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be >= 1 byte, got {self.chunk_size}")
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.hard_ttl <= 0 or self.install_timeout <= 0:
            raise ConfigurationError("hard_ttl and install_timeout must be > 0 seconds")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigurationError(f"deadline must be > 0 seconds, got {self.deadline}")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ConfigurationError(f"rate_limit must be >= 1 byte/s, got {self.rate_limit}")
        if self.read_streams < 1 or self.read_part_size < 1 or self.ranged_read_threshold < 0:
            raise ConfigurationError(
                "read_streams and read_part_size must be >= 1, ranged_read_threshold >= 0"
            )
        if not 0 <= self.copy_cutoff <= MAX_COPY_OBJECT:
            raise ConfigurationError(
                f"copy_cutoff must be within [0, {MAX_COPY_OBJECT}] (5 GiB, S3's limit for one "
                f"CopyObject), got {self.copy_cutoff}"
            )
        if self.delta not in ("blocks", "cdc", "off"):
            raise ConfigurationError(f"delta must be 'blocks', 'cdc' or 'off', got {self.delta!r}")
        if not 1 <= self.min_chunk_size <= 4 * KiB:
            raise ConfigurationError(
                f"min_chunk_size must be within [1, 4096], got {self.min_chunk_size}"
            )
