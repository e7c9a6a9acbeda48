"""Render a profile (typed rules + custom rules + protected sources) as firewall text.

Pure functions, no I/O: :mod:`.firewall` feeds their output to the real tools.

* nftables: one transaction for ``nft -f`` that (re)creates ``table inet sluice``; the
  ``table``/``delete table`` pair at its top makes a re-apply replace the table whole.
* iptables: ``iptables-restore --noflush`` input (and one for ``ip6tables-restore``)
  declaring chain ``SLUICE-INPUT`` (a declaration flushes it) plus the ``INPUT`` jump when
  it is missing. Nothing outside that chain is touched.
* ufw: the same chain as a block for ``/etc/ufw/before.rules`` (``before6.rules``),
  between ``# BEGIN sluice`` and ``# END sluice``, jumped to from ``ufw-before-input``
  (``ufw6-before-input``).
* firewalld: a ``direct.xml`` defining chain ``sluice_input`` in the direct interface,
  jumped to from ``INPUT_direct``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from orchestrator.agent.grammar import CustomRule
from orchestrator.agent.profiles import FwRule

NFT_TABLE = "sluice"
IPT_CHAIN = "SLUICE-INPUT"
UFW_CHAIN = "sluice-input"
FWD_CHAIN = "sluice_input"
BEGIN, END = "# BEGIN sluice", "# END sluice"
ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"
SYN_ONLY = "tcp flags & (fin|syn|rst|ack) == syn"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What one apply puts in place: profile rules, custom rules and protected sources."""

    profile_id: str
    rules: tuple[FwRule, ...]
    custom: tuple[CustomRule, ...]
    protected: tuple[str, ...]  # management addresses and allowlisted prefixes, never dropped

    def split_protected(self) -> tuple[list[str], list[str]]:
        v4: list[str] = []
        v6: list[str] = []
        nets = sorted(
            {ipaddress.ip_network(p, strict=False) for p in self.protected},
            key=lambda n: (n.version, n),
        )
        for net in nets:
            (v4 if net.version == 4 else v6).append(str(net))
        return _collapse(v4), _collapse(v6)


def _collapse(nets: list[str]) -> list[str]:
    """Merge overlapping prefixes (an nft interval set refuses overlapping elements)."""
    parsed = [ipaddress.ip_network(n) for n in nets]
    return [str(n) for n in ipaddress.collapse_addresses(parsed)]  # type: ignore[type-var]


def _ports(ports: Sequence[int]) -> str:
    return str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, ports)) + " }"


# ----------------------------------------------------------------- nftables


def _nft_rule(rule: FwRule, i: int) -> list[str]:
    tag = f'comment "sluice:{rule.id}"'
    lim = f"limit rate over {rule.rate}/second burst {rule.burst or rule.rate} packets"
    if rule.kind == "invalid":
        return [f"ct state invalid drop {tag}"]
    if rule.kind == "bad_tcp_flags":
        return [
            f"tcp flags & (fin|syn|rst|psh|ack|urg) == 0x0 drop {tag}",
            f"tcp flags & (fin|syn|rst|psh|ack|urg) == (fin|psh|urg) drop {tag}",
            f"tcp flags & (fin|syn) == (fin|syn) drop {tag}",
            f"tcp flags & (syn|rst) == (syn|rst) drop {tag}",
        ]
    if rule.kind == "fragments":
        return [f"ip frag-off & 0x1fff != 0 drop {tag}"]
    if rule.kind == "reflection":
        return [f"ct state new udp sport {_ports(rule.ports)} drop {tag}"]
    if rule.kind == "udp_new_drop":
        return [f"ct state new udp dport != {_ports(rule.ports)} drop {tag}"]
    if rule.kind == "icmp_limit":
        return [
            f"icmp type echo-request {lim} drop {tag}",
            f"icmpv6 type echo-request {lim} drop {tag}",
        ]
    if rule.kind == "syn_limit":
        match = f"{SYN_ONLY} ct state new"
    elif rule.kind == "conn_limit":
        match = f"{SYN_ONLY} ct state new tcp dport {_ports(rule.ports)}"
    else:  # udp_limit
        match = f"udp dport {_ports(rule.ports)}" if rule.ports else "meta l4proto udp"
    return [
        f"{match} update @m{i}_4 {{ ip saddr {lim} }} drop {tag}",
        f"{match} update @m{i}_6 {{ ip6 saddr {lim} }} drop {tag}",
    ]


def render_nftables(rs: RuleSet) -> str:
    """One ``nft -f`` transaction that replaces Sluice's table (creating it if absent)."""
    v4, v6 = rs.split_protected()
    sets: list[str] = []
    for name, typ, elems in (("allow4", "ipv4_addr", v4), ("allow6", "ipv6_addr", v6)):
        body = f"type {typ}; flags interval;"
        if elems:
            body += " elements = { " + ", ".join(elems) + " }"
        sets.append(f"  set {name} {{ {body} }}")
    lines: list[str] = []
    for i, rule in enumerate(rs.rules):
        if rule.kind in ("syn_limit", "conn_limit", "udp_limit"):
            for fam, typ in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
                sets.append(
                    f"  set m{i}_{fam} {{ type {typ}; size 65535; flags dynamic,timeout; "
                    "timeout 60s; }"
                )
        lines.extend(_nft_rule(rule, i))
    for n, custom in enumerate(rs.custom):
        lines.append(f'{custom.text} comment "sluice:custom-{n}"')
    chain = [
        "  chain input {",
        "    type filter hook input priority filter - 10; policy accept;",
        '    iifname "lo" accept',
        "    ip saddr @allow4 accept",
        "    ip6 saddr @allow6 accept",
        "    ct state established,related accept",
        f"    icmpv6 type {{ {ND_TYPES} }} accept",
        *(f"    {line}" for line in lines),
        "  }",
    ]
    return "\n".join(
        [
            f"table inet {NFT_TABLE}",
            f"delete table inet {NFT_TABLE}",
            f"table inet {NFT_TABLE} {{",
            *sets,
            *chain,
            "}",
            "",
        ]
    )


def nftables_remove() -> str:
    """Remove Sluice's table whether or not it exists (one transaction)."""
    return f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"


# ----------------------------------------------------------------- iptables family


def _ipt_rule(rule: FwRule, i: int, v6: bool) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", f"sluice:{rule.id}"]
    new = ["-m", "conntrack", "--ctstate", "NEW"]
    drop = [*tag, "-j", "DROP"]

    def hlimit(mode: str) -> list[str]:
        args = ["-m", "hashlimit", "--hashlimit-above", f"{rule.rate}/second"]
        args += ["--hashlimit-burst", str(rule.burst or rule.rate)]
        if mode:
            args += ["--hashlimit-mode", mode]
        return [*args, "--hashlimit-name", f"sl{'6' if v6 else '4'}_{i}_{rule.kind[:5]}"]

    syn = ["-p", "tcp", "--syn"]
    if rule.kind == "invalid":
        return [["-m", "conntrack", "--ctstate", "INVALID", *drop]]
    if rule.kind == "bad_tcp_flags":
        return [
            ["-p", "tcp", "--tcp-flags", flags, match, *drop]
            for flags, match in (
                ("ALL", "NONE"),
                ("ALL", "FIN,PSH,URG"),
                ("SYN,FIN", "SYN,FIN"),
                ("SYN,RST", "SYN,RST"),
            )
        ]
    if rule.kind == "fragments":
        return [] if v6 else [["-f", *drop]]
    if rule.kind == "reflection":
        return [["-p", "udp", "-m", "multiport", "--sports", _csv(rule.ports), *new, *drop]]
    if rule.kind == "udp_new_drop":
        return [["-p", "udp", "-m", "multiport", "!", "--dports", _csv(rule.ports), *new, *drop]]
    if rule.kind == "icmp_limit":
        icmp = (
            ["-p", "ipv6-icmp", "--icmpv6-type", "echo-request"]
            if v6
            else ["-p", "icmp", "--icmp-type", "echo-request"]
        )
        return [[*icmp, *hlimit(""), *drop]]
    if rule.kind == "syn_limit":
        return [[*syn, *new, *hlimit("srcip"), *drop]]
    if rule.kind == "conn_limit":
        return [
            [*syn, "-m", "multiport", "--dports", _csv(rule.ports), *new, *hlimit("srcip"), *drop]
        ]
    ports = ["-m", "multiport", "--dports", _csv(rule.ports)] if rule.ports else []
    return [["-p", "udp", *ports, *hlimit("srcip"), *drop]]


def _csv(ports: Iterable[int]) -> str:
    return ",".join(map(str, ports))


def ipt_chain_rules(rs: RuleSet, chain: str, v6: bool) -> list[str]:
    """The ``-A chain ...`` lines of the rule set for one address family."""
    v4s, v6s = rs.split_protected()
    out = [f"-A {chain} -i lo -j ACCEPT"]
    out += [f"-A {chain} -s {net} -j ACCEPT" for net in (v6s if v6 else v4s)]
    out.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    if v6:
        out += [
            f"-A {chain} -p ipv6-icmp --icmpv6-type {t} -j ACCEPT"
            for t in (
                "neighbour-solicitation",
                "neighbour-advertisement",
                "router-solicitation",
                "router-advertisement",
            )
        ]
    for i, rule in enumerate(rs.rules):
        out += [f"-A {chain} " + " ".join(args) for args in _ipt_rule(rule, i, v6)]
    for n, custom in enumerate(rs.custom):
        if _custom_family_ok(custom, v6):
            tag = f"-m comment --comment sluice:custom-{n}"
            body = list(custom.tokens)
            out.append(f"-A {chain} " + " ".join([*body[:-2], tag, *body[-2:]]))
    return out


def _custom_family_ok(custom: CustomRule, v6: bool) -> bool:
    """A custom iptables rule naming addresses or ICMP of one family goes to that one only."""
    toks = custom.tokens
    for i, tok in enumerate(toks):
        if tok in ("-s", "-d") and i + 1 < len(toks):
            return (":" in toks[i + 1]) == v6
        if tok in ("--icmp-type", "-f") or (tok == "-p" and toks[i + 1 : i + 2] == ("icmp",)):
            return not v6
        if tok == "--icmpv6-type" or (tok == "-p" and toks[i + 1] in ("icmpv6", "ipv6-icmp")):
            return v6
        if tok == "-m" and toks[i + 1] in ("icmp", "icmp6"):
            return (toks[i + 1] == "icmp6") == v6
    return True


def render_iptables(rs: RuleSet, v6: bool, *, add_jump: bool) -> str:
    """``iptables-restore --noflush`` input that replaces chain ``SLUICE-INPUT``."""
    lines = ["*filter", f":{IPT_CHAIN} - [0:0]", *ipt_chain_rules(rs, IPT_CHAIN, v6)]
    if add_jump:
        lines.append(f"-I INPUT 1 -j {IPT_CHAIN}")
    return "\n".join([*lines, "COMMIT", ""])


def iptables_remove(*, has_jump: bool) -> str:
    lines = ["*filter"]
    if has_jump:
        lines.append(f"-D INPUT -j {IPT_CHAIN}")
    lines += [f"-F {IPT_CHAIN}", f"-X {IPT_CHAIN}", "COMMIT", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------- ufw


def render_ufw_block(rs: RuleSet, v6: bool) -> str:
    """The block Sluice keeps in ufw's ``before.rules`` / ``before6.rules``."""
    lines = [
        BEGIN,
        f":{UFW_CHAIN} - [0:0]",
        f"-A {'ufw6' if v6 else 'ufw'}-before-input -j {UFW_CHAIN}",
        *ipt_chain_rules(rs, UFW_CHAIN, v6),
        END,
    ]
    return "\n".join(lines) + "\n"


def strip_block(text: str) -> str:
    """``text`` without Sluice's block (a no-op when it has none)."""
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)


def splice_ufw(before_rules: str, block: str) -> str:
    """Put ``block`` in ufw's rules file just before the ``COMMIT`` of its ``*filter`` table.

    ufw's own chains are declared at the top of that table, so the jump from
    ``ufw-before-input`` is valid there; an earlier Sluice block is replaced.
    """
    text = strip_block(before_rules)
    lines = text.splitlines(keepends=True)
    in_filter = False
    for idx, line in enumerate(lines):
        word = line.strip()
        if word.startswith("*"):
            in_filter = word == "*filter"
        elif word == "COMMIT" and in_filter:
            return "".join([*lines[:idx], block, *lines[idx:]])
    raise ValueError("ufw rules file has no *filter table with a COMMIT line")


# ----------------------------------------------------------------- firewalld


def render_firewalld_direct(rs: RuleSet) -> str:
    """firewalld's ``direct.xml``: chain ``sluice_input`` (IPv4 and IPv6) and its jump."""
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<direct>"]
    for ipv, v6 in (("ipv4", False), ("ipv6", True)):
        out.append(f'  <chain ipv="{ipv}" table="filter" chain="{FWD_CHAIN}"/>')
        out.append(
            f'  <rule ipv="{ipv}" table="filter" chain="INPUT_direct" priority="0">'
            f"-j {FWD_CHAIN}</rule>"
        )
        for prio, line in enumerate(ipt_chain_rules(rs, FWD_CHAIN, v6)):
            args = line.split(" ", 2)[2]
            out.append(
                f'  <rule ipv="{ipv}" table="filter" chain="{FWD_CHAIN}" priority="{prio}">'
                f"{escape(args)}</rule>"
            )
    out.append("</direct>")
    return "\n".join(out) + "\n"
