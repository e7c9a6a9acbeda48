"""Which TCP endpoints a BGP speaker's API may be reached on: ``SLUICE_SPEAKER_ENDPOINTS``.

The gobgp adapter drives gobgpd over gRPC, on a unix socket (a file: it must lie in
``SLUICE_ADAPTER_DIRS``, see :mod:`adapters.access`) or on ``host:port``. A speaker's API
is normally on loopback or on an internal management address, which is exactly what the
HTTP egress policy (:mod:`adapters.egress`, meant for webhooks and clouds) refuses by
default; so ``host:port`` speaker endpoints have their own list, built from the service's
settings only (an adapter setting cannot widen it):

* an address may be used when an entry's network holds it and the entry's port is the
  endpoint's (an entry without a port allows any port). Default ``loopback:50051``:
  gobgpd's own API port on 127.0.0.0/8 and ::1, nothing else. An empty list leaves unix
  sockets only;
* whatever the list says, the unspecified addresses (``0.0.0.0``, ``::``: they reach
  every listener on this host) and multicast are refused, and the cloud metadata
  addresses (169.254.169.254, fd00:ec2::254) are refused unless an entry names exactly
  them; an IPv4-mapped IPv6 address is checked as the IPv4 address it carries;
* the check is made when the settings are validated, for what is known without resolving
  (an address literal, ``localhost``; code ``endpoint_not_allowed``, naming the field),
  and again where the gRPC channel is made: the name is resolved there, *every* address
  is checked, and the channel is opened to the checked addresses (gRPC ``ipv4:`` /
  ``ipv6:`` targets, which gRPC does not resolve again), so a name pointed elsewhere
  afterwards does not lead there. The adapter resolves again only for a new channel
  (after an ``UNAVAILABLE`` answer), and checks again then.

Entries (comma-separated in ``SLUICE_SPEAKER_ENDPOINTS``): ``NETWORK`` or
``NETWORK:PORT`` (``10.0.0.5:50051``, ``10.1.0.0/24:50051``, ``192.0.2.7``), ``[V6]:PORT``
or a bare IPv6 network (``[fd00::5]:50051``, ``fd00:10::/64``), and ``loopback`` or
``loopback:PORT`` (127.0.0.0/8 and ::1). ``0.0.0.0/0`` and ``::/0`` open every address
except the ones refused whatever the list says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from adapters.egress import Address, Network, literal_address

# (host, port) -> the addresses it resolves to; default: the event loop's getaddrinfo
Resolver = Callable[[str, int], Awaitable[Sequence[Address]]]

LOOPBACK: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
METADATA: tuple[Network, ...] = (
    ipaddress.IPv4Network("169.254.169.254/32"),
    ipaddress.IPv6Network("fd00:ec2::254/128"),
)
NEVER: tuple[tuple[Network, str], ...] = (
    (
        ipaddress.IPv4Network("0.0.0.0/8"),
        "the unspecified address (it reaches every local listener)",
    ),
    (ipaddress.IPv6Network("::/128"), "the unspecified address (it reaches every local listener)"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
)
GOBGP_PORT = 50051  # gobgpd's default --api-hosts port
DEFAULT_ENTRIES: tuple[str, ...] = (f"loopback:{GOBGP_PORT}",)
HINT = "set SLUICE_SPEAKER_ENDPOINTS to change them"
CODE = "endpoint_not_allowed"


class EndpointRefused(ValueError):
    """A speaker endpoint the service's settings do not allow; the message says why."""

    code = CODE


class Unresolved(Exception):  # reads as what happened
    """A speaker endpoint's name did not resolve (retryable: DNS may answer later)."""


@dataclass(frozen=True, slots=True)
class Allowed:
    """One entry: a network, and the one port it allows (None: any port)."""

    network: Network
    port: int | None = None

    def holds(self, addr: Address, port: int) -> bool:
        return (
            addr.version == self.network.version
            and addr in self.network
            and (self.port is None or self.port == port)
        )

    def __str__(self) -> str:
        net = self.network
        text = str(net.network_address) if net.num_addresses == 1 else str(net)
        if self.port is None:
            return text
        return f"[{text}]:{self.port}" if net.version == 6 else f"{text}:{self.port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: {text!r} is not a port (1-65535)")
    return int(text)


def _networks(text: str, entry: str) -> tuple[Network, ...]:
    if text == "loopback":
        return LOOPBACK
    try:
        return (ipaddress.ip_network(text, strict=True),)
    except ValueError as exc:
        raise ValueError(
            f"{entry!r}: {text!r} is neither an IP network nor 'loopback' ({exc})"
        ) from None


def parse_entry(entry: str) -> tuple[Allowed, ...]:
    """One ``SLUICE_SPEAKER_ENDPOINTS`` entry (see the module docstring)."""
    text = entry.strip().lower()
    port: int | None = None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r}: write an IPv6 entry as [network]:port")
        nets = _networks(inner, entry)
        port = _port(rest[1:], entry) if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        nets = _networks(host, entry)
        port = _port(port_text, entry)
    else:  # an IPv4 network or 'loopback' without a port, or a bare IPv6 network
        nets = _networks(text, entry)
    return tuple(Allowed(n, port) for n in nets)


def _plain(addr: Address) -> Address:
    """An IPv4-mapped IPv6 address as the IPv4 address it carries."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


async def system_resolver(host: str, port: int) -> list[Address]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]


@dataclass(frozen=True, slots=True)
class SpeakerEndpoints:
    """The TCP endpoints speaker adapters may connect to (see the module docstring).

    ``resolver`` turns a name into addresses (default: the system's, through the event
    loop); a test hands in its own to make a name change between two connections.
    """

    allowed: tuple[Allowed, ...] = field(
        default_factory=lambda: tuple(a for e in DEFAULT_ENTRIES for a in parse_entry(e))
    )
    resolver: Resolver = field(default=system_resolver, compare=False, repr=False)

    @classmethod
    def from_entries(
        cls, entries: Iterable[str], resolver: Resolver | None = None
    ) -> SpeakerEndpoints:
        allowed: list[Allowed] = []
        for entry in entries:
            allowed.extend(parse_entry(entry))
        return cls(tuple(dict.fromkeys(allowed)), resolver or system_resolver)

    def describe(self) -> str:
        return ", ".join(str(a) for a in self.allowed) or "none: unix sockets only"

    def refusal(self, host: str, addr: Address, port: int) -> str | None:
        """Why ``addr`` (which ``host`` resolved to) may not be used on ``port``, or None."""
        if literal_address(host) == addr:
            subject = f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
        else:
            subject = f"{host}:{port} resolves to {addr}, which"
        check = _plain(addr)
        for net, why in NEVER:
            if check.version == net.version and check in net:
                return f"{subject} is {why}: never a speaker endpoint"
        if any(check.version == m.version and check in m for m in METADATA):
            if any(a.network.num_addresses == 1 and a.holds(check, port) for a in self.allowed):
                return None
            return (
                f"{subject} is the cloud metadata address; only an entry naming it exactly "
                f"allows it ({HINT})"
            )
        if any(a.holds(check, port) for a in self.allowed):
            return None
        return (
            f"{subject} is not a speaker endpoint the service allows "
            f"(allowed: {self.describe()}; {HINT})"
        )

    def check_host(self, host: str, port: int) -> str | None:
        """What can be said before resolving: a refused literal, or a ``localhost`` name."""
        name = host.strip("[]").lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            for loop in (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")):
                why = self.refusal(host, loop, port)
                if why is not None:
                    return why
            return None
        addr = literal_address(host)
        return None if addr is None else self.refusal(host, addr, port)

    async def resolve(self, host: str, port: int, *, limit_s: float | None = None) -> list[Address]:
        """Resolve ``host`` and check every address; the addresses to connect to, in order.

        :class:`EndpointRefused` when any address is refused (none is used then),
        :class:`Unresolved` when the name does not resolve.
        """
        literal = literal_address(host)
        if literal is not None:
            addrs = [literal]
        else:
            try:
                found = await asyncio.wait_for(self.resolver(host, port), limit_s)
            except TimeoutError:
                raise Unresolved(f"cannot resolve {host}: timed out") from None
            except OSError as exc:
                raise Unresolved(f"cannot resolve {host}: {exc.strerror or exc}") from None
            addrs = list(dict.fromkeys(found))
            if not addrs:
                raise Unresolved(f"{host} has no address")
        for addr in addrs:
            why = self.refusal(host, addr, port)
            if why is not None:
                raise EndpointRefused(why)
        return addrs


def grpc_target(addrs: Sequence[Address], port: int) -> str:
    """A gRPC target naming ``addrs`` themselves, in order (gRPC does not resolve it again).

    All IPv4: an ``ipv4:`` target. Otherwise an ``ipv6:`` one, the IPv4 addresses written
    IPv4-mapped (one gRPC target holds one family; a dual-stack socket reaches a mapped
    address over IPv4), so a name with both ``::1`` and ``127.0.0.1`` reaches a speaker
    listening on either.
    """
    if not addrs:
        raise ValueError("no address to connect to")
    if all(a.version == 4 for a in addrs):
        return "ipv4:" + ",".join(f"{a}:{port}" for a in addrs)
    mapped = (str(a) if a.version == 6 else f"::ffff:{a}" for a in addrs)
    return "ipv6:" + ",".join(f"[{a}]:{port}" for a in mapped)


DEFAULT_SPEAKERS = SpeakerEndpoints()
