"""Whole copies with `ship()` between memory:// and local files, checked byte for byte."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import fsspec
import pytest

from fstransport import (
    ConfigurationError,
    FsspecSnapshotStore,
    LoopbackNetwork,
    Receiver,
    RemoteError,
    ReplicationClosed,
    StorageError,
    TransferOptions,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from tests.conftest import payload

CHUNK = 4096
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK + 17]


def _locations(tmp_path: Path) -> dict[str, str]:
    return {"memory": "memory://rt", "local": str(tmp_path / "local")}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize(
    ("src_kind", "dst_kind"),
    [("memory", "local"), ("local", "memory"), ("memory", "memory"), ("local", "local")],
)
async def test_ship_round_trip(
    tmp_path: Path, size: int, window: int, src_kind: str, dst_kind: str
) -> None:
    where = _locations(tmp_path)
    data = payload(size, seed=size)
    src = f"{where[src_kind]}/src/snap.bin"
    dst = f"{where[dst_kind]}/dst/snap.bin"
    fs_src, path_src = fsspec.core.url_to_fs(src)
    fs_src.makedirs(fs_src._parent(path_src), exist_ok=True)
    fs_src.pipe_file(path_src, data)

    report = await ship(src, dst, options=TransferOptions(chunk_size=CHUNK, max_in_flight=window))

    fs_dst, path_dst = fsspec.core.url_to_fs(dst)
    assert fs_dst.cat_file(path_dst) == data
    assert report.size == size
    assert report.bytes_sent == size
    assert report.chunks_sent == max(1, -(-size // CHUNK))
    assert report.retries == 0
    assert report.checksum == format_checksum(chunk_crc(data))
    assert report.elapsed > 0
    # nothing but the snapshot is visible in the target folder
    visible = [
        p
        for p in fs_dst.ls(fs_dst._parent(path_dst), detail=False)
        if not p.endswith(".fstransport")
    ]
    assert [p.rsplit("/", 1)[-1] for p in visible] == ["snap.bin"]


async def test_ship_replaces_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    source = tmp_path / "in.bin"
    source.write_bytes(payload(50_000))
    await ship(str(source), str(target), options=TransferOptions(chunk_size=CHUNK))
    assert target.read_bytes() == source.read_bytes()


async def test_missing_source_is_a_storage_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        await ship(str(tmp_path / "absent.bin"), str(tmp_path / "out" / "copy.bin"))
    assert info.value.verb == "open"
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not (tmp_path / "out" / "copy.bin").exists()


@pytest.mark.parametrize("target", ["memory://x/", "memory://x/..", "memory://x/.fstransport"])
async def test_unusable_target_names_are_refused(target: str) -> None:
    fsspec.filesystem("memory").pipe_file("/src.bin", b"abc")
    with pytest.raises(ConfigurationError):
        await ship("memory://src.bin", target)


async def test_cancelled_ship_leaves_nothing_visible_nor_partial(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(payload(4 * 1024 * 1024))
    target = tmp_path / "out" / "copy.bin"
    cancel = asyncio.Event()
    acked = 0

    def progress(n: int) -> None:
        nonlocal acked
        acked += n
        if acked >= 1024 * 1024:
            cancel.set()

    options = TransferOptions(chunk_size=64 * 1024, max_in_flight=2)
    with pytest.raises(ReplicationClosed):
        await ship(
            str(source), str(target), options=options, cancel=cancel.wait(), progress=progress
        )
    assert acked < source.stat().st_size
    assert not target.exists()
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert leftovers == []


async def test_task_cancellation_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(payload(2 * 1024 * 1024))
    target = tmp_path / "out" / "copy.bin"
    task = asyncio.create_task(
        ship(str(source), str(target), options=TransferOptions(chunk_size=4096, max_in_flight=1))
    )
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not target.exists()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


async def test_store_options_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    target = str(tmp_path / "out.bin")
    with pytest.raises(ConfigurationError, match=r"unknown store option\(s\) part_sise"):
        await ship("memory://nowhere.bin", target, store_options={"part_sise": 6 << 20})
    with pytest.raises(ConfigurationError, match="in-process receiver only"):
        await ship(
            "memory://nowhere.bin",
            target,
            network=LoopbackNetwork(Receiver(FsspecSnapshotStore(str(tmp_path)))),
            store_options={"fsync": True},
        )
    assert os.listdir(tmp_path) == []


async def test_store_options_reach_the_in_process_store(tmp_path: Path) -> None:
    data = payload(300_000, seed=9)
    fsspec.filesystem("memory").pipe_file("/so/src.bin", data)
    report = await ship(
        "memory://so/src.bin", str(tmp_path / "out.bin"), store_options={"sink": "sequential"}
    )
    assert (tmp_path / "out.bin").read_bytes() == data
    assert report.size == len(data)
    with pytest.raises(ConfigurationError, match="unknown sink kind"):
        await ship("memory://so/src.bin", str(tmp_path / "b.bin"), store_options={"sink": "x"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"upload_concurrency": "4"}, "upload_concurrency must be int, got '4'"),
        ({"part_size": "8MiB"}, "part_size must be int or None, got '8MiB'"),
        ({"part_size": True}, "part_size must be int or None, got True"),
        ({"fsync": 1}, "fsync must be bool, got 1"),
        ({"full_object_checksum": "yes"}, "full_object_checksum must be bool or None"),
    ],
)
async def test_store_options_of_the_wrong_type_are_configuration_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        await ship("memory://nowhere.bin", str(tmp_path / "out.bin"), store_options=options)


async def test_ship_refuses_a_target_that_is_a_pipe_and_leaves_it_alone(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(payload(3 * CHUNK, seed=4))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(ConfigurationError, match="a device, a pipe or a socket"):
        await ship(str(source), str(pipe), options=TransferOptions(chunk_size=CHUNK))
    assert pipe.is_fifo()
    assert not (tmp_path / ".fstransport").exists()  # nothing was sent or staged


async def test_a_receiver_never_installs_over_a_pipe(tmp_path: Path) -> None:
    """A peer that names a pipe in the store's folder gets a permanent storage error at
    install, and the pipe stays (the same rule as devices, which need root to make)."""
    source = tmp_path / "source.bin"
    source.write_bytes(payload(3 * CHUNK, seed=5))
    os.mkfifo(tmp_path / "named")
    async with FsspecSnapshotStore(str(tmp_path)) as store:
        network = LoopbackNetwork(Receiver(store))
        with pytest.raises(RemoteError, match="not a regular file") as caught:
            await ship(
                str(source),
                "named",
                network=network,
                options=TransferOptions(chunk_size=CHUNK, delta="off"),
            )
        assert isinstance(caught.value.source, StorageError)
        assert not caught.value.source.retryable
        assert network.requests == 3  # each chunk once: a permanent error is not retried
        assert (tmp_path / "named").is_fifo()
        assert not await store.has_partial("named")
