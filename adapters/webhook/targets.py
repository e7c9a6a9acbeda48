"""Which hosts a webhook may be sent to (an operator's allowlist, with DNS rebinding in mind).

A :class:`TargetPolicy` is built from ``allowed_targets``: IP addresses or CIDR networks,
host names (``hooks.example.net``) and suffix wildcards (``*.example.net``).

* With an empty list any host is allowed, except internal addresses (below).
* With a non-empty list the URL's host must match a name entry, or every address it
  resolves to must fall in a network entry.
* Whatever the list, an address that resolves into an **internal** range (loopback,
  link-local including the cloud metadata address 169.254.169.254 and fd00:ec2::254,
  unspecified, multicast, or the IPv4-mapped form of those) is refused unless a network
  entry inside that range names it explicitly: ``127.0.0.1`` allows loopback delivery,
  ``0.0.0.0/0`` does not.

Names are resolved at delivery time and *every* address is checked; the request then goes
to the checked address (the Host header and TLS server name stay the original name), so
a name that resolves to a public address for the check and to 127.0.0.1 for the
connection (DNS rebinding) cannot reach the service's internals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

INTERNAL: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local (includes the metadata address 169.254.169.254)"),
        ("fe80::/10", "link-local"),
        ("fd00:ec2::254/128", "the cloud metadata address"),
        ("0.0.0.0/8", "unspecified"),
        ("::/128", "unspecified"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
    )
)


class TargetRefused(ValueError):
    """The target is not allowed; the message says why."""


def parse_entry(text: str) -> Network | str:
    """A network (an address is a /32 or /128) or a lower-case host name pattern."""
    value = text.strip()
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    name = value.lower().rstrip(".")
    label = name.removeprefix("*.")
    if not label or any(
        not part or len(part) > 63 or not all(c.isalnum() or c == "-" for c in part)
        for part in label.split(".")
    ):
        raise ValueError(f"{text!r} is neither an IP network nor a host name")
    return name


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    networks: tuple[Network, ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        nets: list[Network] = []
        names: list[str] = []
        for entry in entries:
            parsed = parse_entry(entry)
            if isinstance(parsed, str):
                names.append(parsed)
            else:
                nets.append(parsed)
        return cls(tuple(nets), tuple(names))

    @property
    def open(self) -> bool:
        return not self.networks and not self.names

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.names:
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
            if host == pattern:
                return True
        return False

    def _explicit(self, addr: Address, internal: Network) -> bool:
        return any(
            addr in net and net.version == internal.version and net.subnet_of(internal)  # type: ignore[arg-type]
            for net in self.networks
        )

    def refusal(self, host: str, addr: Address) -> str | None:
        """Why ``addr`` (which ``host`` resolved to) may not be used, or None."""
        plain = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        check = plain or addr
        for internal, why in INTERNAL:
            if check.version == internal.version and check in internal:
                if self._explicit(check, internal):
                    break
                return f"{host} resolves to {addr}, {why}, which is not explicitly allowed"
        if self.open or self.name_allowed(host):
            return None
        if any(check in net for net in self.networks):
            return None
        return f"{host} ({addr}) is not in the webhook target allowlist"

    async def resolve(self, host: str, port: int) -> Address:
        """Resolve ``host``, check every address, and return the one to connect to."""
        try:
            literal: Address | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addrs = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise TargetRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
            addrs = list(
                dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos)
            )
            if not addrs:
                raise TargetRefused(f"{host} has no address")
        for addr in addrs:
            why = self.refusal(host, addr)
            if why is not None:
                raise TargetRefused(why)
        return addrs[0]
