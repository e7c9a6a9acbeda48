"""Nodes (detection agents) and their keys: stored hashed, shown once at registration."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from orchestrator.cluster import write
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import nodes
from orchestrator.tokens import hash_token
from policies.errors import AuthError, NotFound

ONLINE_AFTER = timedelta(seconds=90)  # three missed 30 s heartbeats


def _view(row: Any, now: datetime) -> dict[str, Any]:
    seen = row.last_seen_at
    return {
        "id": row.id,
        "name": row.name,
        "ip": row.ip,
        "location": row.location,
        "os": row.os,
        "interface": row.interface,
        "agent_version": row.agent_version,
        "status": "online" if seen and now - seen < ONLINE_AFTER else "offline",
        "created_at": row.created_at.isoformat(),
        "last_seen_at": seen.isoformat() if seen else None,
    }


class NodeRegistry:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self.engine = engine
        self.audit = audit

    def register(
        self,
        *,
        name: str,
        ip: str,
        location: str | None,
        os: str | None,
        interface: str,
        actor: str,
    ) -> tuple[dict[str, Any], str]:
        key = secrets.token_hex(32)
        node_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        with write(self.engine) as conn:
            conn.execute(
                insert(nodes).values(
                    id=node_id,
                    name=name,
                    ip=ip,
                    location=location,
                    os=os,
                    interface=interface,
                    key_hash=hash_token(key),
                    created_at=now,
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="node.register",
                target=f"node:{node_id}",
                detail={"name": name, "ip": ip},
            )
        return self.get(node_id), key

    def get(self, node_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if row is None:
            raise NotFound(f"node {node_id} does not exist", code="node_not_found")
        return _view(row, datetime.now(UTC))

    def list(
        self, *, limit: int, offset: int, status: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            rows = conn.execute(select(nodes).order_by(nodes.c.created_at)).all()
            total = conn.execute(select(func.count()).select_from(nodes)).scalar_one()
        views = [_view(r, now) for r in rows]
        if status is not None:
            views = [v for v in views if v["status"] == status]
        return views[offset : offset + limit], int(total)

    def authenticate(self, authorization: str | None, node_uuid: str | None) -> dict[str, Any]:
        if not authorization or not node_uuid:
            raise AuthError(
                "agent requests need Authorization: Bearer <node key> and X-Node-UUID",
                code="missing_token",
            )
        scheme, _, key = authorization.partition(" ")
        with self.engine.connect() as conn:
            row = conn.execute(select(nodes).where(nodes.c.id == node_uuid)).first()
        if (
            row is None
            or scheme.lower() != "bearer"
            or not secrets.compare_digest(row.key_hash, hash_token(key.strip()))
        ):
            raise AuthError("unknown node or wrong node key", code="invalid_token")
        return _view(row, datetime.now(UTC))

    def seen(self, node_id: str, agent_version: str | None = None, os: str | None = None) -> None:
        values: dict[str, Any] = {"last_seen_at": datetime.now(UTC)}
        if agent_version:
            values["agent_version"] = agent_version
        if os:
            values["os"] = os
        with write(self.engine) as conn:
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(**values))
