"""The adapter contract: a handful of async methods and a declared capability set.

An adapter carries intents to one backend (a BGP speaker, an appliance, a cloud API, a
webhook). Rendering an intent into the backend's language is a pure function kept in
the adapter's own module; the class below it does the I/O.

Contract (see :class:`Adapter`):

* ``announce(rules)`` / ``withdraw(rules)``: batched and idempotent; one
  :class:`Outcome` per rule, in order. An outcome says whether the backend took it and,
  if not, whether trying again later can help.
* ``active()``: the keys of the intents the backend holds now, or ``None`` when the
  backend cannot be read back (reconciliation then re-sends after a session reset).
* ``check()``: connectivity, auth and latency for "Test Adapter".
* ``close()``: release connections.

Adapters are created by :meth:`Registry.create` from an :class:`AdapterConfig`; the
adapter class validates its typed settings model there, so a bad endpoint fails at
creation. Built-in adapter types are declared in the ``sluice.adapters`` entry-point
group and looked up by name.

What an adapter may touch on the host (programs, files, sockets, outbound addresses) is
not an adapter setting: the registry hands every config the service's
:class:`~adapters.access.HostAccess`, settings are validated under it (paths outside the
allowed directories and settings naming a program are refused, naming the field), and
the validated settings keep it (:attr:`AdapterSettings.access`) for checks at use time.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from adapters.access import DEFAULT_ACCESS, PROGRAM_SETTINGS, HostAccess, PathRefused, access_of
from policies.errors import AdapterConfigInvalid, AdapterRefused, CapabilityMissing
from policies.intents import AnyIntent, intent_key

ENTRY_POINT_GROUP = "sluice.adapters"


class Capability(enum.StrEnum):
    BLACKHOLE = "blackhole"
    FLOWSPEC = "flowspec"
    SCRUBBING = "scrubbing"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """What an adapter is handed: the rule's id, its intent and the intent's key.

    ``context`` carries what the orchestrator knows about the rule, for adapters that
    forward it (webhooks, appliances): ``event`` (announce, withdraw, expire, extend),
    ``reason``, ``origin`` (manual, policy, runbook), ``ttl``, ``expires_at`` (ISO 8601 or
    None), ``explanation`` (list of strings), ``incident`` (dict or None), and for
    attack-aware backends ``bps``/``pps`` baselines when a signal supplied them.
    """

    rule_id: int
    intent: AnyIntent
    key: str = ""
    context: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", intent_key(self.intent))


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one rule in a batch.

    ``ok`` False with ``retryable`` True means "the backend could not be reached or was
    busy; the same request may succeed later". ``retryable`` False means the backend
    refused this rule and repeating it will not help.
    """

    rule_id: int
    ok: bool
    error: str | None = None
    retryable: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, ref: RuleRef, **detail: Any) -> Outcome:
        return cls(ref.rule_id, True, detail=detail)

    @classmethod
    def failure(cls, ref: RuleRef, error: str, *, retryable: bool) -> Outcome:
        return cls(ref.rule_id, False, error=error, retryable=retryable)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``check()`` found: reachable and authenticated, how fast, and session states."""

    ok: bool
    latency_ms: float | None
    detail: str = ""
    sessions: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "detail": self.detail,
            "sessions": dict(self.sessions),
        }


class AdapterConfig(BaseModel):
    """How an operator declares an adapter (API body or policy file).

    ``access`` is not the operator's to declare: it is what the service allows on its
    host, set by :meth:`Registry.create` (never read from a body or a file; a JSON value
    cannot be a :class:`HostAccess`). Without a registry it is the strict default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    name: str
    adapter_type: str
    endpoint: str = ""
    auth_token: SecretStr | None = None
    config: dict[str, Any] = {}
    capabilities: tuple[Capability, ...] | None = None
    access: HostAccess = Field(default_factory=lambda: DEFAULT_ACCESS, exclude=True, repr=False)


class AdapterSettings(BaseModel):
    """Base for each adapter's typed settings; unknown keys are errors.

    :attr:`access` is the :class:`HostAccess` the settings were validated under.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _access: HostAccess = PrivateAttr(default=DEFAULT_ACCESS)

    @model_validator(mode="after")
    def _keep_access(self, info: ValidationInfo) -> AdapterSettings:
        self._access = access_of(info)
        return self

    @property
    def access(self) -> HostAccess:
        return self._access

    def local(self, path: Path, kind: str = "path") -> Path:
        """``path`` checked again just before use (a symlink may have been swapped in)."""
        try:
            return self._access.check_path(path, kind)
        except PathRefused as exc:
            raise AdapterRefused(str(exc), code="path_not_allowed") from None


@runtime_checkable
class Adapter(Protocol):
    """What the orchestrator needs from every backend.

    A BGP speaker also sets ``speaks_bgp = True`` and reports its sessions in
    :meth:`check`: the dispatcher does not call a rule active while no session is up.
    """

    adapter_type: ClassVar[str]
    supported: ClassVar[frozenset[Capability]]
    name: str
    capabilities: frozenset[Capability]

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]: ...

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]: ...

    async def active(self) -> frozenset[str] | None: ...

    async def check(self) -> Health: ...

    async def close(self) -> None: ...


class AdapterClass(Protocol):
    """The class side of an adapter: how it is built from a config."""

    adapter_type: ClassVar[str]
    supported: ClassVar[frozenset[Capability]]

    @classmethod
    def from_config(cls, config: AdapterConfig) -> Adapter: ...


S = TypeVar("S", bound=AdapterSettings)


def validate_settings(model: type[S], config: AdapterConfig, **extra: Any) -> S:
    """Build ``model`` from endpoint, auth_token and config; errors name the field.

    Validated under ``config.access``: a setting naming a program is refused (programs
    come from the service configuration), and so is a path outside the allowed
    directories (code ``path_not_allowed``).
    """
    for key in sorted(set(config.config) & PROGRAM_SETTINGS):
        where = f"config.{key}"
        raise AdapterConfigInvalid(
            f"{config.adapter_type} adapter {config.name!r}: {where}: programs are not "
            f"adapter settings; the service runs the {key} its own configuration names "
            f"(SLUICE_{key.upper()}={config.access.program(key)})",
            field=where,
            code="setting_not_allowed",
        )
    data: dict[str, Any] = {**config.config, **extra}
    fields = model.model_fields
    if "endpoint" in fields and "endpoint" not in data:
        data["endpoint"] = config.endpoint
    if "auth_token" in fields and config.auth_token is not None:
        data["auth_token"] = config.auth_token
    try:
        return model.model_validate(data, context={"access": config.access})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        where = loc if loc in ("endpoint", "auth_token") else f"config.{loc}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        cause = err.get("ctx", {}).get("error")
        code = "path_not_allowed" if isinstance(cause, PathRefused) else None
        raise AdapterConfigInvalid(
            f"{config.adapter_type} adapter {config.name!r}: {where}: {msg}",
            field=where,
            code=code,
        ) from None


def resolve_capabilities(
    cls: type[Any] | AdapterClass, config: AdapterConfig
) -> frozenset[Capability]:
    """The operator may narrow an adapter's capabilities, never widen them."""
    supported: frozenset[Capability] = cls.supported
    if config.capabilities is None:
        return supported
    asked = frozenset(config.capabilities)
    extra = asked - supported
    if extra:
        raise AdapterConfigInvalid(
            f"{config.adapter_type} adapter cannot carry {', '.join(sorted(extra))} "
            f"(it supports {', '.join(sorted(supported))})",
            field="capabilities",
        )
    return asked


def require_capability(adapter: Adapter, intent: AnyIntent) -> None:
    """Refuse, with a clear error, an intent the adapter cannot carry."""
    if Capability(intent.kind) not in adapter.capabilities:
        raise CapabilityMissing(
            f"adapter {adapter.name!r} ({adapter.adapter_type}) cannot carry {intent.kind} "
            f"intents; it carries {', '.join(sorted(adapter.capabilities)) or 'nothing'}",
            field="intent_type",
        )


# ---------------------------------------------------------------- registry


class Registry:
    """Adapter types by name, from the ``sluice.adapters`` entry points (plus extras).

    ``access``: what adapters it creates may touch on the host (the service passes its
    own); every config is created under it, whatever the config says.
    """

    def __init__(
        self,
        extra: Mapping[str, AdapterClass] | None = None,
        *,
        access: HostAccess | None = None,
    ) -> None:
        self.access = access
        self._points: dict[str, Any] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._points and self._points[ep.name].value != ep.value:
                raise AdapterConfigInvalid(
                    f"adapter type {ep.name!r} is declared twice "
                    f"({self._points[ep.name].value} and {ep.value})"
                )
            self._points[ep.name] = ep
        self._loaded: dict[str, AdapterClass] = {}
        for name, cls in (extra or {}).items():
            if name in self._points:
                raise AdapterConfigInvalid(f"adapter type {name!r} is already registered")
            self._loaded[name] = cls

    def names(self) -> list[str]:
        return sorted(set(self._points) | set(self._loaded))

    def get(self, name: str) -> AdapterClass:
        if name in self._loaded:
            return self._loaded[name]
        ep = self._points.get(name)
        if ep is None:
            raise AdapterConfigInvalid(
                f"unknown adapter_type {name!r} (known: {', '.join(self.names())})",
                code="unknown_adapter_type",
                field="adapter_type",
            )
        cls: AdapterClass = ep.load()
        if cls.adapter_type != name:
            raise AdapterConfigInvalid(
                f"entry point {name!r} loads {ep.value}, whose adapter_type is {cls.adapter_type!r}"
            )
        self._loaded[name] = cls
        return cls

    def create(self, config: AdapterConfig) -> Adapter:
        if self.access is not None:
            config = config.model_copy(update={"access": self.access})
        return self.get(config.adapter_type).from_config(config)


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0
