"""The policy engine: an attack signal in, a decision with its reasons out.

:func:`evaluate` is pure apart from the :class:`~policies.state.EngineState` it updates
(the orchestrator keeps and persists it). In order, it:

1. refuses to act on an allowlisted target (workspace-wide or for the signal's node);
2. picks the thresholds: a per-host override by longest-prefix match, else the tiers
   (scaled onto the target's dynamic baseline in dynamic mode);
3. finds the highest tier crossed (bps or pps), then applies hold-down (the attack must
   last before the first action), cooldown (time between changes for one target) and
   de-escalation with hysteresis (a tier is left only when traffic stays below
   threshold x (1 - hysteresis) for a while);
4. plans the tier's rules: the attack signature as FlowSpec match for the attacked /32 or
   /128, RTBH, scrubbing; top sources and geo lockdown as FlowSpec sources, never an
   allowlisted one; every rule passes the guardrails or is dropped with the reason.

The decision lists the rules to announce, the intent keys to withdraw, and an
explanation a person can read at 3 a.m.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

from policies.errors import GuardrailViolation
from policies.geo import Aggregate, GeoDB, aggregate, complement
from policies.guardrails import GuardrailChecker
from policies.intents import (
    AnyIntent,
    BlackholeIntent,
    Discard,
    FlowSpecIntent,
    IPAddress,
    RateLimit,
    ScrubbingIntent,
    canonical,
    intent_key,
    intent_to_dict,
)
from policies.netindex import BITS, net_text, span, to_network
from policies.schema import Policy
from policies.signals import Signal, signature
from policies.state import EngineState, TargetState
from policies.tables import AllowEntry, HostThreshold
from policies.tiers import IntentSpec, Tier

Ladder = tuple[tuple[float | None, float | None], ...]


@dataclass(frozen=True, slots=True)
class PlannedRule:
    intent: AnyIntent
    adapter: str
    ttl: int
    reason: str
    key: str = field(default="", compare=False)  # intent_key(intent), filled in if empty

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", intent_key(self.intent))

    def to_dict(self) -> dict[str, Any]:
        return {
            "intent": intent_to_dict(self.intent),
            "text": canonical(self.intent),
            "key": self.key,
            "adapter": self.adapter,
            "ttl": self.ttl,
            "reason": self.reason,
        }


@dataclass(frozen=True)  # no slots: a frozen slotted dataclass is twice as slow to build
class Decision:
    """What to do for one signal. ``status`` is one of :data:`STATUSES`."""

    target: str
    status: str
    tier: str | None
    rules: tuple[PlannedRule, ...] = ()
    withdraw: tuple[str, ...] = ()
    explanation: tuple[str, ...] = ()
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "tier": self.tier,
            "dry_run": self.dry_run,
            "rules": [r.to_dict() for r in self.rules],
            "withdraw": list(self.withdraw),
            "explanation": list(self.explanation),
        }


STATUSES = (
    "allowlisted",  # target allowlisted: nothing announced, anything planned withdrawn
    "below",  # traffic under every tier
    "held",  # hold-down: the attack has not lasted long enough yet
    "cooldown",  # a change was due but the target is in cooldown
    "announce",  # first tier of an attack
    "escalate",  # to a higher tier
    "deescalate",  # to a lower tier
    "end",  # traffic fell below every tier long enough: withdraw everything
    "steady",  # tier unchanged, rules in place
    "refresh",  # tier unchanged, rules re-announced before their TTL runs out
)


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if v >= 1e9:
        if v >= 1e12:
            return f"{v / 1e12:.4g} T{unit}"
        return f"{v / 1e9:.4g} G{unit}"
    if v >= 1e6:
        return f"{v / 1e6:.4g} M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.4g} k{unit}"
    return f"{v:.4g} {unit}"


class Compiled:
    """Per-policy indexes and caches, built once and reused for every signal."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.tiers: list[Tier] = list(policy.escalation.tiers)
        self.index = {t.name: i for i, t in enumerate(self.tiers)}
        self.ladder: Ladder = tuple((t.bps, t.pps) for t in self.tiers)
        self._checkers: dict[str | None, GuardrailChecker] = {}
        self._geo: GeoDB | None = None
        self._geo_cache: dict[tuple[Any, ...], Aggregate] = {}
        self.keep_text = f"{1 - policy.escalation.hysteresis:.0%}"
        self.holds = [f"tier {t.name} holds: traffic " for t in self.tiers]
        self._flow_templates: dict[tuple[Any, ...], FlowSpecIntent] = {}
        self._texts4: dict[int, str] = {}
        self._texts6: dict[int, str] = {}
        self._entry_texts: dict[int, str] = {}
        self.rule_cache: dict[tuple[Any, ...], tuple[tuple[PlannedRule, ...], tuple[str, ...]]] = {}

    def flowspec(
        self,
        signal: Signal,
        components: tuple[tuple[str, Any], ...],
        source: str | None,
        action: Discard | RateLimit,
    ) -> FlowSpecIntent:
        """A FlowSpec intent for the attacked host.

        Validated once per (family, signature, source, action) on a stand-in destination,
        then copied with the real one: nothing FlowSpec validation checks depends on the
        destination beyond its family.
        """
        version = signal.target_ip.version
        key = (version, components, source, action)
        template = self._flow_templates.get(key)
        if template is None:
            stand_in = "192.0.2.1/32" if version == 4 else "2001:db8::1/128"
            fields: dict[str, Any] = {"destination": stand_in, **dict(components)}
            if source is not None:
                fields["source"] = source
            template = FlowSpecIntent(**fields, action=action)
            if len(self._flow_templates) > 10_000:
                self._flow_templates.clear()
            self._flow_templates[key] = template
        host = ip_network(signal.target_ip)
        return template.model_copy(update={"destination": host})

    def key_of(self, address: IPAddress, value: int) -> str:
        """``str(address)``, cached: IPv6 formatting is slow and signals repeat targets."""
        texts = self._texts4 if address.version == 4 else self._texts6
        text = texts.get(value)
        if text is None:
            if len(texts) > 100_000:
                texts.clear()
            text = texts[value] = str(address)
        return text

    def override_text(self, entry: HostThreshold) -> str:
        # Keyed by id(): entries live as long as the policy this object holds.
        text = self._entry_texts.get(id(entry))
        if text is None:
            label = f" ({entry.label!r})" if entry.label else ""
            text = f"per-host thresholds {entry.prefix}{label} apply"
            self._entry_texts[id(entry)] = text
        return text

    def allow_text(self, entry: AllowEntry) -> str:
        text = self._entry_texts.get(id(entry))
        if text is None:
            text = self._entry_texts[id(entry)] = entry.describe()
        return text

    def checker(self) -> GuardrailChecker:
        if None not in self._checkers:
            self._checkers[None] = GuardrailChecker(
                self.policy.guardrails, self.policy.allowlist.prefix_set()
            )
        return self._checkers[None]

    def geo(self) -> GeoDB:
        assert self.policy.geo_lockdown is not None  # noqa: S101 - only called when set
        if self._geo is None:
            self._geo = GeoDB(self.policy.geo_lockdown.database)
        return self._geo

    def geo_prefixes(self, countries: frozenset[str], version: int, node: str | None) -> Aggregate:
        geo = self.policy.geo_lockdown
        assert geo is not None  # noqa: S101
        key = (countries, version, node)
        hit = self._geo_cache.get(key)
        if hit is None:
            spans = self.geo().spans(countries, version)
            if geo.mode == "allow_only":
                spans = complement(spans, version)
            forbidden = [span(n) for n in self.policy.allowlist.nets(node) if n[0] == version]
            forbidden += [
                (int(p.network_address), int(p.broadcast_address))
                for p in self.policy.guardrails.protected_prefixes
                if p.version == version
            ]
            hit = aggregate(spans, forbidden, version, geo.rule_budget)
            if len(self._geo_cache) > 256:
                self._geo_cache.clear()
            self._geo_cache[key] = hit
        return hit


_COMPILED: dict[int, Compiled] = {}


def compile_policy(policy: Policy) -> Compiled:
    """The compiled form of ``policy`` (cached while the policy object lives)."""
    hit = _COMPILED.get(id(policy))
    if hit is None or hit.policy is not policy:
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        hit = _COMPILED[id(policy)] = Compiled(policy)
    return hit


# ---------------------------------------------------------------- thresholds


def _thresholds(run: _Run, state: EngineState, value: int) -> tuple[Ladder, str]:
    c, signal, key, now = run.c, run.signal, run.key, run.now
    override = c.policy.thresholds.lookup(signal.target_ip.version, value)
    if override is not None:
        return override.ladder, c.override_text(override)
    cfg = c.policy.baseline
    if cfg.mode == "dynamic" and c.tiers:
        base = state.baselines(cfg).value(key, now)
        if base is None:
            return c.ladder, "dynamic baseline still learning: workspace tiers apply"
        first_bps = next((b for b, _ in c.ladder if b), None)
        first_pps = next((p for _, p in c.ladder if p), None)
        kb = base.bps / first_bps if first_bps else 1.0
        kp = base.pps / first_pps if first_pps else 1.0
        ladder = tuple(
            (None if b is None else b * kb, None if p is None else p * kp) for b, p in c.ladder
        )
        return ladder, f"{base.describe(cfg)}: tiers scaled x{kb:.3g} (bps), x{kp:.3g} (pps)"
    return c.ladder, "workspace tiers apply"


def _crossed(ladder: Ladder, bps: float, pps: float, factor: float = 1.0) -> int | None:
    best = None
    for i, (b, p) in enumerate(ladder):
        if (b is not None and bps >= b * factor) or (p is not None and pps >= p * factor):
            best = i
    return best


def _why_tier(c: Compiled, ladder: Ladder, i: int, signal: Signal) -> str:
    b, p = ladder[i]
    parts = []
    if b is not None and signal.bps >= b:
        parts.append(f"{_fmt(signal.bps, 'bps')} >= {_fmt(b, 'bps')}")
    if p is not None and signal.pps >= p:
        parts.append(f"{_fmt(signal.pps, 'pps')} >= {_fmt(p, 'pps')}")
    return f"tier {c.tiers[i].name}: {' and '.join(parts)}"


# ---------------------------------------------------------------- planning rules


def _host(signal: Signal) -> str:
    t = signal.target_ip
    return f"{t}/{BITS[t.version]}"


def _covering(signal: Signal, spec: IntentSpec) -> str:
    t = signal.target_ip
    plen = spec.prefix_length(t.version)
    value = (int(t) >> (BITS[t.version] - plen)) << (BITS[t.version] - plen)
    return net_text((t.version, value, plen))


def _plan(
    c: Compiled, tier_index: int, signal: Signal, why: list[str]
) -> list[tuple[AnyIntent, str]]:
    """The intents of a tier for this signal, each with its reason."""
    tier = c.tiers[tier_index]
    out: list[tuple[AnyIntent, str]] = []
    sigs = signature(signal)
    allow = c.policy.allowlist
    for spec in tier.intents:
        if spec.type == "blackhole":
            data: dict[str, Any] = {"prefix": _covering(signal, spec)}
            if spec.communities is not None:
                data["communities"] = spec.communities
            if spec.large_communities:
                data["large_communities"] = spec.large_communities
            if spec.next_hop is not None:
                data["next_hop"] = spec.next_hop
            out.append((BlackholeIntent(**data), f"tier {tier.name}: blackhole"))
            continue
        if spec.type == "scrubbing":
            prefix = _covering(signal, spec)
            out.append((ScrubbingIntent(prefix=prefix), f"tier {tier.name}: divert to scrubbing"))
            continue
        action = (
            Discard()
            if spec.type == "flowspec_drop"
            else RateLimit(bytes_per_second=(spec.rate or 0) / 8)
        )
        verb = "drop" if spec.type == "flowspec_drop" else f"rate-limit to {_fmt(spec.rate, 'bps')}"
        sources: list[str | None] = [None]
        if spec.per_source:
            sources = []
            for addr in signal.top_sources:
                if addr.version != signal.target_ip.version:
                    continue
                entry = allow.match(addr.version, int(addr), signal.node)
                if entry is not None:
                    why.append(f"source {addr} left out: {entry.describe()}")
                    continue
                sources.append(f"{addr}/{BITS[addr.version]}")
                if len(sources) >= spec.max_sources:
                    break
            if not sources:
                why.append(f"tier {tier.name}: no usable source address for per-source {verb}")
        for sig in sigs:
            for src in sources:
                intent = c.flowspec(signal, sig.components, src, action)
                from_src = f" from {src}" if src else ""
                out.append((intent, f"tier {tier.name}: {verb} {sig.why}{from_src}"))
    return out


def _plan_geo(c: Compiled, tier_index: int, signal: Signal, why: list[str]) -> list[AnyIntent]:
    geo = c.policy.geo_lockdown
    if geo is None or not geo.enabled or tier_index < c.index[geo.from_tier]:
        return []
    countries = set(geo.countries)
    if geo.mode == "block" and geo.only_seen_countries:
        countries &= set(signal.source_countries)
        if not countries:
            why.append("geo lockdown: none of the blocked countries is among the sources")
            return []
    version = signal.target_ip.version
    agg = c.geo_prefixes(frozenset(countries), version, signal.node)
    if signal.top_sources:
        db = c.geo()
        found = [db.country(str(a)) for a in signal.top_sources]
        hit = sum(1 for code in found if code in geo.countries)
        share = hit if geo.mode == "block" else len(found) - hit
        why.append(
            f"geo lockdown: {share} of {len(found)} top source(s) are in the countries it drops"
        )
    what = "from" if geo.mode == "block" else "from everywhere except"
    why.append(
        f"geo lockdown ({geo.mode}) from tier {geo.from_tier}: drop traffic {what} "
        f"{', '.join(sorted(countries))} in {len(agg.prefixes)} rule(s) "
        f"(exact: {agg.exact}; collateral {agg.collateral} addresses, "
        f"left uncovered {agg.uncovered} addresses; allowlisted and protected space excluded)"
    )
    return [
        FlowSpecIntent(destination=_host(signal), source=to_network(n), action=Discard())
        for n in agg.prefixes
    ]


def _rules(c: Compiled, tier_index: int, signal: Signal, why: list[str]) -> tuple[PlannedRule, ...]:
    """The rules of a tier for this signal (cached: refreshes re-plan the same rules)."""
    key = (
        tier_index,
        signal.target_ip,
        signal.node,
        signal.attack_family,
        signal.top_source_ports,
        signal.top_destination_ports,
        signal.top_sources,
        (signal.tcp_pct, signal.udp_pct, signal.icmp_pct),
        tuple(signal.source_countries),
    )
    hit = c.rule_cache.get(key)
    if hit is None:
        notes: list[str] = []
        hit = (_plan_rules(c, tier_index, signal, notes), tuple(notes))
        if len(c.rule_cache) >= 20_000:
            c.rule_cache.clear()
        c.rule_cache[key] = hit
    why.extend(hit[1])
    return hit[0]


def _plan_rules(
    c: Compiled, tier_index: int, signal: Signal, why: list[str]
) -> tuple[PlannedRule, ...]:
    tier = c.tiers[tier_index]
    ttl = c.policy.settings.default_ttl if tier.ttl is None else tier.ttl
    planned = _plan(c, tier_index, signal, why)
    geo = c.policy.geo_lockdown
    geo_intents = _plan_geo(c, tier_index, signal, why)
    checker = c.checker()
    rules: list[PlannedRule] = []
    seen: set[tuple[str, str]] = set()
    items: list[tuple[AnyIntent, str, list[str], int]] = [
        (intent, reason, tier.adapters, ttl) for intent, reason in planned
    ]
    if geo is not None and geo_intents:
        geo_ttl = ttl if geo.ttl is None else geo.ttl
        adapters = geo.adapters or tier.adapters
        items += [(i, f"geo lockdown ({geo.mode})", adapters, geo_ttl) for i in geo_intents]
    for intent, reason, adapters, rule_ttl in items:
        try:
            checker.check(intent)
        except GuardrailViolation as exc:
            why.append(f"guardrail {exc.code} stopped {canonical(intent)}: {exc}")
            continue
        key = intent_key(intent)
        for adapter in adapters:
            if (key, adapter) in seen:
                continue
            seen.add((key, adapter))
            rules.append(PlannedRule(intent, adapter, rule_ttl, reason, key))
    return tuple(rules)


# ---------------------------------------------------------------- evaluation


@dataclass(slots=True)
class _Run:
    """One evaluation in progress."""

    c: Compiled
    ts: TargetState
    signal: Signal
    now: float
    why: list[str]
    key: str

    def done(self, status: str, tier: str | None, withdraw: tuple[str, ...] = ()) -> Decision:
        dry = self.c.policy.settings.dry_run
        return Decision(self.key, status, tier, (), withdraw, tuple(self.why), dry)

    def cooldown_left(self) -> float:
        last = self.ts.last_action
        if last is None:
            return 0.0
        return max(0.0, self.c.policy.settings.cooldown_seconds - (self.now - last))

    def move(self, status: str, new_index: int | None) -> Decision:
        """Move the target to ``new_index`` (None: no tier) and plan its rules."""
        c, ts, now, why = self.c, self.ts, self.now, self.why
        rules: tuple[PlannedRule, ...] = ()
        if new_index is None:
            withdraw = tuple(ts.active)
            ts.end_episode()
            ts.last_action = now
            tier_name = None
        else:
            rules = _rules(c, new_index, self.signal, why)
            tier_name = c.tiers[new_index].name
            if status != "refresh":
                ts.tier_since = now
                ts.last_action = now
            ts.tier = tier_name
            ts.below_since = None
            if rules or not ts.active:
                keys = list(dict.fromkeys(r.key for r in rules))
                withdraw = tuple(k for k in ts.active if k not in set(keys))
                ts.active = keys
                ts.last_emit = now
                ts.ttl = min((r.ttl for r in rules), default=0)
            else:
                # Never leave a host unprotected because a tier's rules were all refused.
                withdraw = ()
                why.append(f"tier {tier_name} planned no rule: the rules already in place stay")
        if withdraw:
            why.append(f"withdraw {len(withdraw)} rule(s) no longer wanted")
        return Decision(
            self.key, status, tier_name, rules, withdraw, tuple(why), c.policy.settings.dry_run
        )

    def steady(self, cur: int) -> Decision:
        """Keep tier ``cur``; re-announce its rules when their TTL is about to run out."""
        ts = self.ts
        if ts.ttl > 0 and ts.last_emit is not None:
            margin = min(30.0, ts.ttl / 5)
            if self.now >= ts.last_emit + ts.ttl - margin:
                left = ts.last_emit + ts.ttl - self.now
                self.why.append(f"rules expire in {left:.0f} s: refreshing")
                return self.move("refresh", cur)
        return self.done("steady", self.c.tiers[cur].name)


def evaluate(signal: Signal, policy: Policy, state: EngineState, now: float) -> Decision:
    """Decide what to do about ``signal`` at time ``now`` (seconds, monotonic or epoch)."""
    c = compile_policy(policy)
    esc = policy.escalation
    target = signal.target_ip
    value = int(target)
    key = c.key_of(target, value)
    ts = state.target(key)
    run = _Run(c, ts, signal, now, [], key)
    if policy.settings.dry_run:
        run.why.append("dry run: rules are logged, not announced")

    entry = policy.allowlist.match(target.version, value, signal.node)
    if entry is not None:
        run.why.append(f"target {key} is allowlisted ({c.allow_text(entry)}): never mitigated")
        if entry.scope == "node":
            # Another node may see the same target unlisted: leave its rules alone.
            return run.done("allowlisted", ts.tier)
        withdraw = tuple(ts.active)
        if withdraw:
            run.why.append(f"withdraw {len(withdraw)} rule(s) planned before it was allowlisted")
        ts.end_episode()
        return run.done("allowlisted", None, withdraw)

    if ts.last_seen is not None and now - ts.last_seen > esc.episode_timeout_seconds:
        if ts.tier is not None or ts.attack_since is not None:
            run.why.append(f"previous attack ended (no signal for {now - ts.last_seen:.0f} s)")
        stale = list(ts.active)
        ts.end_episode()
        ts.active = stale  # withdrawn below unless a tier is chosen again
    ts.last_seen = now

    ladder, source = _thresholds(run, state, value)
    run.why.append(source)
    raw = _crossed(ladder, signal.bps, signal.pps)
    cur = c.index.get(ts.tier) if ts.tier is not None else None
    if ts.tier is not None and cur is None:
        run.why.append(f"tier {ts.tier!r} no longer exists in the policy: re-planning")
        ts.tier = None
    if cur is None:
        return _start(run, ladder, raw)
    return _ongoing(run, ladder, raw, cur)


def _start(run: _Run, ladder: Ladder, raw: int | None) -> Decision:
    """No tier in force: start (after hold-down and cooldown) or stay quiet."""
    ts, signal, now = run.ts, run.signal, run.now
    if raw is None:
        first = ladder[0] if ladder else (None, None)
        run.why.append(
            f"{_fmt(signal.bps, 'bps')} / {_fmt(signal.pps, 'pps')} is below every tier "
            f"(lowest: {_fmt(first[0], 'bps')} / {_fmt(first[1], 'pps')})"
        )
        ts.attack_since = None
        if ts.active:
            return run.move("end", None)
        return run.done("below", None)
    run.why.append(_why_tier(run.c, ladder, raw, signal))
    if ts.attack_since is None:
        ts.attack_since = now
    lasted = now - ts.attack_since
    hold = run.c.policy.escalation.hold_down_seconds
    if lasted < hold:
        run.why.append(
            f"hold-down: attack seen for {lasted:.0f} s of {hold} s before the first action"
        )
        return run.done("held", None)
    left = run.cooldown_left()
    if left > 0:
        run.why.append(f"cooldown: the last change for this target was recent, {left:.0f} s left")
        return run.done("cooldown", None)
    return run.move("announce", raw)


def _ongoing(run: _Run, ladder: Ladder, raw: int | None, cur: int) -> Decision:
    """A tier is in force: escalate, hold it, or de-escalate with hysteresis."""
    c, ts, signal, now = run.c, run.ts, run.signal, run.now
    esc = c.policy.escalation
    name = c.tiers[cur].name
    if raw is not None and raw > cur:
        run.why.append(_why_tier(c, ladder, raw, signal) + f" (up from {name})")
        if run.cooldown_left() > 0 and not esc.escalate_during_cooldown:
            run.why.append("cooldown: escalation waits (escalate_during_cooldown is off)")
            return run.done("cooldown", name)
        return run.move("escalate", raw)
    keep = 1 - esc.hysteresis
    # At the current tier's own threshold the hysteresis band holds it for sure.
    level = raw if raw == cur else _crossed(ladder, signal.bps, signal.pps, keep)
    traffic = f"{_fmt(signal.bps, 'bps')} / {_fmt(signal.pps, 'pps')}"
    if level is not None and level >= cur:
        ts.below_since = None
        run.why.append(f"{c.holds[cur]}{traffic} is above {c.keep_text} of its threshold")
        return run.steady(cur)
    if ts.below_since is None:
        ts.below_since = now
    below = now - ts.below_since
    to = "no tier" if level is None else f"tier {c.tiers[level].name}"
    if below < esc.deescalate_after_seconds:
        run.why.append(
            f"traffic {traffic} below {keep:.0%} of tier {name} for {below:.0f} s; "
            f"de-escalation to {to} after {esc.deescalate_after_seconds} s"
        )
        return run.steady(cur)
    left = run.cooldown_left()
    if left > 0:
        run.why.append(f"de-escalation to {to} waits for cooldown ({left:.0f} s left)")
        return run.steady(cur)
    run.why.append(
        f"traffic below {keep:.0%} of tier {name} for {below:.0f} s: de-escalating to {to}"
    )
    if level is None:
        return run.move("end", None)
    return run.move("deescalate", level)
