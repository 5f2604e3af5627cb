"""Kept for old imports: `HttpNetwork` now lives in `fstransport.http.client`."""

from fstransport.http.client import HttpNetwork

__all__ = ["HttpNetwork"]
