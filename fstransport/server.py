"""Kept for old imports: the receiver server now lives in `fstransport.http` (`app`, `runner`)."""

from fstransport.errors import BodyStalled
from fstransport.http.app import create_app
from fstransport.http.incoming import IDLE_TIMEOUT, MAX_BUFFERED, MIN_BODY_RATE
from fstransport.http.runner import MAX_HEADER_LINE, MAX_HEADERS, make_runner

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BUFFERED",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "MIN_BODY_RATE",
    "BodyStalled",
    "create_app",
    "make_runner",
]
