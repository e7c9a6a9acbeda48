"""Custom firewall rules: checked against a small grammar of each suite, never a shell.

A custom rule's ``cmd`` is one rule *body* (what it matches and its verdict), in the
suite's own syntax. It is split into tokens, every token is checked against the suite's
vocabulary, and the canonical token list (not the submitted text) is what gets rendered
into Sluice's own table or chain. Shell syntax (``;``, ``&&``, ``|``, ``$``, quotes,
back-ticks, redirections...) is refused before anything else.

* nftables: an nft rule statement, e.g. ``udp sport 389 drop`` or
  ``ip saddr 203.0.113.0/24 tcp dport { 22, 3389 } drop``. A leading ``nft add rule
  <family> <table> <chain>`` is refused: the rule always goes into Sluice's chain.
* iptables, ufw, firewalld: iptables match options and a ``-j`` verdict, e.g.
  ``-p udp --sport 19 -j DROP``; a leading ``iptables -A INPUT`` (or ``-I INPUT``) is
  accepted and dropped. ufw places the rule in its ``before.rules`` and firewalld in a
  direct chain, both of which take iptables syntax.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from policies.errors import ValidationFailed

SHELL = re.compile(r"[;&|$`<>\\'\"()\n\r\t*?~#!%^=\[\]]")
NFT_SHELL = re.compile(r"[;|$`<>\\'\"()\n\r\t*?~#%^\[\]]")  # nft needs != and ==, &
MAX_TOKENS = 40


class RuleInvalid(ValidationFailed):
    code = "invalid_rule"


@dataclass(frozen=True, slots=True)
class CustomRule:
    """A validated custom rule: canonical ``tokens`` of the suite's syntax, a ``title``."""

    suite: str
    tokens: tuple[str, ...]
    title: str

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def _addr(tok: str) -> bool:
    try:
        ipaddress.ip_network(tok, strict=False)
    except ValueError:
        return False
    return True


def _port(tok: str, sep: str) -> bool:
    parts = tok.split(sep)
    if len(parts) > 2 or not all(p.isdigit() and 0 <= int(p) <= 65535 for p in parts):
        return False
    return len(parts) == 1 or int(parts[0]) <= int(parts[1])


def _ifname(tok: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", tok) is not None


# ----------------------------------------------------------------- nftables

NFT_WORDS = frozenset(
    [
        "ip",
        "ip6",
        "saddr",
        "daddr",
        "tcp",
        "udp",
        "sctp",
        "icmp",
        "icmpv6",
        "th",
        "sport",
        "dport",
        "meta",
        "l4proto",
        "nfproto",
        "iifname",
        "iif",
        "ct",
        "state",
        "new",
        "invalid",
        "established",
        "related",
        "untracked",
        "type",
        "code",
        "flags",
        "syn",
        "ack",
        "fin",
        "rst",
        "psh",
        "urg",
        "limit",
        "rate",
        "over",
        "second",
        "minute",
        "burst",
        "packets",
        "bytes",
        "length",
        "counter",
        "drop",
        "accept",
        "reject",
        "return",
        "frag-off",
        "ipv4",
        "ipv6",
        "echo-request",
        "echo-reply",
        "destination-unreachable",
        "time-exceeded",
        "parameter-problem",
        "!=",
        "==",
        "&",
        ",",
        "{",
        "}",
        "-",
        "/",
        "dscp",
        "ttl",
        "hoplimit",
        "pkttype",
        "broadcast",
        "multicast",
        "unicast",
        "with",
        "tcp-reset",
        "icmpx",
        "port-unreachable",
        "admin-prohibited",
    ]
)
NFT_VERDICTS = frozenset({"drop", "accept", "reject", "return", "counter"})


def _nft_tokens(cmd: str) -> list[str]:
    spaced = re.sub(r"([{},])", r" \1 ", cmd)
    return spaced.split()


def _nft_token_ok(tok: str) -> bool:
    if tok in NFT_WORDS:
        return True
    if re.fullmatch(r"\d+", tok) or re.fullmatch(r"0x[0-9a-fA-F]+", tok):
        return True
    if _port(tok, "-") or _addr(tok):
        return True
    if re.fullmatch(r"\d+-\d+", tok):
        return False
    return re.fullmatch(r"\d+(/second|/minute)", tok) is not None


def _check_nft(cmd: str) -> tuple[str, ...]:
    if NFT_SHELL.search(cmd) or "&&" in cmd:
        raise RuleInvalid("shell syntax is not allowed in a rule", code="shell_syntax")
    toks = _nft_tokens(cmd)
    if toks and toks[0] in ("nft", "add", "insert", "table", "flush", "delete", "chain"):
        raise RuleInvalid(
            "give the rule statement only (e.g. 'udp sport 389 drop'); it always goes into "
            "Sluice's own table"
        )
    for tok in toks:
        if not _nft_token_ok(tok):
            raise RuleInvalid(f"{tok!r} is not part of the nftables rule grammar Sluice accepts")
    if toks.count("{") != toks.count("}"):
        raise RuleInvalid("unbalanced braces")
    if not toks or toks[-1] not in NFT_VERDICTS:
        raise RuleInvalid("an nftables rule must end with a verdict: drop, accept, reject")
    return tuple(toks)


# ----------------------------------------------------------------- iptables

PROTOS = frozenset({"tcp", "udp", "icmp", "icmpv6", "ipv6-icmp", "all", "sctp"})
MODULES = frozenset(
    {"tcp", "udp", "icmp", "icmp6", "conntrack", "multiport", "limit", "hashlimit", "length"}
)
CTSTATES = frozenset({"NEW", "INVALID", "ESTABLISHED", "RELATED", "UNTRACKED"})
TARGETS = frozenset({"DROP", "ACCEPT", "REJECT", "RETURN"})
TCP_FLAGS = frozenset({"SYN", "ACK", "FIN", "RST", "PSH", "URG", "ALL", "NONE"})


def _rate(tok: str) -> bool:
    return re.fullmatch(r"\d{1,7}/(s|sec|second|m|min|minute)", tok) is not None


def _int(tok: str) -> bool:
    return tok.isdigit() and int(tok) < 10_000_000


def _plist(tok: str) -> bool:
    parts = tok.split(",")
    return 0 < len(parts) <= 15 and all(_port(p, ":") for p in parts)


def _ctlist(tok: str) -> bool:
    return all(s in CTSTATES for s in tok.split(","))


def _flaglist(tok: str) -> bool:
    return all(s in TCP_FLAGS for s in tok.split(","))


def _name(tok: str) -> bool:
    return re.fullmatch(r"[a-z0-9_]{1,15}", tok) is not None


def _icmp_type(tok: str) -> bool:
    return re.fullmatch(r"[a-z-]{1,30}|\d{1,3}(/\d{1,3})?", tok) is not None


# option -> validators of its arguments (an empty tuple: a flag)
IPT_OPTIONS: dict[str, tuple[Callable[[str], bool], ...]] = {
    "-p": (lambda t: t in PROTOS,),
    "-s": (_addr,),
    "-d": (_addr,),
    "-i": (_ifname,),
    "-m": (lambda t: t in MODULES,),
    "--sport": (lambda t: _port(t, ":"),),
    "--dport": (lambda t: _port(t, ":"),),
    "--sports": (_plist,),
    "--dports": (_plist,),
    "--ctstate": (_ctlist,),
    "--syn": (),
    "-f": (),
    "--tcp-flags": (_flaglist, _flaglist),
    "--icmp-type": (_icmp_type,),
    "--icmpv6-type": (_icmp_type,),
    "--limit": (_rate,),
    "--limit-burst": (_int,),
    "--hashlimit-above": (_rate,),
    "--hashlimit-upto": (_rate,),
    "--hashlimit-burst": (_int,),
    "--hashlimit-mode": (lambda t: t in ("srcip", "dstip", "srcip,dstport", "dstip,dstport"),),
    "--hashlimit-name": (_name,),
    "--length": (lambda t: _port(t, ":"),),
    "-j": (lambda t: t in TARGETS,),
}
ALIASES = {
    "--protocol": "-p",
    "--source": "-s",
    "--destination": "-d",
    "--in-interface": "-i",
    "--match": "-m",
    "--jump": "-j",
    "--source-port": "--sport",
    "--destination-port": "--dport",
    "--source-ports": "--sports",
    "--destination-ports": "--dports",
    "--fragment": "-f",
}
NEGATABLE = frozenset({"-p", "-s", "-d", "-i", "--sport", "--dport", "--syn", "-f"})


def _check_iptables(cmd: str) -> tuple[str, ...]:
    if "&&" in cmd or "||" in cmd or SHELL.search(cmd.replace("!", "")):
        raise RuleInvalid("shell syntax is not allowed in a rule", code="shell_syntax")
    toks = cmd.split()
    if toks[:1] in (["iptables"], ["ip6tables"]):
        toks = toks[1:]
    if toks[:2] in (["-A", "INPUT"], ["-I", "INPUT"]):
        toks = toks[2:]
    out: list[str] = []
    i = 0
    seen_jump = False
    while i < len(toks):
        tok = toks[i]
        negate = tok == "!"
        if negate:
            i += 1
            if i >= len(toks):
                raise RuleInvalid("'!' must be followed by an option")
            tok = toks[i]
        opt = ALIASES.get(tok, tok)
        if opt not in IPT_OPTIONS:
            raise RuleInvalid(f"option {tok!r} is not part of the iptables grammar Sluice accepts")
        if negate and opt not in NEGATABLE:
            raise RuleInvalid(f"option {tok!r} cannot be negated")
        validators = IPT_OPTIONS[opt]
        args = toks[i + 1 : i + 1 + len(validators)]
        if len(args) != len(validators):
            raise RuleInvalid(f"option {tok!r} needs {len(validators)} argument(s)")
        for arg, valid in zip(args, validators, strict=True):
            if not valid(arg):
                raise RuleInvalid(f"{arg!r} is not a valid argument of {tok}")
        if seen_jump:
            raise RuleInvalid("-j must be the last option of the rule")
        if opt == "-j":
            seen_jump = True
        out.extend(["!", opt, *args] if negate else [opt, *args])
        i += 1 + len(validators)
    if not seen_jump:
        raise RuleInvalid("an iptables rule must end with -j DROP, ACCEPT, REJECT or RETURN")
    return tuple(out)


def check_custom(suite: str, cmd: str, title: str) -> CustomRule:
    """Validate one custom rule for ``suite``; raise :class:`RuleInvalid` if it is not valid."""
    if not isinstance(cmd, str) or not cmd.strip():
        raise RuleInvalid("cmd must be a non-empty string", field="cmd")
    if len(cmd) > 500:
        raise RuleInvalid("cmd is longer than 500 characters", field="cmd")
    if suite == "nftables":
        toks = _check_nft(cmd)
    elif suite in ("iptables", "ufw", "firewalld"):
        toks = _check_iptables(cmd)
    else:
        raise RuleInvalid(f"unknown suite {suite!r}", code="unknown_suite", field="suite")
    if len(toks) > MAX_TOKENS:
        raise RuleInvalid(f"a rule has at most {MAX_TOKENS} tokens")
    clean_title = re.sub(r"[^A-Za-z0-9 _.:/,+-]", "", title or "")[:80].strip()
    return CustomRule(suite, toks, clean_title or "custom rule")
