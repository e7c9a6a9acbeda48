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
* ``check()``: connectivity, auth and latency for "Test Adapter" (:class:`Health`).
* ``close()``: release connections; calling it again is harmless.

Extras are declared as protocols, checked with ``isinstance`` against the protocol,
never against a concrete class or by probing attributes:

* :class:`BgpSpeaker`: an adapter that hands routes to BGP sessions (GoBGP, ExaBGP,
  BIRD 2, FRR). It reports its sessions as :class:`SessionState` values keyed by peer
  address (``session_states()``) and streams their changes (``watch_sessions()``), so
  the orchestrator knows whether an accepted route is on the wire and can reconcile the
  adapter as soon as a session comes up.
* :class:`Diverting`: a scrubbing integration that reads back from its provider whether
  traffic is diverted (``status()``), with a one-line ``mechanism``.

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

import asyncio
import enum
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
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
from adapters.speakers import EndpointRefused
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


class SessionState(enum.StrEnum):
    """A BGP session's state, in RFC 4271's finite-state-machine words (as GoBGP reports them).

    ``UNKNOWN`` means the state could not be read: the speaker is not answering, or it
    reported a word outside the FSM (FRR's ``Clearing``, BIRD's ``Close``...).
    """

    IDLE = "idle"
    CONNECT = "connect"
    ACTIVE = "active"
    OPENSENT = "opensent"
    OPENCONFIRM = "openconfirm"
    ESTABLISHED = "established"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: object) -> SessionState:
        """A daemon's word for a state, whatever its case (``Established``, ``Idle (Admin)``,
        ``BGP_FSM_ESTABLISHED``, ExaBGP's ``up``/``down``/``connected``)."""
        word = str(text).strip().lower().removeprefix("bgp_fsm_")
        word = word.split()[0] if word else ""
        word = _EXABGP_WORDS.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN


# ExaBGP's neighbor-changes messages and BIRD's words for a session that is not running
_EXABGP_WORDS = {
    "up": "established",
    "down": "idle",
    "connected": "connect",
    "close": "idle",
    "passive": "active",
}


def session_states(raw: Mapping[str, object]) -> dict[str, SessionState]:
    """``{peer: state}`` from a daemon's own words (see :meth:`SessionState.parse`)."""
    return {str(peer): SessionState.parse(state) for peer, state in raw.items()}


@dataclass(frozen=True, slots=True)
class Health:
    """What ``check()`` found.

    ``ok``: the backend answered and authenticated us, and it can carry intents now; for
    a BGP speaker that means at least one session is established (a speaker with every
    session down answers ``ok=False`` with the states in ``detail``), for an HTTP backend
    that the API answered an authenticated read. ``latency_ms``: the round trip of that
    check, None when nothing answered. ``sessions``: BGP speakers only, every configured
    peer's address (as the daemon writes it) with its :class:`SessionState`; empty for
    other adapters.
    """

    ok: bool
    latency_ms: float | None
    detail: str = ""
    sessions: Mapping[str, SessionState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(not isinstance(v, SessionState) for v in self.sessions.values()):
            object.__setattr__(self, "sessions", session_states(self.sessions))

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

    ``announce``/``withdraw`` never raise for a backend that is down or refuses: they
    return one :class:`Outcome` per rule, in the order given (retryable when the backend
    could not be reached). An intent outside ``capabilities`` is a non-retryable failure.
    Both are idempotent. ``active()`` reads the backend (not this object's memory where
    the backend can be read), so a fresh instance sees what an earlier one announced.
    Errors never contain a secret. A BGP speaker also implements :class:`BgpSpeaker`, a
    scrubbing integration :class:`Diverting`.
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


@dataclass(frozen=True, slots=True)
class SessionChange:
    """One peer's session moved to ``state`` (``previous`` None: first report of the peer)."""

    peer: str
    state: SessionState
    previous: SessionState | None = None


@runtime_checkable
class BgpSpeaker(Adapter, Protocol):
    """An adapter whose routes reach the network through BGP sessions.

    The dispatcher does not call a rule active while no session (to the rule's peers)
    is established, and reconciles the adapter when a session comes up.

    ``session_states()``: every configured peer's state now; raises
    :class:`~policies.errors.AdapterUnavailable` when the speaker cannot be asked.

    ``watch_sessions()``: an endless stream of changes. It first yields the state of
    every peer (``previous`` None), then one :class:`SessionChange` per change, seen
    within about a second. While the speaker itself cannot be reached, every known peer
    is reported :attr:`SessionState.UNKNOWN` (its routes are not on the wire); the watch
    keeps trying and reports the real states when the speaker answers again. It never
    raises for a backend problem; the consumer stops it by closing or cancelling it.
    """

    def session_states(self) -> Awaitable[Mapping[str, SessionState]]: ...

    def watch_sessions(self) -> AsyncGenerator[SessionChange, None]: ...


@runtime_checkable
class LargeBatches(Protocol):
    """An adapter that is faster with batches larger than the service's ``batch_size``.

    ``batch_limit``: the most rules the dispatcher hands it in one call. Declared by an
    adapter whose cost is mostly per call, not per rule (ExaBGP: one bridge round trip and
    confirmation per batch, so a 10,000-rule recovery took 7.6 s in batches of 1,000 and
    3.4 s in batches of 5,000). Never below the service's own batch size.
    """

    batch_limit: int


@runtime_checkable
class DiversionStatus(Protocol):
    """What a :class:`Diverting` integration reads from its provider."""

    @property
    def diverting(self) -> bool | None: ...  # None: the provider could not be read

    @property
    def health(self) -> Health: ...

    @property
    def error(self) -> str | None: ...  # why the provider could not be read

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Diverting(Adapter, Protocol):
    """A scrubbing integration: traffic is diverted to a provider, and it can say so.

    ``mechanism``: one line, what "diverting" means at this provider. ``diverting()``:
    one read of the provider, True when it diverts anything now; raises
    :class:`~policies.errors.AdapterError` when the provider cannot be read. ``status()``:
    diverting or not as the provider reports it, the connection's health, and provider
    details; it never raises for a provider problem (``diverting`` is then None).
    """

    mechanism: ClassVar[str]

    def status(self) -> Awaitable[DiversionStatus]: ...

    def diverting(self) -> Awaitable[bool]: ...


async def poll_sessions(
    read: Callable[[], Awaitable[Mapping[str, SessionState]]],
    interval: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> AsyncGenerator[SessionChange, None]:
    """:meth:`BgpSpeaker.watch_sessions` by polling ``read`` every ``interval`` seconds.

    A read that raises (the speaker is not answering) reports every known peer
    ``UNKNOWN``; peers that disappear from the configuration are reported ``UNKNOWN``
    once too.
    """
    pause = sleep or asyncio.sleep
    known: dict[str, SessionState] = {}
    while True:
        try:
            now = dict(await read())
        except Exception:  # the speaker is down: its sessions are, as far as we can tell
            now = dict.fromkeys(known, SessionState.UNKNOWN)
        for peer in known.keys() - now.keys():
            if known[peer] != SessionState.UNKNOWN:
                now[peer] = SessionState.UNKNOWN
        for peer, state in now.items():
            before = known.get(peer)
            if before != state:
                known[peer] = state
                yield SessionChange(peer, state, before)
        await pause(interval)


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
    directories (code ``path_not_allowed``) and a speaker endpoint outside the allowed
    ones (code ``endpoint_not_allowed``).
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
        # a refusal by the service's HostAccess carries its own code (path_not_allowed,
        # endpoint_not_allowed); any other invalid value is invalid_adapter_config
        code = cause.code if isinstance(cause, PathRefused | EndpointRefused) else None
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
