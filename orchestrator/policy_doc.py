"""The policy as a document the REST API can edit, when no policy directory is in use.

With ``--policy-dir`` the directory (in git) is the only source of truth: the API shows the
policy and refuses to change it (``read_only``). Without one, the policy lives in the
store as a JSON document; each change is validated as a whole policy before it is saved
and put in force, so a bad change changes nothing.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update

from orchestrator.runtime import PolicyRuntime
from orchestrator.store.models import kv
from policies.errors import PolicyInvalid, ReadOnly
from policies.schema import Policy

DOC_KEY = "policy_document"


def entry_id(*parts: object) -> str:
    """A stable id for a threshold or allowlist entry (from its normalised fields)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:12]


class PolicyDocument:
    def __init__(self, runtime: PolicyRuntime) -> None:
        self.runtime = runtime
        self.service = runtime.service

    def load(self) -> None:
        """At start-up (API mode): put the stored document in force, if there is one."""
        if self.runtime.from_directory:
            return
        with self.service.engine.connect() as conn:
            doc = conn.execute(select(kv.c.value).where(kv.c.key == DOC_KEY)).scalar()
        if doc:
            self.service.set_policy(
                Policy.model_validate(self._with_adapters(doc)), sync_adapters=False
            )

    def _with_adapters(self, doc: dict[str, Any]) -> dict[str, Any]:
        """In API mode the adapters live in the store: declare them for validation only."""
        return {
            **doc,
            "adapters": [
                {"name": r.name, "adapter_type": r.adapter_type} for r in self.service.hub.records()
            ],
        }

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.service.policy.model_dump(mode="json")
        return doc

    def change(self, mutate: Callable[[dict[str, Any]], None], *, actor: str, what: str) -> Policy:
        if self.runtime.from_directory:
            raise ReadOnly(
                f"the policy is managed in the directory {self.service.settings.policy_dir}; "
                "change the files there (they are reloaded automatically)"
            )
        doc = copy.deepcopy(self.document())
        mutate(doc)
        try:
            policy = Policy.model_validate(self._with_adapters(doc))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise PolicyInvalid(f"{field}: {msg}", field=field) from None
        now = datetime.now(UTC)
        stored = policy.model_dump(mode="json", exclude={"adapters"})
        with self.service.engine.begin() as conn:
            res = conn.execute(
                update(kv).where(kv.c.key == DOC_KEY).values(value=stored, updated_at=now)
            )
            if not res.rowcount:
                conn.execute(insert(kv).values(key=DOC_KEY, value=stored, updated_at=now))
        self.runtime.apply_document(policy, actor=actor, what=what)
        return policy

    # ------------------------------------------------------------ views

    def escalation_view(self) -> dict[str, Any]:
        p = self.service.policy
        tiers = p.escalation.model_dump(mode="json")["tiers"]
        status = self.runtime.reload_status
        return {
            "thresholds": {t["name"]: {"bps": t["bps"], "pps": t["pps"]} for t in tiers},
            "ttl": {
                t["name"]: t["ttl"] if t["ttl"] is not None else p.settings.default_ttl
                for t in tiers
            },
            "baseline_mode": p.baseline.mode,
            "geo_lockdown": p.geo_lockdown.model_dump(mode="json") if p.geo_lockdown else None,
            "dry_run": p.settings.dry_run,
            "tiers": tiers,
            "escalation": {
                k: v for k, v in p.escalation.model_dump(mode="json").items() if k != "tiers"
            },
            "managed_by": "policy" if self.runtime.from_directory else "api",
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
        return [
            {"id": entry_id(e["target_ip"]), **e} for e in self.document().get("thresholds", [])
        ]

    def allowlist_view(self, node: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.document().get("allowlist", []):
            if e.get("scope", "workspace") == "node" and e.get("node") != node:
                continue
            out.append(
                {
                    "id": entry_id(e["ip_address"], e.get("scope", "workspace"), e.get("node")),
                    "node": e.get("node"),
                    **e,
                }
            )
        return out
