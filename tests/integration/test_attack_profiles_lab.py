"""Attack profiles applied for real in a network namespace and proved with traffic.

Topology (all created here, removed at the end)::

    client 192.0.2.1 / 2001:db8::1 ------- 192.0.2.2 / 2001:db8::2  host (firewall)
    mgmt   198.51.100.1 / 2001:db8:1::1 -- 198.51.100.2 / 2001:db8:1::2
           + 203.0.113.70 (an allowlisted source)

The host already has a firewall of its own (a table / INPUT rule that is not Sluice's);
removing the profile must leave exactly that behind.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labs.netns import Lab, Namespace, wait_for
from orchestrator.agent.firewall import Firewall, FirewallError
from orchestrator.agent.grammar import check_custom
from orchestrator.agent.profiles import PROFILES
from orchestrator.agent.render import RuleSet
from tests.conftest import need_binaries
from tests.integration.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST4, HOST6, MGMT_HOST4 = "192.0.2.2", "2001:db8::2", "198.51.100.2"
PROTECTED = ("198.51.100.1", "2001:db8:1::1", "203.0.113.64/26")
N = 20


@dataclass
class Net:
    lab: Lab
    host: Namespace
    client: Namespace
    mgmt: Namespace

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.host.netns]

    def traffic(
        self, sends: list[tuple[Namespace, list[str]]], ports: str = "5000,7777"
    ) -> dict[str, int]:
        """Counts per ``port/source`` the host received for ``sends`` (then an END marker)."""
        ready = self.lab.path(f"ready-{len(list(self.lab.dir.glob('ready-*')))}")
        recv = subprocess.Popen(  # our own helper, fixed arguments
            [
                *self.prefix(),
                sys.executable,
                "-m",
                "labs.traffic",
                "recv",
                "--ports",
                ports,
                "--ready",
                str(ready),
                "--max-seconds",
                "30",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(ready.exists, timeout=20, what="the receiver to bind")
            for ns, args in sends:
                self.lab.run(ns, [sys.executable, "-m", "labs.traffic", "send", *args])
            self.lab.run(
                self.mgmt,
                [
                    sys.executable,
                    "-m",
                    "labs.traffic",
                    "send",
                    "--dst",
                    MGMT_HOST4,
                    "--dport",
                    ports.split(",", maxsplit=1)[0],
                    "--count",
                    "0",
                    "--end",
                ],
            )
            out, _ = recv.communicate(timeout=40)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        counts: dict[str, int] = json.loads(out)
        return counts


@pytest.fixture
def net() -> Iterator[Net]:
    require_lab("nft", "iptables-restore", "ip6tables-restore")
    with Lab() as lab:
        host, client, mgmt = lab.namespace("host"), lab.namespace("client"), lab.namespace("mgmt")
        lab.link(
            client, host, ("192.0.2.1/30", "192.0.2.2/30"), ("2001:db8::1/64", "2001:db8::2/64")
        )
        link = lab.link(
            mgmt,
            host,
            ("198.51.100.1/30", "198.51.100.2/30"),
            ("2001:db8:1::1/64", "2001:db8:1::2/64"),
        )
        lab.run(mgmt, ["ip", "addr", "add", "203.0.113.70/32", "dev", link.a_if])
        lab.run(host, ["ip", "route", "add", "203.0.113.64/26", "via", "198.51.100.1"])
        yield Net(lab, host, client, mgmt)


def udp(dst: str, dport: int, sport: int, bind: str = "", count: int = N) -> list[str]:
    args = ["--dst", dst, "--dport", str(dport), "--count", str(count), "--sport", str(sport)]
    return [*args, "--bind", bind] if bind else args


def ruleset(rs_profile: str, suite: str, custom: list[str] = ()) -> RuleSet:  # type: ignore[assignment]
    return RuleSet(
        rs_profile,
        PROFILES[rs_profile].rules,
        tuple(check_custom(suite, c, "test") for c in custom),
        PROTECTED,
    )


def prove_game_server(net: Net) -> None:
    got = net.traffic(
        [
            (net.client, udp(HOST4, 5000, 123)),  # NTP reflection: dropped
            (net.client, udp(HOST6, 5000, 389)),  # CLDAP reflection over IPv6: dropped
            (net.client, udp(HOST4, 5000, 40001)),  # ordinary client traffic: passes
            (net.client, udp(HOST4, 7777, 40002)),  # the custom rule's port: dropped
            (net.mgmt, udp(MGMT_HOST4, 5000, 123)),  # management address: never dropped
            (net.mgmt, udp(MGMT_HOST4, 5000, 123, bind="203.0.113.70")),  # allowlisted
            (net.mgmt, udp("2001:db8:1::2", 5000, 389)),  # management over IPv6
        ]
    )
    assert got == {
        "5000/192.0.2.1": N,
        "5000/198.51.100.1": N,
        "5000/203.0.113.70": N,
        "5000/2001:db8:1::1": N,
    }, got


def syn_answers(net: Net, ns: Namespace, dst: str, count: int) -> tuple[int, float]:
    """Send ``count`` TCP SYNs to a closed port with hping3; (answers, seconds taken)."""
    t0 = time.monotonic()
    res = net.lab.run(
        ns,
        ["hping3", "-S", "-p", "81", "-c", str(count), "-i", "u100", "-q", dst],
        check=False,
        timeout=60,
    )
    took = time.monotonic() - t0
    m = re.search(r"(\d+) packets received", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return int(m.group(1)), took


def prove_syn_limit(net: Net) -> None:
    """game_server: 20 new SYNs/s per source, burst 40; the management address is exempt."""
    if shutil.which("hping3") is None:
        need_binaries("hping3")
    got, took = syn_answers(net, net.client, HOST4, 1000)
    # the burst is answered, the rest is not (hping3 waits ~1 s for late answers)
    assert 0 < got <= 40 + 20 * (took + 1), (got, took)
    got, _ = syn_answers(net, net.mgmt, MGMT_HOST4, 300)
    assert got == 300


def prove_isp(net: Net) -> None:
    """The ISP profile spares DNS answers (resolvers) and has no custom rule."""
    got = net.traffic(
        [
            (net.client, udp(HOST4, 5000, 53)),
            (net.client, udp(HOST4, 5000, 123)),
            (net.client, udp(HOST4, 7777, 40002)),
        ]
    )
    assert got == {"5000/192.0.2.1": N, "7777/192.0.2.1": N}, got


# ----------------------------------------------------------------- nftables


def nft_ruleset(net: Net) -> str:
    return net.lab.run(net.host, ["nft", "list", "ruleset"]).stdout


def test_nftables_profile_drops_attacks_spares_management_replaces_and_removes(net: Net) -> None:
    subprocess.run(  # the operator's own table, which must survive
        [*net.prefix(), "nft", "-f", "-"],
        input="table inet operator {\n chain in {\n  type filter hook input priority 0; "
        "policy accept;\n  tcp dport 9999 accept\n }\n}\n",
        text=True,
        check=True,
    )
    original = nft_ruleset(net)
    fw = Firewall("nftables", prefix=net.prefix())
    fw.apply(ruleset("game_server", "nftables", ["udp dport 7777 drop"]))
    table = net.lab.run(net.host, ["nft", "list", "table", "inet", "sluice"]).stdout
    assert "sluice:custom-0" in table and "sluice:udp-limit" in table
    prove_game_server(net)
    prove_syn_limit(net)

    # re-apply another profile: the table is replaced whole (no custom rule, no UDP limit)
    fw.apply(ruleset("isp", "nftables"))
    table = net.lab.run(net.host, ["nft", "list", "table", "inet", "sluice"]).stdout
    assert "custom" not in table and "udp-limit" not in table and "sluice:syn-limit" in table
    assert nft_ruleset(net).count("table inet sluice") == 1
    prove_isp(net)

    # a rule the kernel refuses fails the whole transaction: the ISP table stays as it was
    with pytest.raises(FirewallError):
        fw.apply(ruleset("game_server", "nftables", ["tcp dport 70000 drop"]))
    assert net.lab.run(net.host, ["nft", "list", "table", "inet", "sluice"]).stdout == table

    fw.remove()
    assert nft_ruleset(net) == original
    fw.remove()  # removing twice is harmless
    assert nft_ruleset(net) == original


# ----------------------------------------------------------------- iptables


def ipt_state(net: Net) -> str:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = net.lab.run(net.host, [tool]).stdout
        out += [
            re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines() if not ln.startswith("#")
        ]
    return "\n".join(out)


def test_iptables_profile_drops_attacks_spares_management_replaces_and_removes(net: Net) -> None:
    for tool in ("iptables", "ip6tables"):
        net.lab.run(net.host, [tool, "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"])
    original = ipt_state(net)
    fw = Firewall("iptables", prefix=net.prefix())
    fw.apply(ruleset("game_server", "iptables", ["-p udp --dport 7777 -j DROP"]))
    prove_game_server(net)
    prove_syn_limit(net)
    fw.apply(ruleset("game_server", "iptables", ["-p udp --dport 7777 -j DROP"]))  # same again
    saved = net.lab.run(net.host, ["iptables-save"]).stdout
    assert saved.count("-A INPUT -j SLUICE-INPUT") == 1
    assert saved.count("sluice:custom-0") == 1

    fw.apply(ruleset("isp", "iptables"))
    prove_isp(net)
    before_fail = ipt_state(net)
    # IPv4 commits, then IPv6 refuses the rule: the IPv4 chain is put back as it was
    with pytest.raises(FirewallError):
        fw.apply(ruleset("game_server", "iptables", ["-m icmp6 -j DROP"]))
    assert ipt_state(net) == before_fail

    fw.remove()
    assert ipt_state(net) == original
    fw.remove()
    assert ipt_state(net) == original


# ----------------------------------------------------------------- ufw and firewalld


def _private_etc(net: Net, name: str) -> Path:
    """``ip netns exec`` bind-mounts /etc/netns/NS/NAME over /etc/NAME: a private config."""
    src = Path("/etc") / name
    dst = Path("/etc/netns") / net.host.netns / name
    shutil.copytree(src, dst)
    net.lab.on_close(lambda: shutil.rmtree(dst.parent, ignore_errors=True))
    return dst


def test_ufw_rules_loaded_by_real_ufw_in_a_namespace(net: Net) -> None:
    require_lab("ufw")
    etc = _private_etc(net, "ufw")
    fw = Firewall("ufw", prefix=net.prefix(), ufw_dir=etc)
    net.lab.run(net.host, ["ufw", "--force", "enable"])
    for port in ("5000/udp", "7777/udp"):  # the host's services, open in ufw itself
        net.lab.run(net.host, ["ufw", "allow", port])
    before = (etc / "before.rules").read_text()
    fw.apply(ruleset("game_server", "ufw", ["-p udp --dport 7777 -j DROP"]))
    saved = net.lab.run(net.host, ["iptables-save"]).stdout
    assert "-A ufw-before-input -j sluice-input" in saved and "sluice:custom-0" in saved
    assert "sluice:custom-0" in net.lab.run(net.host, ["ip6tables-save"]).stdout
    prove_game_server(net)
    fw.apply(ruleset("isp", "ufw"))
    assert (etc / "before.rules").read_text().count("# BEGIN sluice") == 1
    prove_isp(net)
    fw.remove()
    assert (etc / "before.rules").read_text() == before
    assert "sluice" not in net.lab.run(net.host, ["iptables-save"]).stdout


def test_firewalld_direct_rules_pass_its_offline_check(net: Net) -> None:
    require_lab("firewall-offline-cmd")
    etc = _private_etc(net, "firewalld")
    fw = Firewall("firewalld", prefix=net.prefix(), firewalld_dir=etc)
    fw.apply(ruleset("fintech", "firewalld", ["-p udp --dport 7777 -j DROP"]))
    text = (etc / "direct.xml").read_text()
    assert 'chain="sluice_input"' in text and "sluice:custom-0" in text
    out = net.lab.run(net.host, ["firewall-offline-cmd", "--direct", "--get-all-rules"]).stdout
    assert "-p udp --dport 7777 -m comment --comment sluice:custom-0 -j DROP" in out
    # the direct rules are real iptables arguments: they load into a live IPv4/IPv6 filter
    for tool, ipv in (("iptables", "ipv4"), ("ip6tables", "ipv6")):
        net.lab.run(net.host, [tool, "-N", "sluice_input"])
        for line in out.splitlines():
            fam, _table, chain, _prio, *args = shlex.split(line)
            if fam == ipv and chain == "sluice_input":
                net.lab.run(net.host, [tool, "-A", "sluice_input", *args])
    fw.remove()
    assert not (etc / "direct.xml").exists()
