"""ship() to several targets: one read of the source, with or without a relay; the report; a
copy kept by a TTL and reused by a later ship; failures of one target; clean-up racing a slow
receiver; the shared source on its own."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from fstransport import (
    FaultyNetwork,
    FsspecSnapshotStore,
    HigherVote,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Network,
    Receiver,
    RelayNetwork,
    RetryPolicy,
    StorageError,
    TransferOptions,
    Vote,
    cleanup_staging,
    ship,
)
from fstransport.errors import ConfigurationError, FstransportError
from fstransport.network.base import window_options
from fstransport.storage.faults import flaky_s3
from fstransport.storage.shared_source import SharedSource
from tests.conftest import payload

OPTIONS = TransferOptions(chunk_size=64 << 10, max_in_flight=3)


class _CountingFile(io.BytesIO):
    def __init__(self, data: bytes, fs: type[CountingFileSystem]) -> None:
        super().__init__(data)
        self._fs = fs

    def read(self, size: int | None = -1) -> bytes:
        piece = super().read(size)
        self._fs.served += len(piece)
        return piece

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self._fs.served += n
        return n

    def read1(self, size: int | None = -1) -> bytes:
        piece = super().read1(size)
        self._fs.served += len(piece)
        return piece

    def readinto1(self, buffer: Any) -> int:
        n = super().readinto1(buffer)
        self._fs.served += n
        return n


class CountingFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """A read-only filesystem (``counting://name``) that counts every byte it serves."""

    protocol = "counting"
    files: ClassVar[dict[str, bytes]] = {}
    served: ClassVar[int] = 0

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in self.files:
            return {"name": path, "size": len(self.files[path]), "type": "file"}
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        info = self.info(path)
        return [info] if detail else [info["name"]]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return _CountingFile(self.files[self._strip_protocol(path)], type(self))


@pytest.fixture
def counting() -> Iterator[type[CountingFileSystem]]:
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    CountingFileSystem.files = {}
    CountingFileSystem.served = 0
    yield CountingFileSystem
    CountingFileSystem.files = {}


def source_of(fs: type[CountingFileSystem], data: bytes, name: str = "snap.bin") -> str:
    fs.files[name] = data
    return f"counting://{name}"


def content(path: str) -> bytes:
    return Path(path).read_bytes()


def staged(root: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(root)
    return sorted(fs.find(path)) if fs.exists(path) else []


async def test_three_targets_without_a_relay_read_the_source_once(
    counting: type[CountingFileSystem], tmp_path: Path
) -> None:
    data = payload(1_000_000, seed=41)
    src = source_of(counting, data)
    targets = [str(tmp_path / f"t{i}" / "snap.bin") for i in range(3)]
    report = await ship(src, targets, options=OPTIONS)
    for target in targets:
        assert content(target) == data
    assert counting.served == len(data), "the source is read once for three targets"
    assert report.bytes_read == len(data)
    assert report.bytes_uploaded == 0
    assert [t.target for t in report.targets] == targets
    assert sum(t.bytes_read for t in report.targets) == len(data)
    assert all(t.checksum == report.checksum for t in report.targets)
    assert report.bytes_sent == 3 * len(data)


async def test_three_targets_through_a_relay_upload_once_and_leave_nothing(
    counting: type[CountingFileSystem], tmp_path: Path
) -> None:
    data = payload(700_000, seed=42)
    src = source_of(counting, data)
    stage = str(tmp_path / "stage")
    targets = [f"memory://fan{i}/snap.bin" for i in range(3)]
    report = await ship(src, targets, options=OPTIONS, relay=stage)
    mem = fsspec.filesystem("memory")
    for target in targets:
        assert mem.cat_file(target.removeprefix("memory://")) == data
    assert counting.served == len(data)
    assert report.bytes_read == len(data)
    assert report.bytes_uploaded == len(data), "uploaded once for three receivers"
    uploaded = [t.bytes_uploaded for t in report.targets]
    assert sum(uploaded) == len(data), f"each chunk counted for the send that staged it: {uploaded}"
    assert uploaded[0] > 0
    assert staged(stage) == [], "nothing stays staged once every target acknowledged"


async def test_one_target_keeps_its_report_and_gains_the_new_fields(
    counting: type[CountingFileSystem], tmp_path: Path
) -> None:
    data = payload(300_000, seed=43)
    src = source_of(counting, data)
    report = await ship(src, str(tmp_path / "one.bin"), options=OPTIONS)
    assert (tmp_path / "one.bin").read_bytes() == data
    assert report.targets == ()
    assert report.bytes_read == len(data)
    assert report.bytes_uploaded == 0
    relayed = await ship(src, str(tmp_path / "two.bin"), options=OPTIONS, relay="memory://st1")
    assert (tmp_path / "two.bin").read_bytes() == data
    assert relayed.bytes_uploaded == len(data)
    assert relayed.targets == ()
    listed = await ship(src, [str(tmp_path / "three.bin")], options=OPTIONS)
    assert [t.target for t in listed.targets] == [str(tmp_path / "three.bin")]


@pytest.mark.parametrize("named", [False, True], ids=["checksum-computed", "checksum-given"])
async def test_a_later_ship_reuses_the_copy_a_ttl_keeps(
    counting: type[CountingFileSystem], tmp_path: Path, named: bool
) -> None:
    data = payload(600_000, seed=44)
    src = source_of(counting, data)
    stage = str(tmp_path / "stage")
    first = await ship(
        src,
        str(tmp_path / "a" / "snap.bin"),
        options=OPTIONS,
        relay=stage,
        relay_options={"keep_for": 600},
    )
    assert first.bytes_uploaded == len(data)
    kept = staged(stage)
    assert any(p.endswith("manifest.json") for p in kept), "kept for later receivers"
    counting.served = 0
    later = await ship(  # a new RelayNetwork that finds the copy in the bucket, as a new process
        src,
        str(tmp_path / "b" / "snap.bin"),
        options=OPTIONS,
        relay=stage,
        relay_options={"keep_for": 600},
        checksum=first.checksum if named else None,
    )
    assert (tmp_path / "b" / "snap.bin").read_bytes() == data
    assert later.bytes_uploaded == 0, "nothing uploaded: the kept copy is reused"
    assert counting.served == (0 if named else len(data)), "read only to compute the checksum"
    assert staged(stage) == kept, "the kept copy is left to its TTL"
    assert await cleanup_staging(stage, 0, now=time.time() + 601)
    assert [p for p in staged(stage) if not p.endswith("/")] == []


async def test_a_copy_of_other_data_under_the_same_name_is_not_reused(
    counting: type[CountingFileSystem], tmp_path: Path
) -> None:
    stage = str(tmp_path / "stage")
    old, new = payload(300_000, seed=45), payload(300_000, seed=46)
    await ship(
        source_of(counting, old, "old.bin"),
        str(tmp_path / "a" / "snap.bin"),
        options=OPTIONS,
        relay=stage,
        relay_options={"keep_for": 600},
    )
    report = await ship(
        source_of(counting, new, "snap.bin"),
        str(tmp_path / "b" / "snap.bin"),
        options=OPTIONS,
        relay=stage,
    )
    assert (tmp_path / "b" / "snap.bin").read_bytes() == new
    assert report.bytes_uploaded == len(new)


async def test_one_target_refusing_does_not_stop_the_others(tmp_path: Path) -> None:
    data = payload(400_000, seed=47)
    (tmp_path / "src.bin").write_bytes(data)
    stores = [FsspecSnapshotStore(str(tmp_path / f"r{i}")) for i in range(3)]
    receivers = [Receiver(store) for store in stores]
    await ship(
        str(tmp_path / "src.bin"),
        "x/snap.bin",
        network=LoopbackNetwork(receivers[1]),
        vote=Vote(5, 0),
        options=OPTIONS,
    )
    with pytest.raises(HigherVote):
        await ship(
            str(tmp_path / "src.bin"),
            ["a/snap.bin"] * 3,
            options=OPTIONS,
            vote=Vote(1, 0),
            network=[LoopbackNetwork(r) for r in receivers],
        )
    for i in (0, 2):
        with await stores[i].open("snap.bin") as f:
            assert f.read() == data, "the other targets finished"


async def test_targets_given_twice_and_mismatched_networks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"x" * 10)
    with pytest.raises(ConfigurationError, match="twice"):
        await ship(str(tmp_path / "s"), [str(tmp_path / "t"), str(tmp_path / "t")])
    with pytest.raises(ConfigurationError, match="one network per target"):
        await ship(
            str(tmp_path / "s"),
            ["a", "b"],
            network=[LoopbackNetwork(Receiver(FsspecSnapshotStore(str(tmp_path))))],
        )
    with pytest.raises(ConfigurationError, match="relay"):
        await ship(str(tmp_path / "s"), str(tmp_path / "t"), relay_options={"keep_for": 1})
    with pytest.raises(ConfigurationError, match="keep_for"):
        await ship(
            str(tmp_path / "s"),
            str(tmp_path / "t"),
            relay="memory://x",
            relay_options={"keep_for": -1},
        )
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="stage_ahead"):
            await ship(
                str(tmp_path / "s"),
                str(tmp_path / "t"),
                relay="memory://x",
                relay_options={"stage_ahead": bad},
            )
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("stage_ahead", [0, 5])
async def test_stage_ahead_reaches_the_relay_and_not_the_receivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage_ahead: int
) -> None:
    data = payload(700_000, seed=94)
    (tmp_path / "s").write_bytes(data)
    made: list[RelayNetwork] = []
    init = RelayNetwork.__init__

    def recorded(self: RelayNetwork, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(RelayNetwork, "__init__", recorded)
    options = TransferOptions(chunk_size=64 << 10, max_in_flight=2)
    report = await ship(
        str(tmp_path / "s"),
        [str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s")],
        options=options,
        relay=str(tmp_path / "stage"),
        relay_options={"stage_ahead": stage_ahead},
    )
    assert [m.stage_ahead for m in made] == [stage_ahead]
    assert window_options(made[0], options).max_in_flight == 2 + stage_ahead
    assert report.bytes_uploaded == len(data)
    for target in ("a", "b"):
        assert (tmp_path / target / "s").read_bytes() == data


class CleanupFirst:
    """A network that removes every staging area under `stage` (as a `cleanup_staging` whose
    clock is past every TTL) just before the final reference reaches the receiver."""

    def __init__(self, inner: Network, stage: str) -> None:
        self.inner = inner
        self.stage = stage
        self.removed: list[str] = []

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        if req.staged is not None and not self.removed:
            self.removed = await cleanup_staging(self.stage, 0, now=time.time() + 10_000)
        return await self.inner.install_snapshot(req, option)


async def test_cleanup_racing_a_slow_receiver_never_installs_wrong_bytes(tmp_path: Path) -> None:
    data = payload(500_000, seed=48)
    (tmp_path / "src.bin").write_bytes(data)
    stage = str(tmp_path / "stage")
    await ship(
        str(tmp_path / "src.bin"),
        str(tmp_path / "a" / "snap.bin"),
        options=OPTIONS,
        relay=stage,
        relay_options={"keep_for": 600},
    )
    store = FsspecSnapshotStore(str(tmp_path / "late"))
    receiver = Receiver(store, relay_options={})
    racing = CleanupFirst(LoopbackNetwork(receiver), stage)
    fast = replace(OPTIONS, retry=replace(OPTIONS.retry, max_attempts=3, initial_backoff=0.001))
    try:
        await ship(
            str(tmp_path / "src.bin"),
            "late/snap.bin",
            options=fast,
            network=racing,
            relay=stage,
            relay_options={"keep_for": 600},
        )
    except FstransportError:
        assert not await store.exists("snap.bin"), "a failed transfer installs nothing"
    else:
        with await store.open("snap.bin") as f:
            assert f.read() == data
    assert racing.removed, "the clean-up removed the kept copy while the receiver fetched it"
    await receiver.close()


async def test_the_shared_source_bounds_how_far_a_reader_runs_ahead() -> None:
    from fstransport.storage.source import BufferSource

    data = payload(10 * 1024, seed=49)
    shared = SharedSource(BufferSource(memoryview(data), "mem"), 2, ahead=2048)
    fast, slow = shared.readers
    assert bytes(await fast.read(0, 1024)) == data[:1024]
    assert bytes(await fast.read(2048, 1024)) == data[2048:3072]
    blocked = asyncio.ensure_future(fast.read(4096, 1024))
    await asyncio.sleep(0.01)
    assert not blocked.done(), "more than `ahead` bytes in front of the slow reader: it waits"
    assert bytes(await slow.read(0, 1024)) == data[:1024]  # from the shared chunk
    assert shared.bytes_read == 2048
    await slow.read(3072, 1024)  # skips a chunk: the one at 2048 is dropped
    assert bytes(await blocked) == data[4096:5120]
    await slow.close()  # gone: nobody waits for it any more
    assert bytes(await fast.read(9 * 1024, 1024)) == data[9 * 1024 :]
    assert bytes(await fast.read(0, 1024)) == data[:1024], "a rewind reads again"
    assert shared.bytes_read == 5 * 1024 + 1024
    assert fast.bytes_read == shared.bytes_read - slow.bytes_read


async def test_a_failed_read_reaches_every_reader_waiting_for_it() -> None:
    class Failing:
        size = 4096
        description = "failing"

        async def read(self, offset: int, length: int) -> bytes:
            await asyncio.sleep(0.01)
            raise StorageError("failing", "read", OSError("boom"))

        async def close(self) -> None:
            pass

    shared = SharedSource(Failing(), 2, ahead=4096)
    a, b = shared.readers
    results = await asyncio.gather(a.read(0, 1024), b.read(0, 1024), return_exceptions=True)
    assert all(isinstance(r, StorageError) for r in results)
    assert shared.bytes_read == 0


async def test_readers_that_both_jump_ahead_do_not_wait_for_each_other() -> None:
    from fstransport.storage.source import BufferSource

    data = payload(16 * 1024, seed=50)
    shared = SharedSource(BufferSource(memoryview(data), "mem"), 2, ahead=1024)
    a, b = shared.readers  # both resumed far into the data (their receivers held the start)
    got = await asyncio.wait_for(asyncio.gather(a.read(8192, 1024), b.read(8192, 1024)), 5)
    assert [bytes(g) for g in got] == [data[8192:9216]] * 2
    assert shared.bytes_read == 1024


@pytest.mark.parametrize("seed", range(3))
async def test_readers_reading_a_window_at_once_share_every_chunk(seed: int) -> None:
    """Senders read a window of chunks at once, and a later read may be let through before an
    earlier one of the same sender: the earlier chunk is still shared, not read twice."""
    import random

    from fstransport.storage.source import BufferSource

    rng = random.Random(seed)
    chunk, count = 1024, 48
    data = payload(chunk * count, seed=seed)
    source = BufferSource(memoryview(data), "mem")

    class Slow:  # reads that take their time, ending in any order
        size = source.size
        description = "slow"

        async def read(self, offset: int, length: int) -> Any:
            await asyncio.sleep(rng.random() / 1000)
            return await source.read(offset, length)

        async def close(self) -> None:
            pass

    shared = SharedSource(Slow(), 3, ahead=2 * 3 * chunk)

    async def sender(index: int) -> None:
        reader = shared.readers[index]
        for start in range(0, count, 3):

            async def one(i: int) -> bytes:  # (asked for in order, as a sender's window does)
                return bytes(await reader.read(i * chunk, chunk))

            window = range(start, min(count, start + 3))
            got = await asyncio.gather(*(one(i) for i in window))
            assert b"".join(got) == data[start * chunk : (start + len(window)) * chunk]
        await reader.close()

    await asyncio.wait_for(asyncio.gather(*(sender(i) for i in range(3))), 20)
    assert shared.bytes_read == len(data), "every chunk read from the source once"


async def test_a_held_back_read_keeps_its_chunk_when_a_later_read_passes_first() -> None:
    """The race a sender's window makes: `fast` has a read held back (too far ahead) and asks
    for the next chunk; the slow reader moves on, the later read is let through before the
    held one wakes, and the slow reader reads the held chunk meanwhile.  It is kept for `fast`,
    not read from the source a second time."""
    from fstransport.storage.source import BufferSource

    data = payload(5 * 1024, seed=53)
    shared = SharedSource(BufferSource(memoryview(data), "mem"), 2, ahead=2048)
    slow, fast = shared.readers
    for offset in (0, 1024, 2048):
        assert bytes(await fast.read(offset, 1024)) == data[offset : offset + 1024]
    held = asyncio.ensure_future(fast.read(3072, 1024))
    await asyncio.sleep(0)
    assert not held.done(), "3 KiB in front of the slow reader: held back"
    # in this order on the loop: the slow reader moves (waking `held`), `fast` asks for the
    # next chunk, the slow reader reads the held chunk; then `held` wakes
    moved = asyncio.ensure_future(slow.read(2048, 1024))
    later = asyncio.ensure_future(fast.read(4096, 1024))
    contested = asyncio.ensure_future(slow.read(3072, 1024))
    got = await asyncio.wait_for(asyncio.gather(moved, later, contested, held), 5)
    chunks = [data[2048:3072], data[4096:], data[3072:4096], data[3072:4096]]
    assert [bytes(g) for g in got] == chunks
    assert shared.bytes_read == len(data), "every chunk read from the source once"


FAULTY_OPTIONS = replace(
    OPTIONS,
    hard_ttl=0.5,
    install_timeout=2.0,
    retry=RetryPolicy(max_attempts=40, initial_backoff=0.001, max_backoff=0.01),
)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_relayed_fan_out_survives_faulty_networks(seed: int, tmp_path: Path) -> None:
    data = payload(400_000, seed=60 + seed)
    (tmp_path / "src.bin").write_bytes(data)
    stage = str(tmp_path / "stage")
    stores = [FsspecSnapshotStore(str(tmp_path / f"r{i}")) for i in range(3)]
    receivers = [Receiver(store, relay_options={}) for store in stores]
    nets = [
        FaultyNetwork(
            LoopbackNetwork(r),
            seed=seed * 10 + i,
            drop=0.15,
            duplicate=0.15,
            reorder=0.3,
            timeout=0.1,
        )
        for i, r in enumerate(receivers)
    ]
    report = await ship(
        str(tmp_path / "src.bin"),
        ["snap.bin"] * 3,
        network=nets,
        options=FAULTY_OPTIONS,
        relay=stage,
    )
    assert sum(n.stats.dropped_requests + n.stats.dropped_answers for n in nets) > 0
    for store in stores:
        with await store.open("snap.bin") as f:
            assert f.read() == data
    assert report.bytes_uploaded == len(data), "a chunk sent again is not uploaded again"
    assert staged(stage) == []
    for receiver in receivers:
        await receiver.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_relayed_fan_out_through_a_flaky_bucket(
    seed: int, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(1_500_000, seed=70 + seed)
    (tmp_path / "src.bin").write_bytes(data)
    targets = [str(tmp_path / f"t{i}" / "snap.bin") for i in range(2)]
    operations = frozenset({"put_object", "get_object"})
    with flaky_s3(0.2, seed=seed, operations=operations) as faults:
        # a failed PUT of a staged chunk is a chunk sent again, a failed GET a fetch retried
        report = await ship(
            str(tmp_path / "src.bin"),
            targets,
            options=FAULTY_OPTIONS,
            relay=f"s3://{s3_bucket}/stage",
            relay_options=s3_storage_options,
        )
    assert faults.injected["put_object"] > 0
    for target in targets:
        assert content(target) == data
    assert report.checksum is not None
    listing = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="stage/")
    assert listing.get("Contents", []) == [], "nothing staged is left"
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_progress_counts_what_every_target_acknowledged(tmp_path: Path) -> None:
    data = payload(500_000, seed=80)
    (tmp_path / "src.bin").write_bytes(data)
    seen: list[int] = []
    targets = [str(tmp_path / f"p{i}" / "snap.bin") for i in range(3)]
    report = await ship(str(tmp_path / "src.bin"), targets, options=OPTIONS, progress=seen.append)
    assert sum(seen) == len(data), "the bytes of the slowest target, each counted once"
    assert all(0 < t.elapsed <= report.elapsed for t in report.targets)


async def test_a_cancelled_fan_out_leaves_nothing_anywhere(tmp_path: Path) -> None:
    from fstransport import ReplicationClosed

    data = payload(2_000_000, seed=81)
    (tmp_path / "src.bin").write_bytes(data)
    stage = str(tmp_path / "stage")
    stop = asyncio.Event()
    targets = [str(tmp_path / f"c{i}" / "snap.bin") for i in range(2)]

    def halfway(n: int) -> None:
        stop.set()

    slow = replace(OPTIONS, max_in_flight=1, rate_limit=1_000_000)
    with pytest.raises(ReplicationClosed):
        await ship(
            str(tmp_path / "src.bin"),
            targets,
            options=slow,
            relay=stage,
            cancel=stop.wait(),
            progress=halfway,
        )
    for i in range(2):
        assert [p.name for p in (tmp_path / f"c{i}").rglob("*") if p.is_file()] == []
    assert staged(stage) == [], "what the cancelled ship staged is removed"


async def test_a_reader_cancelled_mid_read_leaves_the_chunk_to_the_others() -> None:
    class Slow:
        size = 4096
        description = "slow"
        reads = 0

        async def read(self, offset: int, length: int) -> bytes:
            self.reads += 1
            await asyncio.sleep(0.05)
            return bytes(length)

        async def close(self) -> None:
            pass

    source = Slow()
    shared = SharedSource(source, 2, ahead=4096)
    a, b = shared.readers
    first = asyncio.ensure_future(a.read(0, 1024))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(b.read(0, 1024))
    await asyncio.sleep(0.01)
    first.cancel()  # its sender gave up: b must not inherit the cancellation
    assert bytes(await second) == bytes(1024)
    assert first.cancelled()
    assert source.reads == 2
