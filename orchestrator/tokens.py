"""API tokens: stored as SHA-256 hashes, with a scope and an optional expiry.

Scopes are ordered: ``read`` < ``write`` < ``admin``. A token is shown once, when it is
created; the store keeps only its hash.

Look-ups are cached in a bounded LRU (hits and misses alike, so a flood of random tokens
costs at most ``cache_size`` entries), each entry for ``cache_ttl`` seconds so a token
created or revoked by another process (``sluice tokens create --database``) is seen soon.
The last valid admin token cannot be revoked: administration would be lost for good.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, func, insert, or_, select, update

from orchestrator.cluster import write
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import tokens
from policies.errors import AuthError, Conflict, NotFound, SluiceError, ValidationFailed

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


class TooManyFailures(SluiceError):
    """Too many failed authentications from one client address (HTTP 429)."""

    code = "too_many_auth_failures"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class FailureLimiter:
    """Failed authentications per client address in a sliding one-minute window.

    At most ``max_addresses`` addresses are tracked (least recently failing dropped first),
    each with at most ``per_minute`` timestamps: memory is bounded whatever the traffic.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self.clock = clock
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()

    def _window(self, address: str, now: float) -> deque[float] | None:
        window = self._fails.get(address)
        if window is None:
            return None
        while window and window[0] <= now - 60:
            window.popleft()
        if not window:
            del self._fails[address]
            return None
        return window

    def check(self, address: str) -> None:
        """Raise :class:`TooManyFailures` while ``address`` is over its limit."""
        now = self.clock()
        window = self._window(address, now)
        if window is not None and len(window) >= self.per_minute:
            retry = max(1, math.ceil(window[0] + 60 - now))
            raise TooManyFailures(
                f"too many failed authentications from this address; retry in {retry} s",
                retry,
            )

    def failed(self, address: str) -> None:
        now = self.clock()
        window = self._window(address, now)
        if window is None:
            window = self._fails[address] = deque(maxlen=self.per_minute)
            while len(self._fails) > self.max_addresses:
                self._fails.popitem(last=False)
        else:
            self._fails.move_to_end(address)
        window.append(now)

    def __len__(self) -> int:
        return len(self._fails)


class TokenStore:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        *,
        cache_size: int = 4096,
        cache_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self.clock = clock
        # digest -> (info or None for "no such token", monotonic time it was read)
        self._cache: OrderedDict[str, tuple[TokenInfo | None, float]] = OrderedDict()

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
        with write(self.engine) as conn:
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
        with write(self.engine) as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
            if row is None:
                raise NotFound(f"token {token_id} does not exist", code="token_not_found")
            if row.scope == "admin" and _valid(row, now):
                others = conn.execute(
                    select(func.count())
                    .select_from(tokens)
                    .where(
                        and_(
                            tokens.c.scope == "admin",
                            tokens.c.id != token_id,
                            tokens.c.revoked_at.is_(None),
                            or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
                        )
                    )
                ).scalar_one()
                if not others:
                    raise Conflict(
                        f"token {token_id} is the last valid admin token; create another "
                        "admin token before revoking it",
                        code="last_admin_token",
                    )
            conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked_at=now))
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
        info = self._lookup(digest)
        if info is None:
            raise AuthError("invalid or revoked token", code="invalid_token")
        if info.expires_at is not None and info.expires_at <= datetime.now(UTC):
            raise AuthError("the token has expired", code="token_expired")
        return info

    def _lookup(self, digest: str) -> TokenInfo | None:
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[1] < self.cache_ttl:
            return hit[0]
        with self.engine.connect() as conn:
            row = conn.execute(select(tokens).where(and_revoked(digest))).first()
        info = (
            None if row is None else TokenInfo(row.id, row.name, row.scope, digest, row.expires_at)
        )
        self._cache[digest] = (info, now)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return info

    def cache_len(self) -> int:
        return len(self._cache)


def _valid(row: Any, now: datetime) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def and_revoked(digest: str) -> ColumnElement[bool]:
    return (tokens.c.token_hash == digest) & tokens.c.revoked_at.is_(None)
