"""The tamper-evident audit log: a SHA-256 hash chain.

Each entry's hash covers its own id, time, actor, action, target and detail, and the
previous entry's hash, so editing, deleting or reordering any entry breaks the chain from
that entry on. :func:`verify` walks the chain and names the first entry that does not
match. (Cutting entries off the end of the log is not detectable from the log alone;
an operator who needs that ships the head hash elsewhere, e.g. in the service log.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from orchestrator.store.models import audit_log

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(fields: tuple[int, str, str, str, str, str, str]) -> str:
    """SHA-256 over (id, at, actor, action, target, detail, prev_hash).

    Each field is length-prefixed, so no choice of values can make two different entries
    encode to the same bytes.
    """
    body = "".join(f"{len(v)}:{v};" for v in map(str, fields))
    return hashlib.sha256(body.encode()).hexdigest()


class AuditLog:
    """Appends entries; the caller's transaction makes the entry and the change atomic."""

    def __init__(self) -> None:
        self._head: tuple[int, str] | None = None  # (last id, last hash), cached

    def _load_head(self, conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
        ).first()
        return (0, GENESIS) if row is None else (int(row.id), str(row.hash))

    def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> str:
        if self._head is None:
            self._head = self._load_head(conn)
        last_id, prev = self._head
        entry_id = last_id + 1
        stamp = (at or datetime.now(UTC)).isoformat()
        detail_text = canonical_json(dict(detail or {}))
        digest = entry_hash((entry_id, stamp, actor, action, target, detail_text, prev))
        conn.execute(  # parameters apart from the statement: compiled once, cached
            insert(audit_log),
            {
                "id": entry_id,
                "at": stamp,
                "actor": actor,
                "action": action,
                "target": target,
                "detail": detail_text,
                "prev_hash": prev,
                "hash": digest,
            },
        )
        self._head = (entry_id, digest)
        return digest

    def forget_head(self) -> None:
        """Call after a rolled-back transaction so the next append re-reads the head."""
        self._head = None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str = ""
    head: str = GENESIS


def verify(conn: Connection) -> VerifyResult:
    prev = GENESIS
    expected_id = 1
    count = 0
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).yield_per(5000)
    for row in rows:
        count += 1
        if row.id != expected_id:
            return VerifyResult(
                False, count, row.id, f"entry {expected_id} is missing (next is {row.id})", prev
            )
        if row.prev_hash != prev:
            return VerifyResult(
                False, count, row.id, "prev_hash does not match the previous entry", prev
            )
        digest = entry_hash(
            (row.id, row.at, row.actor, row.action, row.target, row.detail, row.prev_hash)
        )
        if digest != row.hash:
            return VerifyResult(False, count, row.id, "content does not match its hash", prev)
        prev = row.hash
        expected_id += 1
    return VerifyResult(True, count, head=prev)
