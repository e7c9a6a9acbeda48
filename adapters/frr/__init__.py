"""FRR adapter: RTBH blackholes as bgpd network statements through vtysh; no FlowSpec.

See :mod:`adapters.frr.render` (pure planning) and :mod:`adapters.frr.adapter` (I/O).
"""

from adapters.frr.adapter import FrrAdapter, FrrSettings

__all__ = ["FrrAdapter", "FrrSettings"]
