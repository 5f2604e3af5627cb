"""Network adapters: the `Network` protocol, the in-process `LoopbackNetwork`, and
`FaultyNetwork`, which injects seeded faults around any of them."""

from fstransport.network.base import Network
from fstransport.network.faults import FaultStats, FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork

__all__ = ["FaultStats", "FaultyNetwork", "LoopbackNetwork", "Network"]
