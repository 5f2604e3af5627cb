"""Sources: every kind reads exact ranges, and is picked by what the data can do."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fstransport import StorageError, TransferOptions, ship
from fstransport.storage import (
    AsyncFsSource,
    BufferSource,
    ChunkSource,
    FileObjectSource,
    PreadSource,
    open_source,
    source_for_file,
)
from tests.conftest import payload

DATA = payload(100_003, seed=7)
RANGES = [(0, 0), (0, 1), (0, 4096), (4095, 2), (50_000, 30_000), (100_000, 3), (99_990, 100)]


async def check_ranges(source: ChunkSource) -> None:
    assert source.size == len(DATA)
    for offset, length in RANGES:
        assert bytes(await source.read(offset, length)) == DATA[offset : offset + length]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


@pytest.fixture
async def http_base(data_file: Path) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 that serves the data file with Range support."""

    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(data_file)

    app = web.Application()
    app.router.add_get("/data.bin", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_bytesio_is_read_without_copies() -> None:
    source = await source_for_file(io.BytesIO(DATA))
    assert isinstance(source, BufferSource)
    chunk = await source.read(10, 20)
    assert isinstance(chunk, memoryview)
    await check_ranges(source)
    await source.close()


async def test_open_local_file_uses_pread(data_file: Path) -> None:
    with data_file.open("rb") as f:
        source = await source_for_file(f)
        assert isinstance(source, PreadSource)
        await check_ranges(source)
        await source.close()
        assert not f.closed, "the caller's file stays open"


async def test_plain_file_object_without_descriptor(data_file: Path) -> None:
    source = await source_for_file(io.BufferedReader(io.BytesIO(DATA)))
    assert isinstance(source, FileObjectSource)
    await check_ranges(source)


@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_open_source_by_url(kind: str, data_file: Path) -> None:
    expected: type[BufferSource | PreadSource]
    if kind == "memory":
        import fsspec

        fsspec.filesystem("memory").pipe_file("/d/data.bin", DATA)
        url, expected = "memory://d/data.bin", BufferSource
    else:
        url, expected = str(data_file), PreadSource
    source = await open_source(url)
    assert isinstance(source, expected)
    await check_ranges(source)
    await source.close()


async def test_sync_fsspec_filesystem_reads_in_threads(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner.bin", DATA)
    source = await open_source(f"zip://inner.bin::{archive}")
    assert isinstance(source, FileObjectSource)
    await check_ranges(source)
    await source.close()


async def test_async_filesystem_is_read_natively(http_base: str) -> None:
    source = await open_source(f"{http_base}/data.bin")
    assert isinstance(source, AsyncFsSource)
    await check_ranges(source)
    await source.close()


async def test_ship_from_http_to_local(http_base: str, tmp_path: Path) -> None:
    target = tmp_path / "copy.bin"
    options = TransferOptions(chunk_size=16_384, max_in_flight=4)
    report = await ship(f"{http_base}/data.bin", str(target), options=options)
    assert target.read_bytes() == DATA
    assert report.chunks_sent == 7


@pytest.mark.parametrize("url", ["memory://nothing/here", "/no/such/file.bin"])
async def test_missing_sources_are_storage_errors(url: str) -> None:
    with pytest.raises(StorageError) as info:
        await open_source(url)
    assert info.value.verb == "open"
    assert isinstance(info.value.__cause__, FileNotFoundError)


async def test_missing_http_source_is_a_storage_error(http_base: str) -> None:
    with pytest.raises(StorageError) as info:
        await open_source(f"{http_base}/missing.bin")
    assert isinstance(info.value.__cause__, FileNotFoundError)


async def test_directory_is_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        await open_source(str(tmp_path))
