"""Custom-rule grammar and the pure renderers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from orchestrator.agent.grammar import RuleInvalid, check_custom
from orchestrator.agent.profiles import PROFILES
from orchestrator.agent.render import (
    BEGIN,
    RuleSet,
    render_firewalld_direct,
    render_iptables,
    render_nftables,
    render_ufw_block,
    splice_ufw,
    strip_block,
)

UFW_BEFORE = "*filter\n:ufw-before-input - [0:0]\n-A ufw-before-input -i lo -j ACCEPT\nCOMMIT\n"


@pytest.mark.parametrize(
    ("suite", "cmd", "tokens"),
    [
        ("nftables", "udp sport 389 drop", ("udp", "sport", "389", "drop")),
        (
            "nftables",
            "ip saddr 203.0.113.0/24 tcp dport {22,3389} drop",
            ("ip", "saddr", "203.0.113.0/24", "tcp", "dport", "{", "22", ",", "3389", "}", "drop"),
        ),
        ("nftables", "udp dport 1000-2000 ct state new drop", None),
        (
            "iptables",
            "iptables -A INPUT -p udp --sport 19 -j DROP",
            ("-p", "udp", "--sport", "19", "-j", "DROP"),
        ),
        ("iptables", "-p tcp ! -s 198.51.100.0/24 --dport 22 -j DROP", None),
        ("ufw", "--protocol udp -m multiport --dports 53,123 -j DROP", None),
        (
            "firewalld",
            "-p tcp --syn -m hashlimit --hashlimit-above 10/second --hashlimit-mode srcip "
            "--hashlimit-name ssh -j DROP",
            None,
        ),
    ],
)
def test_valid_custom_rules(suite: str, cmd: str, tokens: tuple[str, ...] | None) -> None:
    rule = check_custom(suite, cmd, "a title")
    if tokens is not None:
        assert rule.tokens == tokens


@pytest.mark.parametrize(
    ("suite", "cmd", "code"),
    [
        ("iptables", "-p udp -j DROP; reboot", "shell_syntax"),
        ("iptables", "-p udp -j DROP && reboot", "shell_syntax"),
        ("iptables", "-p udp -j DROP || reboot", "shell_syntax"),
        ("iptables", "-p udp --dport `id` -j DROP", "shell_syntax"),
        ("iptables", "-p udp --dport $(id) -j DROP", "shell_syntax"),
        ("iptables", "-p udp -j DROP > /etc/passwd", "shell_syntax"),
        ("nftables", "udp dport 53 drop; flush ruleset", "shell_syntax"),
        ("nftables", "udp dport 53 drop | nc", "shell_syntax"),
        ("nftables", "udp dport 53 drop && true", "shell_syntax"),
        ("nftables", "nft add rule inet filter input drop", "invalid_rule"),
        ("nftables", "udp dport 53", "invalid_rule"),
        ("nftables", "meta mark set 1 accept", "invalid_rule"),
        ("nftables", "udp dport { 53 drop", "invalid_rule"),
        ("iptables", "-t nat -A POSTROUTING -j MASQUERADE", "invalid_rule"),
        ("iptables", "-p udp --dport 53", "invalid_rule"),
        ("iptables", "-p udp -j LOG", "invalid_rule"),
        ("iptables", "-p udp -j DROP --dport 53", "invalid_rule"),
        ("iptables", "-p udp --dport 99999 -j DROP", "invalid_rule"),
        ("iptables", "-s not-an-address -j DROP", "invalid_rule"),
        ("iptables", "-j SLUICE-INPUT", "invalid_rule"),
        ("pf", "block in", "unknown_suite"),
    ],
)
def test_refused_custom_rules(suite: str, cmd: str, code: str) -> None:
    with pytest.raises(RuleInvalid) as exc:
        check_custom(suite, cmd, "t")
    assert exc.value.code == code


def rs(
    profile: str = "game_server", custom: tuple[str, ...] = (), suite: str = "iptables"
) -> RuleSet:
    return RuleSet(
        profile,
        PROFILES[profile].rules,
        tuple(check_custom(suite, c, "t") for c in custom),
        ("198.51.100.7", "198.51.100.0/24", "2001:db8::/32", "2001:db8:1::5"),
    )


def test_protected_sources_come_first_and_are_merged() -> None:
    text = render_nftables(rs(suite="nftables"))
    assert "elements = { 198.51.100.0/24 }" in text and "elements = { 2001:db8::/32 }" in text
    chain = text[text.index("chain input") :]
    first_drop = chain.index(" drop")
    for accept in ("@allow4 accept", "@allow6 accept", "established,related accept"):
        assert chain.index(accept) < first_drop
    assert text.startswith("table inet sluice\ndelete table inet sluice\n")
    v4 = render_iptables(rs(), False, add_jump=True).splitlines()
    assert v4[2:5] == [
        "-A SLUICE-INPUT -i lo -j ACCEPT",
        "-A SLUICE-INPUT -s 198.51.100.0/24 -j ACCEPT",
        "-A SLUICE-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    assert v4[-2:] == ["-I INPUT 1 -j SLUICE-INPUT", "COMMIT"]
    assert "-I INPUT" not in render_iptables(rs(), False, add_jump=False)


def test_every_rule_is_tagged_and_only_drops() -> None:
    for pid in PROFILES:
        text = render_nftables(rs(pid, suite="nftables"))
        body = text[text.index("icmpv6 type {") :].splitlines()[1:-2]
        for line in body:
            assert (
                line.rstrip().endswith('"') and 'comment "sluice:' in line and " drop " in line
            ), line
        for v6 in (False, True):
            for line in render_iptables(rs(pid), v6, add_jump=False).splitlines():
                if "sluice:" in line:
                    assert line.endswith("-j DROP"), line


def test_custom_rules_go_to_their_address_family() -> None:
    custom = (
        "-s 203.0.113.0/24 -j DROP",
        "-s 2001:db8:9::/48 -j DROP",
        "-p udp --dport 9 -j DROP",
        "-m icmp6 -j DROP",
    )
    v4 = render_iptables(rs(custom=custom), False, add_jump=False)
    v6 = render_iptables(rs(custom=custom), True, add_jump=False)
    assert "203.0.113.0/24" in v4 and "203.0.113.0/24" not in v6
    assert "2001:db8:9::/48" in v6 and "2001:db8:9::/48" not in v4
    assert "--dport 9 -m comment --comment sluice:custom-2 -j DROP" in v4
    assert "--dport 9 -m comment --comment sluice:custom-2 -j DROP" in v6
    assert "icmp6" in v6 and "icmp6" not in v4


def test_ufw_block_is_spliced_replaced_and_stripped() -> None:
    block = render_ufw_block(rs(), False)
    once = splice_ufw(UFW_BEFORE, block)
    assert once.index(BEGIN) < once.index("COMMIT")
    assert "-A ufw-before-input -j sluice-input" in once
    twice = splice_ufw(once, render_ufw_block(rs("isp"), False))
    assert twice.count(BEGIN) == 1 and "udp-limit" not in twice
    assert strip_block(twice) == UFW_BEFORE
    assert "-A ufw6-before-input -j sluice-input" in render_ufw_block(rs(), True)
    with pytest.raises(ValueError, match="no \\*filter"):
        splice_ufw("*nat\nCOMMIT\n", block)


def test_firewalld_direct_xml_is_well_formed() -> None:
    text = render_firewalld_direct(rs(custom=("-p udp --dport 7 -j DROP",)))
    root = ET.fromstring(text)  # noqa: S314 - our own rendering, not untrusted input
    chains = root.findall("chain")
    assert {(c.get("ipv"), c.get("chain")) for c in chains} == {
        ("ipv4", "sluice_input"),
        ("ipv6", "sluice_input"),
    }
    jumps = [r for r in root.findall("rule") if r.get("chain") == "INPUT_direct"]
    assert [r.text for r in jumps] == ["-j sluice_input", "-j sluice_input"]
    prios = [
        int(r.get("priority", ""))
        for r in root.findall("rule")
        if r.get("ipv") == "ipv4" and r.get("chain") == "sluice_input"
    ]
    assert prios == list(range(len(prios)))
