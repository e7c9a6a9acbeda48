"""Attack profiles: curated host firewall rule sets, as typed rules independent of any suite.

A :class:`FwRule` says *what* to drop (new TCP SYNs above a per-source rate, UDP from
reflection source ports, invalid conntrack state...) and *why*; :mod:`.render` turns a
list of them into nftables, iptables, ufw or firewalld text. Every rendered rule set
starts with the same prologue: loopback, the management address and the allowlist, and
established/related traffic are accepted before any profile rule, so a profile never
cuts the host off from the service, its operators or its own outbound connections.

Rules only ever match *new* or *invalid* inbound packets on the input hook: forwarded
traffic (a router's transit) and replies to the host's own queries are never touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal[
    "invalid",  # conntrack state invalid: drop
    "bad_tcp_flags",  # impossible TCP flag combinations (null, xmas, syn+fin, syn+rst): drop
    "fragments",  # IPv4 non-first fragments: drop
    "reflection",  # new UDP from reflection source ports: drop
    "syn_limit",  # new TCP SYNs per source above a rate: drop
    "conn_limit",  # new TCP connections per source to given ports above a rate: drop
    "udp_limit",  # UDP packets per source (to given ports, or all) above a rate: drop
    "icmp_limit",  # ICMP/ICMPv6 echo requests above a (global) rate: drop
    "udp_new_drop",  # new inbound UDP except to the given ports: drop
]

# UDP services abused for reflection/amplification, by the source port their answers
# carry. A host that did not ask gets these only as an attack (its own queries' answers
# are established conntrack flows and pass before the drop).
REFLECTION_PORTS: dict[int, str] = {
    17: "QOTD",
    19: "chargen",
    53: "DNS",
    69: "TFTP",
    111: "portmap",
    123: "NTP",
    137: "NetBIOS",
    161: "SNMP",
    389: "CLDAP",
    1900: "SSDP",
    3283: "ARD",
    3702: "WS-Discovery",
    5353: "mDNS",
    11211: "memcached",
}
REFLECTION_NO_DNS = tuple(p for p in REFLECTION_PORTS if p != 53)


@dataclass(frozen=True, slots=True)
class FwRule:
    """One profile rule. ``rate``/``burst`` are packets per second (limits drop above)."""

    id: str
    kind: Kind
    title: str
    why: str
    ports: tuple[int, ...] = ()
    rate: int = 0
    burst: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ports"] = list(self.ports)
        return {k: v for k, v in out.items() if v not in (0, [], ())}


def _invalid() -> FwRule:
    return FwRule(
        "invalid",
        "invalid",
        "Drop packets in invalid conntrack state",
        "Out-of-window ACK/RST floods and packets belonging to no connection never reach "
        "a socket; dropping them early saves the stack's work.",
    )


def _flags() -> FwRule:
    return FwRule(
        "bad-tcp-flags",
        "bad_tcp_flags",
        "Drop impossible TCP flag combinations",
        "Null, Xmas, SYN+FIN and SYN+RST packets are scans or floods; no stack sends them.",
    )


def _frags() -> FwRule:
    return FwRule(
        "fragments",
        "fragments",
        "Drop IPv4 non-first fragments",
        "Fragment floods tie up reassembly memory; these services use path MTU discovery "
        "and never receive fragmented datagrams.",
    )


def _reflection(ports: tuple[int, ...] = tuple(REFLECTION_PORTS)) -> FwRule:
    names = ", ".join(REFLECTION_PORTS[p] for p in ports)
    return FwRule(
        "reflection",
        "reflection",
        "Drop unsolicited UDP from amplification source ports",
        f"Reflection floods arrive from {names} servers; answers to this host's own "
        "queries are established flows and still pass.",
        ports=ports,
    )


def _syn(rate: int, burst: int) -> FwRule:
    return FwRule(
        "syn-limit",
        "syn_limit",
        f"Limit new TCP SYNs to {rate}/s per source",
        "A SYN flood needs many SYNs per source; a real client opens a few connections. "
        "Above the rate the source's SYNs are dropped, others are unaffected.",
        rate=rate,
        burst=burst,
    )


def _conn(ports: tuple[int, ...], rate: int, burst: int, what: str) -> FwRule:
    return FwRule(
        "conn-limit",
        "conn_limit",
        f"Limit new connections to {what} to {rate}/s per source",
        f"Connection floods and brute force against {what} come from few sources at high "
        "rates; legitimate users stay far below the limit.",
        ports=ports,
        rate=rate,
        burst=burst,
    )


def _udp(rate: int, burst: int, ports: tuple[int, ...] = ()) -> FwRule:
    where = "game ports" if ports else "any port"
    return FwRule(
        "udp-limit",
        "udp_limit",
        f"Limit UDP to {where} to {rate} packets/s per source",
        "A player or client sends tens to a few hundred packets per second; a source far "
        "above that is flooding and only its excess is dropped.",
        ports=ports,
        rate=rate,
        burst=burst,
    )


def _icmp(rate: int) -> FwRule:
    return FwRule(
        "icmp-limit",
        "icmp_limit",
        f"Limit ICMP echo requests to {rate}/s",
        "Ping keeps working for monitoring while ICMP floods are cut; other ICMP types "
        "(path MTU, neighbour discovery) are never limited.",
        rate=rate,
        burst=rate * 2,
    )


def _udp_new(ports: tuple[int, ...]) -> FwRule:
    return FwRule(
        "udp-new-drop",
        "udp_new_drop",
        "Drop unsolicited inbound UDP except to " + ", ".join(map(str, ports)),
        "These hosts serve no UDP beyond the listed ports; any other new inbound UDP is "
        "attack traffic. Answers to outbound queries (DNS, NTP) are established flows.",
        ports=ports,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    optimized_for: str
    rules: tuple[FwRule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "optimized_for": self.optimized_for,
            "rules": [r.to_dict() for r in self.rules],
        }


WEB = (80, 443)
REMOTE_ADMIN = (22, 3389, 5985, 5986)

PROFILES: dict[str, Profile] = {
    p.id: p
    for p in (
        Profile(
            "game_server",
            "Game server",
            "Game servers (Minecraft, FiveM, Rust, CS2, ...)",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _syn(20, 40),
                _udp(2000, 4000),
                _icmp(10),
            ),
        ),
        Profile(
            "hosting_provider",
            "Hosting provider",
            "Shared and reseller hosting providers",
            (
                _invalid(),
                _flags(),
                _reflection(),
                _syn(50, 100),
                _conn(WEB, 100, 200, "HTTP(S)"),
                _conn((21, 22, 25, 110, 143, 465, 587, 993, 995), 10, 20, "mail, FTP and SSH"),
                _icmp(20),
            ),
        ),
        Profile(
            "isp",
            "ISP / transit",
            "Internet service providers and transit networks",
            (_invalid(), _flags(), _reflection(REFLECTION_NO_DNS), _syn(200, 400), _icmp(100)),
        ),
        Profile(
            "saas",
            "SaaS",
            "SaaS applications (web-heavy TCP traffic)",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _syn(30, 60),
                _conn(WEB, 60, 120, "HTTP(S)"),
                _icmp(10),
            ),
        ),
        Profile(
            "ecommerce",
            "E-commerce",
            "E-commerce platforms (payment flow protection)",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _syn(30, 60),
                _conn(WEB, 30, 60, "HTTP(S) checkout"),
                _icmp(10),
            ),
        ),
        Profile(
            "fintech",
            "Financial services",
            "Financial services (strict ingress filtering)",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _udp_new((500, 4500)),
                _syn(10, 20),
                _conn((443,), 20, 40, "HTTPS"),
                _conn(REMOTE_ADMIN, 3, 6, "remote administration"),
                _icmp(5),
            ),
        ),
        Profile(
            "small_operator",
            "Small operator / VPS",
            "Small operators and VPS providers",
            (
                _invalid(),
                _flags(),
                _reflection(),
                _syn(25, 50),
                _conn((22,), 5, 10, "SSH"),
                _icmp(10),
            ),
        ),
        Profile(
            "msp",
            "Managed service provider",
            "Managed service providers",
            (
                _invalid(),
                _flags(),
                _reflection(),
                _syn(50, 100),
                _conn(REMOTE_ADMIN, 5, 10, "remote administration"),
                _icmp(20),
            ),
        ),
        Profile(
            "edge_node",
            "Edge / CDN node",
            "Edge/CDN nodes and reverse proxies",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _syn(100, 200),
                _conn(WEB, 200, 400, "HTTP(S)"),
                _udp(1000, 2000, (443,)),
                _icmp(50),
            ),
        ),
        Profile(
            "router",
            "Software router",
            "Software routers and gateways (the router's own input; transit is untouched)",
            (
                _invalid(),
                _flags(),
                _frags(),
                _reflection(),
                _conn((22, 179), 5, 10, "SSH and BGP"),
                _icmp(50),
            ),
        ),
        Profile(
            "game_studio",
            "Game studio",
            "Game studios (development and production servers)",
            (
                _invalid(),
                _flags(),
                _reflection(),
                _syn(50, 100),
                _udp(2000, 4000),
                _conn((*REMOTE_ADMIN, 1666), 10, 20, "SSH, RDP and Perforce"),
                _icmp(10),
            ),
        ),
    )
}

SUITES = ("nftables", "iptables", "ufw", "firewalld")
Suite = Literal["nftables", "iptables", "ufw", "firewalld"]
