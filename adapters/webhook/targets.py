"""Which hosts a webhook may be sent to: the adapter's own allowlist, inside the egress policy.

Every webhook goes through the service-wide egress policy (:mod:`adapters.egress`):
loopback, link-local, metadata, private and other internal addresses are refused unless
the *service* configuration allows them, every address a name resolves to is checked
where the connection is made (no DNS-rebinding window), and redirects are not followed.

A webhook adapter's ``allowed_targets`` can only narrow that further. A
:class:`TargetPolicy` is built from IP addresses or CIDR networks, host names
(``hooks.example.net``) and suffix wildcards (``*.example.net``):

* with an empty list, any host the egress policy allows is allowed;
* with a non-empty list the URL's host must match a name entry, or the address it
  resolves to must fall in a network entry. An entry never opens what the egress policy
  refuses: ``127.0.0.1`` on the list does not allow loopback delivery unless the service
  allows loopback too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from adapters.egress import Address, EgressPolicy, EgressRefused, Network, embedded_v4

TargetRefused = EgressRefused  # the name this module used before the policy went service-wide


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

    def refusal(self, host: str, addr: Address) -> str | None:
        """Why the allowlist refuses ``addr`` (which ``host`` resolved to), or None.

        Only the list: the egress policy's own refusals are checked before this.
        """
        if self.open or self.name_allowed(host):
            return None
        plain = embedded_v4(addr) or addr
        if any(plain in net or addr in net for net in self.networks):
            return None
        return f"{host} ({addr}) is not in the webhook target allowlist"

    async def resolve(
        self, host: str, port: int, egress: EgressPolicy | None = None
    ) -> list[Address]:
        """Resolve ``host`` and check every address under ``egress`` and this list."""
        return await (egress or EgressPolicy()).resolve(host, port, extra=self.refusal)
