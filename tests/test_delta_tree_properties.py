"""Property: a directory delta over a faulty network installs exactly the new tree, for random
edit scripts between the base tree and the new one (files added, removed, renamed, pages
rewritten, bytes inserted and deleted), in both modes, onto memory and local stores.
0 wrong bytes."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fstransport import RetryPolicy, TransferOptions
from fstransport.network.faults import FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.receiver import Receiver
from fstransport.storage.store import FsspecSnapshotStore
from tests.test_delta_tree import Tree, installed, send_tree, write_tree
from tests.test_properties import profile

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=30)
KINDS = ["add", "remove", "rename", "rewrite", "insert", "delete"]
Edit = tuple[str, int, int]  # (kind, which file or where, how many bytes)
edits = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 16), st.integers(1, 9000)),
    max_size=6,
)


def edit(base: Tree, script: list[Edit], seed: int) -> Tree:
    rng, out = random.Random(seed), dict(base)
    for kind, where, count in script:
        names = sorted(out)
        name = names[where % len(names)] if names else None
        if kind == "add" or name is None:
            out[f"new/{where}-{count}"] = rng.randbytes(count * 3)
        elif kind == "remove":
            del out[name]
        elif kind == "rename":
            out[f"moved/{where}"] = out.pop(name)
        else:
            data = bytearray(out[name])
            at = where * len(data) >> 16
            if kind == "rewrite":
                data[at : at + count] = rng.randbytes(len(data[at : at + count]))
            elif kind == "insert":
                data[at:at] = rng.randbytes(count)
            else:
                del data[at : at + count]
            out[name] = bytes(data)
    return out


@given(
    files=st.integers(1, 8),
    script=edits,
    mode=st.sampled_from(["blocks", "cdc"]),
    kind=st.sampled_from(["memory", "local"]),
    seed=st.integers(0, 2**16),
    faults=st.sampled_from([0.0, 0.05, 0.15]),
)
@profile(12, 200, fixtures=True)
async def test_tree_delta_under_faults_installs_the_new_tree_exactly(
    tmp_path: Path, files: int, script: list[Edit], mode: str, kind: str, seed: int, faults: float
) -> None:
    rng = random.Random(seed)
    base = {f"d{i % 3}/f{i}": rng.randbytes(rng.randint(0, 60 * KiB)) for i in range(files)}
    new = edit(base, script, seed + 1)
    here = tmp_path / uuid.uuid4().hex
    root = str(here / "out") if kind == "local" else f"memory://p-{uuid.uuid4().hex}"
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
    options = TransferOptions(chunk_size=8 * KiB, delta=mode, retry=FAST_RETRY)
    for tree in (base, new):
        write_tree(here / "src", tree)
        result = await send_tree(net, receiver, here / "src", options)
    target = store.path("tree") if kind == "local" else f"{root}/tree"
    assert installed(target) == new
    if new == base and faults == 0 and sum(map(len, new.values())) > 8 * KiB:
        assert result.stats.bytes_reused == sum(map(len, new.values()))
    await store.close()
