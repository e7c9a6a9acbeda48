"""Planning a tier's rules for one signal, and the per-policy caches it uses.

:class:`Compiled` holds what is built once per policy (tier ladder, guardrail checker,
geo database and aggregates, FlowSpec templates, texts); :func:`rules_for` turns a tier
and a signal into :class:`PlannedRule` s: the attack signature as FlowSpec match for the
attacked /32 or /128, RTBH, scrubbing, per-source and geo-lockdown FlowSpec sources
(never an allowlisted one), each checked against the guardrails (a refused rule is
dropped and the reason added to the explanation).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from pydantic import ValidationError

from policies.errors import GuardrailViolation
from policies.geo import Aggregate, GeoDB, aggregate, complement
from policies.guardrails import GuardrailChecker
from policies.intents import (
    AnyIntent,
    BlackholeIntent,
    Discard,
    FlowSpecIntent,
    IPAddress,
    IPNetwork,
    RateLimit,
    ScrubbingIntent,
    address_text,
    canonical,
    intent_to_dict,
    key_of,
)
from policies.netindex import BITS, span, to_network
from policies.schema import Policy
from policies.signals import Signal, signature
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
    text: str = field(default="", compare=False)  # canonical(intent), filled in if empty

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", canonical(self.intent))
        if not self.key:
            object.__setattr__(self, "key", key_of(self.text))

    def to_dict(self) -> dict[str, Any]:
        return {
            "intent": intent_to_dict(self.intent),
            "text": self.text,
            "key": self.key,
            "adapter": self.adapter,
            "ttl": self.ttl,
            "reason": self.reason,
        }


def fmt_rate(v: float | None, unit: str) -> str:
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


_GENERATIONS = itertools.count(1)


class Compiled:
    """Per-policy indexes and caches, built once and reused for every signal."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # Tells engine state which compiled policy a memoised lookup came from.
        self.generation = next(_GENERATIONS)
        self.tiers: list[Tier] = list(policy.escalation.tiers)
        self.index = {t.name: i for i, t in enumerate(self.tiers)}
        self.ladder: Ladder = tuple((t.bps, t.pps) for t in self.tiers)
        self._checkers: dict[str | None, GuardrailChecker] = {}
        self._geo: GeoDB | None = None
        self._geo_cache: dict[tuple[Any, ...], Aggregate] = {}
        # Plain attributes for the hot path (pydantic attribute access is slower).
        self.dry_run = policy.settings.dry_run
        self.cooldown = policy.settings.cooldown_seconds
        self.episode_timeout = policy.escalation.episode_timeout_seconds
        self.thresholds = policy.thresholds
        self.allowlist = policy.allowlist
        self.baseline = policy.baseline
        self.dynamic = policy.baseline.mode == "dynamic" and bool(self.tiers)
        self.keep_text = f"{1 - policy.escalation.hysteresis:.0%}"
        self.holds = [f"tier {t.name} holds: traffic " for t in self.tiers]
        self._flow_templates: dict[tuple[Any, ...], FlowSpecIntent] = {}
        self._prefix_templates: dict[tuple[Any, ...], BlackholeIntent | ScrubbingIntent | None] = {}
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

    def prefixed(
        self, spec: IntentSpec, net: IPNetwork, data: dict[str, Any]
    ) -> BlackholeIntent | ScrubbingIntent | None:
        """A blackhole or scrubbing intent for ``net`` (already a valid network), or None
        when validation of the spec's other fields fails (the caller then builds it the
        slow way, for the error message about the real prefix).

        Validated once per (spec, family, prefix length) on a stand-in prefix, then copied
        with the real one, as :meth:`flowspec` does: what that validation checks (the
        communities, the next hop's family against the prefix's) does not depend on the
        prefix beyond its family and length.
        """
        key = (id(spec), net.version, net.prefixlen)
        if key not in self._prefix_templates:
            stand_in = (IPv4Network if net.version == 4 else IPv6Network)((0, net.prefixlen))
            template: BlackholeIntent | ScrubbingIntent | None
            try:
                if spec.type == "blackhole":
                    template = BlackholeIntent(**{**data, "prefix": stand_in})
                else:
                    template = ScrubbingIntent(prefix=stand_in)
            except ValidationError:
                template = None
            if len(self._prefix_templates) > 10_000:
                self._prefix_templates.clear()
            self._prefix_templates[key] = template
        found = self._prefix_templates[key]
        return None if found is None else found.model_copy(update={"prefix": net})

    def key_of(self, address: IPAddress) -> str:
        """The engine's key for a target: its text (:func:`~policies.intents.address_text`)."""
        return address_text(address)

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

    def prepare(self) -> None:
        """Build now what the first decisions would otherwise build on the hot path.

        The guardrail checker's allowlist index, and with geo lockdown the MMDB's country
        ranges (a full GeoLite2 file takes seconds to walk). Call after loading a policy.
        """
        self.checker()
        geo = self.policy.geo_lockdown
        if geo is not None and geo.enabled:
            self.geo().ranges()

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


def _host(signal: Signal) -> str:
    t = signal.target_ip
    return f"{t}/{BITS[t.version]}"


def _covering(signal: Signal, spec: IntentSpec) -> IPNetwork:
    t = signal.target_ip
    plen = spec.prefix_length(t.version)
    value = (int(t) >> (BITS[t.version] - plen)) << (BITS[t.version] - plen)
    return (IPv4Network if t.version == 4 else IPv6Network)((value, plen))


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
            net = _covering(signal, spec)
            data: dict[str, Any] = {}
            if spec.communities is not None:
                data["communities"] = spec.communities
            if spec.large_communities:
                data["large_communities"] = spec.large_communities
            if spec.next_hop is not None:
                data["next_hop"] = spec.next_hop
            fast = c.prefixed(spec, net, data)
            if fast is not None:
                out.append((fast, f"tier {tier.name}: blackhole"))
                continue
            try:
                out.append((BlackholeIntent(**data, prefix=net), f"tier {tier.name}: blackhole"))
            except ValidationError as exc:  # e.g. an IPv4 next hop for an IPv6 target
                msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                why.append(f"tier {tier.name}: no blackhole for {net}: {msg}")
            continue
        if spec.type == "scrubbing":
            net = _covering(signal, spec)
            found = c.prefixed(spec, net, {}) or ScrubbingIntent(prefix=net)
            out.append((found, f"tier {tier.name}: divert to scrubbing"))
            continue
        action = (
            Discard()
            if spec.type == "flowspec_drop"
            else RateLimit(bytes_per_second=(spec.rate or 0) / 8)
        )
        verb = (
            "drop"
            if spec.type == "flowspec_drop"
            else f"rate-limit to {fmt_rate(spec.rate, 'bps')}"
        )
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


def rules_for(
    c: Compiled, tier_index: int, signal: Signal, why: list[str]
) -> tuple[PlannedRule, ...]:
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
    if planned and not tier.adapters:
        why.append(f"tier {tier.name} names no adapter: nothing is announced")
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
        text = canonical(intent)
        key = key_of(text)
        for adapter in adapters:
            if (key, adapter) in seen:
                continue
            seen.add((key, adapter))
            rules.append(PlannedRule(intent, adapter, rule_ttl, reason, key, text))
    return tuple(rules)
