"""Kept for old imports: `BufferBody` now lives in `fstransport.http.body`."""

from fstransport.http.body import SLICE, BufferBody

__all__ = ["SLICE", "BufferBody"]
