"""ExaBGP as a lab SPEAKER: exabgp in the speaker namespace running Sluice's bridge.

    with running(ExaBgpSpeaker()) as topo:
        adapter = Registry(access=topo.access).create(
            AdapterConfig(**topo.speaker.adapter_config())
        )

ExaBGP 4.2 runs in the foreground with the environment overrides LAB.md lists; its
``process`` block starts ``python -m adapters.exabgp.bridge`` with this interpreter (the
project's virtualenv), listening on a unix socket in the lab directory (reachable from
outside the namespace) and, with ``http=``, on HTTP inside the namespace (``token=``
makes it require that bearer token). ``--state-file`` lets a respawned bridge resume.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from labs.netns import Lab, LabError, Namespace, Process, wait_for
from labs.peers import Neighbor, SpeakerSpec

ENV = {
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_user": "root",
    "exabgp_api_cli": "false",
    "exabgp_log_destination": "stdout",
    "exabgp_tcp_bind": "",
    # ExaBGP's reactor sleeps speed/100 s per loop turn while its scheduler still has
    # work; at the default 1.0 a burst of 10,000 routes spends ~2 s asleep. 0.1 costs
    # ~5% of a core when idle (measured here) and halves a 10,000-route storm.
    "exabgp_reactor_speed": "0.1",
}


def render_config(spec: SpeakerSpec, bridge_argv: Sequence[str]) -> str:
    """ExaBGP's configuration: the bridge process and one block per neighbour."""
    lines = [
        "process sluice {",
        f"    run {' '.join(bridge_argv)};",
        "    encoder text;",
        "}",
        "",
    ]
    for nb in spec.neighbors:
        fam = "ipv4" if nb.version == 4 else "ipv6"
        lines += [
            f"neighbor {nb.address} {{",
            f"    router-id {spec.router_id};",
            f"    local-address {nb.local_address};",
            f"    local-as {spec.asn};",
            f"    peer-as {nb.asn};",
            "    hold-time 9;",
            f"    family {{ {fam} unicast; {fam} flow; }}",
            "    api { processes [ sluice ]; neighbor-changes; }",
            "}",
            "",
        ]
    return "\n".join(lines)


class ExaBgpNode:
    def __init__(
        self,
        lab: Lab,
        ns: Namespace,
        spec: SpeakerSpec,
        name: str = "exabgp",
        *,
        http: str | None = None,
        token: str | None = None,
    ) -> None:
        self.lab = lab
        self.ns = ns
        self.spec = spec
        self.name = name
        self.http = http
        self.token = token
        self.conf = lab.path(name, "exabgp.conf")
        self.socket = lab.path(name, "bridge.sock")
        self.state_file = lab.path(name, "bridge-state.json")
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def bridge_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "adapters.exabgp.bridge", "--socket", str(self.socket)]
        argv += ["--state-file", str(self.state_file)]
        if self.http:
            argv += ["--http", self.http]
        if self.token:
            token_file = self.lab.path(self.name, "bridge-token")
            token_file.write_text(self.token)
            token_file.chmod(0o600)
            argv += ["--token-file", str(token_file)]
        return argv

    def start(self, timeout: float = 15.0) -> ExaBgpNode:
        self.conf.write_text(render_config(self.spec, self.bridge_argv()))
        self.socket.unlink(missing_ok=True)
        self.process = self.lab.spawn(
            self.ns, ["exabgp", str(self.conf)], name=self.name, env=ENV, cwd=self.conf.parent
        )
        proc = self.process

        def ready() -> bool:
            if not proc.alive():
                raise LabError(f"exabgp {self.name} exited:\n{proc.log_tail()}")
            return self.socket.exists() and self.bridge({"op": "status"}).get("ok") is True

        wait_for(ready, timeout=timeout, what=f"exabgp {self.name} bridge", diagnose=self._diagnose)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 15.0) -> ExaBgpNode:
        self.stop()
        return self.start(timeout)

    def _diagnose(self) -> str:
        tail = self.process.log_tail(40) if self.process is not None else ""
        return f"exabgp {self.name} log:\n{tail}"

    def bridge(self, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """One request to the bridge over its unix socket ({} when it does not answer)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(self.socket))
                s.sendall(json.dumps(request).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
            data = json.loads(buf) if buf else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def sessions(self) -> dict[str, str]:
        """Neighbour address -> ``up``/``down``/``connected`` (from ``neighbor-changes``)."""
        neighbors = self.bridge({"op": "status"}).get("neighbors", {})
        return {str(k): str(v) for k, v in neighbors.items()}

    def wait_established(
        self, peers: Sequence[Neighbor] | None = None, timeout: float = 30.0
    ) -> None:
        addrs = [nb.address for nb in (peers if peers is not None else self.spec.neighbors)]
        wait_for(
            lambda: all(self.sessions().get(a) == "up" for a in addrs),
            timeout=timeout,
            interval=0.2,
            what=f"exabgp {self.name} sessions {addrs} up",
            diagnose=self._diagnose,
        )

    def adapter_config(self, name: str = "lab-exabgp") -> dict[str, Any]:
        return {"name": name, "adapter_type": "exabgp", "endpoint": self.endpoint}

    def describe(self) -> dict[str, str]:
        out = {
            "kind": "exabgp",
            "socket": str(self.socket),
            "config": str(self.conf),
            "log": str(self.lab.path("logs", f"{self.name}.log")),
        }
        if self.http:
            out["http"] = f"http://{self.http} (inside the speaker namespace)"
        return out


class ExaBgpSpeaker:
    """ExaBGP as the speaker the exabgp adapter drives (through the bridge)."""

    kind = "exabgp"

    def __init__(self, http: str | None = None, token: str | None = None) -> None:
        self.http = http
        self.token = token

    def start(self, lab: Lab, ns: Namespace, spec: SpeakerSpec) -> ExaBgpNode:
        return ExaBgpNode(lab, ns, spec, http=self.http, token=self.token).start()
