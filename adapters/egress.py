"""The service-wide egress policy: which addresses an outbound adapter may connect to.

Every HTTP adapter (appliances, clouds, scrubbing providers, ExaBGP's HTTP bridge,
webhooks) connects through :class:`EgressTransport`, which checks the policy where the
TCP connection is made:

* the host is resolved there and *every* address it resolves to is checked before any
  is used, and the connection goes to a checked address (TLS still verifies the name),
  so there is no window between a check and a second resolution (DNS rebinding);
* an address in an **internal** range (below) is refused unless the service
  configuration allows it explicitly: an ``egress_allow`` entry that lies inside that
  range (``127.0.0.1`` or ``loopback`` opens loopback; ``0.0.0.0/0`` opens nothing);
* redirects are never followed and proxies from the environment are not used (a proxy
  would make the connection on our behalf, out of the policy's sight).

Internal ranges: the cloud metadata addresses (169.254.169.254, fd00:ec2::254; only an
entry naming them opens them), loopback, link-local, private (RFC 1918, unique local
fc00::/7), shared (100.64.0.0/10), unspecified, multicast and reserved (240.0.0.0/4)
addresses, and the IPv4 address inside an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4
(2002::/16) IPv6 address. An allowed entry is a network (an address is a /32 or /128)
or one of the words ``loopback``, ``private``, ``link-local``, ``shared``.

The adapter settings cannot widen this: it is built from the service's own settings
(``SLUICE_EGRESS_ALLOW``). A webhook's own ``allowed_targets`` can only narrow it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, address) -> why the address may not be used, or None
Check = Callable[[str, Address], str | None]


def _nets(*texts: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# Order matters: the first range an address falls in names it, and an allow entry must lie
# inside that range (so "link-local" does not open the metadata address).
INTERNAL: tuple[tuple[Network, str], ...] = tuple(
    (net, why)
    for nets, why in (
        (_nets("169.254.169.254/32", "fd00:ec2::254/128"), "the cloud metadata address"),
        (_nets("127.0.0.0/8", "::1/128"), "loopback"),
        (_nets("169.254.0.0/16", "fe80::/10"), "link-local"),
        (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"), "private"),
        (_nets("100.64.0.0/10"), "shared (carrier-grade NAT)"),
        (_nets("0.0.0.0/8", "::/128"), "unspecified"),
        (_nets("224.0.0.0/4", "ff00::/8"), "multicast"),
        (_nets("240.0.0.0/4", "::/96"), "reserved"),
    )
    for net in nets
)

KEYWORDS: dict[str, tuple[Network, ...]] = {
    "loopback": _nets("127.0.0.0/8", "::1/128"),
    "private": _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
    "link-local": _nets("169.254.0.0/16", "fe80::/10"),
    "shared": _nets("100.64.0.0/10"),
}

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
HINT = "set SLUICE_EGRESS_ALLOW to allow it"


class EgressRefused(Exception):  # reads as what happened, like TimeoutError
    """A connection the egress policy does not allow; the message says why."""


def embedded_v4(addr: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def parse_allow(text: str) -> tuple[Network, ...]:
    """One ``egress_allow`` entry: a network, an address, or a keyword."""
    value = text.strip().lower()
    if value in KEYWORDS:
        return KEYWORDS[value]
    try:
        return (ipaddress.ip_network(value, strict=True),)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an IP network nor one of {', '.join(sorted(KEYWORDS))}"
        ) from None


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Internal ranges refused unless an ``allowed`` network inside them names the address."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        nets: list[Network] = []
        for entry in entries:
            nets.extend(parse_allow(entry))
        return cls(tuple(dict.fromkeys(nets)))

    def _explicit(self, addr: Address, internal: Network) -> bool:
        return any(
            addr in net and net.version == internal.version and net.subnet_of(internal)  # type: ignore[arg-type]
            for net in self.allowed
        )

    def refusal(self, host: str, addr: Address) -> str | None:
        """Why ``addr`` (which ``host`` resolved to) may not be used, or None."""
        for check in (addr, embedded_v4(addr)):
            if check is None:
                continue
            for internal, why in INTERNAL:
                if check.version == internal.version and check in internal:
                    if self._explicit(check, internal):
                        break
                    literal = literal_address(host) == addr
                    shown = f"{addr} is" if literal else f"{host} resolves to {addr},"
                    return f"{shown} {why}, which the service's egress policy refuses ({HINT})"
        return None

    def check_host(self, host: str) -> str | None:
        """What can be said before resolving: a refused literal, or a ``localhost`` name."""
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            return self.refusal(host, ipaddress.IPv4Address("127.0.0.1"))
        addr = literal_address(host)
        return None if addr is None else self.refusal(host, addr)

    async def resolve(
        self, host: str, port: int, *, limit_s: float | None = None, extra: Check | None = None
    ) -> list[Address]:
        """Resolve ``host`` and check every address; the addresses to connect to, in order."""
        literal = literal_address(host)
        if literal is not None:
            addrs = [literal]
        else:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    limit_s,
                )
            except TimeoutError:
                raise EgressRefused(f"cannot resolve {host}: timed out") from None
            except OSError as exc:
                raise EgressRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
            addrs = list(
                dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos)
            )
            if not addrs:
                raise EgressRefused(f"{host} has no address")
        for addr in addrs:
            why = self.refusal(host, addr) or (extra(host, addr) if extra else None)
            if why is not None:
                raise EgressRefused(why)
        return addrs


DEFAULT_EGRESS = EgressPolicy()


class EgressBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy checked where each connection is made."""

    def __init__(self, policy: EgressPolicy, extra: Check | None = None) -> None:
        self.policy = policy
        self.extra = extra
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's own signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addrs = await self.policy.resolve(host, port, limit_s=timeout, extra=self.extra)
        last: Exception | None = None
        for addr in addrs:
            try:
                return await self._inner.connect_tcp(
                    str(addr),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # noqa: S101  # resolve() returns at least one address
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's own signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused(f"unix socket {path}: an HTTP adapter connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class EgressTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose connections go through :class:`EgressBackend`."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: bool | ssl.SSLContext = True,
        extra: Check | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,  # keep httpx's own TLS setup
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=EgressBackend(policy, extra),
        )


def egress_client(
    policy: EgressPolicy,
    *,
    verify: bool | ssl.SSLContext = True,
    extra: Check | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` under ``policy``: no redirects, no proxies from the environment.

    ``transport`` replaces the network entirely (a test's ``httpx.MockTransport``).
    """
    return httpx.AsyncClient(
        transport=transport or EgressTransport(policy, verify=verify, extra=extra),
        follow_redirects=False,
        trust_env=False,
        **kwargs,
    )
