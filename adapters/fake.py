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
from policies.errors import CapabilityMissing
from policies.intents import canonical


class FakeSettings(AdapterSettings):
    endpoint: str = ""
    state_file: Path | None = None
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
        if self._path is not None and self._path.exists():
            for line in self._path.read_text().splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                self.calls.append(Call(rec["op"], rec["rule_id"], rec["key"], rec["text"]))
                if rec["op"] == "announce":
                    self.held[rec["key"]] = rec["text"]
                else:
                    self.held.pop(rec["key"], None)

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
        if self._path is not None:
            with self._path.open("a") as fh:
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
