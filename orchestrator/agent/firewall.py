"""Apply and remove a rendered rule set with the suite's own tools (argv lists, no shell).

Each suite applies atomically or rolls back:

* nftables: one ``nft -f -`` transaction; the kernel commits all of it or nothing.
* iptables: ``iptables-restore --noflush`` commits the IPv4 filter table atomically; if the
  IPv6 half then fails, the IPv4 chain is put back as it was (from ``iptables-save``).
* ufw: ``before.rules``/``before6.rules`` rewritten (old text kept), then ``ufw reload``
  when ufw is active; on failure the old files are written back and ufw reloaded.
* firewalld: ``direct.xml`` rewritten (old text kept), then ``firewall-cmd --reload`` when
  the daemon runs; a configuration ``firewall-offline-cmd --check-config`` refuses is
  never kept.

``prefix`` runs every command elsewhere (``["ip", "netns", "exec", NS]`` in tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.agent.profiles import SUITES
from orchestrator.agent.render import (
    IPT_CHAIN,
    UFW_CHAIN,
    RuleSet,
    iptables_remove,
    nftables_remove,
    render_firewalld_direct,
    render_iptables,
    render_nftables,
    render_ufw_block,
    splice_ufw,
    strip_block,
)
from policies.errors import SluiceError


class FirewallError(SluiceError):
    code = "firewall_failed"


@dataclass
class Firewall:
    suite: str
    prefix: Sequence[str] = ()
    ufw_dir: Path = Path("/etc/ufw")
    firewalld_dir: Path = Path("/etc/firewalld")
    timeout: float = 30.0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise FirewallError(f"unknown firewall suite {self.suite!r}", code="unknown_suite")

    # ------------------------------------------------------------ plumbing

    def run(
        self, argv: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*self.prefix, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        self.log.append(f"{' '.join(argv)} -> {res.returncode}")
        return res

    def must(self, argv: Sequence[str], stdin: str | None = None) -> str:
        res = self.run(argv, stdin)
        if res.returncode != 0:
            raise FirewallError(f"{argv[0]} failed: {(res.stderr or res.stdout).strip()[:500]}")
        return res.stdout

    # ------------------------------------------------------------ public

    def apply(self, rs: RuleSet) -> str:
        """Put ``rs`` in place, replacing an earlier Sluice rule set; return a summary."""
        getattr(self, f"_apply_{self.suite}")(rs)
        return f"{self.suite}: profile {rs.profile_id} applied ({self._count(rs)} rules)"

    def remove(self) -> str:
        getattr(self, f"_remove_{self.suite}")()
        return f"{self.suite}: Sluice rules removed"

    @staticmethod
    def _count(rs: RuleSet) -> int:
        return len(rs.rules) + len(rs.custom)

    # ------------------------------------------------------------ nftables

    def _apply_nftables(self, rs: RuleSet) -> None:
        self.must(["nft", "-f", "-"], render_nftables(rs))

    def _remove_nftables(self) -> None:
        self.must(["nft", "-f", "-"], nftables_remove())

    # ------------------------------------------------------------ iptables

    def _saved_chain(self, tool: str) -> tuple[list[str], bool] | None:
        """Our chain's rules and whether INPUT jumps to it; None when the chain is absent."""
        out = self.must([f"{tool}-save", "-t", "filter"])
        if f":{IPT_CHAIN} " not in out:
            return None
        rules = [ln for ln in out.splitlines() if ln.startswith(f"-A {IPT_CHAIN} ")]
        jump = any(ln.strip() == f"-A INPUT -j {IPT_CHAIN}" for ln in out.splitlines())
        return rules, jump

    def _restore_saved(self, tool: str, saved: tuple[list[str], bool] | None) -> None:
        now = self._saved_chain(tool)
        if saved is None:
            if now is not None:
                self.must([f"{tool}-restore", "--noflush"], iptables_remove(has_jump=now[1]))
            return
        lines = ["*filter", f":{IPT_CHAIN} - [0:0]", *saved[0]]
        if saved[1] and not (now and now[1]):
            lines.append(f"-I INPUT 1 -j {IPT_CHAIN}")
        self.must([f"{tool}-restore", "--noflush"], "\n".join([*lines, "COMMIT", ""]))

    def _apply_iptables(self, rs: RuleSet) -> None:
        done: list[tuple[str, tuple[list[str], bool] | None]] = []
        try:
            for tool, v6 in (("iptables", False), ("ip6tables", True)):
                saved = self._saved_chain(tool)
                has_jump = saved is not None and saved[1]
                self.must(
                    [f"{tool}-restore", "--noflush"],
                    render_iptables(rs, v6, add_jump=not has_jump),
                )
                done.append((tool, saved))
        except FirewallError:
            for tool, saved in reversed(done):
                self._restore_saved(tool, saved)
            raise

    def _remove_iptables(self) -> None:
        for tool in ("iptables", "ip6tables"):
            saved = self._saved_chain(tool)
            if saved is not None:
                self.must([f"{tool}-restore", "--noflush"], iptables_remove(has_jump=saved[1]))

    # ------------------------------------------------------------ ufw

    def _ufw_files(self) -> list[tuple[Path, bool]]:
        return [(self.ufw_dir / "before.rules", False), (self.ufw_dir / "before6.rules", True)]

    def _ufw_active(self) -> bool:
        conf = self.ufw_dir / "ufw.conf"
        return conf.exists() and "ENABLED=yes" in conf.read_text()

    def _ufw_write(self, texts: dict[Path, str]) -> None:
        old = {p: p.read_text() for p in texts}
        try:
            for path, text in texts.items():
                _atomic_write(path, text)
            if self._ufw_active():
                self.must(["ufw", "reload"])
        except (FirewallError, OSError):
            for path, text in old.items():
                _atomic_write(path, text)
            if self._ufw_active():
                self.run(["ufw", "reload"])
            raise

    def _apply_ufw(self, rs: RuleSet) -> None:
        texts = {}
        for path, v6 in self._ufw_files():
            try:
                texts[path] = splice_ufw(path.read_text(), render_ufw_block(rs, v6))
            except (OSError, ValueError) as exc:
                raise FirewallError(f"ufw: cannot use {path}: {exc}") from None
        self._ufw_write(texts)

    def _remove_ufw(self) -> None:
        self._ufw_write({p: strip_block(p.read_text()) for p, _ in self._ufw_files()})
        if self._ufw_active():  # ufw reload empties the chain it no longer knows; delete it
            for tool in ("iptables", "ip6tables"):
                if f":{UFW_CHAIN} " in self.must([f"{tool}-save", "-t", "filter"]):
                    self.must(
                        [f"{tool}-restore", "--noflush"],
                        f"*filter\n-F {UFW_CHAIN}\n-X {UFW_CHAIN}\nCOMMIT\n",
                    )

    # ------------------------------------------------------------ firewalld

    def _firewalld(self, text: str | None) -> None:
        path = self.firewalld_dir / "direct.xml"
        old = path.read_text() if path.exists() else None
        try:
            if text is None:
                path.unlink(missing_ok=True)
            else:
                _atomic_write(path, text)
            if shutil.which("firewall-offline-cmd"):
                self.must(["firewall-offline-cmd", "--check-config"])
            running = shutil.which("firewall-cmd") is not None
            if running and self.run(["firewall-cmd", "--state"]).returncode == 0:
                self.must(["firewall-cmd", "--reload"])
        except (FirewallError, OSError):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                _atomic_write(path, old)
            raise

    def _apply_firewalld(self, rs: RuleSet) -> None:
        self._firewalld(render_firewalld_direct(rs))

    def _remove_firewalld(self) -> None:
        self._firewalld(None)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.sluice-tmp")
    tmp.write_text(text)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    if path.exists():
        tmp.chmod(path.stat().st_mode & 0o7777)
    tmp.replace(path)
