"""Radware DefenseFlow (via Cyber Controller / APSolute Vision): scrubbing diversion."""

from adapters.radware.adapter import RadwareAdapter, RadwareSettings

__all__ = ["RadwareAdapter", "RadwareSettings"]
