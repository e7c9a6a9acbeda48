"""Rule states and the transitions allowed between them.

::

                suspended ─────────────┐
                 ▲  │  (sessions down / │
                 │  ▼   back, confirmed)▼
    pending ──► active ──► withdrawing ──► withdrawn | expired
     │  ▲         │             ▲
     ▼  │ (retry) │ (re-announce│
    failed ◄──────┘   failed)   │
     └──────────────────────────┘

* ``pending``: committed to the store, not yet confirmed by the adapter.
* ``active``: the adapter confirmed it (or, for a dry-run rule, it would have been sent).
* ``failed``: the adapter refused (an announce, or the re-announce of an active rule the
  backend lost) or could not be reached; ``next_attempt_at`` is set
  when a retry is due, absent when the failure is final. A failed rule is never on the
  wire: when reconciliation finds its route on the speaker with a session up, the rule
  becomes ``active`` (failed -> active); a rule whose retries are exhausted stays wanted
  while its TTL lasts and is announced again when a session is up.
* ``suspended``: an active rule whose speaker has no BGP session established any more
  (the speaker died, or every peer went away): the rule is kept and still wanted (its
  TTL keeps running: it expires, or is withdrawn, like an active one), but it is on no
  wire. Entered from ``active`` when the session watch (or reconciliation) sees every
  session of the adapter down; left for ``active`` when reconciliation, after a session
  came back, finds the route held by the speaker (or re-sends it and the speaker takes
  it) with a session up; a re-send the speaker refuses makes it ``failed`` with a retry.
* ``withdrawing``: the withdrawal is committed and being sent; it is retried until the
  adapter confirms, because a lost withdrawal can blackhole a customer for days.
* ``withdrawn`` / ``expired``: final; the rule stays in history forever.

A pending rule may go straight to ``withdrawing`` (an operator withdraws it before the
adapter answered); the adapter's late "announced" answer is then ignored and the
withdrawal still goes out.
"""

from __future__ import annotations

import enum

from policies.errors import Conflict


class State(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"
    WITHDRAWING = "withdrawing"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    SUSPENDED = "suspended"


LIVE = frozenset({State.PENDING, State.ACTIVE, State.SUSPENDED, State.FAILED, State.WITHDRAWING})
# States in which a rule should be (or may be) on the wire and so counts for quotas.
HELD = frozenset({State.PENDING, State.ACTIVE, State.SUSPENDED, State.FAILED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ACTIVE, State.FAILED, State.WITHDRAWING}),
    State.ACTIVE: frozenset({State.WITHDRAWING, State.FAILED, State.SUSPENDED}),
    # suspended: the speaker has no session up; back to active once confirmed on the wire
    State.SUSPENDED: frozenset({State.ACTIVE, State.WITHDRAWING, State.FAILED}),
    # failed -> active: reconciliation found the route on the speaker with a session up
    State.FAILED: frozenset({State.PENDING, State.ACTIVE, State.WITHDRAWING}),
    State.WITHDRAWING: frozenset({State.WITHDRAWN, State.EXPIRED}),
    State.WITHDRAWN: frozenset(),
    State.EXPIRED: frozenset(),
}


def can_move(current: State, new: State) -> bool:
    return new in TRANSITIONS[current]


def check_move(rule_id: int, current: State, new: State) -> None:
    if not can_move(current, new):
        raise Conflict(
            f"rule {rule_id} is {current}; it cannot become {new}",
            code="invalid_state",
        )


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (exponential, capped)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))
