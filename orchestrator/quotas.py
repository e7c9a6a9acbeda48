"""Counters for the guardrails that depend on what the store holds.

They are kept in memory, seeded from the store at start-up, and updated by the service
in the same place it commits rule changes, so a check costs no query.
"""

from __future__ import annotations

from collections import Counter, deque

from policies.errors import GuardrailViolation
from policies.guardrails import Guardrails


class SlidingWindow:
    """Events in the last ``span`` seconds."""

    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        cutoff = now - self.span
        while self._times and self._times[0] <= cutoff:
            self._times.popleft()
        return len(self._times)

    def add(self, now: float) -> None:
        self._times.append(now)

    def retry_after(self, now: float) -> float:
        self.count(now)
        return max(0.0, self._times[0] + self.span - now) if self._times else 0.0


class Quotas:
    def __init__(self) -> None:
        self.held = 0  # rules pending, active or failed-with-retry
        self.flowspec_by_adapter: Counter[int] = Counter()
        self.new_rules = SlidingWindow(60.0)

    def check(self, guardrails: Guardrails, kind: str, adapter_id: int, now: float) -> None:
        if self.held >= guardrails.max_active_rules:
            raise GuardrailViolation(
                f"{self.held} rules are already active; the limit is "
                f"{guardrails.max_active_rules} (guardrails.max_active_rules)",
                code="max_active_rules",
            )
        recent = self.new_rules.count(now)
        if recent >= guardrails.max_new_rules_per_minute:
            wait = self.new_rules.retry_after(now)
            raise GuardrailViolation(
                f"{recent} rules were created in the last minute; the limit is "
                f"{guardrails.max_new_rules_per_minute} (guardrails.max_new_rules_per_minute); "
                f"try again in {wait:.0f} s",
                code="rate_limited",
            )
        if kind == "flowspec":
            used = self.flowspec_by_adapter[adapter_id]
            if used >= guardrails.flowspec_budget_per_adapter:
                raise GuardrailViolation(
                    f"adapter {adapter_id} already carries {used} FlowSpec rules; the budget is "
                    f"{guardrails.flowspec_budget_per_adapter} "
                    "(guardrails.flowspec_budget_per_adapter)",
                    code="flowspec_budget",
                    field="adapter_id",
                )

    def added(self, kind: str, adapter_id: int, now: float) -> None:
        self.held += 1
        self.new_rules.add(now)
        if kind == "flowspec":
            self.flowspec_by_adapter[adapter_id] += 1

    def released(self, kind: str, adapter_id: int) -> None:
        self.held = max(0, self.held - 1)
        if kind == "flowspec" and self.flowspec_by_adapter[adapter_id] > 0:
            self.flowspec_by_adapter[adapter_id] -= 1
