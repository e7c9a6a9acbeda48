"""An adapter that announces nothing and writes what it would announce.

The embedded default policy uses it, so ``make run`` shows the whole pipeline (policy,
guardrails, store, TTL expiry) without touching a router. Each announce and withdraw is
a JSON line in ``path`` (when set) and a log record at INFO on ``sluice.adapters.log``.
It cannot be read back, so reconciliation treats it like a speaker without read-back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar

from adapters.access import LocalFile
from adapters.base import (
    AdapterConfig,
    AdapterSettings,
    Capability,
    Health,
    Outcome,
    RuleRef,
    require_capability,
    resolve_capabilities,
    validate_settings,
)
from policies.errors import AdapterError, CapabilityMissing
from policies.intents import canonical

log = logging.getLogger("sluice.adapters.log")


class LogSettings(AdapterSettings):
    endpoint: str = ""
    path: LocalFile | None = None  # inside the directories the service allows


class LogAdapter:
    adapter_type: ClassVar[str] = "log"
    supported: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def __init__(
        self, name: str, settings: LogSettings, capabilities: frozenset[Capability]
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities

    @classmethod
    def from_config(cls, config: AdapterConfig) -> LogAdapter:
        settings = validate_settings(LogSettings, config)
        if settings.path is not None and settings.path.is_dir():
            from policies.errors import AdapterConfigInvalid

            raise AdapterConfigInvalid(
                f"log adapter {config.name!r}: config.path: {settings.path} is a directory",
                field="config.path",
            )
        if settings.path is not None and not settings.path.parent.is_dir():
            from policies.errors import AdapterConfigInvalid

            raise AdapterConfigInvalid(
                f"log adapter {config.name!r}: config.path: directory "
                f"{settings.path.parent} does not exist",
                field="config.path",
            )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def _write(self, op: str, rules: Sequence[RuleRef]) -> list[Outcome]:
        now = datetime.now(UTC).isoformat()
        lines = []
        refused: dict[int, Outcome] = {}
        for ref in rules:
            try:
                require_capability(self, ref.intent)
            except CapabilityMissing as exc:
                refused[ref.rule_id] = Outcome.failure(ref, exc.message, retryable=False)
                continue
            text = canonical(ref.intent)
            log.info("%s %s (rule %d, key %s)", op, text, ref.rule_id, ref.key)
            lines.append(
                json.dumps(
                    {"at": now, "op": op, "rule_id": ref.rule_id, "key": ref.key, "intent": text}
                )
            )
        if self.settings.path is not None and lines:
            try:
                with self.settings.local(self.settings.path, "file").open("a") as fh:
                    fh.write("\n".join(lines) + "\n")
            except AdapterError as exc:  # the path is no longer allowed: trying again won't help
                return [
                    refused.get(r.rule_id) or Outcome.failure(r, str(exc), retryable=False)
                    for r in rules
                ]
            except OSError as exc:  # disk full, directory gone: worth trying again later
                error = (
                    f"log adapter {self.name!r}: cannot write {self.settings.path}: "
                    f"{exc.strerror or exc}"
                )
                return [
                    refused.get(r.rule_id) or Outcome.failure(r, error, retryable=True)
                    for r in rules
                ]
        return [refused.get(r.rule_id) or Outcome.success(r) for r in rules]

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return self._write("announce", rules)

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return self._write("withdraw", rules)

    async def active(self) -> frozenset[str] | None:
        return None

    async def check(self) -> Health:
        path = self.settings.path
        if path is not None and not path.parent.is_dir():
            return Health(False, None, f"cannot write {path}: directory {path.parent} is gone")
        where = str(path) if path else "the service log"
        return Health(True, 0.0, f"writes to {where}")

    async def close(self) -> None:
        return None
