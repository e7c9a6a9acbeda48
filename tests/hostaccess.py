"""What tests let adapters touch: their own temporary directories, and loopback on purpose.

The service's defaults allow neither (adapters.access, adapters.egress); a test that runs
a vendor fake on loopback or a daemon socket in a temporary directory says so here.
"""

from __future__ import annotations

from pathlib import Path

from adapters.access import HostAccess
from adapters.egress import EgressPolicy

LOOPBACK_EGRESS = EgressPolicy.from_entries(["loopback"])
LOOPBACK = HostAccess(egress=LOOPBACK_EGRESS)


def allow(*dirs: Path, loopback: bool = False, vtysh: str | None = None) -> HostAccess:
    """Files and sockets under ``dirs``; loopback connections when ``loopback``."""
    programs = {"vtysh": vtysh} if vtysh else {"vtysh": "vtysh"}
    return HostAccess(
        allowed_dirs=tuple(dirs),
        programs=programs,
        egress=LOOPBACK_EGRESS if loopback else EgressPolicy(),
    )
