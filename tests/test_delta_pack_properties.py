"""Property: a delta whose changed pages are scattered (so that requests carry several ranges,
``InstallSnapshotRequest.extents``) installs exactly the new snapshot over a faulty network
(drops, duplicates, reordering, corruption, timeouts) and a receiver that may restart at any
request (its requests in flight killed, a new one over the same folder: test_delta_restart.py),
onto memory and local stores, in both modes and for several chunk sizes.  0 wrong bytes."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fstransport import RetryPolicy, TransferOptions
from fstransport.messages import InstallSnapshotRequest, SnapshotMeta, Vote
from fstransport.network.faults import FaultyNetwork
from fstransport.options import KiB
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from tests.test_delta_restart import Restarting
from tests.test_properties import profile

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=40)


@given(
    pages=st.integers(64, 256),
    changed=st.integers(1, 40),
    partial=st.booleans(),
    mode=st.sampled_from(["blocks", "blocks", "cdc"]),
    kind=st.sampled_from(["memory", "local"]),
    chunk=st.sampled_from([8 * KiB, 16 * KiB, 64 * KiB]),
    seed=st.integers(0, 2**16),
    faults=st.sampled_from([0.0, 0.05, 0.15]),
    restart_at=st.one_of(st.none(), st.integers(1, 60)),
)
@profile(12, 200, fixtures=True)
async def test_scattered_pages_under_faults_install_the_new_snapshot_exactly(
    tmp_path: Path,
    pages: int,
    changed: int,
    partial: bool,
    mode: str,
    kind: str,
    chunk: int,
    seed: int,
    faults: float,
    restart_at: int | None,
) -> None:
    rng = random.Random(seed)
    size = pages * 4096 - (rng.randrange(4096) if partial else 0)
    base = rng.randbytes(size)
    new = bytearray(base)
    for page in rng.sample(range(pages - 1), min(changed, pages - 1)):
        at = page * 4096 + rng.randrange(4000)
        new[at : at + 50] = rng.randbytes(len(new[at : at + 50]))
    root = str(tmp_path / uuid.uuid4().hex) if kind == "local" else f"memory://k-{uuid.uuid4().hex}"
    arrived = 0

    def restart_now(req: InstallSnapshotRequest) -> bool:
        nonlocal arrived
        arrived += 1
        return arrived == restart_at

    recording = Restarting(root, restart_now)
    net = FaultyNetwork(
        recording,
        seed=seed,
        drop=faults,
        duplicate=faults,
        reorder=faults,
        corrupt=faults,
        timeout=faults,
    )
    options = TransferOptions(chunk_size=chunk, delta=mode, retry=FAST_RETRY)
    meta = SnapshotMeta("snap")
    for data in (base, bytes(new)):
        recording.requests.clear()
        result = await send_source(net, Vote(1, 0), meta, BufferSource(data, "src"), None, options)
        assert result.completed
        await recording.installed("snap")
    with await recording.store.open("snap") as fh:
        assert fh.read() == bytes(new)
    if faults == 0 and mode == "blocks" and changed >= 8 and chunk > 8 * KiB:
        assert any(r.extents for r in recording.requests)  # scattered pages went together
    await recording.store.close()
