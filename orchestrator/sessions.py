"""What the service last saw of each BGP speaker's sessions (one tracker for all users).

The dispatcher asks a speaker for its sessions beside an announce (a rule is not active
while no session is established); reconciliation asks to learn that a session came back
up (then everything active is re-sent). Both record what they saw here, and every change
of a peer's state to or from ``established`` becomes an event in the log.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from orchestrator import events as ev
from orchestrator.cluster import write

SESSIONS_TRUSTED_SECONDS = 1.0


def peer_key(peer: str) -> str:
    """A peer address in one spelling (speakers print IPv6 addresses differently)."""
    try:
        return str(ipaddress.ip_address(peer.partition("%")[0]))
    except ValueError:
        return peer


@dataclass(frozen=True, slots=True)
class Seen:
    at: float  # monotonic time of the check; -inf when it must be checked again
    states: dict[str, str]  # peer -> lower-case state

    @property
    def up(self) -> bool:
        return any(s == "established" for s in self.states.values())


class SessionTracker:
    def __init__(
        self,
        engine: Engine | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.monotonic = monotonic
        self._seen: dict[int, Seen] = {}
        self._came_up: set[int] = set()

    def get(self, adapter_id: int) -> Seen | None:
        return self._seen.get(adapter_id)

    def needs_check(self, adapter_id: int) -> bool:
        seen = self._seen.get(adapter_id)
        return seen is None or self.monotonic() - seen.at >= SESSIONS_TRUSTED_SECONDS

    def stale(self, adapter_id: int) -> None:
        """Look at the sessions again before trusting them (a rule was found off the wire)."""
        seen = self._seen.get(adapter_id)
        if seen is not None:
            self._seen[adapter_id] = Seen(float("-inf"), seen.states)

    def forget(self, adapter_id: int) -> None:
        self._seen.pop(adapter_id, None)

    def observe(self, adapter_id: int, sessions: Mapping[str, str]) -> list[str]:
        """Record a check; returns the peers that came up since the previous one.

        A check that found a session up is trusted for :data:`SESSIONS_TRUSTED_SECONDS`;
        one that found none is checked again at the next announce.
        """
        states = {peer_key(p): s.lower() for p, s in sessions.items()}
        before = self._seen.get(adapter_id)
        new = Seen(self.monotonic(), states)
        self._seen[adapter_id] = new if new.up else Seen(float("-inf"), states)
        old = before.states if before is not None else {}
        came_up = [p for p, s in states.items() if s == "established" and old.get(p) != s]
        went_down = [
            p for p, s in old.items() if s == "established" and states.get(p) != "established"
        ]
        self._record(adapter_id, came_up, went_down, states)
        if before is None:
            return []
        if came_up:
            self._came_up.add(adapter_id)
        return came_up

    def take_came_up(self, adapter_id: int) -> bool:
        """Whether a session of the adapter came up since the last call (whoever saw it)."""
        if adapter_id in self._came_up:
            self._came_up.discard(adapter_id)
            return True
        return False

    def _record(
        self, adapter_id: int, up: list[str], down: list[str], states: dict[str, str]
    ) -> None:
        if self.engine is None or not (up or down):
            return
        now = self.clock()
        items = [
            ev.Event(ev.Kind.SESSION_UP, now, adapter_id=adapter_id, detail={"peer": p})
            for p in sorted(up)
        ] + [
            ev.Event(
                ev.Kind.SESSION_DOWN,
                now,
                adapter_id=adapter_id,
                detail={"peer": p, "state": states.get(p, "gone")},
            )
            for p in sorted(down)
        ]
        with write(self.engine) as conn:
            ev.record(conn, items)
