"""F5 BIG-IP: blackhole routes and AFM source blocking over iControl REST."""

from adapters.f5.adapter import F5Adapter, F5Settings

__all__ = ["F5Adapter", "F5Settings"]
