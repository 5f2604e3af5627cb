"""Property runs of delta through the relay (docs/relay.md, "Delta and the relay"): random bases,
random edits, random chunk sizes and modes, two receivers (one holding a related base, one an
unrelated one or none) fed from the same staged objects, and one staged object tampered with in
the bucket before its reference goes (a chunk byte flipped, its block map altered, cut off or
swapped for the base's, garbage appended).  Every run ends with the exact new bytes installed
at both receivers, or with a typed error and no wrong bytes anywhere."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from fstransport import Chunked, FsspecSnapshotStore, Receiver, TransferOptions
from fstransport.errors import FstransportError
from fstransport.messages import InstallSnapshotRequest, Vote
from fstransport.network.loopback import LoopbackNetwork
from fstransport.network.relay import RelayNetwork
from fstransport.protocol.relay_trailer import build_trailer
from tests.test_relay import installed, snapshot
from tests.test_relay_delta import Tap, _finished

TAMPERS = ("none", "chunk byte", "map byte", "map cut", "base's map", "garbage")


@dataclass(frozen=True)
class Case:
    seed: int
    size: int
    chunk: int
    mode: str
    edits: int
    other: str  # what the second receiver holds: "unrelated", "none"
    tamper: str
    victim: int  # which reference (index) is tampered with


cases = st.builds(
    Case,
    seed=st.integers(0, 2**32),
    size=st.integers(1, 300_000),
    chunk=st.sampled_from([4096, 16384, 65536, 10_000, 70_001]),
    mode=st.sampled_from(["blocks", "cdc"]),
    edits=st.integers(0, 6),
    other=st.sampled_from(["unrelated", "none"]),
    tamper=st.sampled_from(TAMPERS),
    victim=st.integers(0, 80),
)


def contents(case: Case) -> tuple[bytes, bytes]:
    rng = random.Random(case.seed)
    base = rng.randbytes(case.size)
    new = bytearray(base)
    for _ in range(case.edits):  # mostly rewrites in place (pages), some that shift the rest
        at, length = rng.randrange(case.size), rng.randint(1, 9000)
        put = length if rng.random() < 0.75 else rng.randint(0, 9000)
        new[at : at + length] = rng.randbytes(put)
    return base, bytes(new[:400_000] or b"x")


def tamperer(case: Case, base: bytes) -> Callable[[InstallSnapshotRequest], None]:
    seen = [0]
    fs = fsspec.filesystem("memory")

    def tamper(req: InstallSnapshotRequest) -> None:
        ref = req.staged
        assert ref is not None
        seen[0] += 1
        if seen[0] - 1 != case.victim or case.tamper == "none":
            return
        path = ref.url.removeprefix("memory://")
        body = bytearray(fs.cat_file(path))
        rng = random.Random(case.seed + 1)
        if case.tamper == "chunk byte" and ref.length:
            body[rng.randrange(ref.length)] ^= 0x01
        elif case.tamper == "map byte" and len(body) > ref.length:
            body[rng.randrange(ref.length, len(body))] ^= 0x01
        elif case.tamper == "map cut":
            body = body[: ref.length]
        elif case.tamper == "base's map":
            old = base[req.offset : req.offset + ref.length] or b"\0"
            body[ref.length :] = build_trailer(case.mode, 4096 if case.mode == "blocks" else 0, old)
        elif case.tamper == "garbage":
            body += b"\xff" * 100
        note(f"tampered with {ref.name} ({case.tamper})")
        fs.pipe_file(path, bytes(body))

    return tamper


async def check(case: Case) -> None:
    base, new = contents(case)
    note(f"base {len(base)} bytes, new {len(new)} bytes")
    stores = [FsspecSnapshotStore(f"memory://r{i}") for i in range(2)]
    await stores[0].install(await _finished(stores[0], "snap", base))
    if case.other == "unrelated":
        other = random.Random(case.seed + 2).randbytes(len(base))
        await stores[1].install(await _finished(stores[1], "snap", other))
    receivers = [Receiver(store, relay_options={}) for store in stores]
    options = TransferOptions(chunk_size=case.chunk, delta=case.mode)
    tamper = tamperer(case, base)
    tap = Tap(LoopbackNetwork(receivers[0]), before=tamper)
    relay = RelayNetwork(tap, "memory://stage", block_maps=True)
    nets = [relay, relay.to(Tap(LoopbackNetwork(receivers[1]), before=tamper))]
    other = random.Random(case.seed + 2).randbytes(len(base))
    helds = (base, other if case.other == "unrelated" else None)
    try:
        for net, store, held in zip(nets, stores, helds, strict=True):
            failed = False
            try:
                await Chunked.send_snapshot(net, Vote(1, 1), snapshot(new), option=options)
            except FstransportError as exc:  # allowed: a typed error, and then no wrong bytes
                note(f"typed error: {exc!r}")
                failed = True
            got = await installed(store, "snap")
            assert got == new or (failed and got == held), f"wrong bytes at {store.url}"
    finally:
        await relay.close()
        for receiver in receivers:
            await receiver.close()
    assert not fsspec.filesystem("memory").find("/stage"), "nothing stays staged"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases)
def test_relayed_deltas_install_the_exact_bytes_or_nothing(case: Case) -> None:
    fsspec.filesystem("memory").store.clear()
    fsspec.filesystem("memory").pseudo_dirs[:] = [""]
    asyncio.run(check(case))
