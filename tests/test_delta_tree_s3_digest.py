"""Digests kept with a tree installed in a bucket: an offer of that tree as a delta base reads no
base file whose recorded ETag and size the listing still shows; a file changed behind the
manifest, a forged or malformed record, a manifest without records (an older one) are read as
before and never install wrong bytes; the offer's format is versioned (an older peer gets a full
transfer).  On the session's S3 server (moto, or Ceph RGW)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

import fstransport.delta.tree as tree_delta
from fstransport import TransferOptions
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.tree_s3 import _recorded
from fstransport.errors import InvalidRequest
from fstransport.options import KiB, MiB
from fstransport.protocol.delta import new_key
from fstransport.protocol.delta_tree import TreeMapBuilder
from fstransport.protocol.delta_tree_ident import FileIdentity, file_tag
from fstransport.protocol.delta_tree_wire import decode_tree_offer, encode_tree_offer
from fstransport.transfer import ship
from fstransport.tree import MANIFEST_NAME, STREAM_ABOVE
from tests.helpers import object_bytes, s3_calls, uploads
from tests.test_delta_tree import write_tree
from tests.test_delta_tree_s3 import installed, old_and_new

Tree = dict[str, bytes]
OPTIONS = TransferOptions(chunk_size=256 * KiB)
PREFIX = "trees/ckpt"


def manifest_of(client: Any, bucket: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(object_bytes(client, bucket, f"{PREFIX}/{MANIFEST_NAME}"))
    return loaded


def put_manifest(client: Any, bucket: str, manifest: dict[str, Any]) -> None:
    body = json.dumps(manifest).encode()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{MANIFEST_NAME}", Body=body)


def listed_etags(client: Any, bucket: str, generation: str) -> dict[str, str]:
    prefix = f"{PREFIX}/{generation}/"
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: o["ETag"].strip('"').lower() for o in found}


def records(client: Any, bucket: str) -> dict[str, tuple[int, str, str]]:
    """``path -> (size, ETag, digest)`` the manifest records, each checked against the listing
    and the object's bytes (a record is only ever of the version installed)."""
    manifest = manifest_of(client, bucket)
    etags = listed_etags(client, bucket, manifest["generation"])
    out = {}
    for path, size, etag, digest in manifest["digests"]:
        data = object_bytes(client, bucket, f"{PREFIX}/{manifest['generation']}/{path}")
        hashed = f"blake3:{blake3(data).hexdigest()}"
        assert (len(data), etag, digest) == (size, etags[path], hashed)
        out[path] = (size, etag, digest)
    return out


class BaseReads:
    """The base-tree objects this process GETs while a receiver makes its offer, and in all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offering = False
        self.in_offer: list[str] = []
        self.all: list[str] = []
        real = tree_delta.find_tree_base

        async def offer(*args: Any, **kwargs: Any) -> Any:
            self.offering = True
            try:
                return await real(*args, **kwargs)
            finally:
                self.offering = False

        monkeypatch.setattr(tree_delta, "find_tree_base", offer)

    async def before(self, method: str, kwargs: dict[str, Any]) -> None:
        if method == "get_object" and "/g-" in kwargs["Key"]:  # a generation's file
            name = kwargs["Key"].split("/", 3)[3]
            self.all.append(name)
            if self.offering:
                self.in_offer.append(name)

    @contextmanager
    def counting(self) -> Iterator[BaseReads]:
        self.in_offer.clear()
        self.all.clear()
        with s3_calls(before=self.before):
            yield self


async def ship_tree(folder: Path, files: Tree, bucket: str, options: dict[str, Any]) -> Any:
    write_tree(folder, files)
    target = f"s3://{bucket}/{PREFIX}"
    return await ship(str(folder), target, options=OPTIONS, target_options=options)


def nonempty(files: Tree) -> set[str]:
    return {path for path, data in files.items() if data}


async def test_offers_after_an_install_read_no_base_file(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full install records every file; a delta's build records the files it copied whole or
    uploaded (a new 17 MiB file in three parts too), not one whose parts were copied (big.db),
    which the next offer reads once and the one after does not."""
    old, new = old_and_new(11)
    new["sst/large-new.sst"] = random.Random(11).randbytes(17 * MiB)  # uploaded in 3 parts
    folder, reads = tmp_path / "tree", BaseReads(monkeypatch)
    await ship_tree(folder, old, s3_bucket, s3_storage_options)
    assert set(records(s3_client, s3_bucket)) == nonempty(old)

    with reads.counting():
        report = await ship_tree(folder, new, s3_bucket, s3_storage_options)
    assert installed(s3_client, s3_bucket, PREFIX) == new
    assert report.bytes_reused > 12 * MiB
    assert reads.in_offer == []  # every base file identified from its record
    assert set(reads.all) <= {"big.db", "MANIFEST", "sst/003.sst", "sst/004.sst"}  # (extents)
    assert set(records(s3_client, s3_bucket)) == nonempty(new) - {"big.db"}

    newer = dict(new)
    newer["again/renamed.sst"] = newer.pop("renamed.sst")
    with reads.counting():
        report = await ship_tree(folder, newer, s3_bucket, s3_storage_options)
    assert installed(s3_client, s3_bucket, PREFIX) == newer
    assert set(reads.in_offer) == {"big.db"}  # the one file without a record, read once
    assert report.bytes_sent < 64 * KiB
    assert set(records(s3_client, s3_bucket)) == nonempty(newer)  # big.db's digest: the offer's

    newest = dict(newer)
    newest["third.sst"] = newest.pop("sst/000.sst")
    with reads.counting():
        await ship_tree(folder, newest, s3_bucket, s3_storage_options)
    assert installed(s3_client, s3_bucket, PREFIX) == newest
    assert reads.all == []  # no GET of a base file at all: every file copied whole
    assert uploads(s3_client, s3_bucket) == []


async def test_a_full_install_records_streamed_files_too(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A file above `STREAM_ABOVE` is streamed into the bucket at install, hashed on its way."""
    rng = random.Random(17)
    files = {"large": rng.randbytes(STREAM_ABOVE + 5000), "small": rng.randbytes(100), "e": b""}
    await ship_tree(tmp_path / "tree", files, s3_bucket, s3_storage_options)
    assert installed(s3_client, s3_bucket, PREFIX) == files
    assert set(records(s3_client, s3_bucket)) == {"large", "small"}


async def test_a_file_changed_behind_the_manifest_is_read_again(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A base file replaced (same size, other bytes: another ETag) after its digest was
    recorded: its record is not used, the file is read, and the new tree, which holds the file's
    old bytes, gets them sent, never the replaced object copied under their name."""
    old, _ = old_and_new(12)
    folder, reads = tmp_path / "tree", BaseReads(monkeypatch)
    await ship_tree(folder, old, s3_bucket, s3_storage_options)
    generation = manifest_of(s3_client, s3_bucket)["generation"]
    swapped = bytes(b ^ 0x5A for b in old["sst/005.sst"])
    key = f"{PREFIX}/{generation}/sst/005.sst"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=swapped)
    new = dict(old)
    new["moved/x.sst"] = new.pop("sst/006.sst")
    with reads.counting():
        report = await ship_tree(folder, new, s3_bucket, s3_storage_options)
    assert reads.in_offer == ["sst/005.sst"]
    assert installed(s3_client, s3_bucket, PREFIX) == new  # its bytes sent, not copied
    assert report.bytes_sent >= len(old["sst/005.sst"])
    assert "sst/005.sst" in records(s3_client, s3_bucket)  # recorded again, as uploaded


@pytest.mark.parametrize("forgery", ["digest of another file", "another ETag", "malformed"])
async def test_a_forged_record_never_installs_wrong_bytes(
    forgery: str,
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manifest's record of a base file rewritten: the digest of a new file of the same size
    (the record's CRC32C, the file's, tells them apart: the new file is sent), an ETag the
    listing does not show (the record is not used: the file is read), malformed records (none
    used)."""
    old, _ = old_and_new(13)
    folder, reads = tmp_path / "tree", BaseReads(monkeypatch)
    await ship_tree(folder, old, s3_bucket, s3_storage_options)
    victim = "sst/007.sst"
    lookalike = bytes(b ^ 0xA5 for b in old[victim])  # same size, other bytes and CRC32C
    manifest = manifest_of(s3_client, s3_bucket)
    for entry in manifest["digests"]:
        if entry[0] != victim:
            continue
        if forgery == "digest of another file":
            entry[3] = f"blake3:{blake3(lookalike).hexdigest()}"
        elif forgery == "another ETag":
            entry[2] = "0" * 32
    if forgery == "malformed":
        manifest["digests"] = [["x"], "y", [victim, 1, "", "blake3:zz"], 7, None]
    put_manifest(s3_client, s3_bucket, manifest)
    new = dict(old)
    new["lookalike.sst"] = lookalike
    with reads.counting():
        await ship_tree(folder, new, s3_bucket, s3_storage_options)
    assert installed(s3_client, s3_bucket, PREFIX) == new
    if forgery == "another ETag":
        assert reads.in_offer == [victim]
    elif forgery == "malformed":
        assert set(reads.in_offer) == nonempty(old)  # (an older manifest's way)
    else:
        assert reads.in_offer == []


async def test_a_manifest_without_digests_still_serves_as_a_base(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tree installed before digests were kept (its manifest has no ``"digests"``): every
    base file is read for the offer, as before, and the tree it installs records them."""
    old, new = old_and_new(14)
    folder, reads = tmp_path / "tree", BaseReads(monkeypatch)
    await ship_tree(folder, old, s3_bucket, s3_storage_options)
    manifest = manifest_of(s3_client, s3_bucket)
    del manifest["digests"]
    put_manifest(s3_client, s3_bucket, manifest)
    with reads.counting():
        report = await ship_tree(folder, new, s3_bucket, s3_storage_options)
    assert set(reads.in_offer) == nonempty(old)
    assert installed(s3_client, s3_bucket, PREFIX) == new
    assert report.bytes_reused > 12 * MiB
    assert set(records(s3_client, s3_bucket)) == nonempty(new) - {"big.db"}


async def test_an_older_peers_tree_offer_means_a_full_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offer in the format before file tags came from digests (``FSTDTRE1``) is refused by
    the sender's check, and the tree is sent in full, right (local target)."""
    old, new = old_and_new(15)
    folder, target = tmp_path / "tree", tmp_path / "target"
    write_tree(folder, old)
    await ship(str(folder), str(target / "ckpt"), options=OPTIONS)
    real = encode_tree_offer

    def older(tree: Any) -> bytes:
        return b"FSTDTRE1" + real(tree)[8:]

    monkeypatch.setattr(tree_delta, "encode_tree_offer", older)
    write_tree(folder, new)
    report = await ship(str(folder), str(target / "ckpt"), options=OPTIONS)
    assert report.bytes_reused == 0
    for path, data in new.items():
        assert (target / "ckpt" / path).read_bytes() == data


def test_a_file_tag_is_keyed_and_a_recorded_digest_gives_the_read_identity() -> None:
    key, data = new_key(), random.Random(16).randbytes(300_000)
    ident = FileIdentity(key)
    for at in range(0, len(data), 65536):
        ident.update(data[at : at + 65536])
    digest = blake3(data).digest()
    assert ident.digest() == digest
    size, crc, tag = ident.identity()
    assert (size, crc, tag) == (len(data), chunk_crc(data), file_tag(key, len(data), digest))
    assert tag != file_tag(new_key(), len(data), digest)  # (2^-64 to fail by chance)
    assert tag != file_tag(key, len(data) + 1, digest)
    assert 0 <= tag < 1 << 64
    read = TreeMapBuilder("blocks", key=key, block_size=4096, extents=False)
    read.update(data)
    read.end_file()
    known = TreeMapBuilder("blocks", key=key, block_size=4096, extents=False)
    known.known_file(len(data), chunk_crc(data), digest)
    a, b = read.finish(), known.finish()
    assert encode_tree_offer(a) == encode_tree_offer(b)
    assert read.digests == known.digests == [digest]
    with pytest.raises(ValueError, match="identified whole"):
        known.known_file(0, 0, digest)
    with pytest.raises(InvalidRequest):
        decode_tree_offer(b"FSTDTRE1" + encode_tree_offer(a)[8:], max_size=len(data))


def test_hostile_digest_records_are_left_out() -> None:
    """`_recorded` takes only well-formed records of files the manifest lists with a CRC32C."""
    digest = "blake3:" + "ab" * 32
    crc = format_checksum(7)
    manifest: dict[str, Any] = {
        "files": [["a", 3, crc], ["b", 3, "nonsense"], ["c", 3, crc]],
        "digests": [
            ["a", 3, "e1", digest],
            ["b", 3, "e2", digest],  # its CRC32C is not one
            ["c", 3, "", digest],  # no ETag
            ["d", 3, "e4", digest],  # not a file of the manifest
            ["c", 3, "e3", "blake3:" + "ab" * 31],  # short
            ["c", 3, "e3", "sha256:" + "ab" * 32],
            ["c", "3", "e3", digest],
            ["c", 3, "e3", digest, 1],
            "c",
        ],
    }
    assert _recorded(manifest) == {"a": (3, "e1", 7, bytes.fromhex("ab" * 32))}
    assert _recorded({"files": [], "digests": {"a": 1}}) == {}
    assert _recorded({"files": []}) == {}
