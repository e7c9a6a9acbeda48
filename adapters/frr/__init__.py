"""FRR adapter: RTBH blackholes through vtysh; FlowSpec is refused (FRR cannot originate it).

See :mod:`adapters.frr.render` (pure planning) and :mod:`adapters.frr.adapter` (I/O).
"""

from adapters.frr.adapter import FrrAdapter, FrrSettings

__all__ = ["FrrAdapter", "FrrSettings"]
