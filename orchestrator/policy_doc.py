"""The policy as the REST API edits it: the files (if any) with the API's layer over them.

Objects declared in the policy directory are read-only through the API (``read_only``,
naming the directory). Objects created through the API (tiers and escalation timing,
per-host thresholds, allowlist entries, dry run, baseline mode, geo lockdown) are kept in
the store as a layer over the files (:mod:`policies.layer`) and shown with
``managed_by: api``; ``sluice policy export`` writes them as YAML to commit. Each change
is validated as a whole policy (files + new layer) before it is saved and put in force,
so a bad change changes nothing. On hot reload the new files get the same layer.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update

from orchestrator import events as ev
from orchestrator.cluster import write
from orchestrator.runtime import PolicyRuntime
from orchestrator.store.models import incidents, kv
from policies.errors import PolicyInvalid, ReadOnly
from policies.layer import (
    KEYED_SECTIONS,
    TIMING,
    allow_key,
    compose,
    declared,
    effective_layer,
    file_keys,
    owner,
    threshold_key,
)
from policies.schema import Policy
from policies.signals import Signal

log = logging.getLogger("sluice.policy")
LAYER_KEY = "policy_layer"
LEGACY_KEY = "policy_document"  # before the layer: the whole API-edited policy


def entry_id(*parts: object) -> str:
    """A stable id for a threshold or allowlist entry (from its normalised fields)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:12]


class PolicyDocument:
    def __init__(self, runtime: PolicyRuntime) -> None:
        self.runtime = runtime
        self.service = runtime.service
        self._base = self.service.policy  # the files, or the policy the service was given
        self.layer: dict[str, Any] = {}
        runtime.layer = self.over

    @property
    def files(self) -> Policy:
        """What the files declare (without the layer)."""
        watcher = self.runtime.watcher
        return watcher.current if watcher is not None else self._base

    def where(self) -> str:
        directory = self.service.settings.policy_dir
        return f"the policy directory {directory}" if directory else "the service's policy"

    def load(self) -> None:
        """At start-up: read the layer from the store and put files + layer in force."""
        with self.service.engine.connect() as conn:
            rows = dict(
                conn.execute(
                    select(kv.c.key, kv.c.value).where(kv.c.key.in_([LAYER_KEY, LEGACY_KEY]))
                ).all()
            )
        layer = rows.get(LAYER_KEY)
        if layer is None:
            layer = rows.get(LEGACY_KEY) or {}
        self.layer = dict(layer)
        try:
            policy = self.over(self.files)
        except PolicyInvalid as exc:
            log.error(  # noqa: TRY400  # a clear message, no traceback
                "the API-managed policy objects do not fit the files; the files alone are in "
                "force until that is fixed: %s",
                exc.message,
            )
            return
        self.service.set_policy(policy, sync_adapters=False)

    def _api_adapters(self) -> list[dict[str, Any]]:
        """Adapters created through the API, which tiers of the layer may name."""
        return [
            {"name": r.name, "adapter_type": r.adapter_type}
            for r in self.service.hub.records()
            if r.source != "policy"
        ]

    def over(self, files: Policy) -> Policy:
        """``files`` with the layer over them (the hook hot reload uses)."""
        try:
            return compose(files, self.layer, self._api_adapters())
        except PolicyInvalid as exc:
            raise PolicyInvalid(
                f"the files with the objects created through the API over them: {exc.message}",
                field=exc.field,
            ) from None

    def change(self, mutate: Callable[[dict[str, Any]], None], *, actor: str, what: str) -> Policy:
        """Apply ``mutate`` to a copy of the layer; validate, store and put it in force."""
        layer = copy.deepcopy(self.layer)
        mutate(layer)
        policy = compose(self.files, layer, self._api_adapters())
        now = datetime.now(UTC)
        with write(self.service.engine) as conn:
            res = conn.execute(
                update(kv).where(kv.c.key == LAYER_KEY).values(value=layer, updated_at=now)
            )
            if not res.rowcount:
                conn.execute(insert(kv).values(key=LAYER_KEY, value=layer, updated_at=now))
            # the audit entry in the same transaction as the change it records
            self.service.audit.append(
                conn, actor=actor, action=f"policy.{what}", target="policy", detail={}
            )
            ev.record(  # and in the event log: a new policy is in force
                conn,
                [ev.Event(ev.Kind.POLICY_RELOADED, now, detail={"by": actor, "change": what})],
            )
        self.layer = layer
        self.service.set_policy(policy, sync_adapters=False)
        return policy

    def compose(self, layer: dict[str, Any]) -> Policy:
        """The files with ``layer`` over them instead of the stored layer (nothing saved)."""
        return compose(self.files, layer, self._api_adapters())

    def ignored(self, layer: dict[str, Any]) -> list[str]:
        """The parts of ``layer`` the files declare (so the layer cannot change them)."""
        out = []
        for section in KEYED_SECTIONS:
            extra = layer.get(section)
            if isinstance(extra, dict):
                out += [f"{section}.{k}" for k in extra if declared(self.files, section, k)]
        if "geo_lockdown" in layer and declared(self.files, "geo_lockdown"):
            out.append("geo_lockdown")
        return out

    def recent_signals(self, limit: int) -> list[Signal]:
        """The last signal of each of the ``limit`` most recent incidents, oldest first."""
        with self.service.engine.connect() as conn:
            rows = conn.execute(
                select(incidents.c.last_signal)
                .order_by(incidents.c.opened_at.desc(), incidents.c.id)
                .limit(limit)
            ).all()
        out: list[Signal] = []
        for (raw,) in reversed(rows):
            try:
                out.append(Signal.model_validate(raw))
            except ValidationError:
                continue  # an incident opened before its first signal was recorded
        return out

    # ------------------------------------------------------------ read-only checks

    def require_api(self, section: str, key: str | None = None, *, field: str) -> None:
        """Refuse to change what the files declare."""
        if declared(self.files, section, key):
            name = f"{section}.{key}" if key else section
            raise ReadOnly(
                f"{field}: {name} is declared in {self.where()}; change it there "
                "(files are reloaded automatically)",
                field=field,
            )

    def export(self) -> dict[str, Any]:
        """The API-managed objects in force, as a policy document to commit."""
        return effective_layer(self.files, self.layer)

    # ------------------------------------------------------------ views

    def escalation_view(self) -> dict[str, Any]:
        p = self.service.policy
        files = self.files
        tiers_by = owner(files, "escalation", "tiers")
        tiers = [
            {**t, "managed_by": tiers_by} for t in p.escalation.model_dump(mode="json")["tiers"]
        ]
        status = self.runtime.reload_status
        return {
            "thresholds": {t["name"]: {"bps": t["bps"], "pps": t["pps"]} for t in tiers},
            "ttl": {
                t["name"]: t["ttl"] if t["ttl"] is not None else p.settings.default_ttl
                for t in tiers
            },
            "baseline_mode": p.baseline.mode,
            "geo_lockdown": p.geo_lockdown.model_dump(mode="json") if p.geo_lockdown else None,
            "carpet_bombing": p.carpet_bombing.model_dump(mode="json")
            if p.carpet_bombing
            else None,
            "dry_run": p.settings.dry_run,
            "tiers": tiers,
            "escalation": {
                k: v for k, v in p.escalation.model_dump(mode="json").items() if k != "tiers"
            },
            # who owns the tier ladder; each part's owner below
            "managed_by": tiers_by,
            "managed_by_field": {
                "tiers": tiers_by,
                "baseline_mode": owner(files, "baseline", "mode"),
                "dry_run": owner(files, "settings", "dry_run"),
                "geo_lockdown": owner(files, "geo_lockdown"),
                "carpet_bombing": owner(files, "carpet_bombing"),
                **{f"escalation.{k}": owner(files, "escalation", k) for k in TIMING},
            },
            "policy_dir": str(self.service.settings.policy_dir)
            if self.runtime.from_directory
            else None,
            "last_reload": {
                "ok": status.ok,
                "at": status.at.isoformat() if status.at else None,
                "error": status.error,
            },
        }

    def thresholds_view(self) -> list[dict[str, Any]]:
        theirs = file_keys(self.files, "thresholds")
        out = []
        for e in self.service.policy.thresholds.to_list():
            key = threshold_key(e)
            out.append(
                {
                    "id": entry_id(key),
                    "label": "",
                    **e,
                    "managed_by": "policy" if key in theirs else "api",
                }
            )
        return out

    def allowlist_view(self, node: str | None = None) -> list[dict[str, Any]]:
        """Every entry; with ``node``, the workspace-wide ones and that node's."""
        theirs = file_keys(self.files, "allowlist")
        out = []
        for e in self.service.policy.allowlist.to_list():
            if node is not None and e.get("scope") == "node" and e.get("node") != node:
                continue
            key = allow_key(e)
            out.append(
                {
                    "id": entry_id(*key),
                    "label": "",
                    "node": None,
                    **e,
                    "managed_by": "policy" if key in theirs else "api",
                }
            )
        return out
