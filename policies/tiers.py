"""Policy sections for escalation: tiers, baselines and geo lockdown.

Rates are bits (or packets) per second, written as integers or with an SI suffix:
``100M``, ``2G``, ``500Mbps``, ``1.5Gbps``, ``50Kpps`` (k = 1,000, not 1,024).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from policies.countries import parse_country
from policies.intents import Address, Community, LargeCommunity

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)\s*(?:bps|pps|b/s|p/s)?\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
TIER_NAME = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"


def parse_rate(value: object) -> int:
    """A rate as an integer per second: ``100000000``, ``"100M"``, ``"1.5Gbps"``."""
    if isinstance(value, bool):
        raise ValueError("expected a rate such as 100M or 2G, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a rate cannot be negative")
        return value
    if isinstance(value, float) and value >= 0:
        return round(value)
    if isinstance(value, str):
        m = _RATE.match(value)
        if m:
            return round(float(m.group(1)) * _SCALE[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a rate (examples: 100000000, 100M, 2G, 500Mbps)")


Rate = Annotated[int, BeforeValidator(parse_rate)]
Country = Annotated[str, BeforeValidator(parse_country)]
_STRICT = ConfigDict(frozen=True, extra="forbid")


class IntentSpec(BaseModel):
    """One kind of rule a tier emits for the attacked destination.

    * ``flowspec_rate_limit``: the attack signature, rate-limited to ``rate`` bits/s;
    * ``flowspec_drop``: the attack signature, discarded;
    * ``blackhole``: RTBH of the target (``prefix_length`` widens it, e.g. 24);
    * ``scrubbing``: divert the covering ``prefix_length`` prefix (default /24, /48).

    ``per_source`` (FlowSpec only) adds the signal's top source addresses as sources,
    one rule each, at most ``max_sources``; allowlisted sources are always left out.
    """

    model_config = _STRICT
    type: Literal["flowspec_rate_limit", "flowspec_drop", "blackhole", "scrubbing"]
    rate: Rate | None = None
    communities: tuple[Community, ...] | None = None
    large_communities: tuple[LargeCommunity, ...] = ()
    next_hop: Address | None = None
    prefix_length_v4: Annotated[int, Field(ge=8, le=32)] | None = None
    prefix_length_v6: Annotated[int, Field(ge=16, le=128)] | None = None
    per_source: bool = False
    max_sources: Annotated[int, Field(ge=1, le=256)] = 16

    @model_validator(mode="after")
    def _fields_fit_type(self) -> IntentSpec:
        flowspec = self.type.startswith("flowspec")
        if self.type == "flowspec_rate_limit" and not self.rate:
            raise ValueError("flowspec_rate_limit needs rate (bits/s, e.g. 50M)")
        if self.type != "flowspec_rate_limit" and self.rate is not None:
            raise ValueError(f"rate applies only to flowspec_rate_limit, not {self.type}")
        if self.type != "blackhole" and (
            self.communities is not None or self.large_communities or self.next_hop
        ):
            raise ValueError("communities, large_communities and next_hop apply to blackhole")
        if flowspec and (self.prefix_length_v4 or self.prefix_length_v6):
            raise ValueError("FlowSpec rules always match the attacked /32 or /128")
        if not flowspec and self.per_source:
            raise ValueError("per_source applies only to FlowSpec intents")
        return self

    def prefix_length(self, version: int) -> int:
        if version == 4:
            default = 24 if self.type == "scrubbing" else 32
            return self.prefix_length_v4 or default
        default = 48 if self.type == "scrubbing" else 128
        return self.prefix_length_v6 or default


class Tier(BaseModel):
    """An escalation step: crossing ``bps`` or ``pps`` (whichever is set) selects it.

    A tier without ``adapters`` decides but announces nothing (the default tiers of a
    fresh store, until adapters are given to them); its decisions say so.
    """

    model_config = _STRICT
    name: Annotated[str, Field(pattern=TIER_NAME)]
    description: str = ""
    bps: Rate | None = None
    pps: Rate | None = None
    ttl: Annotated[int, Field(ge=0, le=30 * 86_400)] | None = None
    intents: Annotated[list[IntentSpec], Field(min_length=1)]
    adapters: list[str] = []

    @model_validator(mode="after")
    def _has_threshold(self) -> Tier:
        if self.bps is None and self.pps is None:
            raise ValueError(f"tier {self.name!r} needs bps, pps or both")
        if self.bps == 0 or self.pps == 0:
            raise ValueError(f"tier {self.name!r}: a threshold of 0 would fire on no traffic")
        return self


class Escalation(BaseModel):
    """The tiers, lowest first, and how the engine moves between them."""

    model_config = _STRICT
    tiers: list[Tier] = []
    hold_down_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    hysteresis: Annotated[float, Field(ge=0, lt=1)] = 0.2
    deescalate_after_seconds: Annotated[int, Field(ge=0, le=86_400)] = 60
    episode_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = 120
    escalate_during_cooldown: bool = True

    @model_validator(mode="after")
    def _increasing(self) -> Escalation:
        names: set[str] = set()
        for tier in self.tiers:
            if tier.name in names:
                raise ValueError(f"tier name {tier.name!r} is used twice")
            names.add(tier.name)
        for metric in ("bps", "pps"):
            previous: tuple[str, int] | None = None
            for tier in self.tiers:
                value = getattr(tier, metric)
                if value is None:
                    continue
                if previous is not None and value <= previous[1]:
                    raise ValueError(
                        f"tier {tier.name!r} {metric} {value} must be higher than "
                        f"tier {previous[0]!r} {metric} {previous[1]}: tiers are listed "
                        "lowest first"
                    )
                previous = (tier.name, value)
        return self

    def index(self, name: str) -> int:
        for i, tier in enumerate(self.tiers):
            if tier.name == name:
                return i
        raise KeyError(name)


class Baseline(BaseModel):
    """Static thresholds, or per-target ones learned from traffic.

    Dynamic: the baseline is ``multiplier`` x the ``percentile`` of a target's traffic over
    ``window_seconds`` (kept as ``slots`` per-interval maxima, so memory per target is
    fixed), never below ``floor_bps``/``floor_pps``. The whole tier ladder is scaled so
    the first tier sits on the baseline. Per-host thresholds are absolute and win.
    """

    model_config = _STRICT
    mode: Literal["static", "dynamic"] = "static"
    percentile: Annotated[float, Field(gt=0, le=100)] = 99.0
    multiplier: Annotated[float, Field(gt=0, le=1000)] = 3.0
    window_seconds: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    slots: Annotated[int, Field(ge=4, le=10_000)] = 288
    min_slots: Annotated[int, Field(ge=1)] = 12
    floor_bps: Rate = 10_000_000
    floor_pps: Rate = 10_000
    max_targets: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    @model_validator(mode="after")
    def _min_slots(self) -> Baseline:
        if self.min_slots > self.slots:
            raise ValueError(f"min_slots {self.min_slots} exceeds slots {self.slots}")
        return self


class GeoLockdown(BaseModel):
    """Block source countries with FlowSpec rules once an attack reaches ``from_tier``.

    ``block``: traffic from ``countries`` to the target is dropped. ``allow_only``: traffic
    from every *other* country is dropped. Country prefixes come from an MMDB file
    (GeoLite2-Country or DB-IP format) and are aggregated to at most ``rule_budget`` rules
    per target, never covering allowlisted or protected space.
    """

    model_config = _STRICT
    enabled: bool = True
    mode: Literal["block", "allow_only"] = "block"
    countries: Annotated[list[Country], Field(min_length=1)]
    database: Path
    from_tier: str
    rule_budget: Annotated[int, Field(ge=1, le=10_000)] = 32
    only_seen_countries: bool = False
    adapters: list[str] | None = None
    ttl: Annotated[int, Field(ge=0, le=30 * 86_400)] | None = None

    @model_validator(mode="after")
    def _database_exists(self) -> GeoLockdown:
        if self.enabled and not self.database.is_file():
            raise ValueError(f"MMDB file {self.database} does not exist")
        if len(set(self.countries)) != len(self.countries):
            raise ValueError("a country is listed twice")
        if self.mode == "allow_only" and self.only_seen_countries:
            raise ValueError("only_seen_countries applies to block mode")
        return self
