"""Dynamic per-target baselines learned from traffic samples.

Memory is fixed per target: the window is cut into ``slots`` intervals and each keeps
only the highest bps and pps seen in it (a ring indexed by interval number), so a year of
one-second samples costs the same as an hour. The baseline is ``multiplier`` x the
``percentile`` of those interval maxima, never below the floor. At most ``max_targets``
targets are tracked; the least recently updated is evicted first.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from policies.tiers import Baseline


@dataclass(frozen=True, slots=True)
class BaselineValue:
    bps: float
    pps: float
    slots: int  # how many intervals with data the figure rests on

    def describe(self, cfg: Baseline) -> str:
        hours = cfg.window_seconds / 3600
        return (
            f"dynamic baseline {_rate(self.bps)}bps / {_rate(self.pps)}pps "
            f"({cfg.multiplier:g} x p{cfg.percentile:g} of {self.slots} intervals over "
            f"{hours:g} h, floor {_rate(cfg.floor_bps)}bps / {_rate(cfg.floor_pps)}pps)"
        )


def _rate(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} "


class _Ring:
    __slots__ = ("bps", "cached", "pps", "stamp")

    def __init__(self, slots: int) -> None:
        self.stamp = [-1] * slots  # interval number each slot holds
        self.bps = [0.0] * slots
        self.pps = [0.0] * slots
        # (interval number, value) of the last computation; cleared by a new sample
        self.cached: tuple[int, BaselineValue | None] | None = None


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


class BaselineStore:
    """Baselines of many targets, bounded in memory."""

    def __init__(self, cfg: Baseline) -> None:
        self.cfg = cfg
        self._rings: OrderedDict[str, _Ring] = OrderedDict()

    @property
    def interval(self) -> float:
        return self.cfg.window_seconds / self.cfg.slots

    def __len__(self) -> int:
        return len(self._rings)

    def observe(self, target: str, now: float, bps: float, pps: float) -> None:
        ring = self._rings.get(target)
        if ring is None:
            ring = self._rings[target] = _Ring(self.cfg.slots)
            if len(self._rings) > self.cfg.max_targets:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(target)
        number = int(now // self.interval)
        i = number % self.cfg.slots
        ring.cached = None
        if ring.stamp[i] != number:
            ring.stamp[i], ring.bps[i], ring.pps[i] = number, bps, pps
        else:
            ring.bps[i] = max(ring.bps[i], bps)
            ring.pps[i] = max(ring.pps[i], pps)

    def value(self, target: str, now: float) -> BaselineValue | None:
        """The baseline, or None while fewer than ``min_slots`` intervals have data."""
        ring = self._rings.get(target)
        if ring is None:
            return None
        number = int(now // self.interval)
        if ring.cached is not None and ring.cached[0] == number:
            return ring.cached[1]
        value = self._compute(ring, number)
        ring.cached = (number, value)
        return value

    def _compute(self, ring: _Ring, number: int) -> BaselineValue | None:
        oldest = number - self.cfg.slots + 1
        live = [i for i, n in enumerate(ring.stamp) if n >= 0 and n >= oldest]
        if len(live) < self.cfg.min_slots:
            return None
        cfg = self.cfg
        bps = max(
            cfg.floor_bps, cfg.multiplier * _percentile([ring.bps[i] for i in live], cfg.percentile)
        )
        pps = max(
            cfg.floor_pps, cfg.multiplier * _percentile([ring.pps[i] for i in live], cfg.percentile)
        )
        return BaselineValue(bps, pps, len(live))

    def to_dict(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "slots": self.cfg.slots,
            "targets": {
                t: {"stamp": r.stamp, "bps": r.bps, "pps": r.pps} for t, r in self._rings.items()
            },
        }

    @classmethod
    def from_dict(cls, cfg: Baseline, data: dict[str, Any]) -> BaselineStore:
        """Restore; samples taken with another window layout are dropped, not misread."""
        store = cls(cfg)
        if data.get("slots") != cfg.slots or data.get("interval") != store.interval:
            return store
        for target, raw in data.get("targets", {}).items():
            ring = _Ring(cfg.slots)
            ring.stamp = [int(x) for x in raw["stamp"]]
            ring.bps = [float(x) for x in raw["bps"]]
            ring.pps = [float(x) for x in raw["pps"]]
            store._rings[target] = ring
            if len(store._rings) > cfg.max_targets:
                store._rings.popitem(last=False)
        return store
