"""Fake vendor APIs (real HTTP servers on loopback) that adapter tests talk to.

:mod:`labs.vendors.server` is the shared base; each other module is one vendor's fake,
runnable on its own with ``python -m labs.vendors.<vendor> --port N``.
"""
