"""Network adapters: the `Network` protocol, the in-process `LoopbackNetwork`, `HttpNetwork`
for a receiver server over HTTP, `FaultyNetwork`, which injects seeded faults around any, and
`RelayNetwork`, which stages chunk bytes in a bucket and sends references through another.

Only the protocol is imported with the package; each adapter is imported when first used, so
that ``import fstransport.network`` needs no aiohttp (`HttpNetwork`) and no fsspec.
"""

from typing import TYPE_CHECKING

from fstransport._lazy import lazy_exports
from fstransport.network.base import Network

if TYPE_CHECKING:
    from fstransport.http.client import HttpNetwork
    from fstransport.network.faults import FaultStats, FaultyNetwork
    from fstransport.network.loopback import LoopbackNetwork
    from fstransport.network.relay import RelayNetwork
else:
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "FaultStats": "fstransport.network.faults",
            "FaultyNetwork": "fstransport.network.faults",
            "HttpNetwork": "fstransport.http.client",
            "LoopbackNetwork": "fstransport.network.loopback",
            "RelayNetwork": "fstransport.network.relay",
        },
    )

__all__ = [
    "FaultStats",
    "FaultyNetwork",
    "HttpNetwork",
    "LoopbackNetwork",
    "Network",
    "RelayNetwork",
]
