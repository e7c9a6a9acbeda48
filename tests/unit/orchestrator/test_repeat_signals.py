"""A signal that repeats the one before it on the same incident, in one batch, gets the
decision the policy would give it without the policy being asked again
(``Intake._decide``): the differential tests here run the same batches with the reuse
disabled and compare every stored decision."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import orchestrator.intake as intake_module
from orchestrator.intake import Item
from orchestrator.runtime import PolicyRuntime
from orchestrator.service import Service
from orchestrator.store.models import decisions, incidents
from policies.engine import Decision, evaluate
from policies.schema import Policy
from policies.signals import Signal

# the repeats' rows go through the store's own insert path: SQLite and PostgreSQL
pytestmark = pytest.mark.postgresql

NOW = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)


def lab_policy(hold_down: int) -> Policy:
    return Policy.model_validate(
        {
            "settings": {"cooldown_seconds": 0, "default_ttl": 600},
            "adapters": [{"name": "edge", "adapter_type": "fake"}],
            "escalation": {
                "hold_down_seconds": hold_down,
                "episode_timeout_seconds": 600,
                "tiers": [
                    {
                        "name": "tier1",
                        "bps": "100M",
                        "intents": [{"type": "flowspec_drop"}],
                        "adapters": ["edge"],
                    },
                    {
                        "name": "tier2",
                        "bps": "2G",
                        "intents": [{"type": "blackhole"}],
                        "adapters": ["edge"],
                    },
                ],
            },
        }
    )


def sig(target: str, bps: str, **kw: Any) -> Signal:
    return Signal.model_validate({"target_ip": target, "bps": bps, "udp_pct": 97, **kw})


def batch() -> list[Item]:
    """Repeats on four targets, interleaved: each crosses tier1 and then keeps it (A);
    escalates within the batch (B: tier1 repeats, then tier2 repeats); stays below every
    tier (C); alternates between two signals, so nothing repeats the one before it (D)."""
    items: list[Item] = []
    a = sig("198.51.100.1", "500M")
    b1, b2 = sig("198.51.100.2", "500M"), sig("198.51.100.2", "3G")
    c = sig("198.51.100.3", "1M")
    d1, d2 = sig("198.51.100.4", "500M"), sig("198.51.100.4", "600M", top_source_ports=[53])
    for i in range(12):
        items.append(Item("ban", "test", signal=a))
        items.append(Item("ban", "test", signal=b1 if i < 6 else b2))
        # an equal signal, not the same object: compared by value
        items.append(Item("ban", "test", signal=c if i % 2 else sig("198.51.100.3", "1M")))
        items.append(Item("ban", "test", signal=d1 if i % 2 else d2))
    return items


async def run(
    make_service: Callable[..., Any],
    hold_down: int,
    monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> tuple[list[tuple[Any, ...]], int]:
    """The batch through a fresh service: (target, status, tier, explanation, rules made)
    of each stored decision in order, and how often the policy was asked."""
    asked = [0]
    real = evaluate

    def counting(*args: Any) -> Decision:
        asked[0] += 1
        return real(*args)

    monkeypatch.setattr(intake_module, "evaluate", counting)
    svc: Service = await make_service(lab_policy(hold_down), clock=lambda: NOW, **settings)
    rt = PolicyRuntime(svc)
    out = await rt.intake.submit_many(batch())
    assert not [r for r in out if isinstance(r, Exception)], out
    with svc.engine.connect() as conn:
        rows = conn.execute(
            select(
                incidents.c.target,
                decisions.c.status,
                decisions.c.tier,
                decisions.c.explanation,
                decisions.c.rules,
            )
            .join(incidents, incidents.c.id == decisions.c.incident_id)
            .order_by(decisions.c.id)
        ).all()
        signals = dict(conn.execute(select(incidents.c.target, incidents.c.signals)).all())
    assert signals == {f"198.51.100.{i}": 12 for i in range(1, 5)}  # every repeat counted
    made = [
        (r.target, r.status, r.tier, tuple(r.explanation), tuple(x["intent"] for x in r.rules))
        for r in rows
    ]
    # and each answer says the same (answers of one batch share their views)
    answers = [
        (o.view()["incident"]["target_ip"], o.view()["decision"])
        for o in out
        if isinstance(o, intake_module.Outcome)
    ]
    assert len(answers) == 48
    return [*made, *answers], asked[0]


@pytest.mark.parametrize("hold_down", [0, 30])
async def test_repeats_get_the_decisions_the_policy_gives(
    make_service: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    hold_down: int,
) -> None:
    with_reuse, asked = await run(make_service, hold_down, monkeypatch)
    monkeypatch.undo()
    # the control: no evaluation is ever taken for a fixed point, so every signal is asked
    monkeypatch.setattr(intake_module, "_engine_state", lambda _state, _key: object())
    control = f"sqlite:///{tmp_path / 'control.db'}"
    without, asked_all = await run(make_service, hold_down, monkeypatch, database_url=control)
    assert asked_all == 48
    assert len(with_reuse) == 96
    assert with_reuse == without
    statuses = {t: [s for tt, s, *_ in with_reuse[:48] if tt == t] for t in ("198.51.100.1",)}
    if hold_down == 0:  # the first announces, the repeats keep the tier
        assert statuses["198.51.100.1"] == ["announce"] + ["steady"] * 11
    else:
        assert statuses["198.51.100.1"] == ["held"] * 12
    # A: two evaluations (the second shows the state no longer moves), B: two per signal,
    # C: two, D: all twelve
    assert asked == 2 + 4 + 2 + 12
