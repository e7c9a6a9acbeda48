"""Shared lab vocabulary: BGP neighbours and the speaker plug-in protocol.

A :class:`Neighbor` is one BGP session seen from the node that configures it: its
``address`` and ``asn`` are the REMOTE side's, ``local_address`` is ours. An IPv4 session
carries IPv4 unicast + FlowSpec, an IPv6 session IPv6 unicast + FlowSpec (``version``).

A speaker kind (BIRD, FRR, GoBGP, ExaBGP) plugs into :func:`labs.topology.build` as a
:class:`Speaker`: ``start()`` launches the daemon inside the lab's speaker namespace and
returns a :class:`SpeakerNode` that knows the adapter config that drives it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from labs.netns import Lab, Namespace, Process


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One BGP session from the configuring node's point of view."""

    name: str
    address: str
    asn: int
    local_address: str

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True, slots=True)
class SpeakerSpec:
    """What a speaker needs to know: its ASN, router id and neighbours (the receivers)."""

    asn: int
    router_id: str
    neighbors: tuple[Neighbor, ...]


class SpeakerNode(Protocol):
    """A running speaker daemon, as the topology and the tests see it."""

    def adapter_config(self, name: str = ...) -> dict[str, Any]:
        """Keyword arguments for :class:`adapters.base.AdapterConfig` driving this speaker."""
        ...

    def wait_established(
        self, peers: Sequence[Neighbor] | None = None, timeout: float = ...
    ) -> None:
        """Return when the sessions to ``peers`` (default all) are Established."""
        ...

    def stop(self) -> None:
        """Stop the daemon (the lab still cleans up whatever is left)."""
        ...

    def restart(self, timeout: float = ...) -> Any:
        """Stop and start the daemon again with its current config."""
        ...

    def describe(self) -> dict[str, str]:
        """Socket and config paths for humans (printed by ``sluice lab up``)."""
        ...


class Speaker(Protocol):
    """A speaker kind: a small callable object that starts one daemon in ``ns``."""

    kind: str

    def start(self, lab: Lab, ns: Namespace, spec: SpeakerSpec) -> SpeakerNode: ...


def crash(node: SpeakerNode) -> None:
    """Kill every daemon process of ``node`` with SIGKILL (no NOTIFICATION is sent; the
    kernel closes the TCP sessions), reap them, then let the node tidy its sockets."""
    procs: list[Process] = list(getattr(node, "processes", {}).values())
    single = getattr(node, "process", None)
    if single is not None:
        procs.append(single)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(10)
    node.stop()
