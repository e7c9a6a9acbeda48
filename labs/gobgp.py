"""GoBGP as a lab SPEAKER: gobgpd in the speaker namespace, driven by the gobgp adapter.

    with running(GoBgpSpeaker()) as topo:
        adapter = Registry(access=topo.access).create(
            AdapterConfig(**topo.speaker.adapter_config())
        )

gobgpd's gRPC API listens on a unix socket in the lab directory (reachable from outside
the namespace). Each IPv4 neighbour carries ipv4-unicast + ipv4-flowspec, each IPv6 one
ipv6-unicast + ipv6-flowspec, with the transport's local address pinned.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from labs.netns import Lab, LabError, Namespace, Process, wait_for
from labs.peers import Neighbor, SpeakerSpec

ESTABLISHED = 6  # apipb.PeerState.SessionState.ESTABLISHED


def render_config(spec: SpeakerSpec) -> str:
    """gobgpd's TOML for ``spec`` (one block per neighbour)."""
    lines = [
        "[global.config]",
        f"  as = {spec.asn}",
        f'  router-id = "{spec.router_id}"',
        "",
    ]
    for nb in spec.neighbors:
        fams = (
            ("ipv4-unicast", "ipv4-flowspec")
            if nb.version == 4
            else ("ipv6-unicast", "ipv6-flowspec")
        )
        lines += [
            "[[neighbors]]",
            "  [neighbors.config]",
            f'    neighbor-address = "{nb.address}"',
            f"    peer-as = {nb.asn}",
            "  [neighbors.transport.config]",
            f'    local-address = "{nb.local_address}"',
            "  [neighbors.timers.config]",
            "    connect-retry = 1",
            "    hold-time = 9",
            "    keepalive-interval = 3",
            # a peer still applying its config may reset the first session; do not sit
            # in Idle for the default 30 s after that
            "    idle-hold-time-after-reset = 1",
        ]
        for fam in fams:
            lines += [
                "  [[neighbors.afi-safis]]",
                "    [neighbors.afi-safis.config]",
                f'      afi-safi-name = "{fam}"',
            ]
        lines.append("")
    return "\n".join(lines)


class GoBgpNode:
    def __init__(self, lab: Lab, ns: Namespace, spec: SpeakerSpec, name: str = "gobgp") -> None:
        self.lab = lab
        self.ns = ns
        self.spec = spec
        self.name = name
        self.conf = lab.path(name, "gobgpd.toml")
        self.socket = lab.path(name, "gobgp.sock")
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def gobgp(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """The gobgp CLI against this daemon (from outside the namespace: the socket is a file)."""
        return subprocess.run(
            ["gobgp", "--target", self.endpoint, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def start(self, timeout: float = 10.0) -> GoBgpNode:
        self.conf.write_text(render_config(self.spec))
        self.socket.unlink(missing_ok=True)
        argv = ["gobgpd", "-f", str(self.conf), "-t", "toml", "--api-hosts", self.endpoint]
        self.process = self.lab.spawn(self.ns, [*argv, "--pprof-disable"], name=self.name)
        proc = self.process

        def ready() -> bool:
            if not proc.alive():
                raise LabError(f"gobgpd {self.name} exited:\n{proc.log_tail()}")
            return self.socket.exists() and self.gobgp("global").returncode == 0

        wait_for(ready, timeout=timeout, what=f"gobgpd {self.name} API", diagnose=self._diagnose)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 10.0) -> GoBgpNode:
        self.stop()
        return self.start(timeout)

    def _diagnose(self) -> str:
        tail = self.process.log_tail() if self.process is not None else ""
        return f"gobgpd {self.name} log:\n{tail}"

    def sessions(self) -> dict[str, int]:
        """Neighbour address -> session state number (6 = Established)."""
        res = self.gobgp("neighbor", "-j")
        if res.returncode != 0:
            return {}
        return {
            p["state"]["neighbor_address"]: int(p["state"].get("session_state", 0))
            for p in json.loads(res.stdout or "[]")
        }

    def wait_established(
        self, peers: Sequence[Neighbor] | None = None, timeout: float = 30.0
    ) -> None:
        addrs = [nb.address for nb in (peers if peers is not None else self.spec.neighbors)]
        wait_for(
            lambda: all(self.sessions().get(a) == ESTABLISHED for a in addrs),
            timeout=timeout,
            interval=0.2,
            what=f"gobgpd {self.name} sessions {addrs} Established",
            diagnose=lambda: self.gobgp("neighbor").stdout,
        )

    def adapter_config(self, name: str = "lab-gobgp") -> dict[str, Any]:
        return {"name": name, "adapter_type": "gobgp", "endpoint": self.endpoint}

    def describe(self) -> dict[str, str]:
        return {
            "kind": "gobgp",
            "socket": str(self.socket),
            "config": str(self.conf),
            "cli": f"gobgp --target {self.endpoint} neighbor",
        }


class GoBgpSpeaker:
    """gobgpd as the speaker the gobgp adapter drives (gRPC over a unix socket)."""

    kind = "gobgp"

    def start(self, lab: Lab, ns: Namespace, spec: SpeakerSpec) -> GoBgpNode:
        return GoBgpNode(lab, ns, spec).start()
