"""The `Network` protocol: how a sender hands one chunk to a receiver somewhere else."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Protocol, runtime_checkable

from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.options import TransferOptions

__all__ = ["Network", "carries_delta", "trusts_checksums", "window_options"]


@runtime_checkable
class Network(Protocol):
    """Delivers `InstallSnapshotRequest`s to one receiver; injected by the caller.

    ``install_snapshot`` returns the receiver's `InstallSnapshotResponse` or raises an `RPCError`:

    - `Timeout` when no answer came in time, `Unreachable` when the receiver cannot be reached,
      `PayloadTooLarge` when the request is too big for the receiver or the path to it,
      `NetworkError` for any other transport failure;
    - `RemoteError` whose ``source`` is the receiver's own error (`SnapshotMismatch`,
      `InvalidRequest`, `ChecksumMismatch`, `StorageError`, ...).

    The sender applies ``option.hard_ttl`` itself; adapters may use the options for their own
    deadlines.  Several calls may run concurrently (up to ``option.max_in_flight``).  Every
    request reaches an adapter with its ``crc32c`` set; only a `LoopbackNetwork` created with
    ``trust_checksums`` itself is handed chunks without one (the in-process fast path).
    """

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse: ...


def carries_delta(net: object) -> bool:
    """Whether `net` declares ``carries_delta``: it delivers a request's ``delta`` and ``recipe``
    and an answer's ``offer`` (`LoopbackNetwork`, the HTTP network, a `FaultyNetwork` around
    one).  Only then does the sender ask for a delta: an adapter written before delta transfer
    would drop those fields.  Read with ``inspect.getattr_static`` (a wrapper that forwards
    attributes does not inherit it); a property is asked for its value."""
    declared = inspect.getattr_static(net, "carries_delta", False)
    if isinstance(declared, property):
        declared = getattr(net, "carries_delta", False)
    return declared is True


def trusts_checksums(net: object) -> bool:
    """Whether `net` itself declares ``trust_checksums`` (a `LoopbackNetwork` created with
    it): chunks but the last then go without a CRC, the receiver's sink computes it while
    writing the chunk and the answer carries it back, so the data is read once, not twice.
    Read with ``inspect.getattr_static``: a wrapper that forwards attributes to such a network
    (a fault injector, say) does not inherit the declaration, and sees every CRC."""
    return inspect.getattr_static(net, "trust_checksums", False) is True


def window_options(net: object, options: TransferOptions) -> TransferOptions:
    """`options` with the window a sender uses with `net`: wider when `net` stages chunks ahead
    of the requests it sends its receiver (``window_for``, `RelayNetwork`); a network that
    does not declare it, or a wrapper around one, gets ``max_in_flight`` as it is."""
    window_for = getattr(type(net), "window_for", None)
    if not callable(window_for):
        return options
    size = window_for(net, options)
    if not isinstance(size, int) or isinstance(size, bool) or size <= options.max_in_flight:
        return options
    return replace(options, max_in_flight=size)
