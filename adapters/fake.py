"""An in-memory adapter for tests of everything above the adapters (httpx's MockTransport idea).

It keeps the set of intent keys it holds, answers ``active()`` from it, and can be told
to fail (retryable or not), to be slow, or to stop answering read-back. With
``state_file`` set it also appends every call to a JSON-lines file and rebuilds its state
from that file when created, so a test can restart the service (even after ``kill -9``)
and count exactly what was announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from adapters.access import LocalFile
from adapters.base import (
    AdapterConfig,
    AdapterSettings,
    Capability,
    Health,
    Outcome,
    RuleRef,
    SessionChange,
    SessionState,
    poll_sessions,
    require_capability,
    resolve_capabilities,
    session_states,
    validate_settings,
)
from policies.errors import AdapterConfigInvalid, CapabilityMissing
from policies.intents import canonical


class FakeSettings(AdapterSettings):
    endpoint: str = ""
    state_file: LocalFile | None = None  # inside the directories the service allows
    latency_ms: float = 0.0
    readback: bool = True
    fail_announce: str | None = None
    fail_withdraw: str | None = None
    fail_retryable: bool = True
    healthy: bool = True
    # Set: the fake plays a BGP speaker with these sessions (peer -> state), which the
    # dispatcher checks before calling an announced rule active.
    sessions: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Call:
    op: str
    rule_id: int
    key: str
    text: str


class FakeAdapter:
    adapter_type: ClassVar[str] = "fake"
    supported: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def __init__(
        self,
        name: str,
        settings: FakeSettings | None = None,
        capabilities: frozenset[Capability] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or FakeSettings()
        self.capabilities = capabilities if capabilities is not None else self.supported
        self.held: dict[str, str] = {}
        self.calls: list[Call] = []
        self.fail_announce = self.settings.fail_announce
        self.fail_withdraw = self.settings.fail_withdraw
        self.fail_retryable = self.settings.fail_retryable
        self.readback = self.settings.readback
        self.healthy = self.settings.healthy
        self.sessions = dict(self.settings.sessions or {})
        self._path = self.settings.state_file
        path = self._state_path()
        if path is not None and path.exists():
            try:
                records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
                calls = [Call(r["op"], r["rule_id"], r["key"], r["text"]) for r in records]
            except (OSError, ValueError, KeyError, TypeError):
                raise AdapterConfigInvalid(
                    f"fake adapter {name!r}: config.state_file: {path} is not a fake adapter's "
                    "state file",
                    field="config.state_file",
                ) from None
            for call in calls:
                self.calls.append(call)
                if call.op == "announce":
                    self.held[call.key] = call.text
                else:
                    self.held.pop(call.key, None)

    def _state_path(self) -> Path | None:
        """The state file, checked against the allowed directories again before use."""
        return None if self._path is None else self.settings.local(self._path, "file")

    @classmethod
    def from_config(cls, config: AdapterConfig) -> FakeAdapter:
        """A :class:`FakeSpeaker` when ``sessions`` is set, else a plain fake."""
        settings = validate_settings(FakeSettings, config)
        kind = FakeSpeaker if settings.sessions is not None else cls
        return kind(config.name, settings, resolve_capabilities(cls, config))

    def _refusal(self, ref: RuleRef) -> Outcome | None:
        try:
            require_capability(self, ref.intent)
        except CapabilityMissing as exc:
            return Outcome.failure(ref, exc.message, retryable=False)
        return None

    def _record(self, op: str, ref: RuleRef, text: str) -> None:
        call = Call(op, ref.rule_id, ref.key, text)
        self.calls.append(call)
        path = self._state_path()
        if path is not None:
            with path.open("a") as fh:
                fh.write(json.dumps(dataclasses.asdict(call)) + "\n")

    async def _delay(self) -> None:
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        await self._delay()
        if self.fail_announce is not None:
            return [
                Outcome.failure(r, self.fail_announce, retryable=self.fail_retryable) for r in rules
            ]
        out = []
        for ref in rules:
            if (refused := self._refusal(ref)) is not None:
                out.append(refused)
                continue
            # the canonical text is only rendered when a state file wants it
            text = canonical(ref.intent) if self._path is not None else ""
            self._record("announce", ref, text)
            self.held[ref.key] = text
            out.append(Outcome.success(ref))
        return out

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        await self._delay()
        if self.fail_withdraw is not None:
            return [
                Outcome.failure(r, self.fail_withdraw, retryable=self.fail_retryable) for r in rules
            ]
        out = []
        for ref in rules:
            if (refused := self._refusal(ref)) is not None:
                out.append(refused)
                continue
            text = canonical(ref.intent) if self._path is not None else ""
            self._record("withdraw", ref, text)
            self.held.pop(ref.key, None)
            out.append(Outcome.success(ref))
        return out

    async def active(self) -> frozenset[str] | None:
        if not self.readback:
            return None
        return frozenset(self.held)

    async def check(self) -> Health:
        await self._delay()
        if not self.healthy:
            return Health(False, None, "fake adapter told to be unhealthy")
        return Health(
            True,
            self.settings.latency_ms,
            f"holding {len(self.held)} rules",
            session_states(self.sessions),
        )

    async def close(self) -> None:
        return None

    def announced_count(self, key: str) -> int:
        return sum(1 for c in self.calls if c.op == "announce" and c.key == key)


class FakeSpeaker(FakeAdapter):
    """The fake playing a BGP speaker (:class:`~adapters.base.BgpSpeaker`): tests set
    ``sessions`` (peer -> state) and the dispatcher checks them before calling an
    announced rule active; ``healthy = False`` makes the speaker unreachable."""

    WATCH_POLL_S: ClassVar[float] = 0.1

    async def session_states(self) -> Mapping[str, SessionState]:
        if not self.healthy:
            raise OSError("fake speaker told to be unreachable")
        return {peer: SessionState.parse(state) for peer, state in self.sessions.items()}

    async def watch_sessions(self) -> AsyncGenerator[SessionChange, None]:
        async for change in poll_sessions(self.session_states, self.WATCH_POLL_S):
            yield change
