"""Server-side copies for `ship`: an S3 -> S3 copy on one endpoint made by the S3 server
instead of passing every byte through this process (see docs/s3.md): with ``UploadPartCopy``
parts, proved before the target appears, when it can be proved; when asked for
(``server_side=True``), with one ``CopyObject`` up to `TransferOptions.copy_cutoff` bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fsspec

from fstransport.checksum import format_checksum, parse_checksum
from fstransport.errors import ChecksumMismatch, ConfigurationError
from fstransport.options import TransferOptions
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.s3 import S3Backend, is_s3, split_bucket_key
from fstransport.storage.backends.s3.copy import (
    DEFAULT_COPY_CONCURRENCY,
    head_source,
    s3_endpoint,
    server_side_copy,
)
from fstransport.storage.store import FsspecSnapshotStore

if TYPE_CHECKING:
    from fstransport.transfer import TransferReport

__all__ = ["server_side"]


def _is_s3_url(url: str) -> bool:
    return "::" not in url and fsspec.core.split_protocol(url)[0] in ("s3", "s3a")


async def server_side(
    source_url: str,
    target_url: str,
    source_options: dict[str, Any],
    target_options: dict[str, Any],
    store: FsspecSnapshotStore,
    snapshot_id: str,
    *,
    required: bool,
    options: TransferOptions,
    checksum: str | None,
    concurrency: int | None,
) -> TransferReport | None:
    """Copy on the S3 server when it can (see `ship`'s `server_side`); None: copy through the
    client instead."""
    if not (_is_s3_url(source_url) and _is_s3_url(target_url) and is_s3(store.fs)):
        if required:
            raise ConfigurationError(
                f"a server-side copy needs an s3:// source and target, not {source_url!r} -> "
                f"{target_url!r}"
            )
        return None
    source_endpoint, target_endpoint = s3_endpoint(source_options), s3_endpoint(target_options)
    if source_endpoint != target_endpoint:
        if required:
            raise ConfigurationError(
                "a server-side copy needs the source and target on one S3 endpoint; the source "
                f"is on {source_endpoint or 'AWS'}, the target on {target_endpoint or 'AWS'} "
                "(copy without server_side / --server-side to stream it through this process)"
            )
        return None
    wanted = None if checksum is None else parse_checksum(checksum)
    # the store's own client: a copy streamed after all (below) goes on with it
    backend = store.backend
    if not isinstance(backend, S3Backend):
        return None  # (is_s3 said it is: a store built over its own S3 backend)
    fs = await backend.client()
    with storage_errors(source_url, "open"):
        bucket, key = split_bucket_key(fs._strip_protocol(source_url))
    source = await head_source(fs, bucket, key, options.retry)
    if wanted is not None and source.crc32c is not None and wanted != source.crc32c:
        raise ChecksumMismatch(
            source_url, format_checksum(wanted), format_checksum(source.crc32c), whole=True
        )
    expected = wanted if wanted is not None else source.crc32c
    if not required and expected is None:
        return None  # nothing to prove a server-side copy with: stream it, verified
    target_bucket, target_key = split_bucket_key(store.path(snapshot_id))
    result = await server_side_copy(
        fs,
        source,
        target_bucket,
        target_key,
        expected=expected,
        require_proof=not required,
        part_size=store.part_size,
        concurrency=concurrency or DEFAULT_COPY_CONCURRENCY,
        retry=options.retry,
        copy_cutoff=options.copy_cutoff,
        settle_timeout=options.install_timeout,
    )
    if result is None:
        return None
    from fstransport.transfer import TransferReport

    return TransferReport(
        source=source_url,
        target=target_url,
        size=source.size,
        bytes_sent=0,
        chunks_sent=result.parts,
        retries=0,
        rewinds=0,
        bytes_skipped=0,
        elapsed=0.0,
        checksum=result.checksum,
        server_side=True,
        bytes_read=0,
    )
