"""Delta for directory snapshots (`fstransport.protocol.delta_tree`, `fstransport.delta.tree`):
whole unchanged files are never sent (renamed and moved ones neither), changed files send only
their changed extents, onto local and memory targets; a base changed between the offer and the
install is never installed; a missing base or a hostile offer means a full transfer."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import (
    DeltaOffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Pieces,
    SnapshotMeta,
    Vote,
)
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.protocol.delta import SEND, Recipe, apply_recipe, new_key
from fstransport.protocol.delta_tree import (
    FileIdentity,
    TreeMapBuilder,
    plan_tree_recipe,
    whole_matches,
)
from fstransport.protocol.delta_tree_wire import decode_tree_offer, encode_tree_offer, encode_want
from fstransport.protocol.delta_wire import encode_recipe
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import ship
from fstransport.tree import TREE, TreeTable, load_manifest, open_tree_source
from tests.test_delta_protocol import _crc_twin

Tree = dict[str, bytes]
OPTIONS = TransferOptions(chunk_size=64 * KiB)


def write_tree(root: Path, files: Tree, dirs: tuple[str, ...] = ()) -> None:
    """Make `root` hold exactly `files` (and the empty folders `dirs`)."""
    if root.exists():
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
            for name in dirnames:
                os.rmdir(os.path.join(dirpath, name))
    root.mkdir(parents=True, exist_ok=True)
    for folder in dirs:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def installed(target: str) -> Tree:
    """The files of the tree installed at `target` (a local folder, or a memory manifest)."""
    if target.startswith("memory://"):
        fs, path = fsspec.core.url_to_fs(target)
        manifest = load_manifest(fs, path)
        generation = f"{path}/{manifest['generation']}"
        return {p: fs.cat_file(f"{generation}/{p}") for p, _, _ in manifest["files"]}
    root = Path(target)
    return {
        str(p.relative_to(root)).replace(os.sep, "/"): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
    }


def target_of(kind: str, tmp_path: Path) -> str:
    if kind == "local":
        return str(tmp_path / "received" / "tree")
    return f"memory://tree-{uuid.uuid4().hex}/tree"


def sst_files(rng: random.Random, count: int, prefix: str = "") -> Tree:
    return {f"{prefix}{i:06d}.sst": rng.randbytes(rng.randint(1, 40) * 1000) for i in range(count)}


class Recording:
    """Delivers to `inner` and keeps every request's data (what crossed the network)."""

    carries_delta = True

    def __init__(self, inner: Any) -> None:
        self.inner, self.sent = inner, bytearray()

    async def install_snapshot(
        self, req: InstallSnapshotRequest, options: TransferOptions
    ) -> InstallSnapshotResponse:
        self.sent += req.data.join() if isinstance(req.data, Pieces) else req.data
        answer: InstallSnapshotResponse = await self.inner.install_snapshot(req, options)
        return answer


async def send_tree(net: Any, receiver: Receiver, folder: Path, options: TransferOptions) -> Any:
    source = await open_tree_source(str(folder))
    meta = SnapshotMeta("tree", size=source.size, checksum=source.checksum, kind=TREE)
    result = await send_source(net, Vote(1, 0), meta, source, None, options)
    install = receiver._io.installing.get("tree")
    if install is not None:
        await install
    assert result.completed
    return result


# -- the pieces -------------------------------------------------------------------------------


def tree_map(files: list[bytes], mode: str, key: bytes) -> Any:
    builder = TreeMapBuilder(mode, key=key, block_size=4096)
    for data in files:
        builder.update(data)
        builder.end_file()
    return builder.finish()


def plan(base: Any, files: list[bytes], key: bytes, body_offset: int) -> Recipe:
    """`plan_tree_recipe` as a sender runs it: identities first, maps of the unmatched files."""
    idents = []
    for data in files:
        ident = FileIdentity(key)
        ident.update(data)
        idents.append(ident.identity())
    cutter, whole, maps = TreeMapBuilder(base.mode, key=key, block_size=4096), None, {}
    whole = whole_matches(base)
    for number, data in enumerate(files):
        if data and idents[number] not in whole:
            builder = cutter.file_builder()
            builder.update(data)
            maps[number] = builder.finish()
    return plan_tree_recipe(base, idents, maps, body_offset)


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_the_recipe_copies_whole_files_wherever_they_are(mode: str) -> None:
    rng, key = random.Random(1), new_key()
    a, b, c, d = (rng.randbytes(n) for n in (50_000, 9_000, 70_000, 3))
    changed = bytearray(c)
    changed[20_000:20_100] = rng.randbytes(100)
    base = decode_tree_offer(encode_tree_offer(tree_map([a, b, c, d], mode, key)), max_size=1 << 30)
    new_files = [b, b"", rng.randbytes(5_000), bytes(changed), a]  # moved, empty, new, changed
    table, head = TreeTable.build([], [(f"f{i}", len(f), 0) for i, f in enumerate(new_files)])
    recipe = plan(base, new_files, key, table.body_offset)
    packed = head + b"".join(new_files)
    sent = b"".join(packed[s:e] for s, e in recipe.sends())
    assert apply_recipe(recipe, a + b + c + d, sent) == packed
    copies = [(n, at) for n, at in recipe.ranges if at != SEND]
    assert (len(b), 50_000) in copies  # each moved file in one range
    assert (len(a), 0) in copies
    assert recipe.sends()[0] == (0, table.body_offset)  # the header and table
    assert recipe.sent <= table.body_offset + 5_000 + 70_000 // 2  # not the moved files


def test_a_file_is_reused_only_when_its_whole_identity_agrees() -> None:
    key = new_key()
    one = random.Random(10).randbytes(4096)
    twin = _crc_twin(one)  # same size, same CRC32C, other bytes
    assert twin != one
    assert chunk_crc(twin) == chunk_crc(one)
    base = tree_map([one], "blocks", key)
    assert plan(base, [twin], key, 10).reused == 0  # (its one block is no match either)
    assert plan(base, [one], key, 10).reused == 4096
    other = TreeMapBuilder("blocks", key=new_key(), block_size=4096).file_builder()
    other.update(one)
    with pytest.raises(ConfigurationError):  # a map under another key is refused
        plan_tree_recipe(base, [(4096, 0, 0)], {0: other.finish()}, 0)


def offer_bytes() -> bytes:
    rng = random.Random(2)
    return encode_tree_offer(tree_map([rng.randbytes(9000), rng.randbytes(3)], "blocks", new_key()))


def straddling() -> bytes:
    raw = bytearray(offer_bytes())
    raw[32:40] = (9001).to_bytes(8, "little")  # files 9001 + 3: an extent crosses into file 2
    raw[40:48] = (2).to_bytes(8, "little")
    return bytes(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"FSTDTRE1" + b"\0" * 24,
        offer_bytes()[:-1],
        offer_bytes() + b"\0",
        b"FSTDTRE9" + offer_bytes()[8:],
        offer_bytes()[:8] + b"\7" + offer_bytes()[9:],  # unknown mode
        offer_bytes()[:12] + (4097).to_bytes(4, "little") + offer_bytes()[16:],  # block size
        offer_bytes()[:32] + b"\0" * 8 + offer_bytes()[40:],  # an empty file listed
        offer_bytes().replace(b"FSTDMAP3", b"FSTDMAP2", 1),  # extents of 32-bit tags
        straddling(),
    ],
)
def test_hostile_tree_offers_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_tree_offer(raw, max_size=1 << 30)


def test_mutated_tree_offers_never_crash() -> None:
    rng, good, refused = random.Random(3), offer_bytes(), 0
    for _ in range(400):
        raw = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        try:
            tree = decode_tree_offer(bytes(raw), max_size=1 << 30)
        except InvalidRequest:
            refused += 1
            continue
        assert sum(tree.sizes) == tree.size == sum(tree.extents.lengths)
    assert refused > 100


# -- through the protocol ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_unchanged_files_are_never_sent(kind: str, mode: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    base = {**sst_files(rng, 12, "db/"), "empty": b"", "d\u00e9j\u00e0 vu/MANIFEST": b"m1"}
    base["db/000003.sst"] = rng.randbytes(200_000)
    new = dict(base)
    del new["db/000001.sst"]  # removed
    new["moved/000002.sst"] = new.pop("db/000002.sst")  # renamed into another folder
    page = bytearray(new["db/000003.sst"])
    if mode == "blocks":
        page[4096:4196] = rng.randbytes(100)  # a page rewritten
    else:
        page[5000:5000] = rng.randbytes(100)  # bytes inserted
    new["db/000003.sst"] = bytes(page)
    new["db/000100.sst"] = rng.randbytes(30_000)  # added
    new["d\u00e9j\u00e0 vu/MANIFEST"] = b"m2"
    folder, target = tmp_path / "src", target_of(kind, tmp_path)
    options = TransferOptions(chunk_size=16 * KiB, delta=mode)
    write_tree(folder, base, dirs=("empty folder",))
    first = await ship(str(folder), target, options=options)
    assert first.bytes_reused == 0
    write_tree(folder, new, dirs=("empty folder",))
    store = FsspecSnapshotStore(str(Path(target).parent) if kind == "local" else target[:-5])
    receiver = Receiver(store)
    net = Recording(LoopbackNetwork(receiver))
    result = await send_tree(net, receiver, folder, options)
    assert installed(target) == new
    if kind == "local":
        assert (Path(target) / "empty folder").is_dir()
    unchanged = [p for p in new if new[p] == base.get(p) and len(new[p]) > 64]
    unchanged.append("moved/000002.sst")
    for path in unchanged:  # not one of their bytes crossed the network
        assert new[path][16:48] not in net.sent, path
    reused = sum(len(new[p]) for p in unchanged)
    assert result.stats.bytes_reused >= reused
    table = len(net.sent) - len(new["db/000100.sst"])
    assert table < 2_000 + len(new["db/000003.sst"]) // 2  # the table, the changed extents


async def test_an_unchanged_tree_sends_its_table_and_the_map(tmp_path: Path) -> None:
    files = sst_files(random.Random(5), 30)
    folder, target = tmp_path / "src", target_of("local", tmp_path)
    write_tree(folder, files)
    first = await ship(str(folder), target, options=OPTIONS)
    second = await ship(str(folder), target, options=OPTIONS)
    size = sum(len(f) for f in files.values())
    assert second.bytes_reused == size
    assert second.bytes_sent < first.bytes_sent - size + 0.01 * size
    assert installed(target) == files


class ChangeBaseAfterRecipe(Recording):
    """Once a recipe was accepted, rewrites one base file (same size, other bytes)."""

    def __init__(self, inner: Any, scribble: Any) -> None:
        super().__init__(inner)
        self.scribble, self.changed = scribble, 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, options: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await super().install_snapshot(req, options)
        if req.recipe is not None:
            self.scribble()
            self.changed += 1
        return answer


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_base_changed_after_the_offer_is_never_installed(kind: str, tmp_path: Path) -> None:
    rng = random.Random(6)
    base = sst_files(rng, 6)
    new = {**base, "000099.sst": rng.randbytes(20_000)}
    root = str(tmp_path / "received") if kind == "local" else f"memory://b-{uuid.uuid4().hex}"
    store = FsspecSnapshotStore(root)
    receiver = Receiver(store)
    folder = tmp_path / "src"
    write_tree(folder, base)
    loop = LoopbackNetwork(receiver)
    await send_tree(loop, receiver, folder, OPTIONS)
    fs, path = fsspec.filesystem("file" if kind == "local" else "memory"), store.path("tree")
    victim = "000002.sst"
    if kind == "memory":
        victim = f"{load_manifest(fs, path)['generation']}/{victim}"

    def scribble() -> None:
        data = base["000002.sst"]
        fs.pipe_file(f"{path}/{victim}", bytes(b ^ 0xFF for b in data[:100]) + data[100:])

    write_tree(folder, new)
    net = ChangeBaseAfterRecipe(loop, scribble)
    result = await send_tree(net, receiver, folder, OPTIONS)
    assert net.changed == 1
    assert installed(store.path("tree") if kind == "local" else f"{root}/tree") == new
    assert result.stats.rewinds >= 1
    assert result.stats.bytes_reused == 0


async def test_no_base_or_a_file_base_means_a_full_transfer(tmp_path: Path) -> None:
    files = sst_files(random.Random(7), 8)
    folder = tmp_path / "src"
    write_tree(folder, files)
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    one = BufferSource(random.Random(8).randbytes(200_000), "one")
    await send_source(loop, Vote(1, 0), SnapshotMeta("other"), one, None, OPTIONS)
    await receiver._io.installing.get("other", _done())
    result = await send_tree(loop, receiver, folder, OPTIONS)  # the last installed: a file
    assert result.stats.bytes_reused == 0
    assert result.stats.bytes_sent >= sum(len(f) for f in files.values())
    assert installed(store.path("tree")) == files


async def _done() -> None:
    return None


class HostileOffer(Recording):
    """Answers the first delta request with a mangled tree offer."""

    async def install_snapshot(
        self, req: InstallSnapshotRequest, options: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await super().install_snapshot(req, options)
        if answer.offer is not None:
            raw = bytearray(answer.offer.map)
            raw[40:48] = (1).to_bytes(8, "little")  # the files no longer add up
            offer = DeltaOffer(answer.offer.base_id, "crc32c:0", answer.offer.size, bytes(raw))
            return InstallSnapshotResponse(answer.vote, held=answer.held, offer=offer)
        return answer


async def test_a_hostile_offer_means_a_full_transfer(tmp_path: Path) -> None:
    files = sst_files(random.Random(9), 8)
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    folder = tmp_path / "src"
    write_tree(folder, files)
    await send_tree(LoopbackNetwork(receiver), receiver, folder, OPTIONS)
    files["new.sst"] = b"n" * 5000
    write_tree(folder, files)
    result = await send_tree(HostileOffer(LoopbackNetwork(receiver)), receiver, folder, OPTIONS)
    assert result.stats.bytes_reused == 0
    assert installed(store.path("tree")) == files


async def test_a_tree_delta_resumes_after_the_sender_died(tmp_path: Path) -> None:
    """A sender dies after the recipe and some chunks; the next one (a new exchange, a new key)
    finds the chunks written and the copied files, and the tree installed is exact."""
    rng = random.Random(11)
    base = sst_files(rng, 10)
    new = {**base, **{f"new{i}.sst": rng.randbytes(9_000) for i in range(6)}}
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    folder = tmp_path / "src"
    write_tree(folder, base)
    await send_tree(loop, receiver, folder, OPTIONS)

    class DiesAfter:
        carries_delta = True

        def __init__(self) -> None:
            self.data_requests = 0

        async def install_snapshot(
            self, req: InstallSnapshotRequest, options: TransferOptions
        ) -> InstallSnapshotResponse:
            if req.delta is None:
                self.data_requests += 1
                if self.data_requests > 3:
                    raise InvalidRequest("the sender's process died")  # fatal for the sender
            answer: InstallSnapshotResponse = await loop.install_snapshot(req, options)
            return answer

    small = TransferOptions(chunk_size=4 * KiB, max_in_flight=1, delta="blocks")
    write_tree(folder, new)
    with pytest.raises(InvalidRequest):
        await send_tree(DiesAfter(), receiver, folder, small)
    assert receiver.receiving == ["tree"]
    result = await send_tree(loop, receiver, folder, small)
    assert installed(store.path("tree")) == new
    assert result.stats.bytes_reused >= sum(len(d) for d in base.values())
    assert result.stats.bytes_sent < 6 * 9_000 + 8 * KiB


def recipe_bytes(size: int, base_size: int, ranges: list[tuple[int, int]]) -> bytes:
    return encode_recipe(Recipe(size, base_size, tuple(ranges)))


@pytest.mark.parametrize(
    ("ranges", "field"),
    [
        ([(100, SEND), (4096, 1), (-1, SEND)], "delta"),  # not on the base's extents
        ([(100, SEND), (4096, 20_000), (-1, SEND)], "delta_recipe"),  # outside the base
        ([(100, SEND), (10_000, 0), (1, SEND)], "delta_recipe"),  # not the snapshot's size
    ],
)
async def test_hostile_tree_recipes_are_refused(
    ranges: list[tuple[int, int]], field: str, tmp_path: Path
) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    folder = tmp_path / "src"
    write_tree(folder, {"a": random.Random(12).randbytes(10_000), "b": b"b" * 5000})
    await send_tree(LoopbackNetwork(receiver), receiver, folder, OPTIONS)
    size = 30_000
    meta = SnapshotMeta("tree", size=size, kind=TREE)
    first = InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks")
    answer = await receiver.handle(first)
    assert answer.offer is not None
    assert answer.offer.size == 15_000
    fixed = [(n if n >= 0 else size - sum(m for m, _ in ranges if m >= 0), b) for n, b in ranges]
    raw = recipe_bytes(size, 15_000, fixed)
    second = InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks", recipe=raw)
    with pytest.raises(InvalidRequest) as caught:
        await receiver.handle(second)
    assert caught.value.field == field
    assert installed(store.path("tree"))["b"] == b"b" * 5000  # the base untouched


async def test_a_base_tree_holding_a_symlink_is_no_base(tmp_path: Path) -> None:
    files = sst_files(random.Random(13), 6)
    folder, target = tmp_path / "src", tmp_path / "received" / "tree"
    write_tree(folder, files)
    await ship(str(folder), str(target), options=OPTIONS)
    (tmp_path / "secret").write_bytes(b"s" * 5000)
    os.symlink(tmp_path / "secret", target / "link")
    report = await ship(str(folder), str(target), options=OPTIONS)
    assert report.bytes_reused == 0
    assert installed(str(target)) == files


@pytest.mark.parametrize(
    "raw",
    [
        encode_want([5]),  # no such base file
        encode_want([1, 0]),  # out of order
        encode_want([0, 0]),  # twice
        encode_want([0])[:-1],  # cut short
        encode_want([0]) + b"\0",
    ],
)
async def test_hostile_requests_for_base_extents_are_refused(raw: bytes, tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    folder = tmp_path / "src"
    write_tree(folder, {"a": random.Random(14).randbytes(10_000), "b": b"b" * 5000})
    await send_tree(LoopbackNetwork(receiver), receiver, folder, OPTIONS)
    meta = SnapshotMeta("tree", size=30_000, kind=TREE)
    first = InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks")
    answer = await receiver.handle(first)
    assert answer.offer is not None
    offered = decode_tree_offer(answer.offer.map, max_size=1 << 30)
    assert list(offered.mapped) == [0, 0]  # identities only, until extents are asked for
    want = InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks", recipe=raw)
    with pytest.raises(InvalidRequest) as caught:
        await receiver.handle(want)
    assert caught.value.field == "delta_recipe"
    good = replace(want, recipe=encode_want([1]))
    again = await receiver.handle(good)
    assert again.offer is not None
    part = decode_tree_offer(again.offer.map, max_size=1 << 30)  # that file alone, cut
    assert (list(part.sizes), list(part.mapped)) == ([5000], [1])
    assert len(part.extents) == 2  # two blocks of its 5000 bytes


async def test_base_extents_of_a_file_snapshot_are_refused(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    (tmp_path / "received").mkdir()
    (tmp_path / "received" / "snap").write_bytes(random.Random(15).randbytes(100_000))
    meta = SnapshotMeta("snap", size=100_000)
    first = InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks")
    assert (await receiver.handle(first)).offer is not None
    want = replace(first, recipe=encode_want([0]))
    with pytest.raises(InvalidRequest):
        await receiver.handle(want)


async def test_a_tree_fanned_out_reuses_where_each_target_holds_a_base(tmp_path: Path) -> None:
    rng = random.Random(16)
    base = sst_files(rng, 8)
    new = {**base, "new.sst": rng.randbytes(30_000)}
    folder = tmp_path / "src"
    holds, empty = str(tmp_path / "a" / "tree"), f"memory://fan-{uuid.uuid4().hex}/tree"
    write_tree(folder, base)
    await ship(str(folder), holds, options=OPTIONS)
    write_tree(folder, new)
    report = await ship(str(folder), [holds, empty], options=OPTIONS)
    assert installed(holds) == new
    assert installed(empty) == new
    reused = {t.target: t.bytes_reused for t in report.targets}
    assert reused[empty] == 0
    assert reused[holds] == sum(len(d) for d in base.values())


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_thousand_small_files_send_only_the_changed_ones(kind: str, tmp_path: Path) -> None:
    rng = random.Random(17)
    base = {f"d{i % 10}/f{i:04d}": rng.randbytes(1024) for i in range(1000)}
    new = dict(base)
    for i in rng.sample(range(1000), 10):
        new[f"d{i % 10}/f{i:04d}"] = rng.randbytes(1024)  # rewritten
    new.update({f"added/{i}": rng.randbytes(2048) for i in range(5)})
    folder, target = tmp_path / "src", target_of(kind, tmp_path)
    write_tree(folder, base)
    await ship(str(folder), target, options=OPTIONS)
    write_tree(folder, new)
    report = await ship(str(folder), target, options=OPTIONS)
    assert installed(target) == new
    assert report.bytes_reused == 990 * 1024
    table = 1010 * 40  # about 40 bytes of table a file: what is sent besides the changes
    assert report.bytes_sent < 10 * 1024 + 5 * 2048 + table + 1010 * 40  # the offer: ~37 a file
