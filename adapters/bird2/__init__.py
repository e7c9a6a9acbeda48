"""BIRD 2 adapter: blackholes and FlowSpec rules as static routes in an included file.

See :mod:`adapters.bird2.render` (pure rendering) and :mod:`adapters.bird2.adapter` (I/O).
"""

from adapters.bird2.adapter import Bird2Adapter, Bird2Settings

__all__ = ["Bird2Adapter", "Bird2Settings"]
