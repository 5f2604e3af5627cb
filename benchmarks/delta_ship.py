"""Real `ship` runs for ``bench_delta.py --ship``: a delta against a full transfer of the same
content, side by side, interleaved rounds, medians (see ``bench_delta.py``'s docstring).

Cases (``--ship-scale`` GiB for the page file; the CDC case is a quarter of it, 256 MiB at 1.0):

- page file, 1% of its 4 KiB pages rewritten at random, ``delta="blocks"``: in process (an
  explicit `LoopbackNetwork`, no link) and over the simulated 10 ms / 1 Gbit/s link;
- the same over the link with the receiver's map not kept (its first offer for that base reads it);
- the same over the link with the store's ``prefill`` off (the base copied only at install);
- the same over the link, one changed range a request (a receiver that does not take several
  ranges a request, as one older than ``docs/delta.md``'s "Many ranges a request" would be);
- no change at all, over the link;
- 100 bytes inserted near the start, ``delta="cdc"``, over the link.

The target folder holds the base under the snapshot's name, copied afresh before every run; its
kept map (``.fstransport/maps``) is made before the timed run, as the receiver would have made it
at its first offer of that base, except in the "not kept" case.  Also timed in the same rounds,
to tell where a delta's time goes: the parts of the delta alone (the receiver's offer from its
kept map, the sender's map of its source, planning, assembly, and the kernel's cost of writing a
new file of the snapshot's size, which no receiver without reflinks avoids), and per run the CPU
seconds of this process (and how many of them were spent in the kernel) and the machine's idle
core-seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness import MiB, machine_idle_cpu, make_data

from fstransport import TransferOptions, ship
from fstransport.checksum import chunk_crc
from fstransport.delta.cache import kept_map
from fstransport.delta.local import assemble_local, map_file
from fstransport.delta.source_map import plan_against_sketch, sketch_source
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.network.base import Network
from fstransport.network.faults import FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork
from fstransport.protocol.delta import DeltaMap, MapBuilder, Recipe, new_key, plan_recipe
from fstransport.receiver import Receiver
from fstransport.storage.source import PreadSource
from fstransport.storage.store import FsspecSnapshotStore

RTT = 0.010
LINK = 1e9 / 8  # bytes per second


@dataclass(frozen=True)
class ShipCase:
    name: str
    files: str  # which base/new pair
    mode: str
    link: bool
    keep: bool = True
    one_range: bool = False  # the receiver's answers never say ``extents`` (an older one)
    prefill: bool = True  # the receiver copies its base while the sender plans (a store option)
    goal_bytes: float | None = None
    goal_time: float | None = None


class OneRange:
    """A network whose receiver never takes several ranges a request (its answers say no)."""

    carries_delta = True

    def __init__(self, inner: Network) -> None:
        self.inner = inner

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        return replace(await self.inner.install_snapshot(req, option), extents=False)


@dataclass
class Run:
    seconds: float
    cpu: float
    kernel: float  # of ``cpu``, the seconds this process spent in the kernel
    idle: float
    sent: int
    reused: int


def _pages(base: bytes, fraction: float, seed: int) -> bytes:
    rng = random.Random(seed)
    new = bytearray(base)
    for page in rng.sample(range(len(base) // 4096), max(1, int(len(base) // 4096 * fraction))):
        new[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(new)


def _write_pairs(folder: Path, size: int, seed: int) -> dict[str, tuple[Path, Path, int]]:
    pairs: dict[str, tuple[Path, Path, int]] = {}
    base = make_data(size, seed)
    (folder / "pages.base").write_bytes(base)
    new = _pages(base, 0.01, seed + 1)
    (folder / "pages.new").write_bytes(new)
    pairs["pages"] = (folder / "pages.base", folder / "pages.new", chunk_crc(new))
    pairs["same"] = (folder / "pages.base", folder / "pages.base", chunk_crc(base))
    del base, new
    small = make_data(size // 4, seed + 3)
    (folder / "cdc.base").write_bytes(small)
    grown = small[:4096] + random.Random(1).randbytes(100) + small[4096:]
    (folder / "cdc.new").write_bytes(grown)
    pairs["cdc"] = (folder / "cdc.base", folder / "cdc.new", chunk_crc(grown))
    return pairs


async def _one(
    folder: Path, pair: tuple[Path, Path, int], case: ShipCase, delta: bool, *, kept: bool
) -> Run:
    base, new, want = pair
    target = folder / "target"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    shutil.copyfile(base, target / "snap.bin")
    if kept and delta and case.keep:  # as if the receiver had offered this base before
        kept_map(str(target), str(target / "snap.bin"), case.mode, key=new_key())
    store = FsspecSnapshotStore(str(target), prefill=case.prefill)
    # An explicit loopback network even in process: ship() without one sends in full (the
    # rule in docs/delta.md), and this row measures what a delta would cost there.
    network: Network = LoopbackNetwork(Receiver(store))
    if case.one_range:
        network = OneRange(network)
    if case.link:
        network = FaultyNetwork(network, latency=RTT / 2, bandwidth=LINK)
    options = TransferOptions(delta=case.mode if delta else "off")
    idle, cpu, started = machine_idle_cpu(), os.times(), time.perf_counter()
    report = await ship(str(new), str(target / "snap.bin"), options=options, network=network)
    ended = os.times()
    run = Run(
        time.perf_counter() - started,
        ended.user + ended.system - cpu.user - cpu.system,
        ended.system - cpu.system,
        machine_idle_cpu() - idle,
        report.bytes_sent,
        report.bytes_reused,
    )
    await store.close()
    if chunk_crc((target / "snap.bin").read_bytes()) != want:
        raise AssertionError(f"{case.name}: the result differs from the new content")
    return run


def _parts(folder: Path, pair: tuple[Path, Path, int], times: dict[str, list[float]]) -> None:
    """The delta's parts alone, for the page file (blocks), timed once per round."""
    base, new, _ = pair
    target = folder / "parts"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    shutil.copyfile(base, target / "base.bin")
    kept_map(str(target), str(target / "base.bin"), "blocks", key=new_key())
    key = new_key()
    steps: list[tuple[str, float]] = []
    at = time.perf_counter()
    base_map = kept_map(str(target), str(target / "base.bin"), "blocks", key=key)
    steps.append(("receiver: offer from its kept map (derive tags)", time.perf_counter() - at))
    at = time.perf_counter()
    map_file(str(base), "blocks", key=key)
    steps.append(("receiver: map of the base, not kept (both levels)", time.perf_counter() - at))
    at = time.perf_counter()
    _one_level(base, key)
    steps.append(("receiver: the same, one level (before)", time.perf_counter() - at))
    at = time.perf_counter()
    recipe = asyncio.run(_sender(new, base_map))
    steps.append(("sender: map of its source and plan (two levels)", time.perf_counter() - at))
    at = time.perf_counter()
    one_level = plan_recipe(base_map, _one_level(new, key))
    steps.append(("sender: the same, one level (before)", time.perf_counter() - at))
    if one_level != recipe:
        raise AssertionError("two levels planned another recipe than one level")
    shutil.copyfile(new, target / "new.bin")
    at = time.perf_counter()
    assemble_local(recipe, str(target / "base.bin"), str(target / "new.bin"))
    steps.append(("receiver: assembly (copy_file_range + CRC32C read)", time.perf_counter() - at))
    at = time.perf_counter()
    _copy_into_new_file(base, target / "fresh.bin")
    fresh = "kernel: the base copied into a new file (copy_file_range alone)"
    steps.append((fresh, time.perf_counter() - at))
    for name, seconds in steps:
        times.setdefault(name, []).append(seconds)
    shutil.rmtree(target, ignore_errors=True)


def _copy_into_new_file(source: Path, target: Path) -> None:
    """What a receiver without reflinks cannot avoid: writing a new file of the snapshot's size.

    The assembly part above overwrites a file that already holds the new content (its page
    cache is in place); this one writes pages the kernel must allocate, as the prefill does.
    """
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        done = 0
        while done < size:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), 8 * MiB, done, done)
            if copied == 0:
                raise AssertionError(f"{source} ended at {done} of {size} bytes")
            done += copied


def _one_level(path: Path, key: bytes) -> DeltaMap:
    """A block map without its second level (as every map was before it), read in 8 MiB."""
    builder = MapBuilder("blocks", key=key, block_size=4096)
    buffer = bytearray(8 * MiB)
    with path.open("rb", buffering=0) as fh:
        while got := fh.readinto(buffer):
            builder.update(memoryview(buffer)[:got])
    return builder.finish()


async def _sender(path: Path, base_map: DeltaMap) -> Recipe:
    """The sender's side after the offer: the sketch of its source, then its blocks inside the
    super-blocks that differ, and the plan."""
    source = await PreadSource.open(str(path))
    try:
        sketch = await sketch_source(
            source, key=base_map.key, block_size=base_map.block_size, piece=8 * MiB
        )
        return await plan_against_sketch(source, base_map, sketch, 8 * MiB)
    finally:
        await source.close()


def med(runs: list[Run], name: str) -> float:
    return float(statistics.median(getattr(r, name) for r in runs))


def ship_rounds(size: int, rounds: int, seed: int) -> list[str]:
    """Markdown lines: the cases' table, then the parts' table."""
    cases = [
        ShipCase("page file, 1% of 4 KiB pages, in process", "pages", "blocks", False),
        ShipCase("page file, 1% of 4 KiB pages, 10 ms / 1 Gbit/s", "pages", "blocks", True,
                 goal_bytes=0.02, goal_time=0.15),
        ShipCase("same, receiver's map not kept", "pages", "blocks", True, keep=False),
        ShipCase("same, no prefill (the base copied at install)", "pages", "blocks", True,
                 prefill=False),
        ShipCase("same, one range a request (before #15's extents)", "pages", "blocks", True,
                 one_range=True),
        ShipCase("no change, 10 ms / 1 Gbit/s", "same", "blocks", True, goal_bytes=0.005,
                 goal_time=1.01),
        ShipCase("100 bytes inserted, cdc, 10 ms / 1 Gbit/s", "cdc", "cdc", True, goal_bytes=0.05),
    ]  # fmt: skip
    runs: dict[tuple[str, bool], list[Run]] = {
        (c.name, d): [] for c in cases for d in (False, True)
    }
    parts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-delta-ship-") as tmp:
        folder = Path(tmp)
        pairs = _write_pairs(folder, size, seed)
        for _ in range(rounds):
            for case in cases:
                order = [False, True]
                random.shuffle(order)
                for delta in order:
                    run = asyncio.run(_one(folder, pairs[case.files], case, delta, kept=True))
                    runs[(case.name, delta)].append(run)
            _parts(folder, pairs["pages"], parts)
        sizes = {name: pair[1].stat().st_size for name, pair in pairs.items()}
    lines = [
        "| case | size | full: sent | full: time | delta: sent | delta: reused | delta: time "
        "| time delta/full | goal (bytes; time) | delta CPU s | of which kernel | idle core-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for case in cases:
        full, fast = runs[(case.name, False)], runs[(case.name, True)]
        total = sizes[case.files]
        ratio = med(fast, "seconds") / med(full, "seconds")
        sent = med(fast, "sent") / total
        goals = []
        if case.goal_bytes is not None:
            goals.append(
                f"≤ {100 * case.goal_bytes:.1f}%: {'yes' if sent <= case.goal_bytes else 'NO'}"
            )
        if case.goal_time is not None:
            goals.append(
                f"≤ {100 * case.goal_time:.0f}%: {'yes' if ratio <= case.goal_time else 'NO'}"
            )
        lines.append(
            f"| {case.name} | {total / MiB:.0f} MiB | {med(full, 'sent') / MiB:.1f} MiB "
            f"| {med(full, 'seconds'):.2f} s "
            f"| {med(fast, 'sent') / MiB:.2f} MiB ({100 * sent:.2f}%) "
            f"| {med(fast, 'reused') / MiB:.0f} MiB | {med(fast, 'seconds'):.2f} s "
            f"| {100 * ratio:.0f}% "
            f"| {'; '.join(goals) or '—'} | {med(fast, 'cpu'):.2f} "
            f"| {med(fast, 'kernel'):.2f} | {med(fast, 'idle'):.2f} |"
        )
    lines += [
        "",
        f"Parts of the page-file delta ({size / MiB:.0f} MiB), alone, median of {rounds}:",
        "",
    ]
    lines += ["| part | seconds |", "|---|---:|"]
    lines += [f"| {name} | {statistics.median(t):.2f} |" for name, t in parts.items()]
    return lines
