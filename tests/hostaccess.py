"""What tests let adapters touch: their own temporary directories, and loopback on purpose.

The service's defaults allow neither (adapters.access, adapters.egress); a test that runs
a vendor fake on loopback or a daemon socket in a temporary directory says so here.
"""

from __future__ import annotations

import ipaddress
import socket
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


def loopback_name() -> tuple[str, str]:
    """A host *name* (no address literal, not ``localhost``) that resolves to loopback here,
    and the address it resolves to: what an attacker would use to slip past a check made on
    the written endpoint. The machine's own name does on Debian (``127.0.1.1``) and on these
    test machines; else any other loopback name in /etc/hosts."""
    candidates = [socket.gethostname()]
    hosts = Path("/etc/hosts")
    if hosts.exists():
        for line in hosts.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if fields and fields[0].startswith("127."):
                candidates += fields[1:]
    for name in candidates:
        if not name or name == "localhost" or name.endswith(".localhost"):
            continue
        try:
            infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = {str(info[4][0]) for info in infos}
        if addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return name, sorted(addresses)[0]
    raise AssertionError("no host name on this machine resolves to loopback (see /etc/hosts)")
