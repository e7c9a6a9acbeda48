"""Operator accounts and their login sessions (the dashboard's way in).

Roles are ordered ``viewer`` < ``operator`` < ``admin`` and are the same ladder as API
token scopes: a ``read`` token acts as a viewer, ``write`` as an operator, ``admin`` as an
admin (:data:`ROLE_SCOPE`). Passwords are hashed with Argon2id (argon2-cffi); a session is
a random id kept in an HttpOnly cookie (the store keeps only its SHA-256) plus a CSRF
token the page sends back in a header on every change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update

from orchestrator.cluster import write
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import operator_sessions, operators
from policies.errors import AuthError, Conflict, NotFound, ValidationFailed

ROLES = ("viewer", "operator", "admin")
ROLE_SCOPE = {"viewer": "read", "operator": "write", "admin": "admin"}
SCOPE_ROLE = {v: k for k, v in ROLE_SCOPE.items()}
SESSION_SECONDS = 12 * 3600
MIN_PASSWORD = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_hasher = PasswordHasher()
# Verified against when the name is unknown, so both failures take the same time.
_DUMMY = _hasher.hash("not a password of anyone")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(
            f"a password must have at least {MIN_PASSWORD} characters",
            code="password_too_short",
            field="password",
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValidationFailed(
            f"role must be one of {', '.join(ROLES)}", code="invalid_role", field="role"
        )


@dataclass(frozen=True)
class Session:
    id_hash: str
    operator_id: int
    username: str
    role: str
    csrf: str
    expires_at: datetime

    @property
    def scope(self) -> str:
        return ROLE_SCOPE[self.role]


class OperatorStore:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self.engine = engine
        self.audit = audit

    # ------------------------------------------------------------ accounts

    def create(self, username: str, password: str, role: str, *, actor: str) -> dict[str, Any]:
        if not _NAME.match(username):
            raise ValidationFailed(
                "username: 1-100 letters, digits, '.', '_', '@' or '-'", field="username"
            )
        check_role(role)
        check_password(password)
        now = datetime.now(UTC)
        with write(self.engine) as conn:
            taken = conn.execute(
                select(operators.c.id).where(operators.c.username == username)
            ).first()
            if taken is not None:
                raise Conflict(f"operator {username!r} exists", code="operator_exists")
            res = conn.execute(
                insert(operators).values(
                    username=username,
                    password_hash=_hasher.hash(password),
                    role=role,
                    created_at=now,
                )
            )
            key = res.inserted_primary_key
            if key is None:
                raise RuntimeError("insert returned no key")
            self.audit.append(
                conn,
                actor=actor,
                action="operator.create",
                target=f"operator:{username}",
                detail={"role": role},
            )
        return {"id": int(key[0]), "username": username, "role": role}

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(operators).order_by(operators.c.id)).all()
        return [
            {
                "id": r.id,
                "username": r.username,
                "role": r.role,
                "created_at": r.created_at.isoformat(),
                "last_login_at": r.last_login_at.isoformat() if r.last_login_at else None,
                "disabled": r.disabled_at is not None,
            }
            for r in rows
        ]

    def disable(self, username: str, *, actor: str) -> None:
        """Disable an account and end its sessions; the last enabled admin stays."""
        now = datetime.now(UTC)
        with write(self.engine) as conn:
            row = self._enabled(conn, username)
            self._keep_an_admin(conn, row)
            conn.execute(update(operators).where(operators.c.id == row.id).values(disabled_at=now))
            conn.execute(delete(operator_sessions).where(operator_sessions.c.operator_id == row.id))
            self.audit.append(
                conn, actor=actor, action="operator.disable", target=f"operator:{username}"
            )

    def _enabled(self, conn: Any, username: str) -> Any:
        row = conn.execute(
            select(operators).where(
                operators.c.username == username, operators.c.disabled_at.is_(None)
            )
        ).first()
        if row is None:
            raise NotFound(f"operator {username!r} does not exist", code="operator_not_found")
        return row

    def _keep_an_admin(self, conn: Any, row: Any) -> None:
        """Refuse if ``row`` is the last enabled admin (the caller takes that away)."""
        if row.role != "admin" or row.disabled_at is not None:
            return
        admins = conn.execute(
            select(func.count())
            .select_from(operators)
            .where(operators.c.role == "admin", operators.c.disabled_at.is_(None))
        ).scalar_one()
        if admins <= 1:
            raise Conflict("this is the last enabled admin operator", code="last_admin_operator")

    def change(
        self,
        username: str,
        *,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
        actor: str,
    ) -> dict[str, Any]:
        """Change an operator's role, password and enabled state all at once or not at all.

        Everything is checked first (the values, then in the transaction the account and
        the last enabled admin); then one update, the end of its sessions (unless it is
        only enabled) and one audit entry ``operator.change`` commit together.
        """
        if role is None and password is None and disabled is None:
            raise ValidationFailed(
                "give role, password or disabled", code="missing_parameter", field="role"
            )
        if role is not None:
            check_role(role)
        if password is not None:
            check_password(password)
        digest = _hasher.hash(password) if password is not None else None
        now = datetime.now(UTC)
        with write(self.engine) as conn:
            row = conn.execute(select(operators).where(operators.c.username == username)).first()
            if row is None:
                raise NotFound(f"operator {username!r} does not exist", code="operator_not_found")
            was_disabled = row.disabled_at is not None
            if was_disabled and disabled is not False:
                raise Conflict(
                    f"operator {username!r} is disabled; enable it (disabled: false) to change it",
                    code="operator_disabled",
                    field="disabled",
                )
            if disabled or (role is not None and role != "admin"):
                self._keep_an_admin(conn, row)
            values: dict[str, Any] = {}
            detail: dict[str, Any] = {}
            if disabled is not None and disabled != was_disabled:
                values["disabled_at"] = now if disabled else None
                detail["disabled"] = disabled
            if role is not None:
                values["role"] = role
                detail["role"] = {"from": row.role, "to": role}
            if digest is not None:
                values["password_hash"] = digest
                detail["password_changed"] = True
            if values:
                conn.execute(update(operators).where(operators.c.id == row.id).values(**values))
            if role is not None or digest is not None or disabled:
                conn.execute(
                    delete(operator_sessions).where(operator_sessions.c.operator_id == row.id)
                )
            self.audit.append(
                conn,
                actor=actor,
                action="operator.change",
                target=f"operator:{username}",
                detail=detail,
            )
        return self.get(username)

    def get(self, username: str) -> dict[str, Any]:
        for item in self.list():
            if item["username"] == username:
                return item
        raise NotFound(f"operator {username!r} does not exist", code="operator_not_found")

    # ------------------------------------------------------------ sessions

    def login(self, username: str, password: str) -> tuple[str, Session]:
        """Check the password; returns the new session id (for the cookie) and the session."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(operators).where(
                    operators.c.username == username, operators.c.disabled_at.is_(None)
                )
            ).first()
        try:
            _hasher.verify(row.password_hash if row is not None else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            row = None
        if row is None:
            raise AuthError("wrong username or password", code="invalid_credentials")
        sid = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        sess = Session(
            _digest(sid),
            int(row.id),
            row.username,
            row.role,
            secrets.token_urlsafe(32),
            now + timedelta(seconds=SESSION_SECONDS),
        )
        with write(self.engine) as conn:
            conn.execute(
                insert(operator_sessions).values(
                    id_hash=sess.id_hash,
                    operator_id=sess.operator_id,
                    csrf=sess.csrf,
                    created_at=now,
                    expires_at=sess.expires_at,
                )
            )
            conn.execute(delete(operator_sessions).where(operator_sessions.c.expires_at <= now))
            values: dict[str, Any] = {"last_login_at": now}
            if _hasher.check_needs_rehash(row.password_hash):
                values["password_hash"] = _hasher.hash(password)
            conn.execute(update(operators).where(operators.c.id == row.id).values(**values))
            self.audit.append(
                conn, actor=row.username, action="operator.login", target=f"operator:{username}"
            )
        return sid, sess

    def session(self, sid: str) -> Session:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    operator_sessions.c.id_hash,
                    operator_sessions.c.operator_id,
                    operator_sessions.c.csrf,
                    operator_sessions.c.expires_at,
                    operators.c.username,
                    operators.c.role,
                )
                .join(operators, operators.c.id == operator_sessions.c.operator_id)
                .where(
                    operator_sessions.c.id_hash == _digest(sid),
                    operators.c.disabled_at.is_(None),
                )
            ).first()
        if row is None:
            raise AuthError("not logged in (or the session ended)", code="invalid_session")
        if row.expires_at <= datetime.now(UTC):
            raise AuthError("the session has expired; log in again", code="session_expired")
        return Session(
            row.id_hash, row.operator_id, row.username, row.role, row.csrf, row.expires_at
        )

    def logout(self, sid: str) -> None:
        with write(self.engine) as conn:
            conn.execute(
                delete(operator_sessions).where(operator_sessions.c.id_hash == _digest(sid))
            )
