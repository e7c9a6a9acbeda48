"""What every scrubbing integration shares: targets, units, the contract loop, status.

A scrubbing integration turns a :class:`~policies.intents.ScrubbingIntent` ("divert
this prefix") into provider calls. The operator configures **targets**: prefixes the
provider can act on, each with the provider's own object ids (a Cloudflare BYOIP prefix
id, an OVH IP block, an AWS resource ARN, a firewall id, instances). An intent's prefix
must lie inside one configured target (the most specific one is used); anything else is
refused, never guessed.

A target is acted on through **units**: the smallest things the provider switches on
or off (the Cloudflare prefix advertisement, one OVH address on permanent mitigation,
one Vultr instance's firewall group). ``announce`` enables every unit of the intent,
``withdraw`` disables the units no other announced intent still needs, ``active()``
reads the units back from the provider.

Read-back keys: a unit that the provider says is diverting stands for the scrubbing
intent of the unit's own prefix (the target prefix, or the single address for OVH); an
intent announced by this process whose units are all diverting is reported too. After a
restart Sluice therefore sees the target prefixes as diverting at once; narrower intents
inside a target are re-announced by reconciliation, which is idempotent at the provider
and restores the reference count that protects them on withdraw.

:meth:`ScrubbingAdapter.status` gives what ``GET /api/v1/scrubbing/{id}/status`` shows:
diverting or not, connection health, provider details and one line per unit.
"""

from __future__ import annotations

import abc
import ipaddress
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, field_validator

from adapters.base import (
    AdapterConfig,
    Capability,
    Health,
    Outcome,
    RuleRef,
    require_capability,
)
from adapters.http import HttpClient, HttpSettings, failed
from policies.errors import AdapterError, AdapterRefused, CapabilityMissing
from policies.intents import ScrubbingIntent, build_intent, intent_key

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_prefix(value: object) -> IPNetwork:
    """A network in canonical form; host bits set are an error (``192.0.2.1/24``)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("a prefix such as 192.0.2.0/24 is required")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid prefix ({exc})") from None


class Target(BaseModel):
    """One configured prefix the provider can act on; providers add their ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prefix: IPNetwork

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix(cls, v: object) -> IPNetwork:
        return parse_prefix(v)


T = TypeVar("T", bound=Target)


def disjoint(targets: Sequence[T]) -> Sequence[T]:
    """Validator helper: at least one target and no two overlapping prefixes."""
    if not targets:
        raise ValueError("at least one target prefix is required")
    seen: list[IPNetwork] = []
    for t in targets:
        for other in seen:
            if t.prefix.version == other.version and t.prefix.overlaps(other):
                raise ValueError(f"targets {other} and {t.prefix} overlap")
        seen.append(t.prefix)
    return targets


def _disjoint_tuple(targets: Sequence[T]) -> tuple[T, ...]:
    return tuple(disjoint(targets))


# A settings field of target prefixes: at least one, none overlapping (``Targets[ZoneTarget]``).
Targets = Annotated[tuple[T, ...], AfterValidator(_disjoint_tuple)]


def covering(targets: Iterable[T], prefix: IPNetwork, *, what: str) -> T:
    """The most specific target containing ``prefix``, or a refusal naming the choices."""
    best: T | None = None
    for t in targets:
        inside = t.prefix.version == prefix.version and prefix.subnet_of(t.prefix)  # type: ignore[arg-type]
        if inside and (best is None or t.prefix.prefixlen > best.prefix.prefixlen):
            best = t
    if best is None:
        known = ", ".join(str(t.prefix) for t in targets) or "none"
        raise AdapterRefused(
            f"{what}: {prefix} is not inside any configured target prefix (configured: {known})",
            code="scrubbing_prefix_not_configured",
            field="target_ip",
        )
    return best


@dataclass(frozen=True, slots=True)
class Unit:
    """One thing the provider switches: ``uid`` is the provider's id for it."""

    uid: str
    prefix: IPNetwork
    label: str = ""


@dataclass(frozen=True, slots=True)
class UnitState:
    unit: Unit
    diverting: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.unit.uid,
            "prefix": str(self.unit.prefix),
            "label": self.unit.label,
            "diverting": self.diverting,
            **dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class ScrubbingStatus:
    """The status of one integration as ``GET /scrubbing/{id}/status`` reports it."""

    name: str
    integration: str
    mechanism: str
    diverting: bool | None  # None: the provider could not be read
    health: Health
    provider: Mapping[str, Any]
    units: Sequence[UnitState] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "integration": self.integration,
            "mechanism": self.mechanism,
            "diverting": self.diverting,
            "connection": self.health.to_dict(),
            "provider": dict(self.provider),
            "targets": [u.to_dict() for u in self.units],
            "error": self.error,
        }


def scrubbing_key(prefix: IPNetwork) -> str:
    return intent_key(build_intent({"kind": "scrubbing", "prefix": str(prefix)}))


def default_endpoint(config: AdapterConfig, default: str) -> dict[str, Any]:
    """``endpoint=default`` for validate_settings when the operator gave none."""
    if config.endpoint or "endpoint" in config.config:
        return {}
    return {"endpoint": default}


S = TypeVar("S", bound=HttpSettings)


class ScrubbingAdapter(abc.ABC, Generic[S]):
    """The contract loop over units; a provider implements the five hooks below."""

    adapter_type: ClassVar[str]
    supported: ClassVar[frozenset[Capability]] = frozenset({Capability.SCRUBBING})
    mechanism: ClassVar[str]  # one line: what "diverting" means at this provider

    def __init__(
        self, name: str, settings: S, capabilities: frozenset[Capability], http: HttpClient
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities
        self.http = http
        self._held: dict[str, tuple[Unit, ...]] = {}  # announced here: intent key -> units

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.settings.endpoint})"

    @property
    def label(self) -> str:
        return f"{self.adapter_type} integration {self.name!r}"

    # ------------------------------------------------------------ provider hooks

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: AdapterConfig) -> Self:
        """Validate the settings and build the integration (see adapters.base)."""

    @abc.abstractmethod
    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        """The units that divert ``intent``'s prefix; refuse unconfigured prefixes."""

    @abc.abstractmethod
    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        """Switch ``unit`` on (idempotent); return details for the outcome."""

    @abc.abstractmethod
    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        """Switch ``unit`` off (idempotent: absent is fine)."""

    @abc.abstractmethod
    async def read(self) -> list[UnitState]:
        """What the provider says about every configured unit now."""

    @abc.abstractmethod
    async def probe(self) -> str:
        """One authenticated, read-only call; return a short description of who we are."""

    def provider_details(self) -> dict[str, Any]:
        """Non-secret settings shown in status (endpoint and provider ids)."""
        return {"endpoint": self.settings.endpoint}

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return [await self._one(ref, add=True) for ref in rules]

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return [await self._one(ref, add=False) for ref in rules]

    async def _one(self, ref: RuleRef, *, add: bool) -> Outcome:
        try:
            require_capability(self, ref.intent)
            if isinstance(ref.intent, ScrubbingIntent):
                return await self._scrub(ref, ref.intent, add=add)
            return await self.apply_other(ref, add=add)
        except AdapterError as err:
            return failed(ref, err)

    async def apply_other(self, ref: RuleRef, *, add: bool) -> Outcome:
        """Intents other than scrubbing (the Cloudflare adapter carries FlowSpec)."""
        raise CapabilityMissing(
            f"{self.label} carries only scrubbing intents, not {ref.intent.kind}",
            field="intent_type",
        )

    async def _scrub(self, ref: RuleRef, intent: ScrubbingIntent, *, add: bool) -> Outcome:
        units = tuple(self.units(intent))
        changed: list[dict[str, Any]] = []
        if add:
            for unit in units:
                changed.append({"id": unit.uid, **dict(await self.enable(unit))})
            self._held[ref.key] = units
            return Outcome.success(ref, mechanism=self.mechanism, units=changed)
        self._held.pop(ref.key, None)
        still = {u for other in self._held.values() for u in other}
        kept = [u.uid for u in units if u in still]
        for unit in units:
            if unit not in still:
                changed.append({"id": unit.uid, **dict(await self.disable(unit))})
        return Outcome.success(ref, mechanism=self.mechanism, units=changed, kept_for_others=kept)

    async def active(self) -> frozenset[str] | None:
        states = await self.read()
        return frozenset(self._keys(states))

    def _keys(self, states: Sequence[UnitState]) -> set[str]:
        on = {s.unit for s in states if s.diverting}
        by_prefix: dict[IPNetwork, list[bool]] = {}
        for s in states:
            by_prefix.setdefault(s.unit.prefix, []).append(s.diverting)
        keys = {scrubbing_key(p) for p, flags in by_prefix.items() if all(flags)}
        keys.update(k for k, units in self._held.items() if units and set(units) <= on)
        return keys

    async def check(self) -> Health:
        started = time.monotonic()
        try:
            detail = await self.probe()
        except AdapterError as err:
            return Health(False, (time.monotonic() - started) * 1000, str(err))
        return Health(True, (time.monotonic() - started) * 1000, detail)

    async def diverting(self) -> bool:
        """Whether the provider diverts any unit now (one read; AdapterError when unreadable)."""
        return any(s.diverting for s in await self.read())

    async def status(self) -> ScrubbingStatus:
        """Diverting or not (from the provider), connection health, provider details."""
        health = await self.check()
        states: list[UnitState] = []
        error: str | None = None
        diverting: bool | None = None
        try:
            states = await self.read()
            diverting = any(s.diverting for s in states)
        except AdapterError as err:
            error = str(err)
        return ScrubbingStatus(
            name=self.name,
            integration=self.adapter_type,
            mechanism=self.mechanism,
            diverting=diverting,
            health=health,
            provider=self.provider_details(),
            units=states,
            error=error,
        )

    async def close(self) -> None:
        await self.http.close()


async def call_json(
    http: HttpClient,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    missing_ok: bool = False,
) -> Any:
    """One JSON request: the parsed body, None for an empty answer (or a 404 when
    ``missing_ok``); 4xx/5xx/timeouts/non-JSON raise the HTTP helper's errors."""
    resp = await http.send(method, path, json=json, headers=headers)
    if missing_ok and resp.status_code == 404:
        return None
    http.check(resp, f"{method} {path}")
    if not resp.content:
        return None
    return http.json(resp, f"{method} {path}")


def field_of(http: HttpClient, body: Any, what: str, *keys: str) -> Any:
    """``body[k1][k2]...`` or a retryable bad-response error naming what is missing."""
    cur = body
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise http.bad_response(what, f"the answer has no {'.'.join(keys)}")
        cur = cur[k]
    return cur


class BearerSettings(HttpSettings):
    """Settings of a provider whose API takes ``Authorization: Bearer <auth_token>``."""

    auth_token: SecretStr


B = TypeVar("B", bound=BearerSettings)


class BearerScrubbingAdapter(ScrubbingAdapter[B]):
    """An integration authenticated with a bearer token (DigitalOcean, Vultr, Linode)."""

    def __init__(
        self,
        name: str,
        settings: B,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        token = settings.auth_token.get_secret_value()
        http = HttpClient(
            settings,
            label=f"{self.adapter_type} integration {name!r}",
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
        )
        super().__init__(name, settings, capabilities, http)
        http.add_secret(token)
