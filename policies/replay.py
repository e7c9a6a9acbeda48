"""Replaying recorded signals through a policy, and comparing two policies (``plan``).

A signal file is JSON or YAML: a list of signals, or ``{"signals": [...]}``. Each signal
may carry ``at`` (seconds since the recording started; default: its position in the
list); the rest are :class:`~policies.signals.Signal` fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml_rs
from pydantic import ValidationError

from policies.aggregation import (
    ATTACKED,
    AttackWindow,
    CarpetBombing,
    Refusal,
    blocked_space,
    covering_rules,
    judge,
)
from policies.engine import Decision, evaluate
from policies.errors import ValidationFailed
from policies.intents import canonical
from policies.netindex import to_network
from policies.planning import PlannedRule, compile_policy
from policies.schema import Policy
from policies.signals import Signal
from policies.state import EngineState

Timed = tuple[float, Signal]


def read_signals(path: Path) -> list[Timed]:
    """Read a signal file; errors name the file and the signal's position."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationFailed(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else yaml_rs.loads(text)
    except (ValueError, yaml_rs.YAMLDecodeError) as exc:
        raise ValidationFailed(f"{path}: not valid JSON/YAML: {exc}") from None
    if isinstance(data, dict) and "signals" in data:
        data = data["signals"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValidationFailed(f"{path}: expected a signal or a list of signals")
    out: list[Timed] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise ValidationFailed(f"{path}: signal {i} is not a mapping")
        fields = dict(raw)
        at = fields.pop("at", i)
        try:
            out.append((float(at), Signal.model_validate(fields)))
        except (ValidationError, TypeError, ValueError) as exc:
            raise ValidationFailed(f"{path}: signal {i}: {exc}") from None
    return out


def replay(policy: Policy, signals: list[Timed]) -> list[Decision]:
    """Decisions for each signal in turn, starting from an empty state.

    With carpet bombing in the policy, a covering rule is added to the decision of the
    signal that completes a prefix, and later signals inside it are ``covered`` (as the
    service does; there the covering rule has its own incident).
    """
    state = EngineState()
    cb = policy.carpet_bombing
    if cb is None or not cb.enabled:
        return [evaluate(sig, policy, state, at) for at, sig in signals]
    carpet = _CarpetReplay(policy, cb)
    return [carpet.decide(sig, state, at) for at, sig in signals]


class _CarpetReplay:
    """:mod:`policies.aggregation` over a replay: covers last while signals keep coming."""

    def __init__(self, policy: Policy, cfg: CarpetBombing) -> None:
        self.policy = policy
        self.cfg = cfg
        self.window = AttackWindow()
        self.covers: list[list[Any]] = []  # [network, last signal at]
        self.protected = blocked_space(policy.guardrails.protected_prefixes, ())
        self.allowed = blocked_space((), (to_network(e.net) for e in policy.allowlist.entries))

    def decide(self, sig: Signal, state: EngineState, at: float) -> Decision:
        policy, cfg = self.policy, self.cfg
        quiet = policy.escalation.episode_timeout_seconds
        self.covers = [c for c in self.covers if at - c[1] <= quiet]
        target = sig.target_ip
        for cover in self.covers:
            if cover[0].version == target.version and target in cover[0]:
                cover[1] = at
                line = f"{target} is inside {cover[0]}: its covering rule mitigates it"
                dry = policy.settings.dry_run
                return Decision(str(target), "covered", cfg.label(), (), (), (line,), dry)
        decision = evaluate(sig, policy, state, at)
        if decision.status not in ATTACKED:
            return decision
        self.window.add(cfg, target.version, int(target), at)
        found = judge(
            cfg,
            self.window,
            target,
            at,
            protected=self.protected,
            allowed=self.allowed,
            hold_down=policy.escalation.hold_down_seconds,
        )
        if isinstance(found, Refusal):
            return decision._replace(explanation=(*decision.explanation, found.explain()))
        if found is None:
            return decision
        why = found.explain()
        planned = covering_rules(
            cfg,
            tiers=policy.escalation.tiers,
            default_ttl=policy.settings.default_ttl,
            network=found.network,
            signal=sig,
            checker=compile_policy(policy).checker(),
            why=why,
        )
        if planned:
            self.covers.append([found.network, at])
        extra = tuple(PlannedRule(r.intent, r.adapter, r.ttl, r.reason) for r in planned)
        return decision._replace(
            rules=(*decision.rules, *extra), explanation=(*decision.explanation, *why)
        )


def explain(policy: Policy, signal: Signal) -> Decision:
    """The decision for ``signal`` on an attack that has lasted past the hold-down."""
    state = EngineState()
    first = evaluate(signal, policy, state, 0.0)
    if first.status != "held":
        return first
    return evaluate(signal, policy, state, float(policy.escalation.hold_down_seconds))


def _rules(d: Decision) -> list[str]:
    return sorted(f"{canonical(r.intent)} via {r.adapter} ttl {r.ttl}" for r in d.rules)


@dataclass(frozen=True, slots=True)
class Change:
    index: int
    at: float
    target: str
    before: Decision
    after: Decision

    def describe(self) -> str:
        lines = [
            f"signal {self.index} at {self.at:g} s, target {self.target}: "
            f"{self.before.status}/{self.before.tier or '-'} -> "
            f"{self.after.status}/{self.after.tier or '-'}"
        ]
        old, new = set(_rules(self.before)), set(_rules(self.after))
        lines += [f"  - {r}" for r in sorted(old - new)]
        lines += [f"  + {r}" for r in sorted(new - old)]
        return "\n".join(lines)


def plan(current: Policy, new: Policy, signals: list[Timed]) -> list[Change]:
    """Where ``new`` decides differently from ``current`` on the same recorded signals."""
    return _differences(signals, replay(current, signals), replay(new, signals))


def plan_each(current: Policy, new: Policy, signals: list[Signal]) -> list[Change]:
    """Like :func:`plan`, each signal taken alone as an attack past the hold-down.

    For signals that are not one recording (the last signal of each recent incident).
    """
    timed = [(float(i), s) for i, s in enumerate(signals)]
    before = [explain(current, s) for s in signals]
    after = [explain(new, s) for s in signals]
    return _differences(timed, before, after)


def _differences(
    signals: list[Timed], before: list[Decision], after: list[Decision]
) -> list[Change]:
    changes: list[Change] = []
    for i, ((at, sig), b, a) in enumerate(zip(signals, before, after, strict=True)):
        if (b.status, b.tier, _rules(b), sorted(b.withdraw)) != (
            a.status,
            a.tier,
            _rules(a),
            sorted(a.withdraw),
        ):
            changes.append(Change(i, at, str(sig.target_ip), b, a))
    return changes
