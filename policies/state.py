"""Engine state the orchestrator keeps between evaluations, and persists.

Per target: when the attack started (hold-down), the tier in force and since when,
when traffic fell below it (de-escalation), the last action (cooldown) and the intent
keys the engine planned (so it can withdraw them). Plus the dynamic baselines. All of it
round-trips through :meth:`EngineState.to_dict` / :meth:`EngineState.from_dict` (plain
JSON types), so a restart does not forget an attack in progress or a learned baseline.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from policies.baseline import BaselineStore
from policies.tables import AllowEntry, HostThreshold
from policies.tiers import Baseline

STATE_VERSION = 1


class Lookups(NamedTuple):
    """A target's policy lookups, valid for one compiled policy and one node."""

    generation: int  # of the compiled policy they came from
    node: str | None
    allow: AllowEntry | None
    override: HostThreshold | None
    override_text: str  # '' without an override


@dataclass(slots=True)
class TargetState:
    attack_since: float | None = None
    last_seen: float | None = None
    tier: str | None = None
    tier_since: float | None = None
    below_since: float | None = None
    last_action: float | None = None
    last_emit: float | None = None
    ttl: int = 0
    active: list[str] = field(default_factory=list)
    # What the rules were planned from (not persisted: after a restart it is re-derived).
    shape: tuple[object, ...] | None = field(default=None, compare=False)
    # The policy lookups for this target (not persisted): see policies.engine._lookups.
    memo: Lookups | None = field(default=None, compare=False)

    def end_episode(self) -> None:
        """Forget the attack; ``last_action`` stays for the cooldown."""
        self.attack_since = None
        self.tier = None
        self.tier_since = None
        self.below_since = None
        self.last_emit = None
        self.ttl = 0
        self.active = []
        self.shape = None


_PERSISTED = tuple(f for f in TargetState.__dataclass_fields__ if f not in ("shape", "memo"))
# What a decision can depend on: every field but the look-up cache
_DECIDING = tuple(f for f in TargetState.__dataclass_fields__ if f != "memo")


def snapshot(ts: TargetState) -> tuple[object, ...]:
    """The target's state as a comparable value (the intake compares it before and after
    an evaluation: unchanged, an equal signal at the same time gets the same decision)."""
    return tuple(
        tuple(v) if isinstance(v, list) else v for v in (getattr(ts, f) for f in _DECIDING)
    )


def _target_dict(ts: TargetState) -> dict[str, Any]:
    return {f: getattr(ts, f) if f != "active" else list(ts.active) for f in _PERSISTED}


class EngineState:
    """Everything :func:`policies.engine.evaluate` remembers; bounded in size."""

    def __init__(self, max_targets: int = 200_000) -> None:
        self.max_targets = max_targets
        self.targets: OrderedDict[str, TargetState] = OrderedDict()
        self._baselines: BaselineStore | None = None
        self._pending: dict[str, Any] | None = None  # restored, waiting for its config

    def target(self, key: str) -> TargetState:
        ts = self.targets.get(key)
        if ts is None:
            ts = self.targets[key] = TargetState()
            if len(self.targets) > self.max_targets:
                self._evict()
        else:
            self.targets.move_to_end(key)
        return ts

    def _evict(self) -> None:
        """Drop the least recently seen target that has no rules planned."""
        for key, ts in self.targets.items():
            if not ts.active:
                del self.targets[key]
                return
        self.targets.popitem(last=False)

    def peek(self, key: str) -> TargetState | None:
        return self.targets.get(key)

    def baselines(self, cfg: Baseline) -> BaselineStore:
        """The baseline store for ``cfg`` (kept across reloads when the layout is unchanged)."""
        if self._baselines is None:
            if self._pending is not None:
                self._baselines = BaselineStore.from_dict(cfg, self._pending)
                self._pending = None
            else:
                self._baselines = BaselineStore(cfg)
        elif self._baselines.cfg is not cfg and self._baselines.cfg != cfg:
            self._baselines = BaselineStore.from_dict(cfg, self._baselines.to_dict())
        return self._baselines

    def observe(self, cfg: Baseline, target: str, now: float, bps: float, pps: float) -> bool:
        """Feed one traffic sample to the baseline; ignored while ``target`` is under attack.

        Returns whether the sample was used. Attack traffic must not teach the baseline
        that attacks are normal.
        """
        ts = self.targets.get(target)
        if ts is not None and (ts.attack_since is not None or ts.tier is not None):
            return False
        self.baselines(cfg).observe(target, now, bps, pps)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "targets": {k: _target_dict(v) for k, v in self.targets.items()},
            "baselines": self._pending if self._baselines is None else self._baselines.to_dict(),
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], cfg: Baseline | None = None, max_targets: int = 200_000
    ) -> EngineState:
        state = cls(max_targets)
        if data.get("version") != STATE_VERSION:
            return state
        known = set(_PERSISTED)
        for key, raw in data.get("targets", {}).items():
            state.targets[key] = TargetState(**{k: v for k, v in raw.items() if k in known})
        raw_baselines = data.get("baselines")
        if raw_baselines is not None:
            if cfg is None:  # restored with the config of the first evaluation that needs it
                state._pending = raw_baselines
            else:
                state._baselines = BaselineStore.from_dict(cfg, raw_baselines)
        return state
