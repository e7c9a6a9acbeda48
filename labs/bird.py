"""BIRD 2 in a lab namespace: config rendering, start/stop, ``birdc`` and RIB read-back.

:class:`BirdNode` runs ``bird -f -c CONF -s SOCK -P PID`` inside a namespace of a
:class:`~labs.netns.Lab`. Its config (:func:`render_config`) declares the FlowSpec tables
``flowtab4``/``flowtab6`` and one BGP protocol per :class:`~labs.peers.Neighbor`: an IPv4
session carries ``ipv4`` + ``flow4``, an IPv6 session ``ipv6`` + ``flow6``.

* As a RECEIVER (``include=None``) it imports everything and exports nothing.
* As a SPEAKER driven by the bird2 adapter (``include=PATH``) it includes the adapter's
  file at top level (the file holds the adapter's ``protocol static`` blocks), imports
  nothing and exports every route of its tables to its neighbours, with ``next hop keep``
  on the unicast channels so a rule's own next hop goes out unchanged.

Read-back: :meth:`BirdNode.routes` parses ``show route all`` into :class:`Route`
(network, next hop, communities, large communities, extended communities) and
:meth:`BirdNode.flows` does the same for the FlowSpec tables (the network is BIRD's
``flow4 { dst ...; proto 17; }`` text). Communities are ``"65535:666"`` strings, large
communities ``"64500:1:2"``, extended communities as BIRD prints them without brackets:
``"generic, 0x80060000, 0x0"`` or ``"rt, 64500, 100"``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.netns import Lab, LabError, Namespace, Process, wait_for
from labs.peers import Neighbor

FLOW_TABLES = {4: "flowtab4", 6: "flowtab6"}


def protocol_name(nb: Neighbor) -> str:
    """The BGP protocol name BIRD uses for neighbour ``nb`` (letters, digits, ``_``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", nb.name)


def render_config(
    router_id: str,
    asn: int,
    neighbors: Sequence[Neighbor],
    *,
    include: Path | None = None,
    log: Path | None = None,
) -> str:
    """bird.conf for a receiver (``include`` None) or an adapter-driven speaker."""
    lines = []
    if log is not None:
        lines.append(f'log "{log}" all;')
    lines += [
        f"router id {router_id};",
        "protocol device { scan time 10; }",
        f"flow4 table {FLOW_TABLES[4]};",
        f"flow6 table {FLOW_TABLES[6]};",
    ]
    if include is not None:
        lines.append(f'include "{include}";')
    imp, exp = ("none", "all") if include is not None else ("all", "none")
    # a speaker sends a rule's own next hop as is (RTBH discard next hops); see adapters.bird2
    keep = " next hop keep;" if include is not None else ""
    for nb in neighbors:
        v = nb.version
        lines += [
            f"protocol bgp {protocol_name(nb)} {{",
            f"  local {nb.local_address} as {asn};",
            f"  neighbor {nb.address} as {nb.asn};",
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1, 5;",
            f"  ipv{v} {{ import {imp}; export {exp};{keep} }};",
            f"  flow{v} {{ table {FLOW_TABLES[v]}; import {imp}; export {exp}; }};",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Route:
    """One route as BIRD shows it; ``network`` is a prefix or a ``flowN { ... }`` text."""

    network: str
    protocol: str
    next_hop: str | None = None
    communities: frozenset[str] = frozenset()
    large_communities: frozenset[str] = frozenset()
    ext_communities: frozenset[str] = frozenset()
    kind: str = ""  # unicast, unreachable, blackhole, ...
    attrs: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


_HEAD = re.compile(
    r"^(?P<net>flow[46] \{.*?\}|\S+)?\s+(?:(?P<kind>[a-z]+)\s+)?\[(?P<proto>[^\s\]]+)"
)
_PAIR = re.compile(r"\(([^()]*)\)")


def parse_routes(text: str) -> list[Route]:
    """Parse ``show route all`` output (one or more tables) into :class:`Route` objects."""
    routes: list[Route] = []
    cur: dict[str, object] | None = None
    attrs: dict[str, str] = {}
    last_net = ""

    def flush() -> None:
        if cur is None:
            return
        comms = _PAIR.findall(attrs.get("BGP.community", ""))
        large = _PAIR.findall(attrs.get("BGP.large_community", ""))
        ext = _PAIR.findall(attrs.get("BGP.ext_community", ""))
        routes.append(
            Route(
                network=str(cur["net"]),
                protocol=str(cur["proto"]),
                next_hop=next(iter(attrs.get("BGP.next_hop", "").split()), None),
                communities=frozenset(":".join(p.replace(" ", "").split(",")) for p in comms),
                large_communities=frozenset(":".join(p.replace(" ", "").split(",")) for p in large),
                ext_communities=frozenset(e.strip() for e in ext),
                kind=str(cur["kind"]),
                attrs=dict(attrs),
            )
        )

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith(("Table ", "BIRD ", "Access restricted")):
            continue
        m = _HEAD.match(line)
        if raw[0] in " \t" and (m is None or cur is None):
            stripped = line.strip()
            if ":" in stripped and not stripped.startswith(("via ", "dev ")):
                key, _, value = stripped.partition(":")
                attrs[key.strip()] = value.strip()
            continue
        if m is None:
            continue
        flush()
        net = m.group("net") or last_net  # an indented head is another path of the last network
        last_net = net
        cur = {"net": net, "kind": m.group("kind") or "", "proto": m.group("proto")}
        attrs = {}
    flush()
    return routes


class BirdNode:
    """A BIRD 2 daemon in namespace ``ns`` of ``lab``; files live in ``lab.workdir/<name>/``."""

    def __init__(
        self,
        lab: Lab,
        ns: Namespace,
        *,
        name: str,
        router_id: str,
        asn: int,
        neighbors: Sequence[Neighbor],
        include: Path | None = None,
    ) -> None:
        self.lab, self.ns, self.name = lab, ns, name
        self.router_id, self.asn = router_id, asn
        self.neighbors = list(neighbors)
        self.include = include
        self.dir = lab.path(name, "x").parent
        self.conf = self.dir / "bird.conf"
        self.socket = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"
        self.process: Process | None = None
        if include is not None and not include.exists():
            include.write_text("")

    def write_config(self) -> None:
        self.conf.write_text(
            render_config(self.router_id, self.asn, self.neighbors, include=self.include)
        )

    def start(self, timeout: float = 10.0) -> BirdNode:
        """Write the config, start bird and wait until its control socket answers."""
        self.write_config()
        self.socket.unlink(missing_ok=True)
        self.process = self.lab.spawn(
            self.ns,
            ["bird", "-f", "-c", str(self.conf), "-s", str(self.socket), "-P", str(self.pidfile)],
            name=f"{self.name}-bird",
        )
        proc = self.process

        def ready() -> bool:
            if not proc.alive():
                raise LabError(f"bird {self.name} exited:\n{proc.log_tail()}")
            return self.birdc("show status").returncode == 0

        wait_for(
            ready,
            timeout=timeout,
            what=f"bird {self.name} control socket",
            diagnose=self._diagnose,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 10.0) -> BirdNode:
        self.stop()
        return self.start(timeout)

    def _diagnose(self) -> str:
        tail = self.process.log_tail() if self.process is not None else ""
        return f"bird {self.name} log:\n{tail}"

    def birdc(self, command: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``birdc -s SOCK <command>`` (from outside the namespace: the socket is a file)."""
        return subprocess.run(
            ["birdc", "-s", str(self.socket), *command.split()],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def show(self, command: str) -> str:
        res = self.birdc(command)
        if res.returncode != 0:
            raise LabError(f"birdc {command!r} on {self.name}: {res.stderr or res.stdout}")
        return res.stdout

    def adapter_config(self, name: str = "lab-bird") -> dict[str, Any]:
        """AdapterConfig keyword arguments for the bird2 adapter driving this (speaker) node."""
        if self.include is None:
            raise LabError(f"bird {self.name} is a receiver: it includes no adapter file")
        return {
            "name": name,
            "adapter_type": "bird2",
            "config": {
                "socket": str(self.socket),
                "include_file": str(self.include),
                "flow4_table": FLOW_TABLES[4],
                "flow6_table": FLOW_TABLES[6],
            },
        }

    def describe(self) -> dict[str, str]:
        out = {
            "kind": "bird",
            "socket": str(self.socket),
            "config": str(self.conf),
            "cli": f"birdc -s {self.socket}",
        }
        if self.include is not None:
            out["include_file"] = str(self.include)
        return out

    # ------------------------------------------------------------ sessions

    def sessions(self) -> dict[str, str]:
        """BGP protocol name -> state word (``Established``, ``Active``, ``Connect``, ...)."""
        out: dict[str, str] = {}
        for line in self.show("show protocols").splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "BGP":
                out[parts[0]] = parts[5]
        return out

    def wait_established(
        self, peers: Sequence[Neighbor] | None = None, timeout: float = 30.0
    ) -> None:
        names = [protocol_name(nb) for nb in (peers if peers is not None else self.neighbors)]
        wait_for(
            lambda: all(self.sessions().get(n) == "Established" for n in names),
            timeout=timeout,
            interval=0.2,
            what=f"BGP sessions {names} Established on bird {self.name}",
            diagnose=lambda: self.show("show protocols"),
        )

    # ------------------------------------------------------------ RIB

    def routes(self, version: int = 4, table: str | None = None) -> list[Route]:
        """Unicast routes of ``master4``/``master6`` (or ``table``) with their attributes."""
        name = table or f"master{version}"
        return parse_routes(self.show(f"show route table {name} all"))

    def flows(self, version: int = 4) -> list[Route]:
        """FlowSpec routes of ``flowtab4``/``flowtab6``."""
        return parse_routes(self.show(f"show route table {FLOW_TABLES[version]} all"))

    def count(self, table: str) -> int:
        """How many routes ``table`` holds (``show route table T count``)."""
        m = re.search(r"(\d+) of \d+ routes", self.show(f"show route table {table} count"))
        return int(m.group(1)) if m else 0
