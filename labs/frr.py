"""FRR in a lab namespace: zebra + bgpd (+ staticd), ``vtysh`` and RIB read-back.

:class:`FrrNode` starts ``/usr/lib/frr/zebra``, ``bgpd`` and, when it originates routes
(``originate=True``, as the speaker the frr adapter drives), ``staticd`` in the
foreground inside a namespace, each with its own config, pid file, zserv socket and vty
socket directory under ``lab.workdir/<name>/`` (owned by user ``frr``, since the daemons
drop privileges). ``vtysh(...)`` talks to them through that directory.

The BGP config (:func:`render_bgpd`) activates, per :class:`~labs.peers.Neighbor`,
unicast + FlowSpec of the session's address family, disables the eBGP policy requirement
and the advertisement interval (routes go out at once), and disables graceful restart
(see :func:`render_bgpd`). FRR receives FlowSpec but cannot
originate it.

Read-back: :meth:`FrrNode.unicast` (``show bgp ipvN unicast [P] json``) gives
:class:`FrrRoute` objects (prefix, next hop, communities, large communities, valid);
:meth:`FrrNode.flows` parses ``show bgp ipvN flowspec detail json`` (JSON arrays printed
back to back) into :class:`FrrFlow` (FRR's component texts and its actions).
Communities are ``"65535:666"`` strings (FRR's well-known names are translated back).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from labs.netns import Lab, LabError, Namespace, Process, wait_for
from labs.peers import Neighbor

FRR_LIB = "/usr/lib/frr"
WELL_KNOWN = {
    "blackhole": "65535:666",
    "noExport": "65535:65281",
    "no-export": "65535:65281",
    "noAdvertise": "65535:65282",
    "no-advertise": "65535:65282",
    "localAs": "65535:65283",
    "local-AS": "65535:65283",
    "noPeer": "65535:65284",
    "no-peer": "65535:65284",
    "gracefulShutdown": "65535:0",
    "graceful-shutdown": "65535:0",
    "acceptOwn": "65535:1",
    "accept-own": "65535:1",
    "llgr-stale": "65535:6",
    "no-llgr": "65535:7",
}


def community_numbers(text: str) -> frozenset[str]:
    """FRR's community string (``"blackhole no-export 64500:1"``) as ``ASN:VALUE`` strings."""
    return frozenset(WELL_KNOWN.get(w, w) for w in text.split())


def render_bgpd(name: str, router_id: str, asn: int, neighbors: Sequence[Neighbor]) -> str:
    lines = [
        f"hostname {name}",
        "!",
        f"router bgp {asn}",
        f" bgp router-id {router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp default ipv4-unicast",
        " no bgp network import-check",
        # no graceful restart (neither restarter nor helper), as the lab's other daemons:
        # FRR's default (helper mode) advertises the capability with its address
        # families, so a GR-aware BIRD peer keeps a killed FRR's routes as stale for the
        # restart time (120 s) instead of dropping them with the session.
        " bgp graceful-restart-disable",
    ]
    for nb in neighbors:
        lines += [
            f" neighbor {nb.address} remote-as {nb.asn}",
            f" neighbor {nb.address} update-source {nb.local_address}",
            f" neighbor {nb.address} timers connect 1",
            f" neighbor {nb.address} advertisement-interval 0",
        ]
    for v in (4, 6):
        nbs = [nb for nb in neighbors if nb.version == v]
        if not nbs:
            continue
        for safi in ("unicast", "flowspec"):
            lines.append(f" address-family ipv{v} {safi}")
            lines += [f"  neighbor {nb.address} activate" for nb in nbs]
            lines.append(" exit-address-family")
    return "\n".join([*lines, "!", ""])


@dataclass(frozen=True, slots=True)
class FrrRoute:
    prefix: str
    next_hop: str | None
    communities: frozenset[str]
    large_communities: frozenset[str]
    valid: bool
    raw: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class FrrFlow:
    """A FlowSpec entry as FRR prints it.

    ``components`` maps FRR's JSON keys to their stripped text (``"to": "203.0.113.5/32"``,
    ``"proto": "= 17"``, ``"dstp": ">= 1 , <= 1024"``, ``"srcp"``, ``"tcp"``, ``"pktlen"``,
    ``"pktfrag"``, ...); ``actions`` is FRR's ``ecomlist`` (``"FS:rate 0.000000"``).
    """

    components: dict[str, str] = field(hash=False)
    actions: str

    @property
    def destination(self) -> str:
        return self.components.get("to", "").split("/off")[0]

    @property
    def source(self) -> str:
        return self.components.get("from", "").split("/off")[0]


def _json_stream(text: str) -> list[Any]:
    """Decode JSON values printed back to back (FRR's flowspec detail json)."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            return out
        value, i = dec.raw_decode(text, i)
        out.append(value)


def parse_flows(text: str) -> list[FrrFlow]:
    """One array per entry: a dict of match components, then ``ecomlist``, then ``time``."""
    flows: list[FrrFlow] = []
    for value in _json_stream(text):
        items = value if isinstance(value, list) else [value]
        merged: dict[str, str] = {}
        for item in items:
            if isinstance(item, dict):
                merged.update({str(k): str(v).strip() for k, v in item.items()})
        if "to" in merged or "from" in merged:
            actions = merged.pop("ecomlist", "")
            merged.pop("time", None)
            flows.append(FrrFlow(merged, actions))
    return flows


class FrrNode:
    """FRR daemons in namespace ``ns``; files in ``lab.workdir/<name>/``."""

    def __init__(
        self,
        lab: Lab,
        ns: Namespace,
        *,
        name: str,
        router_id: str,
        asn: int,
        neighbors: Sequence[Neighbor],
        originate: bool = False,
    ) -> None:
        self.lab, self.ns, self.name = lab, ns, name
        self.router_id, self.asn = router_id, asn
        self.neighbors = list(neighbors)
        self.daemons = ["zebra", "bgpd", *(["staticd"] if originate else [])]
        self.dir = lab.path(name, "x").parent
        self.vty_dir = self.dir / "run"
        self.zserv = self.vty_dir / "zserv.api"
        self.processes: dict[str, Process] = {}

    def _prepare(self) -> None:
        self.vty_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.dir, self.vty_dir):
            shutil.chown(d, "frr", "frr")
            d.chmod(0o775)
        configs = {
            "zebra": f"hostname {self.name}\n",
            "bgpd": render_bgpd(self.name, self.router_id, self.asn, self.neighbors),
            "staticd": f"hostname {self.name}\n",
        }
        for daemon in self.daemons:
            path = self.dir / f"{daemon}.conf"
            path.write_text(configs[daemon])
            shutil.chown(path, "frr", "frr")

    def start(self, timeout: float = 15.0) -> FrrNode:
        """Start zebra, then bgpd (and staticd); return when vtysh reaches all of them."""
        self._prepare()
        for daemon in self.daemons:
            argv = [
                f"{FRR_LIB}/{daemon}",
                "-f",
                str(self.dir / f"{daemon}.conf"),
                "-i",
                str(self.vty_dir / f"{daemon}.pid"),
                "-z",
                str(self.zserv),
                "--vty_socket",
                str(self.vty_dir),
                "--log",
                "stdout",
                "-u",
                "frr",
                "-g",
                "frr",
            ]
            proc = self.lab.spawn(self.ns, argv, name=f"{self.name}-{daemon}")
            self.processes[daemon] = proc
            if daemon == "zebra":  # the others connect to zebra's zserv socket
                wait_for(
                    lambda: self._check_alive() and self.zserv.exists(),
                    timeout=timeout,
                    what=f"zebra of {self.name}",
                    diagnose=self._diagnose,
                )
        wait_for(
            lambda: (
                self._check_alive()
                and all((self.vty_dir / f"{d}.vty").exists() for d in self.daemons)
            ),
            timeout=timeout,
            what=f"FRR daemons of {self.name}",
            diagnose=self._diagnose,
        )
        return self

    def _check_alive(self) -> bool:
        for daemon, proc in self.processes.items():
            if not proc.alive():
                raise LabError(f"FRR {daemon} of {self.name} exited:\n{proc.log_tail()}")
        return True

    def _diagnose(self) -> str:
        return "\n".join(f"{d}: {p.log_tail(10)}" for d, p in self.processes.items())

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        self.processes.clear()
        for d in self.daemons:
            (self.vty_dir / f"{d}.vty").unlink(missing_ok=True)
        self.zserv.unlink(missing_ok=True)

    def restart(self, timeout: float = 15.0) -> FrrNode:
        self.stop()
        return self.start(timeout)

    def adapter_config(self, name: str = "lab-frr") -> dict[str, Any]:
        """AdapterConfig keyword arguments for the frr adapter driving this (speaker) node."""
        return {
            "name": name,
            "adapter_type": "frr",
            "config": {"vty_socket_dir": str(self.vty_dir), "asn": self.asn},
        }

    def describe(self) -> dict[str, str]:
        return {
            "kind": "frr",
            "vty_socket_dir": str(self.vty_dir),
            "cli": " ".join(self.vtysh_argv()),
        }

    # ------------------------------------------------------------ vtysh

    def vtysh_argv(self) -> list[str]:
        return ["vtysh", "--vty_socket", str(self.vty_dir)]

    def vtysh(self, *commands: str, timeout: float = 30.0) -> str:
        """Run ``vtysh -c CMD ...``; raise :class:`LabError` with FRR's message on failure."""
        argv = self.vtysh_argv()
        for c in commands:
            argv += ["-c", c]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if res.returncode != 0:
            raise LabError(
                f"vtysh {commands!r} on {self.name}: {res.stdout.strip()} {res.stderr.strip()}"
            )
        return res.stdout

    def vtysh_json(self, command: str) -> Any:
        text = self.vtysh(command)
        return json.loads(text) if text.strip() else {}

    # ------------------------------------------------------------ sessions

    def sessions(self) -> dict[str, str]:
        """Neighbour address -> state (``Established``, ``Active``, ...)."""
        data = self.vtysh_json("show bgp neighbors json")
        return {addr: str(info.get("bgpState", "")) for addr, info in data.items()}

    def wait_established(
        self, peers: Sequence[Neighbor] | None = None, timeout: float = 30.0
    ) -> None:
        addrs = [nb.address for nb in (peers if peers is not None else self.neighbors)]
        wait_for(
            lambda: all(self.sessions().get(a) == "Established" for a in addrs),
            timeout=timeout,
            interval=0.2,
            what=f"BGP sessions {addrs} Established on FRR {self.name}",
            diagnose=lambda: self.vtysh("show bgp summary"),
        )

    # ------------------------------------------------------------ RIB

    def unicast(self, version: int = 4) -> dict[str, FrrRoute]:
        """Best-or-only path of every unicast prefix, with its attributes."""
        table = self.vtysh_json(f"show bgp ipv{version} unicast json")
        out: dict[str, FrrRoute] = {}
        for prefix in table.get("routes", {}):
            route = self.route(prefix, version)
            if route is not None:
                out[prefix] = route
        return out

    def route(self, prefix: str, version: int = 4) -> FrrRoute | None:
        data = self.vtysh_json(f"show bgp ipv{version} unicast {prefix} json")
        paths = data.get("paths") or []
        if not paths:
            return None
        path = paths[0]
        hops = path.get("nexthops") or []
        return FrrRoute(
            prefix=str(data.get("prefix", prefix)),
            next_hop=str(hops[0]["ip"]) if hops and "ip" in hops[0] else None,
            communities=community_numbers(str((path.get("community") or {}).get("string", ""))),
            large_communities=frozenset(
                str((path.get("largeCommunity") or {}).get("string", "")).split()
            ),
            valid=bool(path.get("valid", False)),
            raw=dict(path),
        )

    def flows(self, version: int = 4) -> list[FrrFlow]:
        return parse_flows(self.vtysh(f"show bgp ipv{version} flowspec detail json"))

    def prefixes(self, version: int = 4) -> set[str]:
        """Just the prefixes of the unicast table (cheap, for counting)."""
        table = self.vtysh_json(f"show bgp ipv{version} unicast json")
        return set(table.get("routes", {}))
