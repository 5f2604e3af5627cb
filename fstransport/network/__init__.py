"""Network adapters: the `Network` protocol, the in-process `LoopbackNetwork`, `HttpNetwork`
for a receiver server over HTTP, and `FaultyNetwork`, which injects seeded faults around any."""

from fstransport.network.base import Network
from fstransport.network.faults import FaultStats, FaultyNetwork
from fstransport.network.http import HttpNetwork
from fstransport.network.loopback import LoopbackNetwork

__all__ = ["FaultStats", "FaultyNetwork", "HttpNetwork", "LoopbackNetwork", "Network"]
