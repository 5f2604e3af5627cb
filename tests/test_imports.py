"""Cheap imports: ``import fstransport`` loads no heavy dependency; every public name resolves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import fstransport

HEAVY = ["aiohttp", "fsspec", "s3fs", "botocore", "aiobotocore", "boto3", "matplotlib"]


def loaded_after(code: str) -> list[str]:
    """The heavy modules (and their submodules) a fresh interpreter holds after running `code`."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize(
    "code",
    [
        "import fstransport",
        "import fstransport.protocol",
        # the in-process pieces and the interfaces need no backend either
        "import fstransport.network, fstransport.storage.base; fstransport.__version__\n"
        "from fstransport import Receiver, LoopbackNetwork, FaultyNetwork, ReceiverLimits\n"
        "from fstransport import SnapshotStore, RetryPolicy, TransferOptions, Network",
        # the wire format and the error table are plain Python: a peer can parse without aiohttp
        "import fstransport.http, fstransport.http.wire, fstransport.http.statuses",
    ],
)
def test_light_imports_load_no_heavy_dependency(code: str) -> None:
    assert loaded_after(code) == []


SEND_WITHOUT_FSSPEC = """
import asyncio, io, sys, tempfile
from fstransport import Chunked, Snapshot, SnapshotMeta, TransferOptions, Vote
from fstransport.testing.mock import MockNetwork, answer

async def send(data):
    net = MockNetwork(answer)
    meta = SnapshotMeta("s", size=None)
    await Chunked.send_snapshot(net, Vote(1, 1), Snapshot(meta, data), None,
                                TransferOptions(chunk_size=4096))
    assert net.data_bytes == 10_000, net.data_bytes

with tempfile.TemporaryFile() as f:  # a real file: read through a memory map
    f.write(bytes(10_000))
    asyncio.run(send(f))
asyncio.run(send(io.BytesIO(bytes(10_000))))
"""


@pytest.mark.parametrize(
    "code",
    [
        "import fstransport.sender",
        "from fstransport.sender import Chunked, send_source\n"
        "from fstransport.storage.source import source_for_file, ReadSettings, PreadSource",
        # a snapshot from a file object goes out without fsspec (it reads from a descriptor)
        SEND_WITHOUT_FSSPEC,
    ],
)
def test_the_sender_loads_no_heavy_dependency(code: str) -> None:
    """The sender needs fsspec only to read from fsspec: `open_source` imports it when called."""
    assert loaded_after(code) == []


def test_a_local_ship_loads_no_aiohttp_and_no_s3_client() -> None:
    """A file shipped to a local folder needs fsspec, not the HTTP or S3 stack: `ship` and
    ``fstransport ship`` start faster without them (an S3 part body resolves aiohttp on use)."""
    loaded = loaded_after(
        "import asyncio, pathlib, tempfile\n"
        "from fstransport import ship\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    src = pathlib.Path(folder, 'a.bin')\n"
        "    src.write_bytes(bytes(70_000))\n"
        "    asyncio.run(ship(str(src), str(pathlib.Path(folder, 'out', 'a.bin'))))\n"
        "    assert pathlib.Path(folder, 'out', 'a.bin').read_bytes() == bytes(70_000)"
    )
    assert "fsspec" in loaded
    assert [m for m in loaded if m.split(".")[0] != "fsspec"] == []


def test_the_probe_sees_fsspec_once_a_source_is_opened_by_url() -> None:
    """The check above can fail: opening a source by URL is where fsspec comes in."""
    loaded = loaded_after(
        "import asyncio, tempfile\n"
        "from fstransport.storage.source import open_source\n"
        "async def main(path):\n"
        "    await (await open_source(path)).close()\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    asyncio.run(main(f.name))"
    )
    assert "fsspec" in loaded


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: a name backed by aiohttp loads aiohttp when it is used."""
    loaded = loaded_after("import fstransport; fstransport.HttpNetwork; fstransport.ship")
    assert "aiohttp" in loaded
    assert "fsspec" in loaded


@pytest.mark.parametrize("name", fstransport.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(fstransport, name)
    assert value is not None
    assert name in dir(fstransport)
    namespace: dict[str, object] = {}
    exec(f"from fstransport import {name}", namespace)
    assert namespace[name] is value


def test_public_names_are_the_objects_of_their_modules() -> None:
    from fstransport.http.client import HttpNetwork
    from fstransport.storage.store import FsspecSnapshotStore
    from fstransport.transfer import ship

    assert fstransport.HttpNetwork is HttpNetwork
    assert fstransport.FsspecSnapshotStore is FsspecSnapshotStore
    assert fstransport.ship is ship


def test_old_http_paths_name_the_same_objects() -> None:
    """``fstransport.server``, ``fstransport.network.http`` (named in docs and users' code),
    ``fstransport.network.wire`` and ``fstransport.payload`` re-export `fstransport.http`."""
    import fstransport.http as http
    import fstransport.network.http as old_client
    import fstransport.network.wire as old_wire
    import fstransport.payload as old_payload
    import fstransport.server as old_server
    from fstransport.http import app, body, client, incoming, runner, statuses, wire

    assert old_client.HttpNetwork is client.HttpNetwork is http.HttpNetwork
    assert old_server.create_app is app.create_app is http.create_app
    assert old_server.make_runner is runner.make_runner is http.make_runner
    assert old_server.IDLE_TIMEOUT == incoming.IDLE_TIMEOUT
    assert old_server.MAX_HEADER_LINE == runner.MAX_HEADER_LINE
    assert old_wire.ERRORS is statuses.ERRORS
    assert old_wire.decode_meta is wire.decode_meta
    assert old_payload.BufferBody is body.BufferBody
    for old in (old_client, old_server, old_wire, old_payload):
        for name in old.__all__:
            assert getattr(old, name) is not None, (old.__name__, name)


@pytest.mark.parametrize(
    "package", ["fstransport", "fstransport.network", "fstransport.storage", "fstransport.http"]
)
def test_an_unknown_name_is_an_attribute_error(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name
    with pytest.raises(ImportError):
        exec(f"from {package} import no_such_name", {})


@pytest.mark.parametrize("package", ["fstransport.network", "fstransport.storage"])
def test_every_name_of_a_lazy_package_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None
        assert name in dir(module)


def test_moved_interfaces_stay_importable_from_their_old_modules() -> None:
    from fstransport.storage import base, sink, source, store

    assert sink.SnapshotSink is base.SnapshotSink
    assert sink.Lost is base.Lost
    assert sink.write_checked is base.write_checked
    assert store.SnapshotStore is base.SnapshotStore
    assert source.ChunkSource is base.ChunkSource
    assert source.read_checked is base.read_checked
