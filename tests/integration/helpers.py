"""Assertions shared by the speaker integration tests: wait for a receiver's RIB to agree."""

from __future__ import annotations

from collections.abc import Callable

from labs.netns import wait_for
from labs.rib import FlowRoute, UnicastRoute
from labs.topology import Receiver

# FRR adds NO_EXPORT to a received BLACKHOLE route (RFC 7999 section 3.2)
ADDED_BY_RECEIVER = frozenset({"65535:65281"})


def wait_unicast(rx: Receiver, version: int, prefix: str, timeout: float = 10.0) -> UnicastRoute:
    found: dict[str, UnicastRoute] = {}

    def seen() -> bool:
        found.update(rx.unicast(version))
        return prefix in found

    wait_for(
        seen,
        timeout=timeout,
        interval=0.1,
        what=f"{prefix} in {rx.kind}'s RIB",
        diagnose=lambda: f"RIB: {rx.unicast(version)}",
    )
    return found[prefix]


def wait_unicast_gone(rx: Receiver, version: int, prefix: str, timeout: float = 10.0) -> None:
    wait_for(
        lambda: prefix not in rx.prefixes(version),
        timeout=timeout,
        interval=0.1,
        what=f"{prefix} gone from {rx.kind}'s RIB",
    )


def wait_flow(
    rx: Receiver,
    version: int,
    match: Callable[[FlowRoute], bool],
    what: str,
    timeout: float = 10.0,
) -> FlowRoute:
    hit: list[FlowRoute] = []

    def seen() -> bool:
        hit[:] = [f for f in rx.flows(version) if match(f)]
        return bool(hit)

    wait_for(
        seen,
        timeout=timeout,
        interval=0.1,
        what=f"{what} in {rx.kind}'s FlowSpec table",
        diagnose=lambda: f"flows: {rx.flows(version)}",
    )
    return hit[0]


def wait_flow_gone(rx: Receiver, version: int, destination: str, timeout: float = 10.0) -> None:
    wait_for(
        lambda: all(f.destination != destination for f in rx.flows(version)),
        timeout=timeout,
        interval=0.1,
        what=f"flow to {destination} gone from {rx.kind}",
    )


def assert_communities(got: frozenset[str], expected: set[str], kind: str) -> None:
    extra = got - expected - (ADDED_BY_RECEIVER if kind == "frr" else frozenset())
    assert expected <= got and not extra, f"communities {sorted(got)} != {sorted(expected)}"
