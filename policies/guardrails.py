"""Guardrails: refusals that hold for every rule, whatever its origin.

The checks here are pure (intent + settings in, refusal out); the quotas that need the
store's counts (active rules, new rules per minute, FlowSpec budget per adapter) are
checked by the orchestrator against the same :class:`Guardrails` settings.

Each refusal has its own error code:

=====================  ========================================================
``default_route``      0.0.0.0/0 or ::/0, never allowed whatever the settings
``prefix_too_short``   shorter than the minimum for the intent and family
``protected_prefix``   covers or is covered by a protected prefix
``allowlisted``        blackholes/diverts an allowlisted address, or uses one as a
                       FlowSpec source
``max_active_rules``   the store already holds the maximum of live rules
``rate_limited``       too many new rules in the sliding minute
``flowspec_budget``    the adapter already carries its FlowSpec budget
=====================  ========================================================
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from policies.errors import GuardrailViolation
from policies.intents import AnyIntent, FlowSpecIntent, IPNetwork, parse_prefix
from policies.prefixes import PrefixSet


class MinPrefix(BaseModel):
    """The shortest prefix length allowed, per family."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ipv4: Annotated[int, Field(ge=1, le=32)]
    ipv6: Annotated[int, Field(ge=1, le=128)]

    def for_version(self, version: int) -> int:
        return self.ipv4 if version == 4 else self.ipv6


def _serialize_prefix(v: IPNetwork) -> str:
    return str(v)


PrefixField = Annotated[
    IPNetwork, BeforeValidator(parse_prefix), PlainSerializer(_serialize_prefix)
]


class Guardrails(BaseModel):
    """Limits a careful operator starts from.

    Blackholes and scrubbing diversions no shorter than /24 (IPv4) or /48 (IPv6): the
    shortest prefixes commonly accepted across the internet, and anything shorter usually
    means a typo. FlowSpec destinations likewise. Rule counts sized for a mid-size network;
    the FlowSpec budget stays well under the TCAM of common edge routers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    min_prefix_blackhole: MinPrefix = MinPrefix(ipv4=24, ipv6=48)
    min_prefix_flowspec: MinPrefix = MinPrefix(ipv4=24, ipv6=48)
    min_prefix_scrubbing: MinPrefix = MinPrefix(ipv4=24, ipv6=48)
    protected_prefixes: tuple[PrefixField, ...] = ()
    max_active_rules: Annotated[int, Field(ge=1)] = 10_000
    max_new_rules_per_minute: Annotated[int, Field(ge=1)] = 1_000
    flowspec_budget_per_adapter: Annotated[int, Field(ge=1)] = 2_000

    def min_prefix(self, kind: str) -> MinPrefix:
        return {
            "blackhole": self.min_prefix_blackhole,
            "flowspec": self.min_prefix_flowspec,
            "scrubbing": self.min_prefix_scrubbing,
        }[kind]


class GuardrailChecker:
    """Checks intents against guardrails; build once per policy, reuse for every rule."""

    def __init__(self, guardrails: Guardrails, allowlist: PrefixSet | None = None) -> None:
        self.guardrails = guardrails
        self._protected = PrefixSet(guardrails.protected_prefixes)
        self._allow = allowlist or PrefixSet()

    def check(self, intent: AnyIntent) -> None:
        """Raise :class:`GuardrailViolation` with a specific code, or return."""
        target = intent.target
        if target.prefixlen == 0:
            raise GuardrailViolation(
                f"{target} would cover the whole IPv{target.version} internet; never allowed",
                code="default_route",
                field="target_ip",
            )
        minimum = self.guardrails.min_prefix(intent.kind).for_version(target.version)
        if target.prefixlen < minimum:
            raise GuardrailViolation(
                f"{intent.kind} prefix {target} is shorter than the minimum "
                f"/{minimum} for IPv{target.version}",
                code="prefix_too_short",
                field="target_ip",
            )
        self._check_protected(target, "target_ip")
        if isinstance(intent, FlowSpecIntent):
            if intent.source is not None:
                if intent.source.prefixlen == 0:
                    raise GuardrailViolation(
                        "a FlowSpec source of /0 is the same as no source; leave it out",
                        code="default_route",
                        field="source",
                    )
                self._check_protected(intent.source, "source")
                if self._allow.overlaps(intent.source):
                    hits = ", ".join(str(p) for p in self._allow.overlapping(intent.source)[:3])
                    raise GuardrailViolation(
                        f"FlowSpec source {intent.source} covers allowlisted {hits}",
                        code="allowlisted",
                        field="source",
                    )
        elif self._allow.overlaps(target):
            hits = ", ".join(str(p) for p in self._allow.overlapping(target)[:3])
            raise GuardrailViolation(
                f"{intent.kind} of {target} would touch allowlisted {hits}",
                code="allowlisted",
                field="target_ip",
            )

    def _check_protected(self, net: IPNetwork, field: str) -> None:
        if self._protected.overlaps(net):
            hits = ", ".join(str(p) for p in self._protected.overlapping(net)[:3])
            raise GuardrailViolation(
                f"{net} overlaps protected prefix {hits}", code="protected_prefix", field=field
            )
