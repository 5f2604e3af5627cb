"""Network adapters: the `Network` protocol and the in-process `LoopbackNetwork`."""

from fstransport.network.base import Network
from fstransport.network.loopback import LoopbackNetwork

__all__ = ["LoopbackNetwork", "Network"]
