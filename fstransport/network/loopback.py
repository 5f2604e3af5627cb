"""`LoopbackNetwork`: deliver requests to a `Receiver` in the same process, without copying data."""

from __future__ import annotations

from fstransport.errors import RemoteError
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.options import TransferOptions
from fstransport.receiver import Receiver

__all__ = ["LoopbackNetwork"]


class LoopbackNetwork:
    """A `Network` whose receiver lives in this process.

    The request object itself (and so its data buffer) is handed to ``receiver.handle``; the
    receiver's errors come back as `RemoteError`, exactly as a real network adapter reports them.

    With `trust_checksums`, the receiver takes each chunk's ``crc32c`` from the sender instead of
    computing it again over the same buffer (a second full pass over the data), and this
    package's sender, seeing the declaration, sends every chunk but the last without a CRC: the
    receiver's sink computes it while writing the chunk (the one pass over the data) and the
    answer carries it back (`InstallSnapshotResponse.crc32c`).  Only use it when nothing can
    alter requests on their way — not behind a fault-injecting wrapper (a wrapper does not
    inherit the declaration: the sender reads it with ``inspect.getattr_static``).
    """

    carries_delta = True
    """Delta fields reach the receiver (`fstransport.network.base.carries_delta`)."""

    def __init__(
        self, receiver: Receiver, *, target: object = "loopback", trust_checksums: bool = False
    ) -> None:
        self.receiver = receiver
        self.target = target
        self.trust_checksums = trust_checksums
        self.requests = 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests += 1
        try:
            return await self.receiver.handle(req, trust_crc=self.trust_checksums)
        except Exception as exc:
            raise RemoteError(exc, self.target) from exc

    def __repr__(self) -> str:
        return f"LoopbackNetwork({self.receiver!r})"
