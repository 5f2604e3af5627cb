"""Delta transfer (issue 15): what a delta would send, against a full transfer, for the goal
cases, and what its maps cost to compute.

Run from the repository root (needs ``pip install -e .``)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_delta.py [--scale 1.0] [--rounds 3]

For each goal case it builds the base and the new content in memory, makes the receiver's map
of the base and the sender's map of the new content (``fstransport.protocol.delta``), plans the
recipe, and counts the bytes a delta transfer puts on the wire: the encoded map, the encoded
recipe and the changed data (for the S3 case: the bytes uploaded by the part plan of
``fstransport.delta.s3``).  It checks that the recipe rebuilds the new content exactly.  The
link time is a model (10 ms round trip, 1 Gbit/s, the maps' compute time measured here), not a
transfer: the transfer itself is plugged in later.  Map compute times are medians over
``--rounds`` rounds, interleaved between modes, given per GiB.

With ``--relay`` it runs only ``bench_delta_relay.py`` (a page file through a relay on moto,
onto a receiver that holds the base, that holds nothing, and with no block maps staged).

With ``--ship`` it then runs real transfers (``delta_ship.py``): ``ship`` of a page file
(``--ship-scale`` GiB, 1% of its 4 KiB pages changed; no change; and a quarter-size file with 100
bytes inserted, ``delta="cdc"``) onto a local folder that holds the base under the same name, the
delta against ``delta="off"``, interleaved rounds, medians; in process (loopback) and over a
simulated 10 ms / 1 Gbit/s link (`FaultyNetwork` with ``latency`` and ``bandwidth``, as
``bench_link.py``).  Every result is checked against the new content.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from blake3 import blake3
from harness import GiB, MiB, machine_info, make_data

from fstransport.checksum import chunk_crc
from fstransport.delta.s3 import plan_parts
from fstransport.protocol.delta import (
    apply_recipe,
    build_map,
    new_key,
    plan_recipe,
)
from fstransport.protocol.delta_super import SketchBuilder
from fstransport.protocol.delta_tags import derive_tags, tag_multiplier
from fstransport.protocol.delta_wire import encode_map, encode_recipe

from delta_ship import ship_rounds  # isort: skip (a sibling script, as harness)

RTT = 0.010
LINK = 1e9 / 8  # bytes per second


def pages(base: bytes, fraction: float, seed: int, region: tuple[int, int] | None = None) -> bytes:
    rng = random.Random(seed)
    new = bytearray(base)
    lo, hi = region or (0, len(base))
    count = max(1, int((hi - lo) // 4096 * fraction))
    for page in rng.sample(range(lo // 4096, hi // 4096), count):
        new[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(new)


def delta(
    mode: str,
    base: bytes,
    new: bytes,
    base_cuts: tuple[int, ...] = (),
    new_cuts: tuple[int, ...] = (),
) -> dict[str, Any]:
    key = new_key()
    started = time.perf_counter()
    base_map = build_map(mode, base, key=key, segments=base_cuts)
    base_time = time.perf_counter() - started
    started = time.perf_counter()
    source = build_map(
        mode, new, key=key, block_size=base_map.block_size or None, segments=new_cuts
    )
    source_time = time.perf_counter() - started
    recipe = plan_recipe(base_map, source)
    sent = b"".join(new[a:b] for a, b in recipe.sends())
    if apply_recipe(recipe, base, sent) != new:
        sys.exit(f"{mode}: the recipe does not rebuild the new content")
    map_bytes, recipe_bytes = len(encode_map(base_map)), len(encode_recipe(recipe))
    wire = map_bytes + recipe_bytes + recipe.sent
    return {
        "mode": mode,
        "size": len(new),
        "map": map_bytes,
        "recipe": recipe_bytes,
        "data": recipe.sent,
        "wire": wire,
        "ratio": wire / len(new),
        "recipe_obj": recipe,
        "base_map_s": base_time,
        "source_map_s": source_time,
    }


def sst_tree(files: int, size: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    old = [rng.randbytes(size) for _ in range(files)]
    removed = set(rng.sample(range(files), files * 5 // 100))
    kept = [f for i, f in enumerate(old) if i not in removed]
    added = [rng.randbytes(size) for _ in range(files * 10 // 100)]
    return old, kept + added  # new files sort after the old ones, as SST numbers grow


def packed(files: list[bytes]) -> tuple[bytes, list[int]]:
    offsets, at = [], 0
    for body in files:
        offsets.append(at)
        at += len(body)
    return b"".join(files), offsets


def row(name: str, goal: float | None, got: dict[str, Any], extra: str = "") -> str:
    met = "—" if goal is None else "yes" if got["ratio"] <= goal else "NO"
    judged = "—" if goal is None else f"≤ {100 * goal:.1f}%"
    return (
        f"| {name} | {got['mode']} | {got['size'] / MiB:.0f} MiB | {got['map'] / 1024:.0f} KiB "
        f"| {got['recipe'] / 1024:.1f} KiB | {got['data'] / MiB:.2f} MiB "
        f"| {100 * got['ratio']:.2f}% | {judged} | {met} | {extra} |"
    )


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each contender, every one once per round in a shuffled order."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            started = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def _sha256_tags(key: bytes, digests: bytes) -> bytes:
    """Session 6's tags: the first 4 bytes of SHA-256(key padded || digest), a call each."""
    keyed, out = hashlib.sha256(key.ljust(64, b"\0")), bytearray()
    for at in range(0, len(digests), 32):
        hasher = keyed.copy()
        hasher.update(digests[at : at + 32])
        out += hasher.digest()[:4]
    return bytes(out)


def _tags32(key: bytes, digests: bytes) -> bytes:
    """Session 7's tags, the baseline of the 64-bit ones: the top 32 bits of the same product,
    the digests spread and the tags gathered byte by byte (strided ``bytearray`` slices)."""
    multiplier, batch = tag_multiplier(key), 4096
    out = bytearray(len(digests) // 32 * 4)
    for start in range(0, len(digests), 32 * batch):
        part = digests[start : start + 32 * batch]
        count = len(part) // 32
        slots = bytearray(64 * count)
        for j in range(32):
            slots[j::64] = part[j::32]
        product = (int.from_bytes(slots, "little") * multiplier).to_bytes(64 * count, "little")
        at = start // 32 * 4
        for k in range(4):  # bits 224..255 of each slot's product
            out[at + k : at + 4 * count : 4] = product[28 + k :: 64]
    return bytes(out)


def _per_piece(fn: Callable[[memoryview], object], view: memoryview, size: int) -> None:
    for at in range(0, len(view), size):
        fn(view[at : at + size])


def map_costs(rounds: int, seed: int) -> dict[str, float]:
    """Seconds per GiB of each way to map content, over 256 MiB in memory, interleaved."""
    sample = make_data(256 * MiB, seed + 5)
    k = new_key()
    view = memoryview(sample)
    digests = make_data(32 * (256 * MiB // 4096), seed + 6)  # one per 4 KiB of the sample
    sha, b3 = hashlib.sha256, blake3

    def sketch() -> object:
        builder = SketchBuilder(key=k, block_size=4096)
        for at in range(0, len(view), 8 * MiB):
            builder.update(view[at : at + 8 * MiB])
        return builder.finish()

    contenders: dict[str, Callable[[], object]] = {
        "blocks map, two levels (a base's: CRC32C + BLAKE3 per 4 KiB and per 64 KiB)": (
            functools.partial(build_map, "blocks", sample, key=k)
        ),
        "blocks map, one level (CRC32C + BLAKE3 per 4 KiB)": functools.partial(
            build_map, "blocks", sample, key=k, supers=False
        ),
        "sender's sketch (CRC32C + BLAKE3 per 64 KiB)": sketch,
        "cdc map (CRC32C + tag per chunk)": functools.partial(build_map, "cdc", sample, key=k),
        "SHA-256 per 4 KiB": lambda: _per_piece(lambda p: sha(p).digest(), view, 4096),
        "BLAKE3 per 4 KiB": lambda: _per_piece(lambda p: b3(p).digest(), view, 4096),
        "SHA-256 per 64 KiB": lambda: _per_piece(lambda p: sha(p).digest(), view, 65536),
        "BLAKE3 per 64 KiB": lambda: _per_piece(lambda p: b3(p).digest(), view, 65536),
        "tags from digests: multiply-shift, 64 bits (now)": lambda: derive_tags(k, digests),
        "tags from digests: multiply-shift, 32 bits (session 7)": lambda: _tags32(k, digests),
        "tags from digests: a SHA-256 call each (session 6)": lambda: _sha256_tags(k, digests),
        "CRC32C per 4 KiB block, no tag (unsafe floor)": lambda: [
            chunk_crc(view[o : o + 4096]) for o in range(0, len(view), 4096)
        ],
        "CRC32C of the whole (what a full transfer computes)": lambda: chunk_crc(view),
    }
    return {name: 4 * t for name, t in interleaved(contenders, rounds).items()}


def print_map_costs(per_gib: dict[str, float], rounds: int) -> None:
    print(f"\nMap compute, median of {rounds} interleaved rounds over 256 MiB, s/GiB:\n")
    print("| computation | s/GiB |\n|---|---:|")
    print("\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in per_gib.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the sizes (0.25: quarter)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the map timings")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ship", action="store_true", help="also run real ship() transfers")
    parser.add_argument("--ship-only", action="store_true", help="only the ship() transfers")
    parser.add_argument("--ship-scale", type=float, default=0.25, help="GiB of the ship runs")
    parser.add_argument("--s3", action="store_true", help="only ship() onto S3: bench_delta_s3.py")
    parser.add_argument("--s3-scale", type=float, default=1.0, help="GiB of the S3 object")
    parser.add_argument("--relay", action="store_true", help="only through a relay (moto)")
    parser.add_argument("--relay-scale", type=float, default=0.25, help="GiB of the relay runs")
    parser.add_argument("--maps-only", action="store_true", help="only the map compute table")
    args = parser.parse_args()
    if args.relay:
        from bench_delta_relay import print_table as print_relay_table

        print_relay_table(int(GiB * args.relay_scale) // 4096 * 4096, args.rounds, args.seed)
        return
    if args.maps_only:
        info = machine_info()
        print(f"{info['cpu']}, {info['nproc']} cores, load {info['loadavg']}, {info['started']}")
        print_map_costs(map_costs(args.rounds, args.seed), args.rounds)
        return
    if args.s3:
        from bench_delta_s3 import print_table

        print_table(int(GiB * args.s3_scale) // 4096 * 4096, args.rounds, args.seed)
        return
    if args.ship or args.ship_only:
        ship_size = int(GiB * args.ship_scale) // 4096 * 4096
        ship_lines = ship_rounds(ship_size, args.rounds, args.seed)
        info = machine_info()
        print(f"## ship(): delta against full, {args.rounds} interleaved rounds, medians\n")
        print(f"{info['cpu']}, {info['nproc']} cores, load {info['loadavg']}, {info['started']}\n")
        print("\n".join(ship_lines) + "\n")
        if args.ship_only:
            return
    info = machine_info("pyfastcdc")
    big = int(GiB * args.scale) // 4096 * 4096
    rows: list[str] = []

    base = make_data(big, args.seed)
    got = delta("blocks", base, pages(base, 0.01, args.seed + 1))
    full = big / LINK + 2 * RTT
    link = 2 * RTT + got["wire"] / LINK
    model = (
        f"link {link:.2f} s + sender map {got['source_map_s']:.2f} s = "
        f"{100 * (link + got['source_map_s']) / full:.0f}% of a full {full:.2f} s "
        f"(+ base map {got['base_map_s']:.2f} s unless cached; goal ≤ 15%)"
    )
    rows.append(row("page file, 1% of 4 KiB pages", 0.02, got, model))
    got = delta("blocks", base, base)
    rows.append(row("no change", 0.005, got))
    region = (big // 2, big // 2 + 8 * MiB)
    got = delta("blocks", base, pages(base, 0.05, args.seed + 2, region))
    parts = plan_parts(got["recipe_obj"])
    uploaded = sum(p.length for p in parts if p.base is None)
    got["ratio"] = uploaded / big
    rows.append(
        row(
            "S3, changes in one 8 MiB region",
            0.03,
            got,
            f"uploaded {uploaded / MiB:.1f} MiB in {len(parts)} parts (ratio = uploaded)",
        )
    )
    del base

    size = int(256 * MiB * args.scale)
    base = make_data(size, args.seed + 3)
    new = base[:4096] + random.Random(1).randbytes(100) + base[4096:]
    rows.append(row("100 bytes inserted near the start", 0.05, delta("cdc", base, new)))
    rows.append(row("(same, blocks: the wrong mode)", None, delta("blocks", base, new)))
    del base, new

    old, new_files = sst_tree(200, int(MiB * args.scale), args.seed + 4)
    (old_packed, old_cuts), (new_packed, new_cuts) = packed(old), packed(new_files)
    got = delta("cdc", old_packed, new_packed, tuple(old_cuts), tuple(new_cuts))
    new_bytes = sum(len(f) for f in new_files[-20:])
    rows.append(
        row("200 SST files, 10% new, 5% removed", 0.11, got, f"new files {new_bytes / MiB:.0f} MiB")
    )

    per_gib = map_costs(args.rounds, args.seed)
    print(f"## Delta transfer: bytes on the wire (scale {args.scale}, seed {args.seed})\n")
    print(
        f"{info['cpu']}, {info['nproc']} cores, Python {info['python']}, load {info['loadavg']}, "
        f"pyfastcdc {info['pyfastcdc']}, started {info['started']}\n"
    )
    print("| case | mode | size | map | recipe | data sent | sent / size | goal | met | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    print("\n".join(rows))
    print_map_costs(per_gib, args.rounds)


if __name__ == "__main__":
    main()
