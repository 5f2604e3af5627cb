"""Directory snapshots (issue 15, item 1): a folder shipped as one packed, verified snapshot,
unpacked only once verified, appearing at the target in one step — locally by a rename, on
memory:// and S3 by a manifest written last.  Hostile senders, refused source entries and
interrupted transfers leave nothing visible."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    FsspecSnapshotStore,
    FstransportError,
    InvalidRequest,
    LoopbackNetwork,
    Network,
    Receiver,
    ReceiverLimits,
    RemoteError,
    Snapshot,
    SnapshotMeta,
    TransferOptions,
    UnsupportedEntry,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.http.wire import decode_meta, encode_meta
from fstransport.messages import InstallSnapshotRequest
from fstransport.options import KiB
from fstransport.sender import Chunked
from fstransport.testing.mock import MockNetwork, after, deliver_to, fail
from fstransport.transfer import ship
from fstransport.tree import MAGIC, MANIFEST_NAME, TreeTable, load_manifest, tree_path_problem
from tests.conftest import payload

UNICODE = "Ünïcødé ✓ 日本"


def make_tree(root: Path) -> dict[str, bytes]:
    """A tree with nested folders, empty files, an empty folder and unicode names."""
    files = {
        "a/b/c/deep.bin": payload(70_000, seed=1),
        "a/b/small.txt": b"hello\n",
        "a/empty.txt": b"",
        f"{UNICODE}/名前.dat": payload(3000, seed=2),
        "top.bin": payload(200_001, seed=3),
    }
    for rel, data in files.items():
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    return files


TREE_DIRS = {"a", "a/b", "a/b/c", UNICODE, "empty-dir", "empty-dir/nested-empty"}


def local_tree(root: Path) -> tuple[set[str], dict[str, bytes]]:
    dirs, files = set(), {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            dirs.add(rel)
        else:
            files[rel] = path.read_bytes()
    return dirs, files


def object_tree(fs: Any, tree: str) -> tuple[set[str], dict[str, bytes], dict[str, Any]]:
    """What a reader finds through the manifest: folders, files (checked against the
    manifest's sizes and CRCs), the manifest; and nothing else lies under the tree."""
    fs.invalidate_cache()
    manifest = load_manifest(fs, tree)
    base = f"{tree.rstrip('/')}/{manifest['generation']}"
    files = {}
    for path, size, crc in manifest["files"]:
        data = fs.cat_file(f"{base}/{path}")
        assert len(data) == size
        assert format_checksum(chunk_crc(data)) == crc
        files[path] = data
    stored = {str(p) for p in fs.find(tree)}
    expected = {f"{base}/{p}" for p in files} | {f"{tree.rstrip('/')}/{MANIFEST_NAME}"}
    assert {p.lstrip("/") for p in stored} == {p.lstrip("/") for p in expected}
    return set(manifest["dirs"]), files, manifest


def no_internal_leftovers(root: Path) -> None:
    leftovers = [p for p in (root / ".fstransport").rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


# -- round trips -----------------------------------------------------------------------------------


async def test_local_tree_round_trip_and_replace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    target = tmp_path / "out" / "snap"
    report = await ship(str(src), str(target), options=TransferOptions(chunk_size=64 * KiB))
    assert local_tree(target) == (TREE_DIRS, files)
    assert report.files == len(files)
    assert report.size > sum(map(len, files.values()))  # the table travels too
    assert report.chunks_sent > 1
    no_internal_leftovers(tmp_path / "out")

    # shipped again with a file gone and another changed: the new tree replaces the old whole
    (src / "top.bin").unlink()
    (src / "a" / "b" / "small.txt").write_bytes(b"changed")
    del files["top.bin"]
    files["a/b/small.txt"] = b"changed"
    await ship(str(src), str(target))
    assert local_tree(target) == (TREE_DIRS, files)
    assert sorted(os.listdir(tmp_path / "out")) == ["snap"], "no staging or old folder left"


async def test_local_tree_replaces_a_file_of_the_same_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    (tmp_path / "snap").write_bytes(b"an older file snapshot")
    await ship(str(src), str(tmp_path / "snap"))
    assert local_tree(tmp_path / "snap") == (TREE_DIRS, files)


async def test_memory_tree_round_trip_and_replace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    fs = fsspec.filesystem("memory")
    await ship(str(src), "memory://store/snap")
    dirs, got, first = object_tree(fs, "/store/snap")
    assert (dirs, got) == (TREE_DIRS, files)
    assert first["snapshot_id"] == "snap"
    (src / "new.txt").write_bytes(b"new")
    files["new.txt"] = b"new"
    await ship(str(src), "memory://store/snap")
    dirs, got, second = object_tree(fs, "/store/snap")  # (checks the old generation is gone)
    assert (dirs, got) == (TREE_DIRS, files)
    assert second["generation"] != first["generation"]
    assert not [k for k in fs.store if "/.fstransport/" in k], "packed data left behind"


async def test_memory_source_tree(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/in/x/y.bin": b"xy", "/in/z.bin": b"z" * 1000})
    await ship("memory://in", str(tmp_path / "out"))
    assert local_tree(tmp_path / "out") == ({"x"}, {"x/y.bin": b"xy", "z.bin": b"z" * 1000})


async def test_an_empty_folder_round_trips(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    report = await ship(str(tmp_path / "src"), str(tmp_path / "out"))
    assert report.files == 0
    assert local_tree(tmp_path / "out") == (set(), {})


def thousand_files(root: Path) -> dict[str, bytes]:
    files = {f"d{i % 10}/f{i:04d}.txt": f"file {i}\n".encode() * (i % 7) for i in range(1000)}
    for rel, data in files.items():
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("target_kind", ["local", "memory"])
async def test_thousand_small_files_take_few_chunks(tmp_path: Path, target_kind: str) -> None:
    src = tmp_path / "src"
    files = thousand_files(src)
    root = str(tmp_path / "out") if target_kind == "local" else "memory://out"
    store = FsspecSnapshotStore(root)
    net = LoopbackNetwork(Receiver(store))
    report = await ship(str(src), "snap", network=net, options=TransferOptions(chunk_size=64 * KiB))
    assert net.requests == report.chunks_sent <= 3  # packed: not a request per file
    if target_kind == "local":
        assert local_tree(tmp_path / "out" / "snap")[1] == files
    else:
        assert object_tree(fsspec.filesystem("memory"), "/out/snap")[1] == files


@pytest.mark.s3
async def test_s3_tree_round_trip_and_replace(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    target = f"s3://{s3_bucket}/trees/snap"
    await ship(str(src), target, target_options=s3_storage_options)
    fs = fsspec.filesystem("s3", **s3_storage_options)
    dirs, got, first = object_tree(fs, f"{s3_bucket}/trees/snap")
    assert (dirs, got) == (TREE_DIRS, files)
    (src / "top.bin").unlink()
    del files["top.bin"]
    await ship(str(src), target, target_options=s3_storage_options)
    dirs, got, second = object_tree(fs, f"{s3_bucket}/trees/snap")  # the old generation is gone
    assert got == files
    assert second["generation"] != first["generation"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if not k.startswith("trees/snap/")], "packed or state data left"
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    # an S3 "folder" (a URL ending in /) is a tree source too: ship the generation back
    back = tmp_path / "back"
    generation = f"s3://{s3_bucket}/trees/snap/{second['generation']}/"
    await ship(generation, str(back), source_options=s3_storage_options)
    assert local_tree(back)[1] == files


@pytest.mark.s3
@pytest.mark.slow  # a PUT per file: ~40 s on moto on a small machine
async def test_s3_thousand_small_files(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    files = thousand_files(tmp_path / "src")
    report = await ship(
        str(tmp_path / "src"), f"s3://{s3_bucket}/snap", target_options=s3_storage_options
    )
    assert report.files == 1000
    assert report.chunks_sent == 1
    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert object_tree(fs, f"{s3_bucket}/snap")[1] == files


# -- refused sources -------------------------------------------------------------------------------


def special_entries(src: Path) -> list[tuple[str, Any]]:
    def symlink(path: Path) -> None:
        path.symlink_to(src / "ok.txt")

    def dangling(path: Path) -> None:
        path.symlink_to("/nonexistent/elsewhere")

    def fifo(path: Path) -> None:
        os.mkfifo(path)

    def unix_socket(path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()

    return [("link", symlink), ("dangling", dangling), ("fifo", fifo), ("sock", unix_socket)]


@pytest.mark.parametrize("index", range(4), ids=["symlink", "dangling", "fifo", "socket"])
async def test_special_entries_are_refused_before_anything_is_sent(
    tmp_path: Path, index: int
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_bytes(b"ok")
    name, make = special_entries(src)[index]
    make(src / "sub" / name)
    store = FsspecSnapshotStore(str(tmp_path / "out"))
    net = LoopbackNetwork(Receiver(store))
    with pytest.raises(UnsupportedEntry) as caught:
        await ship(str(src), "snap", network=net)
    assert caught.value.path.endswith(f"sub/{name}")
    assert net.requests == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name", ["-dash", "trailing.", " lead", "line\nbreak", "bidi\u202eevil", ".fstransport"]
)
async def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / name).write_bytes(b"x")
    with pytest.raises(UnsupportedEntry, match="not safe"):
        await ship(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_path_rules() -> None:
    for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "nul\x00", "a/" * 300 + "b"]:
        assert tree_path_problem(bad) is not None, bad
    for good in ["a", "a/b/c.txt", UNICODE, "x y/z"]:
        assert tree_path_problem(good) is None, good


# -- hostile senders -------------------------------------------------------------------------------


def packed(
    files: list[tuple[str, bytes]],
    dirs: list[str] | None = None,
    *,
    table: dict[str, Any] | None = None,
    crcs: dict[str, int] | None = None,
) -> bytes:
    """A packed stream as a hostile sender may craft it: any table, any bodies."""
    crcs = crcs or {}
    entries = table or {
        "format": "fstransport-tree",
        "version": 1,
        "dirs": dirs or [],
        "files": [[p, len(d), format_checksum(crcs.get(p, chunk_crc(d)))] for p, d in files],
    }
    text = json.dumps(entries).encode()
    return struct.pack(">8sQ", MAGIC, len(text)) + text + b"".join(d for _, d in files)


HOSTILE = {
    "dotdot": packed([("../escape.txt", b"x")]),
    "dotdot inside": packed([("a/../../escape.txt", b"x")]),
    "absolute": packed([("/etc/evil", b"x")]),
    "nul": packed([("a\x00b", b"x")]),
    "backslash": packed([("..\\escape", b"x")]),
    "reserved": packed([(".fstransport/partial/x", b"x")]),
    "dir escapes": packed([], dirs=["../up"]),
    "twice": packed([("a", b"x"), ("a", b"y")]),
    "file and folder": packed([("a", b"x"), ("a/b", b"y")]),
    "bad magic": b"NOTATREE" + packed([("a", b"x")])[8:],
    "sizes too short": packed([("a", b"xyz")])[:-1] + b"",
    "negative size": packed(
        [],
        table={
            "format": "fstransport-tree",
            "version": 1,
            "dirs": [],
            "files": [["a", -1, "crc32c:00000000"]],
        },
    ),
    "extra key": packed(
        [], table={"format": "fstransport-tree", "version": 1, "dirs": [], "files": [], "x": 1}
    ),
    "crc lies": packed([("a", b"data")], crcs={"a": 1234}),
    "table too long": struct.pack(">8sQ", MAGIC, 10**9) + b"{}",
}


async def send_packed_via(net: Network, data: bytes) -> None:
    """Send a crafted packed stream as directory snapshot ``snap`` through `net`."""
    meta = SnapshotMeta("snap", size=len(data), kind="tree")
    await Chunked.send_snapshot(
        net, Vote(1, 1), Snapshot(meta, io.BytesIO(data)), option=TransferOptions(chunk_size=64)
    )


async def send_packed(
    store: FsspecSnapshotStore, data: bytes, *, limits: ReceiverLimits | None = None
) -> None:
    await send_packed_via(LoopbackNetwork(Receiver(store, limits=limits)), data)


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("target_kind", ["local", "memory"])
async def test_hostile_packed_streams_install_nothing(
    tmp_path: Path, case: str, target_kind: str
) -> None:
    root = str(tmp_path / "out") if target_kind == "local" else "memory://out"
    store = FsspecSnapshotStore(root)
    with pytest.raises(RemoteError) as caught:
        await send_packed(store, HOSTILE[case])
    assert isinstance(caught.value.source, InvalidRequest), caught.value.source
    assert caught.value.source.field in ("tree", "size")
    await store.close()
    if target_kind == "local":
        assert not (tmp_path / "escape.txt").exists()
        assert sorted(os.listdir(tmp_path / "out")) in ([], [".fstransport"])
        no_internal_leftovers(tmp_path / "out")
    else:
        assert list(fsspec.filesystem("memory").store) == []


async def test_a_well_formed_crafted_stream_installs(tmp_path: Path) -> None:
    """(the hostile cases above fail for their fault, not for the crafting)"""
    store = FsspecSnapshotStore(str(tmp_path / "out"))
    await send_packed(store, packed([("a/b.txt", b"bee"), ("c", b"")], dirs=["a", "empty"]))
    assert local_tree(tmp_path / "out" / "snap") == (
        {"a", "empty"},
        {"a/b.txt": b"bee", "c": b""},
    )


async def test_the_receivers_file_limit(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "out"))
    data = packed([(f"f{i}", b"x") for i in range(5)])
    with pytest.raises(RemoteError, match="limit of 4"):
        await send_packed(store, data, limits=ReceiverLimits(max_tree_files=4))
    assert not (tmp_path / "out" / "snap").exists()
    await send_packed(store, data, limits=ReceiverLimits(max_tree_files=5))
    assert len(os.listdir(tmp_path / "out" / "snap")) == 5


async def test_a_store_without_trees_refuses_them(tmp_path: Path) -> None:
    class FileOnly:
        def __init__(self, inner: FsspecSnapshotStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "accepts_trees":
                raise AttributeError(name)
            return getattr(self.inner, name)

    receiver = Receiver(FileOnly(FsspecSnapshotStore(str(tmp_path / "out"))))
    data = packed([("a", b"x")])
    req = InstallSnapshotRequest(
        Vote(1, 1), SnapshotMeta("snap", size=len(data), kind="tree"), 0, data, True
    )
    with pytest.raises(InvalidRequest, match="directory snapshots"):
        await receiver.handle(req)


def test_kind_on_the_wire() -> None:
    meta = SnapshotMeta("snap", size=10, checksum="crc32c:00000001", kind="tree")
    assert decode_meta("snap", encode_meta(meta)) == meta
    plain = SnapshotMeta("snap", size=10)
    assert "kind" not in encode_meta(plain)
    assert decode_meta("snap", encode_meta(plain)) == plain
    with pytest.raises(InvalidRequest):
        decode_meta("snap", '{"kind":"symlink"}')


# -- atomic appearance -----------------------------------------------------------------------------


def fail_after(receiver: Receiver, n: int) -> MockNetwork:
    """Delivers `n` chunks, then fails every one (a sender that dies halfway)."""
    delivered = deliver_to(receiver, interleave=False)
    return MockNetwork(after(n, delivered, fail(InvalidRequest("the link died"))))


@pytest.mark.parametrize("target_kind", ["local", "memory"])
async def test_a_failed_transfer_leaves_the_old_tree_and_nothing_new(
    tmp_path: Path, target_kind: str
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    root = str(tmp_path / "out") if target_kind == "local" else "memory://out"
    store = FsspecSnapshotStore(root)
    options = TransferOptions(chunk_size=16 * KiB, max_in_flight=1)
    await ship(str(src), "snap", network=LoopbackNetwork(Receiver(store)), options=options)
    (src / "top.bin").write_bytes(b"a newer version")
    with pytest.raises(InvalidRequest):
        await ship(str(src), "snap", network=fail_after(Receiver(store), 3), options=options)
    if target_kind == "local":
        assert local_tree(tmp_path / "out" / "snap") == (TREE_DIRS, files)
    else:
        assert object_tree(fsspec.filesystem("memory"), "/out/snap")[1] == files


async def test_an_interrupted_tree_resumes_with_a_new_receiver(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    root = str(tmp_path / "out")
    options = TransferOptions(chunk_size=16 * KiB, max_in_flight=1)
    first = FsspecSnapshotStore(root)
    with pytest.raises(InvalidRequest):
        await ship(str(src), "snap", network=fail_after(Receiver(first), 8), options=options)
    await first.close()  # the receiver goes away; its partial data and journal stay
    assert not (tmp_path / "out" / "snap").exists()
    second = FsspecSnapshotStore(root)
    report = await ship(
        str(src), "snap", network=LoopbackNetwork(Receiver(second)), options=options
    )
    assert report.bytes_skipped >= 7 * 16 * KiB  # what the first receiver held was not re-sent
    assert local_tree(tmp_path / "out" / "snap") == (TREE_DIRS, files)


async def test_a_cancelled_transfer_shows_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    cancel: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    sent = 0

    def progress(more: int) -> None:
        nonlocal sent
        sent += more
        if sent > 50_000 and not cancel.done():
            cancel.set_result(None)

    from fstransport import ReplicationClosed

    with pytest.raises(ReplicationClosed):
        await ship(
            str(src),
            str(tmp_path / "out" / "snap"),
            options=TransferOptions(chunk_size=16 * KiB, max_in_flight=1),
            cancel=cancel,
            progress=progress,
        )
    assert not (tmp_path / "out" / "snap").exists()
    assert not (tmp_path / "out" / ".fstransport").exists() or not any(
        p.is_file() for p in (tmp_path / "out" / ".fstransport").rglob("*")
    )


async def test_a_file_changed_after_the_scan_is_never_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    import fstransport.tree as tree_module

    original = tree_module.TreeSource._read_file

    def changing(self: Any, entry: Any, start: int, length: int) -> bytes:
        if entry.path == "top.bin":
            (src / "top.bin").write_bytes(payload(200_001, seed=99))  # same size, new bytes
        return original(self, entry, start, length)

    monkeypatch.setattr(tree_module.TreeSource, "_read_file", changing)
    from fstransport import ChecksumMismatch

    with pytest.raises(ChecksumMismatch):
        await ship(str(src), str(tmp_path / "out" / "snap"))
    assert not (tmp_path / "out" / "snap").exists()


def test_table_build_and_layout() -> None:
    table, header = TreeTable.build(["d"], [("d/a", 3, 1), ("b", 0, 0), ("c", 5, 2)])
    assert [f.offset for f in table.files] == [len(header), len(header) + 3, len(header) + 3]
    assert table.size == len(header) + 8
    assert header.startswith(MAGIC)


async def test_cleanup_removes_what_a_crashed_unpack_left(tmp_path: Path) -> None:
    for folder in ("staging/tree-abc", "old/old-def/tree"):
        leftover = tmp_path / ".fstransport" / folder
        leftover.mkdir(parents=True)
        (leftover / "f.bin").write_bytes(b"x")
    store = FsspecSnapshotStore(str(tmp_path))
    assert await store.cleanup(older_than=3600) == []  # too young
    removed = await store.cleanup(older_than=0)
    assert len(removed) == 2
    assert not [p for p in (tmp_path / ".fstransport").rglob("*") if p.is_file()]


def test_the_command_ships_a_folder(tmp_path: Path) -> None:
    from tests.test_cli_ship import run_in

    files = make_tree(tmp_path / "src")
    dry = run_in(tmp_path, "ship", "src", "dest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    total = sum(map(len, files.values()))
    assert f"({len(files)} files, {total} bytes) -> dest (create)" in dry.stdout.decode()
    assert not (tmp_path / "dest").exists()
    plan = json.loads(run_in(tmp_path, "ship", "src", "dest", "--dry-run", "--json").stdout)
    assert (plan["files"], plan["size"]) == (len(files), total)

    done = run_in(tmp_path, "ship", "src", "dest", "-q")
    assert done.returncode == 0, done.stderr
    assert local_tree(tmp_path / "dest") == (TREE_DIRS, files)
    again = run_in(tmp_path, "ship", "src", "dest", "--json")  # replaced, not nested
    assert json.loads(again.stdout)["files"] == len(files)
    assert local_tree(tmp_path / "dest") == (TREE_DIRS, files)
    into = run_in(tmp_path, "ship", "src", "dest/", "-q")  # a trailing / puts it inside
    assert into.returncode == 0, into.stderr
    assert local_tree(tmp_path / "dest" / "src")[1] == files

    (tmp_path / "src" / "link").symlink_to("/etc/passwd")
    refused = run_in(tmp_path, "ship", "src", "other")
    assert refused.returncode == 1
    assert b"symbolic link" in refused.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_tree_through_a_faulty_network_arrives_whole(tmp_path: Path, seed: int) -> None:
    """Chunks of the packed stream dropped, duplicated, reordered and corrupted on the way:
    the chunk CRCs, the window's retries and the whole checksum deliver the exact tree."""
    from fstransport import FaultyNetwork, RetryPolicy

    src = tmp_path / "src"
    files = make_tree(src)
    store = FsspecSnapshotStore(str(tmp_path / "out"))
    net = FaultyNetwork(
        LoopbackNetwork(Receiver(store)),
        seed=seed,
        drop=0.1,
        duplicate=0.1,
        reorder=0.2,
        corrupt=0.1,
    )
    options = TransferOptions(
        chunk_size=8 * KiB,
        max_in_flight=4,
        retry=RetryPolicy(max_attempts=50, initial_backoff=0.0, max_backoff=0.0),
    )
    report = await ship(str(src), "snap", network=net, options=options)
    assert net.stats.corrupted + net.stats.dropped_requests > 0, "the faults happened"
    assert report.retries > 0
    assert local_tree(tmp_path / "out" / "snap") == (TREE_DIRS, files)


@pytest.mark.parametrize("target_kind", ["memory", "local"])
async def test_large_files_are_streamed_into_place(
    tmp_path: Path, target_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fstransport.storage.backends import objects

    monkeypatch.setattr(objects, "STREAM_ABOVE", 1000)  # every file above 1000 bytes
    src = tmp_path / "src"
    files = make_tree(src)
    if target_kind == "memory":
        await ship(str(src), "memory://out/snap")
        assert object_tree(fsspec.filesystem("memory"), "/out/snap")[1] == files
    else:
        await ship(str(src), str(tmp_path / "out" / "snap"))
        assert local_tree(tmp_path / "out" / "snap")[1] == files


@pytest.mark.s3
async def test_s3_streamed_files_hostile_streams_and_failures_leave_nothing(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fstransport.storage.backends import objects

    def keys() -> list[str]:
        listed = s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
        return [str(o["Key"]) for o in listed]

    root = f"s3://{s3_bucket}/r"
    for case in ("dotdot", "crc lies", "file and folder"):
        store = FsspecSnapshotStore(root, **s3_storage_options)
        with pytest.raises(RemoteError) as caught:
            await send_packed(store, HOSTILE[case])
        assert isinstance(caught.value.source, InvalidRequest)
        await store.close()
        assert keys() == [], case
        assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    monkeypatch.setattr(objects, "STREAM_ABOVE", 1000)
    src = tmp_path / "src"
    files = make_tree(src)
    await ship(str(src), f"{root}/snap", target_options=s3_storage_options)
    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert object_tree(fs, f"{s3_bucket}/r/snap")[1] == files
    before = sorted(keys())

    # a transfer of a new version that dies halfway leaves the old tree exactly as it was
    (src / "top.bin").write_bytes(b"newer")
    store = FsspecSnapshotStore(root, **s3_storage_options)
    with pytest.raises(InvalidRequest):
        await ship(
            str(src),
            "snap",
            network=fail_after(Receiver(store), 2),
            options=TransferOptions(chunk_size=16 * KiB, max_in_flight=1),
        )
    assert (
        object_tree(fs, f"{s3_bucket}/r/snap")[1] == files
    )  # (its partial data kept for a resume)
    await store.abort("snap")
    await store.close()
    assert sorted(keys()) == before
    assert object_tree(fs, f"{s3_bucket}/r/snap")[1] == files
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_a_file_that_grows_after_the_scan_fails_the_ship(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fstransport import SourceChanged
    from fstransport.tree import TreeSource, open_tree_source

    src = tmp_path / "src"
    make_tree(src)
    source = await open_tree_source(str(src))
    with (src / "top.bin").open("ab") as grow:
        grow.write(b"appended after the scan")

    async def scanned(url: str, **options: Any) -> TreeSource:
        return source

    monkeypatch.setattr("fstransport.transfer.open_tree_source", scanned)
    with pytest.raises(SourceChanged):
        await ship(str(src), str(tmp_path / "out" / "snap"))
    assert not (tmp_path / "out" / "snap").exists()


async def test_a_memory_tree_replaces_a_file_snapshot_of_the_same_name(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/store/snap", b"an older file snapshot")
    files = make_tree(tmp_path / "src")
    await ship(str(tmp_path / "src"), "memory://store/snap")
    assert "/store/snap" not in fs.store
    assert object_tree(fs, "/store/snap")[1] == files


async def test_a_failing_object_store_write_leaves_no_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file's write fails while others are under way: every write is stopped and the new
    generation removed; the old tree stays, complete."""
    fs = fsspec.filesystem("memory")
    files = thousand_files(tmp_path / "src")
    await ship(str(tmp_path / "src"), "memory://store/snap")
    before = dict(fs.store)
    (tmp_path / "src" / "d3" / "f0503.txt").write_bytes(b"newer")
    original = type(fs).pipe_file

    def failing(self: Any, path: str, value: bytes, **kwargs: Any) -> None:
        if path.endswith("f0500.txt"):
            raise OSError(5, "injected write failure")
        original(self, path, value, **kwargs)

    monkeypatch.setattr(type(fs), "pipe_file", failing)
    from fstransport import RetryExhausted, RetryPolicy

    # (a storage failure may pass: the sender tries again, each install fails the same way)
    options = TransferOptions(retry=RetryPolicy(max_attempts=2, initial_backoff=0.0))
    with pytest.raises(RetryExhausted, match="injected"):
        await ship(str(tmp_path / "src"), "memory://store/snap", options=options)
    await asyncio.sleep(0.1)  # a write that outlived the failure would land now
    assert dict(fs.store) == before
    assert object_tree(fs, "/store/snap")[1] == files


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_store_option_for_trees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    files = make_tree(tmp_path / "src")
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    target = str(tmp_path / "out" / "snap")
    await ship(str(tmp_path / "src"), target, store_options={"fsync": fsync})
    assert local_tree(tmp_path / "out" / "snap") == (TREE_DIRS, files)
    # every file, every folder, the tree's root and its parent (and the packed stream itself)
    if fsync:
        assert len(synced) >= len(files) + len(TREE_DIRS) + 2
    else:
        assert synced == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_the_rename_fallback_replaces_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    import fstransport.tree.install as tree_module

    calls: list[bool] = []
    real = tree_module._exchange

    def exchange_or_not(a: str, b: str) -> bool:
        done = real(a, b) if exchange else False
        calls.append(done)
        return done

    monkeypatch.setattr(tree_module, "_exchange", exchange_or_not)
    final, staging = tmp_path / "tree", tmp_path / "staging"
    (final / "old").mkdir(parents=True)
    (final / "old" / "f").write_bytes(b"old")
    staging.mkdir()
    (staging / "new").write_bytes(b"new")
    tree_module.swap_into_place(str(staging), str(final), str(tmp_path / "old-root"))
    assert local_tree(final) == (set(), {"new": b"new"})
    assert not staging.exists()
    if exchange and calls == [False]:
        pytest.skip("this system or filesystem has no renameat2(RENAME_EXCHANGE)")
    assert calls == [exchange]
    assert not list((tmp_path / "old-root").glob("*/*")), "the old tree is removed"


async def test_a_device_is_refused(tmp_path: Path) -> None:
    import stat

    src = tmp_path / "src"
    src.mkdir()
    try:
        os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD, which this user lacks")
    with pytest.raises(UnsupportedEntry, match="device"):
        await ship(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("landed", [True, False], ids=["answer-lost", "not-written"])
async def test_a_manifest_write_that_fails_never_leaves_a_manifest_without_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """The manifest's PUT fails: when it landed and only its answer was lost, the manifest
    names the new generation, which must stay (the tree is installed, what it replaced goes);
    when it never landed, the old tree stays and the new generation goes.  Either way a reader
    finds one complete tree and nothing else."""
    fs = fsspec.filesystem("memory")
    old = make_tree(tmp_path / "src")
    await ship(str(tmp_path / "src"), "memory://store/snap")
    (tmp_path / "src" / "top.bin").write_bytes(b"newer")
    new = {**old, "top.bin": b"newer"}
    original = type(fs).pipe_file

    def failing(self: Any, path: str, value: bytes, **kwargs: Any) -> None:
        if path.endswith(MANIFEST_NAME):
            if landed:
                original(self, path, value, **kwargs)
            raise OSError(5, "injected: no answer to the manifest's PUT")
        original(self, path, value, **kwargs)

    monkeypatch.setattr(type(fs), "pipe_file", failing)
    from fstransport import RetryPolicy

    options = TransferOptions(retry=RetryPolicy(max_attempts=1))
    if landed:  # the manifest is there and names the new files: installed
        await ship(str(tmp_path / "src"), "memory://store/snap", options=options)
    else:
        with pytest.raises(FstransportError, match="injected"):
            await ship(str(tmp_path / "src"), "memory://store/snap", options=options)
    monkeypatch.undo()
    assert object_tree(fs, "/store/snap")[1] == (new if landed else old)
