"""ExaBGP adapter: ExaBGP runs our bridge as its process; the adapter talks to the bridge."""

from adapters.exabgp.adapter import ExaBgpAdapter, ExaBgpSettings

__all__ = ["ExaBgpAdapter", "ExaBgpSettings"]
