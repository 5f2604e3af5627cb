"""`run_bench`: one checked, timed `ship()` per setting of a `BenchPlan`, in shuffled rounds."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from fstransport.bench.endpoints import Endpoints, endpoints, remove, write_source
from fstransport.bench.memory import peak_memory
from fstransport.bench.plan import BenchCell, BenchError, BenchPlan, BenchResult, KiB, MiB
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.network.faults import FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import TransferOptions
from fstransport.receiver import Receiver
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import TransferReport, ship
from fstransport.units import format_size


async def _copy(
    plan: BenchPlan, ends: Endpoints, source: str, options: TransferOptions
) -> tuple[TransferReport, str]:
    """One copy of the source through `ship()`; returns (report, target url)."""
    target = ends.url(plan.target, f"target-{options.chunk_size}-{options.max_in_flight}.bin")
    target_options = ends.options(plan.target)
    source_options = ends.options(plan.source)
    if not plan.simulated_link:
        report = await ship(
            source,
            target,
            options=options,
            source_options=source_options,
            target_options=target_options,
        )
        return report, target
    folder, _, _ = target.rpartition("/")
    async with FsspecSnapshotStore(folder, **target_options) as store:
        # Latency and bandwidth never alter a request: the receiver may trust the chunk CRCs as
        # it does in-process, so the link is the only difference from the copy above.
        inner = LoopbackNetwork(Receiver(store), trust_checksums=True)
        network = FaultyNetwork(inner, latency=plan.latency / 2, bandwidth=plan.bandwidth)
        try:
            report = await ship(
                source, target, options=options, network=network, source_options=source_options
            )
        except BaseException:
            # ship() with a network leaves the receiver's side to the receiver: this one's
            # partial data (an S3 multipart upload, say) goes with the failed copy.
            with contextlib.suppress(Exception):
                await store.abort(target.rpartition("/")[2])
            raise
    return report, target


def _check(report: TransferReport, size: int, checksum: str) -> None:
    if report.size != size or report.checksum != checksum:
        raise BenchError(
            f"the copy to {report.target} came out wrong: {report.size} bytes, "
            f"{report.checksum} (expected {size} bytes, {checksum})"
        )


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "argv": sys.argv,
    }


def _generate(size: int, seed: int) -> bytes:
    """`size` pseudo-random bytes (in 16 MiB pieces: ``randbytes`` takes at most 256 MiB)."""
    rng = random.Random(seed)
    step = 16 * MiB
    return b"".join(rng.randbytes(min(step, size - at)) for at in range(0, size, step))


Progress = Callable[[int, int, BenchCell, float], None]


async def run_bench(plan: BenchPlan, progress: Progress | None = None) -> BenchResult:
    """Run the sweep in `plan`; `progress(done, total, cell, seconds)` after each copy.

    Each round runs every cell once, in a shuffled order (so that a disturbance on a shared
    machine spreads over the settings instead of hitting one), after one uncounted warm-up copy
    (the first touch of fresh memory is slow).  Only ``ship()`` is timed; the copy is then
    checked and removed.  Raises `BenchError` if a copy is wrong, `ConfigurationError` or
    `StorageError` if an endpoint is unusable.
    """
    started = time.perf_counter()
    size = plan.snapshot_size
    data = _generate(size, plan.seed)
    checksum = format_checksum(chunk_crc(data))
    cells = [BenchCell(c, w, size) for c, w in plan.cells()]
    notes = []
    if any(chunk_size >= size for chunk_size in plan.chunk_sizes):
        notes.append(
            f"chunk sizes of {format_size(size)} and more are one chunk: only the smallest ran, "
            "at window 1"
        )
    order = random.Random(plan.seed)
    async with endpoints(plan) as ends:
        source = await write_source(ends, data)
        del data
        warmup = TransferOptions(chunk_size=min(8 * MiB, max(cells[0].chunk_size, 64 * KiB)))
        report, target = await _copy(plan, ends, source, warmup)
        _check(report, size, checksum)
        await remove(target, ends)
        total, done = len(cells) * plan.rounds, 0
        for _ in range(plan.rounds):
            for cell in order.sample(cells, len(cells)):
                options = TransferOptions(chunk_size=cell.chunk_size, max_in_flight=cell.window)
                with peak_memory(cell.peak_memory):
                    began = time.perf_counter()
                    report, target = await _copy(plan, ends, source, options)
                    seconds = time.perf_counter() - began
                _check(report, size, checksum)
                await remove(target, ends)
                cell.seconds.append(seconds)
                done += 1
                if progress is not None:
                    progress(done, total, cell, seconds)
    if not any(c.peak_memory for c in cells):
        notes.append("peak memory needs Linux /proc/self/clear_refs; not measured here")
    if plan.target == "memory":
        notes.append("peak memory includes the memory:// copy itself")
    return BenchResult(plan, cells, time.perf_counter() - started, _machine(), notes)
