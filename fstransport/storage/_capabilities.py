"""Optional capabilities of sinks and sources, looked up once per class.

`isinstance` against a runtime-checkable protocol costs about 12 µs here (it probes every member
of the protocol), several times what a 64 KiB chunk's own bookkeeping costs, so the receiver and
the sender ask this cache instead: one ``getattr`` per class and method, then a dictionary hit.
"""

from __future__ import annotations

__all__ = ["implements"]

_known: dict[tuple[type, str], bool] = {}


def implements(obj: object, method: str) -> bool:
    """Whether `obj`'s class defines a callable `method`."""
    key = (type(obj), method)
    found = _known.get(key)
    if found is None:
        found = _known[key] = callable(getattr(key[0], method, None))
    return found
