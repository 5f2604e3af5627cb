"""Property tests: random fault schedules never install wrong bytes, never leave junk behind.

Every example sends one snapshot with `Chunked.send_snapshot` through
``FaultyNetwork(MockNetwork(Tap(Receiver(store))))`` — memory, local (a temporary folder per
example) or S3 (moto) — with random sizes (0 .. 384 KiB, at most 256 chunks, exact multiples of
the chunk size and one byte either side included; up to 12 MiB on S3 with 5 MiB parts), chunk
sizes (1 .. 64 KiB), windows (1 .. 8), faults (drop, duplicate, reorder, corrupt and timeout, each
0 or up to 0.3; sometimes a payload limit), a fast retry policy with 2 .. 16 attempts per chunk,
short ``hard_ttl`` and ``install_timeout``, sometimes an overall ``deadline`` or a
``rate_limit``, sometimes a checksum in the meta (right, or wrong on purpose), and half the time
each delivery cut into `Pieces` at random points, as the HTTP receiver server hands chunks to the
receiver.  The property:

- the transfer ends EITHER normally, with exactly the snapshot's bytes installed under its id
  (read back independently of the store: the memory filesystem's dict, ``Path.read_bytes``,
  boto3) and nothing else left under the store's root (no partial file, no journal, no S3 upload
  or upload state),
- OR with a typed `FstransportError` (`RetryExhausted`; `Timeout` from a ``deadline``;
  ``RemoteError(ChecksumMismatch)`` for a wrong checksum) and nothing installed under the id;
  after ``store.abort(id)`` nothing at all is left (on S3: ``ListMultipartUploads`` is empty);
- never any other exception, never wrong bytes, never a flipped bit acknowledged.

One outcome is ambiguous by nature and allowed: the final chunk reached the receiver, which
verified and installed the snapshot, but the sender never heard of it (every answer lost, or it
stopped waiting while the install ran) and gave up.  The installed bytes must still be exact,
and a final chunk must really have reached the receiver.

A second property sends a clean second transfer through a restarted receiver (a new store
object over the same root) after a first one that met faults: it resumes what it may (journals,
held ranges, S3 upload state) and must install exactly its own bytes, the same snapshot or
other bytes under the same id and size.

Every run is counted in ``TALLY``; the totals (runs, faults injected by type, outcomes, bytes
installed, bytes wrong, property violations) are printed in pytest's terminal summary (no ``-s``
needed) and quoted in docs/reliability.md.

Example counts: the default run keeps every property and every fault kind (an explicit
example turns all of them on at once) with about a third of the examples it had until issue
#12; ``python -m pytest -m slow`` adds the marked runs (`SLOW_EXAMPLES`: the earlier default
counts, 2,000 for memory).  ``FSTRANSPORT_LONG=1`` selects the long profile: the same tests
with 10 to 15 times the examples (several minutes):
``FSTRANSPORT_LONG=1 python -m pytest tests/test_properties.py``.

The tests at the end reproduce, deterministically, the three bugs these properties found
(fixed in commit 1f77352); they stay as regression tests.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from fstransport import (
    ChecksumMismatch,
    Chunked,
    FaultStats,
    FaultyNetwork,
    FsspecSnapshotStore,
    FstransportError,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Pieces,
    Receiver,
    RemoteError,
    ReplicationClosed,
    RetryExhausted,
    RetryPolicy,
    Snapshot,
    SnapshotMeta,
    StorageError,
    Timeout,
    TransferOptions,
    Vote,
    contiguous,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import KiB, MiB
from fstransport.testing.mock import MockNetwork, deliver_to

LONG = os.environ.get("FSTRANSPORT_LONG") == "1"
"""The long profile: ``FSTRANSPORT_LONG=1`` runs every property with about 10x the examples."""

VOTE = Vote(1, 0)
SNAPSHOT_ID = "snap"
_numbers = itertools.count(1)


def profile(default: int, long: int, *, fixtures: bool = False) -> settings:
    """`default` examples normally, `long` ones with ``FSTRANSPORT_LONG=1``; no deadline (a run
    waits on real clocks: backoffs, reorder holds, S3 calls).

    The default profile does not shrink a failing example: failures that depend on timing
    replay unreliably, and shrinking them can take minutes.  The example is reported as drawn
    (every field of `Case` printed), which is enough to reproduce it.  The long profile shrinks.

    `fixtures`: the test uses function-scoped fixtures (the autouse ``clean_memory_fs``, moto's
    bucket) that hypothesis does not reset between examples.  That is intended: every example
    works under a root or key prefix of its own and checks only that.
    """
    suppressed = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if fixtures:
        suppressed.append(HealthCheck.function_scoped_fixture)
    return settings(
        max_examples=long if LONG else default,
        deadline=None,
        suppress_health_check=suppressed,
        print_blob=True,
        report_multiple_bugs=False,  # one failure is enough: keeps a red run short
        phases=list(Phase) if LONG else [p for p in Phase if p is not Phase.shrink],
    )


# -- the tally the docs quote --------------------------------------------------------------------


@dataclass
class Tally:
    """What the property runs against one target did, summed."""

    runs: int = 0
    installed: int = 0
    failed: int = 0
    violating: int = 0
    ambiguous: int = 0
    ambiguous_acknowledged: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    bytes_offered: int = 0
    bytes_installed: int = 0
    bytes_wrong: int = 0
    corrupt_refused: int = 0
    corrupt_accepted: int = 0
    multipart: int = 0
    resumed: int = 0
    resume_bytes: int = 0
    bytes_resent: int = 0
    in_pieces: int = 0
    damaged: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        for f in fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, f.name))
            else:
                setattr(self, f.name, mine + getattr(other, f.name))

    def add_stats(self, stats: FaultStats) -> None:
        for f in fields(stats):
            self.faults[f.name] += getattr(stats, f.name)


TALLY: dict[str, Tally] = {}

FAULT_NAMES = [
    ("dropped_requests", "requests dropped"),
    ("dropped_answers", "answers dropped"),
    ("timeouts", "answers too late"),
    ("duplicated", "requests duplicated"),
    ("reordered", "requests reordered"),
    ("corrupted", "bits flipped"),
    ("too_large", "requests refused as too large"),
]


def summary_lines() -> list[str]:
    """The tally as text: one line per target, then the totals."""
    lines = []
    total = Tally()
    for name, tally in sorted(TALLY.items()):
        total.add(tally)
        lines.append(_line(name, tally))
    lines.append(_line("total", total))
    faults = ", ".join(f"{total.faults[key]} {label}" for key, label in FAULT_NAMES)
    injected = sum(total.faults[key] for key, _ in FAULT_NAMES)
    lines.append(f"faults injected: {injected} ({faults})")
    lines.append(
        f"requests: {total.faults['requests']}, deliveries: {total.faults['delivered']} "
        f"({total.faults['bytes_delivered']} bytes); snapshot bytes offered: "
        f"{total.bytes_offered}, installed: {total.bytes_installed}"
    )
    lines.append(
        f"corrupted deliveries refused by the receiver: {total.corrupt_refused}, "
        f"acknowledged: {total.corrupt_accepted}"
    )
    lines.append(f"runs whose deliveries reached the receiver as Pieces: {total.in_pieces}")
    if total.multipart:
        lines.append(f"S3 snapshots installed by a multipart upload: {total.multipart}")
    failures = ", ".join(f"{n} {kind}" for kind, n in total.failures.most_common()) or "none"
    lines.append(f"failures by kind: {failures}")
    if total.resumed:
        lines.append(
            f"second transfers after an interrupted first: {total.resumed}, "
            f"sent {total.bytes_resent} bytes for {total.resume_bytes} snapshot bytes"
        )
    if total.damaged:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(total.damaged.items()))
        lines.append(
            f"second transfers over partial data damaged in between: "
            f"{sum(total.damaged.values())} ({kinds})"
        )
    violations = "; ".join(f"{n} x {what}" for what, n in total.violations.most_common())
    lines.append(f"runs breaking the property: {total.violating} ({violations or 'no violations'})")
    if STOPPED:
        stopped = ", ".join(sorted(STOPPED))
        lines.append(f"counted up to their first broken run (no replays): {stopped}")
    return lines


def _line(name: str, tally: Tally) -> str:
    return (
        f"{name}: {tally.runs} runs, {tally.installed} installed exactly, {tally.failed} "
        f"ended in a typed error ({tally.ambiguous} of them after the receiver had installed "
        f"the exact bytes, {tally.ambiguous_acknowledged} of those with an acknowledgement "
        f"the sender never got), {tally.bytes_wrong} bytes wrong, "
        f"{tally.violating} runs breaking the property"
    )


class _Summary:
    """A plugin object whose hook prints the tally at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not TALLY:
            return
        terminalreporter.section("fstransport fault-injection properties")
        for line in summary_lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def fault_summary(request: pytest.FixtureRequest) -> None:
    """Prints the tally in pytest's terminal summary (no ``-s`` needed)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("fstransport-properties-summary"):
        manager.register(_Summary(), "fstransport-properties-summary")


# -- what one example does -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One transfer and the faults it meets."""

    size: int
    data_seed: int
    chunk_size: int
    window: int
    seed: int
    drop: float
    duplicate: float
    reorder: float
    corrupt: float
    timeout: float
    payload_limit: int | None
    max_attempts: int
    hard_ttl: float
    install_timeout: float
    checksum: str  # "none", "right" or "wrong"
    deadline: float | None = None
    rate_limit: int | None = None
    pieces: bool = False  # deliveries reach the receiver as `Pieces`, as the HTTP server hands them
    crash_after: int | None = None  # the sender dies after this many answers from the receiver

    def data(self) -> bytes:
        return random.Random(self.data_seed).randbytes(self.size)

    def network(self, tap: Tap) -> FaultyNetwork:
        return FaultyNetwork(
            MockNetwork(tap),
            seed=self.seed,
            drop=self.drop,
            duplicate=self.duplicate,
            reorder=self.reorder,
            corrupt=self.corrupt,
            timeout=self.timeout,
            payload_limit=self.payload_limit,
        )

    def options(self) -> TransferOptions:
        return TransferOptions(
            chunk_size=self.chunk_size,
            max_in_flight=self.window,
            hard_ttl=self.hard_ttl,
            install_timeout=self.install_timeout,
            min_chunk_size=KiB,
            deadline=self.deadline,
            rate_limit=self.rate_limit,
            retry=RetryPolicy(
                initial_backoff=0.0005,
                max_backoff=0.005,
                max_attempts=self.max_attempts,
                give_up_after=10.0,
            ),
        )


probability = st.one_of(st.just(0.0), st.floats(0.0, 0.3))


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    max_size: int = 384 * KiB,
    max_chunks: int | None = 256,
    hard_ttl: tuple[float, float] = (0.02, 0.3),
    install_timeout: tuple[float, float] = (0.005, 1.0),
    corrupt: st.SearchStrategy[float] = probability,
) -> Case:
    """A transfer: its size (any, or a multiple of the chunk size give or take a byte), chunk
    size, window, faults, retry budget, deadlines, pacing and checksum."""
    chunk = draw(
        st.one_of(st.sampled_from([KiB, 4 * KiB, 16 * KiB, 64 * KiB]), st.integers(KiB, 64 * KiB))
    )
    top = max_size if max_chunks is None else min(max_size, chunk * max_chunks)
    size = draw(
        st.one_of(
            st.integers(0, top),
            st.integers(0, top // chunk).map(lambda k: k * chunk),  # exact multiples, 0 too
            st.integers(1, max(1, top // chunk)).map(lambda k: k * chunk + 1),
            st.integers(1, max(1, top // chunk)).map(lambda k: k * chunk - 1),
        )
    )
    limited = draw(st.sampled_from([False, False, True]))
    deadline = draw(st.one_of(st.none(), st.none(), st.none(), st.floats(0.01, 2.0)))
    paced = draw(st.sampled_from([False, False, False, True]))
    # paced: the whole snapshot in 20 .. 100 ms at the rate limit (retries take longer)
    rate_limit = max(1, int(size / draw(st.floats(0.02, 0.1)))) if paced else None
    return Case(
        size=size,
        data_seed=draw(st.integers(0, 2**16)),
        chunk_size=chunk,
        window=draw(st.integers(1, 8)),
        seed=draw(st.integers(0, 2**32 - 1)),
        drop=draw(probability),
        duplicate=draw(probability),
        reorder=draw(probability),
        corrupt=draw(corrupt),
        timeout=draw(probability),
        payload_limit=draw(st.integers(512, 96 * KiB)) if limited else None,
        max_attempts=draw(st.integers(2, 16)),
        hard_ttl=draw(st.floats(*hard_ttl)),
        install_timeout=draw(st.floats(*install_timeout)),
        checksum=draw(st.sampled_from(["none", "none", "right", "right", "wrong"])),
        deadline=deadline,
        rate_limit=rate_limit,
        pieces=draw(st.booleans()),
    )


class Tap:
    """Between the faults and the receiver: a `MockNetwork` handler that delivers to a verifying
    receiver, plus a record of what the receiver did with each delivery (acknowledged final
    chunks, corrupted chunks refused or not)."""

    def __init__(
        self, receiver: Receiver, pieces_seed: int | None = None, crash_after: int | None = None
    ) -> None:
        self.deliver = deliver_to(receiver, interleave=False)  # recomputes every chunk's CRC32C
        self.answers = 0
        self.crash_after = crash_after
        self.crashed = asyncio.Event()  # set when the sender is to die (`Case.crash_after`)
        self.pieces = None if pieces_seed is None else random.Random(pieces_seed)
        self.final_delivered = False
        self.final_acknowledged = False
        self.corrupt_refused = 0
        self.corrupt_accepted = 0

    async def __call__(self, req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        corrupted = req.crc32c is not None and chunk_crc(req.data) != req.crc32c
        if req.done and not corrupted:
            self.final_delivered = True
        if self.pieces is not None:  # cut where a network might have: empty pieces included
            data = contiguous(req.data)
            cuts = [self.pieces.randint(0, len(data)) for _ in range(self.pieces.randint(0, 5))]
            bounds = [0, *sorted(cuts), len(data)]
            req = replace(req, data=Pieces([data[a:b] for a, b in itertools.pairwise(bounds)]))
        try:
            answer = await self.deliver(req)
        except RemoteError as exc:
            if corrupted and isinstance(exc.source, ChecksumMismatch):
                self.corrupt_refused += 1
            raise
        if corrupted:
            self.corrupt_accepted += 1
        self.answers += 1
        if self.crash_after is not None and self.answers >= self.crash_after:
            self.crashed.set()
        if req.done:
            self.final_acknowledged = True
        return answer


@dataclass(frozen=True)
class Damage:
    """What happens to the partial data between a crashed first transfer and the second: a
    byte flipped or the file cut at `at` (a fraction of its length), journal lines claiming
    chunks past the end of the file (with their right CRCs), or — on S3 — the upload state's
    record of a part spoiled (its ETag) or a part claimed that was never uploaded."""

    kind: str  # "none", "flip", "truncate", "overclaim"
    at: float = 0.5


class Target:
    """A store and independent ways to look into it (not through the store)."""

    name: str
    store: FsspecSnapshotStore

    def files(self) -> list[str]:
        """Every file or object under the store's root, relative to it."""
        raise NotImplementedError

    def read(self, relative: str) -> bytes | None:
        """The bytes of the file or object at `relative`, None if there is none."""
        raise NotImplementedError

    def uploads(self) -> list[str]:
        """Incomplete multipart uploads under the root (S3 only)."""
        return []

    def reopen(self) -> FsspecSnapshotStore:
        """A new store object over the same root: what a restarted receiver process has."""
        raise NotImplementedError

    def damage(self, damage: Damage, data: bytes) -> bool:
        """Do `damage` to the partial data of the snapshot (whose bytes are `data`), behind
        the store's back; False if there was nothing to damage."""
        partial = f".fstransport/partial/{SNAPSHOT_ID}"
        journal_text = self.read(f".fstransport/journal/{SNAPSHOT_ID}")
        held = self.read(partial)
        if held is None or journal_text is None or damage.kind == "none":
            return False
        if damage.kind == "overclaim":
            start = len(held)
            lines = [
                f"{offset} {min(4096, len(data) - offset)} "
                f"{chunk_crc(data[offset : offset + 4096])}\n"
                for offset in range(start, len(data), 4096)
            ][:8]
            if not lines:
                return False
            self.write(
                f".fstransport/journal/{SNAPSHOT_ID}", journal_text + "".join(lines).encode()
            )
            return True
        if not held:
            return False
        cut = min(len(held) - 1, int(damage.at * len(held)))
        if damage.kind == "flip":
            spoiled = bytearray(held)
            spoiled[cut] ^= 0x10
            self.write(partial, bytes(spoiled))
        else:
            self.write(partial, held[:cut])
        return True

    def write(self, relative: str, data: bytes) -> None:
        """Replace the file at `relative` (memory and local targets)."""
        raise NotImplementedError


class MemoryTarget(Target):
    name = "memory"

    def __init__(self) -> None:
        self.root = f"/properties-{next(_numbers)}"
        self.fs = fsspec.filesystem("memory")
        self.store = self.reopen()

    def reopen(self) -> FsspecSnapshotStore:
        return FsspecSnapshotStore(f"memory://{self.root}")

    def files(self) -> list[str]:
        prefix = self.root + "/"
        return sorted(k[len(prefix) :] for k in list(self.fs.store) if k.startswith(prefix))

    def read(self, relative: str) -> bytes | None:
        entry = self.fs.store.get(f"{self.root}/{relative}")
        return None if entry is None else bytes(entry.getbuffer())

    def write(self, relative: str, data: bytes) -> None:
        entry = self.fs.store[f"{self.root}/{relative}"]
        entry.seek(0)
        entry.truncate(0)
        entry.write(data)

    def forget(self) -> None:
        for key in [k for k in self.fs.store if k.startswith(self.root + "/")]:
            del self.fs.store[key]
        self.fs.pseudo_dirs[:] = [d for d in self.fs.pseudo_dirs if not d.startswith(self.root)]


class LocalTarget(Target):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = self.reopen()

    def reopen(self) -> FsspecSnapshotStore:
        return FsspecSnapshotStore(str(self.root))

    def files(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def read(self, relative: str) -> bytes | None:
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None

    def write(self, relative: str, data: bytes) -> None:
        # In place (the first receiver still holds the file open, as a crashed one's successor
        # finds it), not by replacing it.
        with (self.root / relative).open("r+b") as f:
            f.write(data)
            f.truncate(len(data))


class S3Target(Target):
    name = "s3"

    def __init__(self, client: Any, bucket: str, options: dict[str, Any]) -> None:
        self.client = client
        self.bucket = bucket
        self.options = options
        self.prefix = f"properties-{next(_numbers)}"
        self.store = self.reopen()

    def reopen(self) -> FsspecSnapshotStore:
        url = f"s3://{self.bucket}/{self.prefix}"
        return FsspecSnapshotStore(url, part_size=5 * MiB, **self.options)

    def files(self) -> list[str]:
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "/"
        )
        for page in pages:
            found.extend(o["Key"][len(self.prefix) + 1 :] for o in page.get("Contents", []))
        return sorted(found)

    def read(self, relative: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{relative}")
        except self.client.exceptions.NoSuchKey:
            return None
        body: bytes = response["Body"].read()
        return body

    def parts(self, relative: str) -> int:
        """How many parts the object at `relative` was uploaded in (1: a single PUT)."""
        etag = self.client.head_object(Bucket=self.bucket, Key=f"{self.prefix}/{relative}")["ETag"]
        _, dash, count = etag.strip('"').partition("-")
        return int(count) if dash else 1

    def uploads(self) -> list[str]:
        listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix + "/")
        return sorted(u["Key"] for u in listing.get("Uploads", []))

    def damage(self, damage: Damage, data: bytes) -> bool:
        """Spoil the upload state: a part's ETag ("flip"), a part dropped from the bucket's
        view by claiming the next one never uploaded ("overclaim" / "truncate")."""
        key = f"{self.prefix}/.fstransport/journal/{SNAPSHOT_ID}"
        raw = self.read(f".fstransport/journal/{SNAPSHOT_ID}")
        if raw is None or damage.kind == "none":
            return False
        state = json.loads(raw)
        parts = state.get("parts") or {}
        if not parts:
            return False
        numbers = sorted(parts, key=int)
        if damage.kind == "flip":
            parts[numbers[int(damage.at * len(numbers)) % len(numbers)]][0] = '"0" '
        else:
            parts[str(int(numbers[-1]) + 1)] = ['"feed"', "AAAAAA==", 0]
        self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(state).encode())
        return True


@dataclass
class Outcome:
    error: FstransportError | None
    stats: FaultStats
    tap: Tap


def checksum_for(data: bytes, kind: str) -> str | None:
    """No checksum, the data's own, or one that does not match it."""
    if kind == "none":
        return None
    crc = chunk_crc(data)
    return format_checksum(crc if kind == "right" else crc ^ 0x5A5A5A5A)


async def transfer(store: FsspecSnapshotStore, case: Case, data: bytes) -> Outcome:
    """One transfer of `data` under `case`'s faults; any error but `FstransportError` escapes."""
    tap = Tap(Receiver(store), case.seed if case.pieces else None, case.crash_after)
    net = case.network(tap)
    meta = SnapshotMeta(SNAPSHOT_ID, checksum=checksum_for(data, case.checksum))
    error: FstransportError | None = None
    crash = tap.crashed.wait() if case.crash_after is not None else None
    try:
        response = await Chunked.send_snapshot(
            net, VOTE, Snapshot(meta, io.BytesIO(data)), crash, case.options()
        )
        assert response.vote == VOTE
    except FstransportError as exc:
        error = exc
    await settle()
    return Outcome(error, net.stats, tap)


async def settle() -> None:
    """Wait for what the transfer left running (S3 part uploads, the second delivery of a
    duplicated request being cancelled), so that the checks see the final state."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    if others:
        _, pending = await asyncio.wait(others, timeout=30)
        assert not pending, f"tasks still running 30 s after the transfer ended: {pending}"


def describe(error: BaseException) -> str:
    """``RetryExhausted(Timeout)``, ``RemoteError(ChecksumMismatch)``, ..."""
    inner: BaseException | None = None
    if isinstance(error, RetryExhausted):
        inner = error.last_error
    elif isinstance(error, RemoteError):
        inner = error.source
    if isinstance(inner, RemoteError):
        inner = inner.source
    name = type(error).__name__
    return f"{name}({type(inner).__name__})" if inner is not None else name


def wrong_bytes(expected: bytes, got: bytes) -> int:
    """Bytes of `got` that differ from `expected`, plus missing or extra ones."""
    if got == expected:
        return 0
    differing = sum(a != b for a, b in zip(expected, got, strict=False))
    return differing + abs(len(expected) - len(got))


async def look(target: Target) -> tuple[list[str], bytes | None, list[str]]:
    """Every file under the root, the installed snapshot's bytes, incomplete uploads."""
    files = await asyncio.to_thread(target.files)
    installed = await asyncio.to_thread(target.read, SNAPSHOT_ID)
    uploads = await asyncio.to_thread(target.uploads)
    note(f"files: {files}; uploads: {uploads}")
    return files, installed, uploads


def judge(
    case: Case, data: bytes, outcome: Outcome, seen: tuple[list[str], bytes | None, list[str]]
) -> tuple[Tally, list[str]]:
    """One finished transfer: its counts, and how it broke the property (empty: it did not)."""
    files, installed, uploads = seen
    tally = Tally(runs=1, bytes_offered=len(data))
    problems = []
    tally.add_stats(outcome.stats)
    tally.in_pieces += case.pieces
    tally.corrupt_refused += outcome.tap.corrupt_refused
    tally.corrupt_accepted += outcome.tap.corrupt_accepted
    if outcome.tap.corrupt_accepted:
        problems.append("a chunk with a flipped bit was acknowledged")
    if installed is not None:
        tally.bytes_installed += len(installed)
        tally.bytes_wrong += wrong_bytes(data, installed)
        if installed != data:
            problems.append("wrong bytes installed")
        if case.checksum == "wrong":
            problems.append("a snapshot not matching its checksum was installed")
    if outcome.error is None:
        tally.installed += installed == data
        if installed is None:
            problems.append("the transfer reported success, but nothing is installed")
        if files != [SNAPSHOT_ID]:
            problems.append(f"files left beside the installed snapshot: {files}")
        if uploads:
            problems.append(f"multipart uploads left after success: {uploads}")
    else:
        kind = describe(outcome.error)
        tally.failed += 1
        tally.failures[kind] += 1
        expected = (
            isinstance(outcome.error, RetryExhausted)
            or (case.checksum == "wrong" and kind == "RemoteError(ChecksumMismatch)")
            or (case.deadline is not None and type(outcome.error) is Timeout)
            or (case.crash_after is not None and type(outcome.error) is ReplicationClosed)
        )
        if not expected:
            note(f"unexpected failure: {outcome.error}")
            problems.append(f"unexpected failure {kind}")
        if installed is not None:
            # The final chunk reached the receiver, which installed the snapshot, and the
            # sender never heard of it (every answer lost, or it gave up waiting while the
            # install ran: an S3 upload completes even when its caller stops waiting).
            # What is there must be exact, and its final chunk must have been delivered.
            tally.ambiguous += 1
            tally.ambiguous_acknowledged += outcome.tap.final_acknowledged
            if not outcome.tap.final_delivered:
                problems.append("installed by a failed transfer whose final chunk never arrived")
    return tally, problems


STOPPED: set[str] = set()
"""Tallies that saw the property broken: hypothesis's replays of the failure while it shrinks
it are not counted, so that the figures are those of distinct runs up to the first failure."""


def record(name: str, tally: Tally, problems: list[str]) -> None:
    """Add one run's `tally` (and the `problems` it showed) to the tally called `name`."""
    if name in STOPPED:
        return
    tally.violations.update(problems)
    tally.violating += bool(problems)
    TALLY.setdefault(name, Tally()).add(tally)
    if problems:
        STOPPED.add(name)


async def check_run(target: Target, case: Case, tally_name: str | None = None) -> Outcome:
    """Run `case` against `target`, check the property, then after a failure ``store.abort``
    and check that nothing but an installed snapshot is left."""
    data = case.data()
    outcome = await transfer(target.store, case, data)
    note(f"outcome: {outcome.error!r}; {outcome.stats}")
    seen = await look(target)
    tally, problems = judge(case, data, outcome, seen)
    installed = seen[1]
    if not problems and isinstance(target, S3Target) and installed is not None:
        tally.multipart += await asyncio.to_thread(target.parts, SNAPSHOT_ID) > 1
    if not problems and outcome.error is not None:
        await target.store.abort(SNAPSHOT_ID)
        files, _, uploads = await look(target)
        if files != ([SNAPSHOT_ID] if installed is not None else []):
            problems.append(f"left behind after a failure and store.abort: {files}")
        if uploads:
            problems.append(f"multipart uploads left after store.abort: {uploads}")
    record(tally_name or target.name, tally, problems)
    assert not problems, "; ".join(problems)
    return outcome


def run(coroutine: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await coroutine()

    return asyncio.run(main())


async def closing(store: FsspecSnapshotStore, work: Awaitable[Any]) -> Any:
    try:
        return await work
    finally:
        await store.close()


# -- memory and local targets --------------------------------------------------------------------


EVERY_FAULT = Case(  # every fault kind at once, delivered in pieces, with a right checksum
    size=200 * KiB + 17,
    data_seed=3,
    chunk_size=8 * KiB,
    window=6,
    seed=3,
    drop=0.1,
    duplicate=0.1,
    reorder=0.1,
    corrupt=0.1,
    timeout=0.1,
    payload_limit=6 * KiB,
    max_attempts=16,
    hard_ttl=0.3,
    install_timeout=1.0,
    checksum="right",
    pieces=True,
)
"""An example each fault-injecting property runs in every run, whatever hypothesis draws."""


@given(cases())
@example(case=EVERY_FAULT)
@profile(default=60, long=2000, fixtures=True)
def test_memory_target_installs_exact_bytes_or_fails_cleanly(case: Case) -> None:
    target = MemoryTarget()
    try:
        run(lambda: closing(target.store, check_run(target, case)))
    finally:
        target.forget()


@given(cases())
@example(case=EVERY_FAULT)
@profile(default=40, long=1200, fixtures=True)
def test_local_target_installs_exact_bytes_or_fails_cleanly(case: Case) -> None:
    with tempfile.TemporaryDirectory(prefix="fstransport-properties-") as folder:
        target = LocalTarget(Path(folder) / "store")
        run(lambda: closing(target.store, check_run(target, case)))


SLOW_EXAMPLES = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
"""The marked runs (``python -m pytest -m slow``; the default run leaves them out): each
fault-injecting property again with the example count it had in the default run until issue #12
(2,000 for memory), whatever ``FSTRANSPORT_LONG`` says."""


@pytest.mark.slow
@given(cases())
@settings(SLOW_EXAMPLES, max_examples=2000)
def test_long_run_memory_target(case: Case) -> None:
    """The memory property with 2,000 examples (several minutes)."""
    test_memory_target_installs_exact_bytes_or_fails_cleanly.hypothesis.inner_test(case)  # type: ignore[attr-defined]


@pytest.mark.slow
@given(cases())
@settings(SLOW_EXAMPLES, max_examples=120)
def test_long_run_local_target(case: Case) -> None:
    test_local_target_installs_exact_bytes_or_fails_cleanly.hypothesis.inner_test(case)  # type: ignore[attr-defined]


def corruption_only(case: Case) -> Case:
    """Bit flips and reordering only (no drops, duplicates or lost answers, so that every
    corrupted delivery is refused exactly once), with generous deadlines and attempts."""
    return replace(
        case,
        drop=0.0,
        duplicate=0.0,
        timeout=0.0,
        payload_limit=None,
        max_attempts=40,
        hard_ttl=10.0,
        install_timeout=10.0,
        deadline=None,
        rate_limit=None,  # 40 paced attempts of one chunk would take seconds
    )


def flipped_bits() -> st.SearchStrategy[Case]:
    return cases(max_chunks=64, corrupt=st.sampled_from([0.5, 1.0])).map(corruption_only)


@given(flipped_bits())
@example(case=corruption_only(replace(EVERY_FAULT, corrupt=0.5)))
@example(case=corruption_only(replace(EVERY_FAULT, corrupt=1.0, size=3 * KiB)))
@profile(default=16, long=400, fixtures=True)
def test_every_flipped_bit_is_caught(case: Case) -> None:
    """Half or all of the requests have one bit flipped: the receiver refuses every one of them
    (a CRC32C catches any single-bit error), and what is installed is exact.  With half, a
    chunk fails 40 times in a row with probability 2**-40: the transfer completes."""
    target = MemoryTarget()
    try:
        outcome: Outcome = run(
            lambda: closing(target.store, check_run(target, case, "memory, corrupt 0.5 or 1.0"))
        )
    finally:
        target.forget()
    assert outcome.tap.corrupt_refused == outcome.stats.corrupted, "a flipped bit went unnoticed"
    if case.corrupt == 1.0 and case.size > 0:
        assert isinstance(outcome.error, RetryExhausted)
        assert outcome.stats.corrupted > 0
    elif case.checksum != "wrong":
        assert outcome.error is None, f"{outcome.error!r}"


@pytest.mark.slow
@given(flipped_bits())
@settings(SLOW_EXAMPLES, max_examples=40)
def test_long_run_flipped_bits(case: Case) -> None:
    test_every_flipped_bit_is_caught.hypothesis.inner_test(case)  # type: ignore[attr-defined]


# -- a second transfer after a failed first: journals, held ranges, stale partial data ----------


@st.composite
def second_attempts(draw: st.DrawFn, *, s3: bool = False) -> tuple[Case, Case, Damage]:
    """A first transfer likely to fail (one to four attempts per chunk), a clean second one
    (another chunk size and window; the same bytes, or other bytes of the same size), and the
    damage done to the partial data in between (none a quarter of the time)."""
    if s3:
        first = draw(s3_cases())
        chunk = st.integers(16 * KiB, 64 * KiB)
    else:
        first = draw(cases(max_size=256 * KiB))
        chunk = st.integers(KiB, 64 * KiB)
    first = replace(first, max_attempts=draw(st.integers(1, 4)))
    second = replace(
        first,
        chunk_size=draw(chunk),
        window=draw(st.integers(1, 8)),
        drop=0.0,
        duplicate=0.0,
        reorder=0.0,
        corrupt=0.0,
        timeout=0.0,
        payload_limit=None,
        max_attempts=8,
        hard_ttl=10.0,
        install_timeout=20.0,
        checksum=draw(st.sampled_from(["none", "right", "right"])),
        deadline=None,
        rate_limit=None,
    )
    if draw(st.sampled_from([False, False, True])):
        second = replace(second, data_seed=first.data_seed + 1)  # other bytes, same size
    # (drawn from the case's seed, not by hypothesis, which favours the first choice)
    chooser = random.Random(first.seed * 7 + first.data_seed)
    kind = chooser.choice(["none", "flip", "truncate", "overclaim"])
    if kind != "none" or chooser.random() < 0.5:  # the first sender crashes midway
        chunks = -(-first.size // first.chunk_size)
        first = replace(first, crash_after=chooser.randint(1, max(1, chunks - 1)))
    return first, second, Damage(kind, chooser.random())


async def check_second_transfer(
    target: Target, first: Case, second: Case, name: str, damage: Damage = Damage("none")
) -> None:
    """`first` against `target` (not aborted), `damage` done to what it left, then `second`
    through a restarted receiver (a new store object over the same root): it resumes what it
    may, and must install exactly its own bytes and leave nothing else behind."""
    data = first.data()
    outcome = await transfer(target.store, first, data)
    note(f"first: {outcome.error!r}; {outcome.stats}")
    tally, problems = judge(first, data, outcome, await look(target))
    record(name, tally, problems)
    assert not problems, "; ".join(problems)
    await asyncio.sleep(0.05)  # the first receiver's journal commits (20 ms after its last chunk)
    damaged = await asyncio.to_thread(target.damage, damage, data)
    note(f"damage: {damage if damaged else 'none (nothing to damage)'}")
    restarted = target.reopen()
    try:
        data = second.data()
        outcome = await transfer(restarted, second, data)
        note(f"second: {outcome.error!r}; {outcome.stats}")
        if not isinstance(target, S3Target):
            await target.store.abort(SNAPSHOT_ID)  # closes the old receiver's files
        seen = await look(target)
    finally:
        await restarted.close()
    tally, problems = judge(second, data, outcome, seen)
    if damaged:
        tally.damaged[damage.kind] += 1
    tally.resumed += 1
    tally.resume_bytes += len(data)
    tally.bytes_resent += outcome.stats.bytes_delivered
    if outcome.error is not None:
        problems.append(f"the clean second transfer failed: {describe(outcome.error)}")
    record(name, tally, problems)
    assert not problems, "; ".join(problems)


@given(kind=st.sampled_from(["memory", "local"]), attempt=second_attempts())
@profile(default=24, long=600, fixtures=True)
def test_a_second_transfer_after_an_interrupted_one_installs_exactly(
    kind: str, attempt: tuple[Case, Case, Damage]
) -> None:
    """The first transfer meets faults and usually gives up, leaving partial data and a journal,
    which are sometimes damaged (a byte flipped, the file cut short, the journal claiming more
    than the file holds); a restarted receiver takes a clean second transfer of the same
    snapshot or of other bytes under the same id and size."""
    first, second, damage = attempt
    with tempfile.TemporaryDirectory(prefix="fstransport-properties-") as folder:
        target = MemoryTarget() if kind == "memory" else LocalTarget(Path(folder) / "store")
        name = f"{kind}, second transfer after a first"
        try:
            run(lambda: check_second_transfer(target, first, second, name, damage))
        finally:
            if isinstance(target, MemoryTarget):
                target.forget()


@pytest.mark.slow
@given(kind=st.sampled_from(["memory", "local"]), attempt=second_attempts())
@settings(SLOW_EXAMPLES, max_examples=60)
def test_long_run_second_transfer(kind: str, attempt: tuple[Case, Case, Damage]) -> None:
    test_a_second_transfer_after_an_interrupted_one_installs_exactly.hypothesis.inner_test(  # type: ignore[attr-defined]
        kind, attempt
    )


# -- S3 (moto) ----------------------------------------------------------------------------------


def s3_cases() -> st.SearchStrategy[Case]:
    """Up to 12 MiB (at most 700 chunks), so that 5 MiB parts make single PUTs and multipart
    uploads of 2 or 3 parts; deadlines long enough for moto most of the time."""
    return cases(
        max_size=12 * MiB, max_chunks=700, hard_ttl=(0.05, 1.0), install_timeout=(0.2, 5.0)
    )


@given(case=s3_cases())
@example(  # three parts, the last one short, through every fault
    case=Case(
        size=10 * MiB + 12_345,
        data_seed=1,
        chunk_size=64 * KiB,
        window=8,
        seed=1,
        drop=0.05,
        duplicate=0.05,
        reorder=0.05,
        corrupt=0.05,
        timeout=0.05,
        payload_limit=48 * KiB,
        max_attempts=12,
        hard_ttl=1.0,
        install_timeout=5.0,
        checksum="right",
    )
)
@example(  # exactly two parts, a multiple of the chunk size, one chunk in flight
    case=Case(
        size=10 * MiB,
        data_seed=2,
        chunk_size=32 * KiB,
        window=1,
        seed=2,
        drop=0.1,
        duplicate=0.0,
        reorder=0.0,
        corrupt=0.1,
        timeout=0.1,
        payload_limit=None,
        max_attempts=12,
        hard_ttl=1.0,
        install_timeout=5.0,
        checksum="none",
    )
)
@profile(default=4, long=80, fixtures=True)
def test_s3_target_installs_exact_bytes_or_fails_cleanly(
    case: Case, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """After success no multipart upload is left; after a failure ``store.abort`` leaves none
    either (it lists and aborts every upload to the key)."""
    target = S3Target(s3_client, s3_bucket, s3_storage_options)
    run(lambda: closing(target.store, check_run(target, case)))


@pytest.mark.slow
@given(case=s3_cases())
@settings(SLOW_EXAMPLES, max_examples=8)
def test_long_run_s3_target(
    case: Case, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    test_s3_target_installs_exact_bytes_or_fails_cleanly.hypothesis.inner_test(  # type: ignore[attr-defined]
        case=case, s3_bucket=s3_bucket, s3_storage_options=s3_storage_options, s3_client=s3_client
    )


@given(attempt=second_attempts(s3=True))
@profile(default=4, long=60, fixtures=True)
def test_s3_second_transfer_after_an_interrupted_one_installs_exactly(
    attempt: tuple[Case, Case, Damage],
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    """As for memory and local: the restarted receiver finds the upload state object and the
    parts the first transfer uploaded (sometimes spoiled in between: a part's ETag, a part
    claimed that was never uploaded); the result is exact, with no upload or state left."""
    first, second, damage = attempt
    target = S3Target(s3_client, s3_bucket, s3_storage_options)
    name = "s3, second transfer after a first"
    run(lambda: closing(target.store, check_second_transfer(target, first, second, name, damage)))


# -- regression tests for the bugs the properties found (fixed in 1f77352) ----------------------
#
# 1. A final chunk acknowledged although nothing was installed.


class InstallFailsOnce(FsspecSnapshotStore):
    """A store whose first install fails, as on a full disk or a lost connection."""

    failed = False

    async def install(self, snapshot: Snapshot) -> None:
        if not self.failed:
            self.failed = True
            path = self.path(snapshot.meta.snapshot_id)
            raise StorageError(path, "install", OSError(28, "No space left on device"))
        await super().install(snapshot)


class SlowInstall(FsspecSnapshotStore):
    """A store whose install takes longer than the sender's ``install_timeout``."""

    async def install(self, snapshot: Snapshot) -> None:
        await asyncio.sleep(0.1)
        await super().install(snapshot)


@pytest.mark.parametrize("store_class", [InstallFailsOnce, SlowInstall])
async def test_a_final_chunk_whose_install_did_not_happen_is_not_acknowledged(
    store_class: type[FsspecSnapshotStore],
) -> None:
    """The receiver used to record a snapshot as installed (to acknowledge a repeated final
    chunk whose answer was lost) before ``store.install`` had run.  When that install failed, or
    the request was cancelled while it ran (the sender's ``install_timeout``; `LoopbackNetwork`
    cancels the receiver's work with it, as servers that cancel handlers on disconnect do), the
    sender's retry of the final chunk was acknowledged as "already installed": the transfer
    reported success and nothing was installed (the finished file stayed in
    ``.fstransport/partial``).  A sender must see the snapshot installed, or get an error."""
    store = store_class("memory://install")
    data = random.Random(1).randbytes(40 * KiB)
    options = TransferOptions(
        chunk_size=8 * KiB,
        install_timeout=0.02,
        retry=RetryPolicy(initial_backoff=0.0005, max_backoff=0.005, max_attempts=4),
    )
    snapshot = Snapshot(SnapshotMeta(SNAPSHOT_ID), io.BytesIO(data))
    succeeded = True
    try:
        await Chunked.send_snapshot(LoopbackNetwork(Receiver(store)), VOTE, snapshot, None, options)
    except FstransportError:
        succeeded = False
    installed = fsspec.filesystem("memory").store.get(f"/install/{SNAPSHOT_ID}")
    if succeeded:
        assert installed is not None, "the transfer reported success, but nothing is installed"
        assert bytes(installed.getbuffer()) == data
    else:
        assert installed is None


# 2. (second-transfer property) A stale partial of other bytes failed a clean transfer.


async def test_a_stale_partial_of_other_bytes_does_not_fail_a_clean_transfer() -> None:
    """A transfer without a checksum leaves partial data whose journal names no checksum.  A
    restarted receiver resumes it for *any* snapshot of the same id and size that comes with a
    checksum (`journal.matches` lets a recorded ``None`` match every checksum), answers that it
    holds those bytes, and the sender skips them.  The whole-snapshot check then used to end the
    transfer with a fatal ``RemoteError(ChecksumMismatch)`` — "your data does not match its
    checksum" — although data, checksum and network were all right.  Nothing wrong was ever
    installed (the whole CRC32C caught it); but a clean transfer must not fail: the receiver
    discards such a partial and the sender starts over."""
    size = 64 * KiB
    old, new = random.Random(1).randbytes(size), random.Random(2).randbytes(size)
    first = Receiver(FsspecSnapshotStore("memory://stale"))
    chunk = old[: 16 * KiB]
    await first.handle(  # an earlier sender got this far, without a checksum, then died
        InstallSnapshotRequest(VOTE, SnapshotMeta(SNAPSHOT_ID, size=size), 0, chunk, False)
    )
    restarted = Receiver(FsspecSnapshotStore("memory://stale"))
    meta = SnapshotMeta(SNAPSHOT_ID, checksum=format_checksum(chunk_crc(new)))
    options = TransferOptions(chunk_size=16 * KiB)
    net = LoopbackNetwork(restarted)
    await Chunked.send_snapshot(net, VOTE, Snapshot(meta, io.BytesIO(new)), None, options)
    assert fsspec.filesystem("memory").cat_file(f"/stale/{SNAPSHOT_ID}") == new


# 3. (S3 property) An upload completed while its request was cut off.


class LateCompletionAnswers:
    """An S3 client whose CompleteMultipartUpload answers late: the object already exists when
    the request is given up on (a slow network, or a big object S3 takes seconds to assemble)."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    async def _call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = await self._fs._call_s3(method, *args, **kwargs)
        if method == "complete_multipart_upload":
            await asyncio.sleep(5)
        return result


class LateCompletionStore(FsspecSnapshotStore):
    def __init__(self, root_url: str, **options: Any) -> None:
        super().__init__(root_url, **options)
        backend: Any = self.backend
        client = backend.client

        async def late_client() -> Any:
            return LateCompletionAnswers(await client())

        backend.client = late_client


async def test_an_s3_upload_completed_while_its_request_was_cut_off_is_not_a_fatal_error(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """The final chunk's request is cancelled (``install_timeout``) while S3 completes the
    upload.  The receiver then aborts the upload to clean up and S3 answers NoSuchUpload (it is
    complete).  `MultipartSink.abort` used to raise that as ``StorageError``, replacing the
    request's cancellation: the sender got a non-retryable ``RemoteError(StorageError("cannot
    abort upload ... The specified upload does not exist"))`` and stopped at once, although the
    snapshot was installed, whole, with the upload's state object left beside it.  Expected:
    the sender sees a timeout and completes on retry or gives up with `RetryExhausted`; nothing
    but the snapshot is left once it is done (or aborted)."""
    store = LateCompletionStore(f"s3://{s3_bucket}/late", part_size=5 * MiB, **s3_storage_options)
    data = random.Random(3).randbytes(11 * MiB)
    options = TransferOptions(
        chunk_size=MiB,
        install_timeout=1.0,
        retry=RetryPolicy(initial_backoff=0.0005, max_backoff=0.005, max_attempts=3),
    )
    snapshot = Snapshot(SnapshotMeta(SNAPSHOT_ID), io.BytesIO(data))
    error: FstransportError | None = None
    try:
        try:
            await Chunked.send_snapshot(
                LoopbackNetwork(Receiver(store)), VOTE, snapshot, None, options
            )
        except FstransportError as exc:
            error = exc
        await settle()
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"late/{SNAPSHOT_ID}")["Body"].read()
        assert body == data  # the upload did complete
        assert error is None or isinstance(error, RetryExhausted), f"{error!r}"
        await store.abort(SNAPSHOT_ID)
    finally:
        await store.close()
    listing = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="late/").get("Contents", [])
    assert sorted(o["Key"] for o in listing) == [f"late/{SNAPSHOT_ID}"]
