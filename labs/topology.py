"""Topology builder: one SPEAKER namespace peered with RECEIVER routers over veth links.

::

    with running(BirdSpeaker(), receivers=("bird", "frr")) as topo:   # or build(Lab(), ...)
        adapter = Registry(access=topo.access).create(
            AdapterConfig(**topo.speaker.adapter_config("lab"))
        )
        ...
        topo.receivers["bird"].unicast(4)      # {prefix: UnicastRoute}
        topo.receivers["frr"].flows(6)         # [FlowRoute]

Layout (receiver ``i`` in the order given, counting from 0):

* namespaces ``speaker`` and one per receiver kind (``bird``, ``frr``);
* link ``i``: speaker ``192.0.2.{8i+1}/29`` / ``2001:db8:0:{i}::1/64`` <-> receiver
  ``192.0.2.{8i+2}/29`` / ``2001:db8:0:{i}::2/64``; ``192.0.2.{8i+3}`` and
  ``2001:db8:0:{i}::3`` are free on the link, for third-party (RTBH) next hops
  (:func:`spare_next_hop`);
* ASNs: speaker 65001, receiver ``i`` ``65010+i``; router ids are the IPv4 addresses;
* each receiver has two sessions with the speaker (IPv4: unicast + flow4; IPv6: unicast +
  flow6) and imports everything.

A speaker kind is any object with ``kind`` and ``start(lab, ns, spec) -> SpeakerNode``
(:class:`labs.peers.Speaker`); the :class:`~labs.peers.SpeakerSpec` lists the speaker's
neighbours (the receivers' addresses, ASNs and our local addresses). ``build`` starts the
receivers first, then the speaker, and waits until every session is Established.
Built-in kinds: :class:`BirdSpeaker` (bird2 adapter) and :class:`FrrSpeaker` (frr adapter);
labs/gobgp.py and labs/exabgp.py add theirs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from adapters.access import HostAccess
from labs.bird import BirdNode
from labs.frr import FrrNode
from labs.netns import Lab, LabError, Link, Namespace
from labs.peers import Neighbor, Speaker, SpeakerNode, SpeakerSpec
from labs.rib import FlowRoute, UnicastRoute, bird_action, frr_actions

SPEAKER_ASN = 65001
RECEIVER_KINDS = ("bird", "frr")


@dataclass
class Receiver:
    """A receiver router and the two sessions the speaker has with it."""

    kind: str
    ns: Namespace
    link: Link
    asn: int
    node: BirdNode | FrrNode
    neighbors: tuple[Neighbor, ...]  # seen from the SPEAKER (v4, v6)

    def unicast(self, version: int = 4) -> dict[str, UnicastRoute]:
        if isinstance(self.node, BirdNode):
            return {
                r.network: UnicastRoute(r.network, r.next_hop, r.communities, r.large_communities)
                for r in self.node.routes(version)
            }
        return {
            p: UnicastRoute(p, r.next_hop, r.communities, r.large_communities)
            for p, r in self.node.unicast(version).items()
        }

    def prefixes(self, version: int = 4) -> set[str]:
        """The unicast prefixes only (cheaper than :meth:`unicast` on big tables)."""
        if isinstance(self.node, BirdNode):
            text = self.node.show(f"show route table master{version}")
            return {
                line.split()[0]
                for line in text.splitlines()
                if line and line[0] not in " \t" and "/" in line.split()[0]
            }
        return self.node.prefixes(version)

    def flows(self, version: int = 4) -> list[FlowRoute]:
        out: list[FlowRoute] = []
        if isinstance(self.node, BirdNode):
            for r in self.node.flows(version):
                body = r.network.split("{", 1)[1].rsplit("}", 1)[0]
                comps = [c.strip() for c in body.split(";") if c.strip()]
                dst = next((c.split()[1] for c in comps if c.startswith("dst ")), "")
                src = next((c.split()[1] for c in comps if c.startswith("src ")), None)
                rest = [c for c in comps if not c.startswith(("dst ", "src "))]
                text = "".join(f"{c}; " for c in rest).strip()
                acts = frozenset(bird_action(e) for e in r.ext_communities)
                out.append(FlowRoute(dst, src, text, acts))
            return out
        for f in self.node.flows(version):
            others = {k: v for k, v in f.components.items() if k not in ("to", "from")}
            text = "; ".join(f"{k} {v}" for k, v in others.items())
            out.append(FlowRoute(f.destination, f.source or None, text, frr_actions(f.actions)))
        return out

    def wait_established(self, timeout: float = 30.0) -> None:
        self.node.wait_established(None, timeout)


@dataclass
class Topology:
    lab: Lab
    speaker_ns: Namespace
    spec: SpeakerSpec
    speaker: SpeakerNode
    receivers: dict[str, Receiver] = field(default_factory=dict)

    @property
    def access(self) -> HostAccess:
        """What an adapter driving this lab may touch: the lab's work directory (its
        sockets and include files live there; the service's defaults do not allow it)."""
        assert self.lab.workdir is not None  # noqa: S101  # set when the lab was entered
        return HostAccess(allowed_dirs=(self.lab.workdir,))

    def wait_established(self, timeout: float = 30.0) -> None:
        for r in self.receivers.values():
            r.wait_established(timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab.lab_id,
            "workdir": str(self.lab.workdir),
            "speaker": {"namespace": self.speaker_ns.netns, **self.speaker.describe()},
            "receivers": {
                k: {
                    "namespace": r.ns.netns,
                    "asn": r.asn,
                    "sessions": [f"{nb.local_address} <-> {nb.address}" for nb in r.neighbors],
                    **r.node.describe(),
                }
                for k, r in self.receivers.items()
            },
        }


def spare_next_hop(link: Link, version: int) -> str:
    """An unused address on ``link``'s subnet: a next hop the receiver accepts."""
    pair = link.v4 if version == 4 else link.v6
    if pair is None:
        raise LabError(f"link {link.a_if} has no IPv{version} addresses")
    return str(ipaddress.ip_interface(pair[0]).ip + 2)


def _addresses(i: int) -> tuple[tuple[str, str], tuple[str, str]]:
    base = int(ipaddress.IPv4Address("192.0.2.0")) + 8 * i
    v4 = (f"{ipaddress.IPv4Address(base + 1)}/29", f"{ipaddress.IPv4Address(base + 2)}/29")
    v6 = (f"2001:db8:0:{i:x}::1/64", f"2001:db8:0:{i:x}::2/64")
    return v4, v6


def build(
    lab: Lab,
    speaker: Speaker,
    receivers: Sequence[str] = RECEIVER_KINDS,
    *,
    timeout: float = 30.0,
) -> Topology:
    """Start the receivers, then ``speaker``, and wait until every session is Established."""
    if len(receivers) > 30:
        raise LabError("at most 30 receivers fit in 192.0.2.0/24")
    sns = lab.namespace("speaker")
    built: dict[str, Receiver] = {}
    for i, kind in enumerate(receivers):
        ns = lab.namespace(kind if kind not in built else f"{kind}{i}")
        v4, v6 = _addresses(i)
        link = lab.link(sns, ns, v4=v4, v6=v6)
        asn = 65010 + i
        toward_speaker = [
            Neighbor("spk4", link.a_v4, SPEAKER_ASN, link.b_v4),
            Neighbor("spk6", link.a_v6, SPEAKER_ASN, link.b_v6),
        ]
        node: BirdNode | FrrNode
        if kind == "bird":
            node = BirdNode(
                lab, ns, name=ns.name, router_id=link.b_v4, asn=asn, neighbors=toward_speaker
            )
        elif kind == "frr":
            node = FrrNode(
                lab, ns, name=ns.name, router_id=link.b_v4, asn=asn, neighbors=toward_speaker
            )
        else:
            raise LabError(f"unknown receiver kind {kind!r} (known: {', '.join(RECEIVER_KINDS)})")
        node.start()
        from_speaker = (
            Neighbor(f"{ns.name}4", link.b_v4, asn, link.a_v4),
            Neighbor(f"{ns.name}6", link.b_v6, asn, link.a_v6),
        )
        built[ns.name] = Receiver(kind, ns, link, asn, node, from_speaker)
    first = next(iter(built.values()), None)
    rid = first.link.a_v4 if first is not None else "192.0.2.1"
    spec = SpeakerSpec(SPEAKER_ASN, rid, tuple(nb for r in built.values() for nb in r.neighbors))
    node_s = speaker.start(lab, sns, spec)
    topo = Topology(lab, sns, spec, node_s, built)
    node_s.wait_established(None, timeout)
    topo.wait_established(timeout)
    return topo


@contextmanager
def running(
    speaker: Speaker, receivers: Sequence[str] = RECEIVER_KINDS, *, timeout: float = 30.0
) -> Iterator[Topology]:
    """A fresh :class:`Lab` with :func:`build`'s topology, torn down on exit (even on error)."""
    with Lab() as lab:
        yield build(lab, speaker, receivers, timeout=timeout)


# ---------------------------------------------------------------- built-in speaker kinds


class BirdSpeaker:
    """BIRD 2 as the speaker the bird2 adapter drives (through an include file)."""

    kind = "bird"

    def start(self, lab: Lab, ns: Namespace, spec: SpeakerSpec) -> BirdNode:
        include = lab.path("speaker-bird", "sluice-routes.conf")
        node = BirdNode(
            lab,
            ns,
            name="speaker-bird",
            router_id=spec.router_id,
            asn=spec.asn,
            neighbors=spec.neighbors,
            include=include,
        )
        return node.start()


class FrrSpeaker:
    """FRR (zebra + bgpd + staticd) as the speaker the frr adapter drives (through vtysh)."""

    kind = "frr"

    def start(self, lab: Lab, ns: Namespace, spec: SpeakerSpec) -> FrrNode:
        node = FrrNode(
            lab,
            ns,
            name="speaker-frr",
            router_id=spec.router_id,
            asn=spec.asn,
            neighbors=spec.neighbors,
            originate=True,
        )
        return node.start()


SPEAKERS: dict[str, Speaker] = {"bird": BirdSpeaker(), "frr": FrrSpeaker()}
