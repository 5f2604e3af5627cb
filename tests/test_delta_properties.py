"""Property: a delta transfer over a faulty network installs exactly the new snapshot, for random
edit scripts (page rewrites, inserts, deletes) between the base and the new content, in both
modes, onto memory and local stores.  0 wrong bytes."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fstransport import RetryPolicy, TransferOptions
from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.faults import FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from tests.test_properties import profile

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=30)

Edit = tuple[str, int, int]  # (kind, where as a fraction of 2**16, how many bytes)
edits = st.lists(
    st.tuples(
        st.sampled_from(["rewrite", "insert", "delete"]),
        st.integers(0, 1 << 16),
        st.integers(1, 9000),
    ),
    max_size=6,
)


def apply(base: bytes, script: list[Edit], seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(base)
    for kind, where, count in script:
        at = where * len(out) >> 16
        if kind == "rewrite":
            out[at : at + count] = rng.randbytes(len(out[at : at + count]))
        elif kind == "insert":
            out[at:at] = rng.randbytes(count)
        else:
            del out[at : at + count]
    return bytes(out)


@given(
    size=st.integers(20 * KiB, 200 * KiB),
    script=edits,
    mode=st.sampled_from(["blocks", "cdc"]),
    kind=st.sampled_from(["memory", "local"]),
    seed=st.integers(0, 2**16),
    faults=st.sampled_from([0.0, 0.05, 0.15]),
)
@profile(20, 300, fixtures=True)
async def test_delta_under_faults_installs_the_new_snapshot_exactly(
    tmp_path: Path, size: int, script: list[Edit], mode: str, kind: str, seed: int, faults: float
) -> None:
    base = random.Random(seed).randbytes(size)
    new = apply(base, script, seed + 1)
    root = str(tmp_path / uuid.uuid4().hex) if kind == "local" else f"memory://p-{uuid.uuid4().hex}"
    store = FsspecSnapshotStore(root)
    receiver = Receiver(store)
    net = FaultyNetwork(
        LoopbackNetwork(receiver),
        seed=seed,
        drop=faults,
        duplicate=faults,
        reorder=faults,
        corrupt=faults,
        timeout=faults,
    )
    options = TransferOptions(chunk_size=16 * KiB, delta=mode, retry=FAST_RETRY)
    meta = SnapshotMeta("snap")
    for data in (base, new):
        result = await send_source(net, Vote(1, 0), meta, BufferSource(data, "src"), None, options)
        assert result.completed
        install = receiver._io.installing.get("snap")
        if install is not None:
            await install
    with await store.open("snap") as fh:
        assert fh.read() == new
    if not script and faults == 0:  # nothing changed, nothing lost: all of it reused
        assert result.stats.bytes_reused == size
    await store.close()
