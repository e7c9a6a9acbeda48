"""The policy engine wired to the service: signals in, decisions applied and recorded.

* A signal (from ``POST /incidents``, an agent's incident or its metrics, a detector's
  hook) goes to :mod:`orchestrator.intake`, which opens or updates its incident, evaluates
  it against the policy in force and applies the decision.
* The engine's state (tiers per target, hold-down and cooldown clocks, learned baselines)
  is kept in the store, so a restart forgets neither baselines nor ongoing attacks.
* Hot reload: when the service runs from a policy directory, a changed directory is
  validated and put in force; an invalid one is logged and the previous policy stays.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update

from orchestrator import events as ev
from orchestrator.cluster import write
from orchestrator.incidents import Status
from orchestrator.intake import Intake, Item
from orchestrator.policy_check import adapter_check
from orchestrator.service import Service
from orchestrator.store.models import kv
from policies.errors import SluiceError
from policies.schema import Policy
from policies.signals import Signal
from policies.state import EngineState
from policies.watch import PolicyWatcher

log = logging.getLogger("sluice.runtime")

STATE_KEY = "engine_state"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReloadStatus:
    ok: bool = True
    at: datetime | None = None
    error: str | None = None
    digest: str | None = None


class PolicyRuntime:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.state = EngineState()
        self.watcher: PolicyWatcher | None = None
        # the policy in force is the files with the API's layer over them (policy_doc)
        self.layer: Callable[[Policy], Policy] = lambda files: files
        if service.settings.policy_dir is not None:
            self.watcher = PolicyWatcher(
                service.settings.policy_dir,
                service.policy,
                check=adapter_check(service.registry),
            )
        self.reload_status = ReloadStatus(digest=self.watcher.digest if self.watcher else None)
        self.intake = Intake(service, lambda: self.state)

    @property
    def from_directory(self) -> bool:
        return self.watcher is not None

    # ------------------------------------------------------------ engine state

    def load_state(self) -> None:
        with self.service.engine.connect() as conn:
            value = conn.execute(select(kv.c.value).where(kv.c.key == STATE_KEY)).scalar()
        if value:
            try:
                self.state = EngineState.from_dict(value)
            except (KeyError, TypeError, ValueError):
                log.exception("stored engine state is unreadable; starting with an empty one")

    def save_state(self) -> None:
        snapshot = self.state.to_dict()
        now = self.service.clock()
        with write(self.service.engine) as conn:
            res = conn.execute(
                update(kv).where(kv.c.key == STATE_KEY).values(value=snapshot, updated_at=now)
            )
            if not res.rowcount:
                conn.execute(insert(kv).values(key=STATE_KEY, value=snapshot, updated_at=now))

    # ------------------------------------------------------------ hot reload

    async def reload(self) -> ReloadStatus | None:
        """Poll the policy directory; returns the new status when something changed."""
        if self.watcher is None:
            return None
        try:
            change = self.watcher.poll()
        except Exception as exc:  # never leave a status that says ok about unread files
            log.exception("reading the policy directory %s", self.watcher.directory)
            message = f"the policy directory could not be read: {type(exc).__name__}"
            self.reload_status = ReloadStatus(False, self.service.clock(), message, None)
            return self.reload_status
        if change is None:
            return None
        now = self.service.clock()
        if change.restored:  # the files are back to the policy in force
            log.info("policy files in %s are back to the policy in force", self.watcher.directory)
            self.reload_status = ReloadStatus(True, now, None, change.digest)
            return self.reload_status
        if change.policy is None:
            message = change.error.message if change.error else "policy refused"
            log.error("policy change refused; the previous policy stays in force: %s", message)
            self.reload_status = ReloadStatus(False, now, message, change.digest)
            return self.reload_status
        try:
            self.service.set_policy(self.layer(change.policy))
        except SluiceError as exc:  # e.g. an adapter that cannot be built
            log.error(  # noqa: TRY400  # the message says it all; no traceback
                "policy change refused; the previous policy stays in force: %s", exc
            )
            self.watcher.reject()
            self.reload_status = ReloadStatus(False, now, str(exc), change.digest)
            return self.reload_status
        with write(self.service.engine) as conn:
            self.service.audit.append(
                conn,
                actor="system",
                action="policy.reload",
                target=str(self.watcher.directory),
                detail={"digest": change.digest},
            )
            ev.record(
                conn,
                [ev.Event(ev.Kind.POLICY_RELOADED, now, detail={"digest": change.digest})],
            )
        log.info("policy reloaded from %s", self.watcher.directory)
        self.reload_status = ReloadStatus(True, now, None, change.digest)
        return self.reload_status

    # ------------------------------------------------------------ signals

    async def handle(
        self,
        signal: Signal,
        *,
        actor: str,
        incident_id: str | None = None,
        source: str | None = None,
        event_id: str | None = None,
        raw_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Evaluate one signal and apply the decision; returns incident + decision."""
        return await self.intake.submit(
            Item(
                "ban",
                actor,
                signal=signal,
                incident_id=incident_id,
                source=source,
                event_id=event_id,
                raw_details=raw_details,
            )
        )

    async def unban(
        self,
        *,
        actor: str,
        incident_id: str | None = None,
        source: str | None = None,
        event_id: str | None = None,
        raw_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A detector says the attack is over: resolve its incident."""
        return await self.intake.submit(
            Item(
                "unban",
                actor,
                incident_id=incident_id,
                source=source,
                event_id=event_id,
                raw_details=raw_details,
            )
        )

    def resolve(self, incident_id: str, *, actor: str) -> dict[str, Any]:
        """An operator resolves an incident (its rules are withdrawn by default)."""
        self.intake.end(incident_id, Status.RESOLVED, actor=actor, cause=f"resolved by {actor}")
        return self.get_incident(incident_id)

    def get_incident(self, incident_id: str, *, with_decisions: bool = True) -> dict[str, Any]:
        return self.intake.get(incident_id, with_decisions=with_decisions)

    def list_incidents(
        self, *, status: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        return self.intake.list(status=status, limit=limit, offset=offset)

    def open_incident_for(self, target: str) -> dict[str, Any] | None:
        return self.intake.live_for(target)

    def jobs(self) -> dict[str, tuple[float, Callable[[], Awaitable[Any]]]]:
        """The runtime's periodic jobs (for the scheduler)."""
        return {
            "policy-reload": (self.service.settings.policy_reload_interval, self.reload),
            "hold-down": (1.0, self.intake.recheck_held),
            "incident-expiry": (self.service.settings.expiry_interval, self.intake.expire_quiet),
            "carpet-supersede": (2.0, self.intake.carpet.supersede_due),
            "carpet-window-prune": (30.0, self.intake.carpet.prune),
        }
