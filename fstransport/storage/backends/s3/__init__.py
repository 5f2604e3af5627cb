"""The S3 backend: multipart uploads with a resumable state (`multipart`, `upload`, `state`),
the store's bucket calls (`backend`), reading objects with one streaming GET (`stream`) or
several ranged GETs (`ranged`), server-side copies (`copy`), delta bases and the spool sink of
a delta (`delta`), and the client (`client`).

Nothing here imports s3fs or botocore until an S3 filesystem is used."""

from fstransport.storage.backends.s3.backend import S3Backend, open_s3_source
from fstransport.storage.backends.s3.client import crc32c_header, is_s3, open_s3, split_bucket_key
from fstransport.storage.backends.s3.multipart import MultipartSink
from fstransport.storage.backends.s3.ranged import S3RangedSource
from fstransport.storage.backends.s3.stream import S3StreamSource

__all__ = [
    "MultipartSink",
    "S3Backend",
    "S3RangedSource",
    "S3StreamSource",
    "crc32c_header",
    "is_s3",
    "open_s3",
    "open_s3_source",
    "split_bucket_key",
]
