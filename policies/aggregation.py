"""Carpet-bombing awareness: one covering rule for many attacked targets in one prefix.

A carpet-bombing attack spreads over many addresses of one prefix, each one briefly;
answering with one /32 rule per address fills routers' tables and arrives late. With a
``carpet_bombing`` section the policy watches, per candidate prefix, how many distinct
targets were attacked (a signal that crossed a tier) within ``window_seconds``. When a
prefix reaches ``min_targets`` (and/or ``min_share`` of its addresses), the policy asks
for ONE covering rule for the prefix instead, within these guardrails:

* never wider than ``min_prefix_length`` (nor than the guardrails' minimum for the
  covering rule's kind: the policy is refused otherwise);
* never a prefix that overlaps a protected prefix (``guardrails.protected_prefixes``) or
  an allowlisted address of any scope: then no covering rule, the /32 rules stay;
* the collateral, addresses the covering rule covers that were not attacked, is counted
  and given as a share of the prefix in the decision's explanation.

Candidate prefix lengths are tried widest first; the first that qualifies wins. This
module is pure (no I/O): :class:`AttackWindow` counts, :func:`judge` decides for one
candidate, :func:`covering_rules` plans the rules. The orchestrator
(:mod:`orchestrator.carpet`) opens the covering rule's incident and retires the /32s.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies.errors import GuardrailViolation
from policies.guardrails import GuardrailChecker, MinPrefix
from policies.intents import (
    AnyIntent,
    BlackholeIntent,
    Discard,
    FlowSpecIntent,
    IPNetwork,
    RateLimit,
    ScrubbingIntent,
    canonical,
)
from policies.netindex import BITS, to_network
from policies.prefixes import PrefixSet
from policies.signals import Signal, signature
from policies.tiers import IntentSpec, Tier

__all__ = [
    "AttackWindow",
    "CarpetBombing",
    "Covering",
    "PrefixLengths",
    "Refusal",
    "covering_rules",
    "judge",
]

# A decision that says the target is under attack (a tier was crossed).
ATTACKED = frozenset(
    {"held", "cooldown", "announce", "escalate", "deescalate", "steady", "refresh", "update"}
)
_STRICT = ConfigDict(frozen=True, extra="forbid")


class PrefixLengths(BaseModel):
    """The covering prefix lengths to consider, per family (a /32 or /128 is no aggregate)."""

    model_config = _STRICT
    ipv4: list[Annotated[int, Field(ge=1, le=31)]] = [24]
    ipv6: list[Annotated[int, Field(ge=1, le=127)]] = [64]

    def for_version(self, version: int) -> list[int]:
        return self.ipv4 if version == 4 else self.ipv6


class CarpetBombing(BaseModel):
    """The ``carpet_bombing`` policy section (see the module docstring).

    The covering rule is either a tier's (``tier``: its intents, adapters and TTL) or
    written here (``intents`` + ``adapters`` + ``ttl``); ``adapters``/``ttl`` given with
    ``tier`` override the tier's.
    """

    model_config = _STRICT
    enabled: bool = True
    window_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    min_targets: Annotated[int, Field(ge=2)] | None = None
    min_share: Annotated[float, Field(gt=0, le=1)] | None = None
    prefix_lengths: PrefixLengths = PrefixLengths()
    min_prefix_length: MinPrefix = MinPrefix(ipv4=24, ipv6=48)
    tier: str | None = None
    intents: list[IntentSpec] | None = None
    adapters: list[str] | None = None
    ttl: Annotated[int, Field(ge=0, le=30 * 86_400)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CarpetBombing:
        if self.min_targets is None and self.min_share is None:
            raise ValueError(
                "set min_targets (distinct attacked addresses in the prefix), min_share "
                "(their share of the prefix's addresses) or both"
            )
        if (self.tier is None) == (self.intents is None):
            raise ValueError(
                "name the covering rule's tier (tier: tier3) or write its intents, not both"
            )
        if self.intents is not None:
            if not self.intents:
                raise ValueError("intents: at least one intent for the covering rule")
            for spec in self.intents:
                if spec.per_source or spec.prefix_length_v4 or spec.prefix_length_v6:
                    raise ValueError(
                        "intents: the covering rule matches the covering prefix; "
                        "per_source and prefix_length_v4/v6 do not apply"
                    )
            if not self.adapters:
                raise ValueError("adapters: name the adapters that carry the covering rule")
        for family in ("ipv4", "ipv6"):
            lengths: list[int] = getattr(self.prefix_lengths, family)
            minimum: int = getattr(self.min_prefix_length, family)
            if len(set(lengths)) != len(lengths):
                raise ValueError(f"prefix_lengths.{family}: a length is listed twice")
            for n in lengths:
                if n < minimum:
                    raise ValueError(
                        f"prefix_lengths.{family}: /{n} is wider than min_prefix_length "
                        f"/{minimum}; a covering rule is never wider than that"
                    )
            if self.min_targets is not None and lengths:
                widest = min(lengths)
                size = 1 << ((32 if family == "ipv4" else 128) - widest)
                if self.min_targets > size:
                    raise ValueError(
                        f"min_targets {self.min_targets} can never be reached in a /{widest} "
                        f"({size} addresses): lower it or list wider prefix_lengths.{family}"
                    )
        return self

    def covering_tier(
        self, tiers: Sequence[Tier]
    ) -> tuple[list[IntentSpec], list[str], int | None]:
        """The covering rule's intents, adapters and TTL (None: the default TTL)."""
        if self.tier is not None:
            tier = next(t for t in tiers if t.name == self.tier)
            adapters = self.adapters if self.adapters is not None else tier.adapters
            return (
                list(tier.intents),
                list(adapters),
                self.ttl if self.ttl is not None else tier.ttl,
            )
        return list(self.intents or ()), list(self.adapters or ()), self.ttl

    def label(self) -> str:
        """The name decisions and the incident's tier use for the covering rule."""
        return self.tier or "carpet_bombing"

    def threshold_text(self) -> str:
        parts = []
        if self.min_targets is not None:
            parts.append(f"{self.min_targets} targets")
        if self.min_share is not None:
            parts.append(f"{self.min_share:.1%} of the prefix")
        return " and ".join(parts)


# ---------------------------------------------------------------- counting


def _net_value(version: int, value: int, plen: int) -> int:
    host_bits = BITS[version] - plen
    return (value >> host_bits) << host_bits


_NOTHING: dict[int, float] = {}


def _expire(bucket: dict[int, float], oldest: float) -> None:
    """Drop the entries last seen before ``oldest`` (they come first: oldest first)."""
    while bucket:
        addr, at = next(iter(bucket.items()))
        if at >= oldest:
            return
        del bucket[addr]


class AttackWindow:
    """Distinct attacked targets per candidate prefix over a sliding window.

    Per prefix: address -> when it was last seen attacked, oldest first, so expiry pops
    from the front. Memory is bounded by the targets attacked within one window.
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[int, int, int], dict[int, float]] = {}
        self._since: dict[tuple[int, int, int], float] = {}  # when each bucket's attack began
        self._adds = 0

    def add(self, cfg: CarpetBombing, version: int, value: int, now: float) -> None:
        for plen in cfg.prefix_lengths.for_version(version):
            key = (version, plen, _net_value(version, value, plen))
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = {}
                self._since[key] = now
            bucket.pop(value, None)
            bucket[value] = now
        self._adds += 1
        if self._adds % 4096 == 0:
            self.sweep(now - cfg.window_seconds)

    def targets(
        self, cfg: CarpetBombing, version: int, plen: int, net_value: int, now: float
    ) -> KeysView[int]:
        """The addresses attacked in ``(version, net_value/plen)`` within the window, oldest
        first (a live view: its length costs nothing, which the signal path relies on)."""
        key = (version, plen, net_value)
        bucket = self._buckets.get(key)
        if bucket is None:
            return _NOTHING.keys()
        _expire(bucket, now - cfg.window_seconds)
        if not bucket:
            del self._buckets[key]
            self._since.pop(key, None)
        return bucket.keys()

    def since(self, version: int, plen: int, net_value: int) -> float | None:
        """When the prefix's current run of attacked targets began (None: no run)."""
        return self._since.get((version, plen, net_value))

    def forget(self, version: int, plen: int, net_value: int) -> None:
        self._buckets.pop((version, plen, net_value), None)
        self._since.pop((version, plen, net_value), None)

    def restore(
        self, version: int, plen: int, net_value: int, entries: Iterable[tuple[int, float]]
    ) -> None:
        """Put back a prefix's entries (address, last seen) read from a store, oldest first."""
        key = (version, plen, net_value)
        bucket = self._buckets.setdefault(key, {})
        for value, at in entries:
            self._since.setdefault(key, at)
            bucket.pop(value, None)
            bucket[value] = at

    def restore_since(self, version: int, plen: int, net_value: int, since: float) -> None:
        """When a restored prefix's run began (the store keeps it with the entries)."""
        if (version, plen, net_value) in self._buckets:
            self._since[(version, plen, net_value)] = since

    def sweep(self, oldest: float) -> None:
        for key in list(self._buckets):
            bucket = self._buckets[key]
            _expire(bucket, oldest)
            if not bucket:
                del self._buckets[key]
                self._since.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


# ---------------------------------------------------------------- judging a candidate


@dataclass(frozen=True)
class Covering:
    """A prefix that qualifies for one covering rule."""

    network: IPNetwork
    targets: tuple[str, ...]  # the attacked addresses, oldest first
    window_seconds: int
    threshold: str

    @property
    def size(self) -> int:
        return int(self.network.num_addresses)

    @property
    def collateral(self) -> int:
        return self.size - len(self.targets)

    @property
    def collateral_share(self) -> float:
        return self.collateral / self.size

    def explain(self) -> list[str]:
        shown = ", ".join(self.targets[:10])
        more = f" and {len(self.targets) - 10} more" if len(self.targets) > 10 else ""
        return [
            f"carpet bombing: {len(self.targets)} targets in {self.network} attacked within "
            f"{self.window_seconds} s (threshold: {self.threshold}): {shown}{more}",
            f"carpet bombing: one covering rule for {self.network} replaces their "
            f"/{self.network.max_prefixlen} rules; collateral: {self.collateral} of "
            f"{self.size} addresses ({self.collateral_share:.1%}) covered that were not "
            "attacked",
            "carpet bombing: /32 rules already made for these targets are withdrawn once the "
            f"covering rule is active; later signals inside {self.network} attach to its "
            "incident",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": str(self.network),
            "targets": list(self.targets),
            "attacked": len(self.targets),
            "window_seconds": self.window_seconds,
            "threshold": self.threshold,
            "collateral": self.collateral,
            "collateral_share": round(self.collateral_share, 4),
        }


@dataclass(frozen=True)
class Refusal:
    """A prefix that reached the threshold but may not be covered."""

    network: IPNetwork
    attacked: int
    reason: str
    held: bool = False  # only the hold-down is missing

    def explain(self) -> str:
        return (
            f"carpet bombing: {self.attacked} targets attacked in {self.network}, but no "
            f"covering rule{' yet' if self.held else ''}: {self.reason}; the per-target "
            "rules stay"
        )


def blocked_space(protected: Iterable[IPNetwork], allow_nets: Iterable[IPNetwork]) -> PrefixSet:
    """Everything a covering rule must not touch: protected prefixes and the allowlist
    (every scope: a node-scoped entry is still someone's address)."""
    return PrefixSet([*protected, *allow_nets])


def judge(
    cfg: CarpetBombing,
    window: AttackWindow,
    signal_target: Any,
    now: float,
    *,
    protected: PrefixSet,
    allowed: PrefixSet,
    hold_down: float = 0.0,
) -> Covering | Refusal | None:
    """The widest candidate prefix of ``signal_target`` that qualifies, a refusal, or None.

    A prefix that reaches the threshold but touches protected or allowlisted space is
    refused and the next (longer) candidate is tried; the first refusal is returned when
    none qualifies. ``hold_down`` (the policy's ``escalation.hold_down_seconds``) holds at
    the level of the prefix too: it must have been under attack that long (a refusal
    says so until then).
    """
    version = signal_target.version
    value = int(signal_target)
    refusal: Refusal | None = None
    for plen in sorted(cfg.prefix_lengths.for_version(version)):
        net_value = _net_value(version, value, plen)
        attacked = window.targets(cfg, version, plen, net_value, now)
        size = 1 << (BITS[version] - plen)
        if cfg.min_targets is not None and len(attacked) < cfg.min_targets:
            continue
        if cfg.min_share is not None and len(attacked) / size < cfg.min_share:
            continue
        network = to_network((version, net_value, plen))
        reason = None
        if protected.overlaps(network):
            hits = ", ".join(str(p) for p in protected.overlapping(network)[:3])
            reason = f"it overlaps protected prefix {hits}"
        elif allowed.overlaps(network):
            hits = ", ".join(str(p) for p in allowed.overlapping(network)[:3])
            reason = f"it contains allowlisted {hits}"
        if reason is not None:
            refusal = refusal or Refusal(network, len(attacked), reason)
            continue
        make = IPv4Address if version == 4 else IPv6Address
        began = window.since(version, plen, net_value)
        lasted = now - (now if began is None else began)
        if lasted < hold_down:
            reason = (
                f"hold-down: the prefix has been attacked for {lasted:.0f} s of {hold_down:g} s"
            )
            return refusal or Refusal(network, len(attacked), reason, held=True)
        texts = tuple(str(make(a)) for a in attacked)
        return Covering(network, texts, cfg.window_seconds, cfg.threshold_text())
    return refusal


# ---------------------------------------------------------------- the covering rules


@dataclass(frozen=True)
class CoveringRule:
    intent: AnyIntent
    adapter: str
    ttl: int
    reason: str


def covering_rules(
    cfg: CarpetBombing,
    *,
    tiers: Sequence[Tier],
    default_ttl: int,
    network: IPNetwork,
    signal: Signal,
    checker: GuardrailChecker,
    why: list[str],
) -> list[CoveringRule]:
    """The covering rule(s) for ``network``: FlowSpec ones match the signature of the
    signal that completed the picture, with the whole prefix as destination."""
    specs, adapters, ttl = cfg.covering_tier(tiers)
    ttl = default_ttl if ttl is None else ttl
    prefix = str(network)
    intents: list[AnyIntent] = []
    for spec in specs:
        try:
            if spec.type == "blackhole":
                data: dict[str, Any] = {"prefix": prefix}
                if spec.communities is not None:
                    data["communities"] = spec.communities
                if spec.large_communities:
                    data["large_communities"] = spec.large_communities
                if spec.next_hop is not None:
                    data["next_hop"] = spec.next_hop
                intents.append(BlackholeIntent(**data))
            elif spec.type == "scrubbing":
                intents.append(ScrubbingIntent(prefix=prefix))
            else:
                action = (
                    Discard()
                    if spec.type == "flowspec_drop"
                    else RateLimit(bytes_per_second=(spec.rate or 0) / 8)
                )
                for sig in signature(signal):
                    fields = dict(sig.components)
                    intents.append(FlowSpecIntent(destination=prefix, **fields, action=action))
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            why.append(f"carpet bombing: no {spec.type} for {prefix}: {msg}")
    out: list[CoveringRule] = []
    for intent in intents:
        try:
            checker.check(intent)
        except GuardrailViolation as exc:
            why.append(f"carpet bombing: guardrail {exc.code} stopped {canonical(intent)}: {exc}")
            continue
        out.extend(
            CoveringRule(intent, a, ttl, f"carpet bombing: covering rule for {prefix}")
            for a in adapters
        )
    if intents and not adapters:
        why.append("carpet bombing: the covering rule names no adapter: nothing is announced")
    return out
