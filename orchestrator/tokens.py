"""API tokens: stored as SHA-256 hashes, with a scope and an optional expiry.

Scopes are ordered: ``read`` < ``write`` < ``admin``. A token is shown once, when it is
created; the store keeps only its hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, Engine, func, insert, select, update

from orchestrator.store.audit import AuditLog
from orchestrator.store.models import tokens
from policies.errors import AuthError, NotFound, ValidationFailed

Scope = Literal["read", "write", "admin"]
SCOPES: dict[str, int] = {"read": 0, "write": 1, "admin": 2}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    token_hash: str
    expires_at: datetime | None

    def allows(self, scope: str) -> bool:
        return SCOPES[self.scope] >= SCOPES[scope]


class TokenStore:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self.engine = engine
        self.audit = audit
        self._cache: dict[str, TokenInfo | None] = {}

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tokens)).scalar_one())

    def create(
        self,
        name: str,
        scope: str,
        *,
        actor: str,
        expires_in: int | None = None,
        token: str | None = None,
    ) -> tuple[str, TokenInfo]:
        if scope not in SCOPES:
            raise ValidationFailed(f"scope must be one of {', '.join(SCOPES)}", field="scope")
        if expires_in is not None and expires_in <= 0:
            raise ValidationFailed(
                "expires_in must be a positive number of seconds", field="expires_in"
            )
        if token is not None and len(token) < 32:
            raise ValidationFailed("a token must have at least 32 characters", field="token")
        token = token or secrets.token_hex(32)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=expires_in) if expires_in else None
        digest = hash_token(token)
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(tokens).values(
                    name=name, token_hash=digest, scope=scope, created_at=now, expires_at=expires
                )
            )
            key = res.inserted_primary_key
            if key is None:
                raise RuntimeError("insert returned no key")
            self.audit.append(
                conn,
                actor=actor,
                action="token.create",
                target=f"token:{key[0]}",
                detail={"name": name, "scope": scope},
            )
        self._cache.pop(digest, None)
        return token, TokenInfo(int(key[0]), name, scope, digest, expires)

    def revoke(self, token_id: int, *, actor: str) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            res = conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked_at=now))
            if not res.rowcount:
                raise NotFound(f"token {token_id} does not exist", code="token_not_found")
            self.audit.append(conn, actor=actor, action="token.revoke", target=f"token:{token_id}")
        self._cache.clear()

    def list(self) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "scope": r.scope,
                "created_at": r.created_at.isoformat(),
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "revoked": r.revoked_at is not None,
            }
            for r in rows
        ]

    def authenticate(self, header: str | None) -> TokenInfo:
        if not header:
            raise AuthError("missing Authorization: Bearer <token> header", code="missing_token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                "the Authorization header must be 'Bearer <token>'", code="invalid_token"
            )
        digest = hash_token(token.strip())
        if digest not in self._cache:
            with self.engine.connect() as conn:
                row = conn.execute(select(tokens).where(and_revoked(digest))).first()
            self._cache[digest] = (
                None
                if row is None
                else TokenInfo(row.id, row.name, row.scope, digest, row.expires_at)
            )
        info = self._cache[digest]
        if info is None:
            raise AuthError("invalid or revoked token", code="invalid_token")
        if info.expires_at is not None and info.expires_at <= datetime.now(UTC):
            raise AuthError("the token has expired", code="token_expired")
        return info


def and_revoked(digest: str) -> ColumnElement[bool]:
    return (tokens.c.token_hash == digest) & tokens.c.revoked_at.is_(None)
