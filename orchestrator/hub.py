"""The adapter hub: adapter rows in the store and the live adapter objects built from them.

An adapter is validated by building it before anything is stored, so a bad endpoint or
a missing setting is refused at creation with the adapter's own message. Adapters
declared in the policy directory are synced in at start-up and on reload and marked
``source="policy"``: the API shows them but refuses to change them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, SecretStr
from sqlalchemy import Connection, Engine, insert, select, update

from adapters.base import Adapter, AdapterConfig, Capability, Health, Registry
from orchestrator.cluster import write
from orchestrator.policy_check import adapter_configs
from orchestrator.store.crypto import SecretBox, SecretKeyError
from orchestrator.store.models import adapters
from policies.errors import AdapterConfigInvalid, NotFound, PolicyInvalid, ReadOnly
from policies.schema import AdapterDecl

log = logging.getLogger("sluice.adapters")


@dataclass(frozen=True)
class AdapterRecord:
    id: int
    name: str
    adapter_type: str
    endpoint: str
    config: dict[str, Any]
    capabilities: tuple[str, ...]
    source: str
    created_at: datetime
    updated_at: datetime
    health: dict[str, Any] | None
    checked_at: datetime | None
    has_auth_token: bool
    error: str | None = None  # why the adapter could not be built, if it could not
    secret_keys: tuple[str, ...] = ()  # config keys that are never shown nor logged

    def public_config(self) -> dict[str, Any]:
        """The config without its secrets (for the API and the audit log)."""
        return {k: v for k, v in self.config.items() if k not in self.secret_keys}

    def secrets_set(self) -> list[str]:
        names = {k for k in self.secret_keys if k in self.config}
        if self.has_auth_token:
            names.add("auth_token")
        return sorted(names)

    def to_api(self) -> dict[str, Any]:
        status = "error" if self.error else "unknown"
        if not self.error and self.health is not None:
            status = "connected" if self.health.get("ok") else "disconnected"
        return {
            "id": self.id,
            "name": self.name,
            "adapter_type": self.adapter_type,
            "endpoint": self.endpoint,
            "config": self.public_config(),
            "secrets_set": self.secrets_set(),
            "capabilities": list(self.capabilities),
            "status": status,
            "health": self.health,
            "last_checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "error": self.error,
            "has_auth_token": self.has_auth_token,
            "managed_by": "policy" if self.source == "policy" else "api",
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# Config keys that are secret whatever the adapter's settings model says.
_SECRET_WORDS = ("secret", "password", "token", "consumer_key", "private_key", "key_id")


def secret_keys(adapter: Adapter | None, config: Mapping[str, Any]) -> set[str]:
    """Config keys never shown: SecretStr settings of the adapter, and secret-sounding names."""
    keys = {k for k in config if any(w in k.lower() for w in _SECRET_WORDS)}
    settings = getattr(adapter, "settings", None)
    if isinstance(settings, BaseModel):
        for name, info in type(settings).model_fields.items():
            if "SecretStr" in repr(info.annotation):
                keys.add(name)
    return keys


# Called inside the transaction that writes an adapter: (conn, adapter id, created,
# the config without its secrets). The service writes the audit entry there.
OnWrite = Callable[[Connection, int, bool, dict[str, Any]], None]


def _config_from_row(row: Any, box: SecretBox | None) -> AdapterConfig:
    caps = row.capabilities
    token = box.open(row.auth_token) if box is not None else row.auth_token
    config = dict(row.config or {})
    return AdapterConfig(
        name=row.name,
        adapter_type=row.adapter_type,
        endpoint=row.endpoint,
        auth_token=SecretStr(token) if token else None,
        config=box.open_config(config) if box is not None else config,
        capabilities=tuple(Capability(c) for c in caps) if caps is not None else None,
    )


class AdapterHub:
    def __init__(self, engine: Engine, registry: Registry, box: SecretBox | None = None) -> None:
        self.engine = engine
        self.registry = registry
        self.box = box  # secrets at rest; None stores them as given (tests of old stores)
        self._records: dict[int, AdapterRecord] = {}
        self._live: dict[int, Adapter] = {}
        self._closing: list[Adapter] = []
        self.changes = 0  # bumped by every change made here (see :meth:`follow`)

    # ------------------------------------------------------------ loading

    def load(self) -> None:
        """Build every adapter the store holds; one that fails to build is kept with its error."""
        for row in self.stored():
            self._install(row)

    def stored(self, engine: Engine | None = None) -> list[Any]:
        """The adapter rows the store holds (not deleted); safe to call from any thread
        (``engine``: another pool on the same store)."""
        with (engine or self.engine).connect() as conn:
            return list(conn.execute(select(adapters).where(adapters.c.deleted_at.is_(None))))

    def follow(self, rows: list[Any]) -> tuple[list[int], list[int], list[int]]:
        """Make the hub what the store holds (``rows``: :meth:`stored`): adapters other
        instances created, changed (``updated_at`` moved) or deleted. Returns the ids
        (added, changed, removed); replaced adapters wait in :meth:`close_retired`.

        The caller reads ``rows`` with :attr:`changes` noted before and calls this only
        if no change was made here since (a snapshot older than this hub's own write
        would undo it).
        """
        found = {int(row.id): row for row in rows}
        added: list[int] = []
        changed: list[int] = []
        for aid, row in sorted(found.items()):
            rec = self._records.get(aid)
            if rec is not None and rec.updated_at == row.updated_at:
                continue
            old = self._live.pop(aid, None)
            if old is not None:
                self._closing.append(old)
            self._install(row)
            (added if rec is None else changed).append(aid)
        removed = sorted(set(self._records) - set(found))
        for aid in removed:
            self._records.pop(aid, None)
            old = self._live.pop(aid, None)
            if old is not None:
                self._closing.append(old)
        if added or changed or removed:
            self.changes += 1
        return added, changed, removed

    def _install(self, row: Any) -> AdapterRecord:
        self.changes += 1
        error = None
        caps: tuple[str, ...] = tuple(row.capabilities or ())
        adapter: Adapter | None = None
        try:
            config = _config_from_row(row, self.box)
            adapter = self.registry.create(config)
            self._live[row.id] = adapter
            caps = tuple(sorted(adapter.capabilities))
        except (AdapterConfigInvalid, SecretKeyError) as exc:
            if isinstance(exc, SecretKeyError):  # built without its secrets: not at all
                plain = {k: v for k, v in (row.config or {}).items() if not SecretBox.is_sealed(v)}
                config = AdapterConfig(
                    name=row.name,
                    adapter_type=row.adapter_type,
                    endpoint=row.endpoint,
                    config=plain,
                )
            error = exc.message
            self._live.pop(row.id, None)
            log.error(  # noqa: TRY400  # the message is the whole story; no traceback
                "adapter %s (%s) cannot be built: %s", row.name, row.adapter_type, error
            )
        record = AdapterRecord(
            id=row.id,
            name=row.name,
            adapter_type=row.adapter_type,
            endpoint=row.endpoint,
            config=dict(config.config),
            capabilities=caps,
            source=row.source,
            created_at=row.created_at,
            updated_at=row.updated_at,
            health=row.health,
            checked_at=row.checked_at,
            has_auth_token=bool(row.auth_token),
            error=error,
            secret_keys=tuple(sorted(secret_keys(adapter, config.config))),
        )
        self._records[row.id] = record
        return record

    # ------------------------------------------------------------ lookups

    def records(self) -> list[AdapterRecord]:
        return sorted(self._records.values(), key=lambda r: r.id)

    def get(self, adapter_id: int) -> AdapterRecord:
        rec = self._records.get(adapter_id)
        if rec is None:
            raise NotFound(
                f"adapter {adapter_id} does not exist", field="adapter_id", code="adapter_not_found"
            )
        return rec

    def by_name(self, name: str) -> AdapterRecord:
        for rec in self._records.values():
            if rec.name == name:
                return rec
        raise NotFound(f"no adapter is named {name!r}", field="adapter", code="adapter_not_found")

    def resolve(self, ref: int | str) -> AdapterRecord:
        """An adapter by id, or by name when ``ref`` is not a number."""
        if isinstance(ref, int):
            return self.get(ref)
        return self.get(int(ref)) if ref.isdigit() else self.by_name(ref)

    def live(self, adapter_id: int) -> Adapter | None:
        return self._live.get(adapter_id)

    def name_of(self, adapter_id: int) -> str:
        rec = self._records.get(adapter_id)
        if rec is not None:
            return rec.name
        with self.engine.connect() as conn:
            name = conn.execute(
                select(adapters.c.name).where(adapters.c.id == adapter_id)
            ).scalar_one_or_none()
        return str(name) if name is not None else f"#{adapter_id}"

    # ------------------------------------------------------------ changes

    def upsert(
        self,
        config: AdapterConfig,
        *,
        adapter_id: int | None = None,
        source: str = "api",
        keep_token: bool = True,
        on_write: OnWrite | None = None,
    ) -> tuple[AdapterRecord, bool]:
        """Create or update; returns (record, created). Nothing is stored if building fails.

        ``on_write`` runs in the same transaction as the write (the audit entry).
        """
        existing: AdapterRecord | None = None
        if adapter_id is not None:
            existing = self.get(adapter_id)
        else:
            existing = next((r for r in self._records.values() if r.name == config.name), None)
        if existing is not None and existing.source == "policy" and source != "policy":
            raise ReadOnly(
                f"adapter {existing.name!r} is declared in the policy directory; change it there",
            )
        if existing is not None and any(
            r.name == config.name and r.id != existing.id for r in self._records.values()
        ):
            raise AdapterConfigInvalid(
                f"another adapter is already named {config.name!r}",
                field="name",
                code="duplicate_name",
            )
        token = config.auth_token.get_secret_value() if config.auth_token else None
        if existing is not None and token is None and keep_token:
            with self.engine.connect() as conn:
                token = conn.execute(
                    select(adapters.c.auth_token).where(adapters.c.id == existing.id)
                ).scalar_one_or_none()
            if token and self.box is not None:
                token = self.box.open(token)
            if token:
                config = config.model_copy(update={"auth_token": SecretStr(token)})
        built = self.registry.create(config)  # validate: raises with the adapter's own message
        hidden = secret_keys(built, config.config)
        stored_token: str | None = token
        stored_config = dict(config.config)
        if self.box is not None:
            stored_token = self.box.seal(token) if token else None
            stored_config = self.box.seal_config(stored_config, hidden)
        now = datetime.now(UTC)
        values = {
            "name": config.name,
            "adapter_type": config.adapter_type,
            "endpoint": config.endpoint,
            "auth_token": stored_token,
            "config": stored_config,
            "capabilities": [str(c) for c in config.capabilities]
            if config.capabilities is not None
            else None,
            "source": source,
            "updated_at": now,
        }
        with write(self.engine) as conn:
            if existing is None:
                new_id = conn.execute(
                    insert(adapters).values(created_at=now, **values)
                ).inserted_primary_key
                assert new_id is not None  # noqa: S101  # an INSERT always yields a key
                rid = int(new_id[0])
            else:
                rid = existing.id
                conn.execute(update(adapters).where(adapters.c.id == rid).values(**values))
            row = conn.execute(select(adapters).where(adapters.c.id == rid)).one()
            if on_write is not None:
                public = {k: v for k, v in config.config.items() if k not in hidden}
                on_write(conn, rid, existing is None, public)
        old = self._live.pop(rid, None)
        if old is not None:
            self._closing.append(old)
        return self._install(row), existing is None

    def mark_deleted(self, adapter_id: int, conn: Connection | None = None) -> None:
        """Soft-delete; in ``conn``'s transaction when given (with its audit entry)."""
        now = datetime.now(UTC)
        stmt = (
            update(adapters)
            .where(adapters.c.id == adapter_id)
            .values(deleted_at=now, updated_at=now)
        )
        if conn is not None:
            conn.execute(stmt)
        else:
            with write(self.engine) as own:
                own.execute(stmt)
        self._records.pop(adapter_id, None)
        self.changes += 1
        old = self._live.pop(adapter_id, None)
        if old is not None:
            self._closing.append(old)

    def record_health(self, adapter_id: int, health: Health) -> AdapterRecord:
        now = datetime.now(UTC)
        with write(self.engine) as conn:
            conn.execute(
                update(adapters)
                .where(adapters.c.id == adapter_id)
                .values(health=health.to_dict(), checked_at=now)
            )
        rec = replace(self.get(adapter_id), health=health.to_dict(), checked_at=now)
        self._records[adapter_id] = rec
        return rec

    async def close_retired(self) -> None:
        while self._closing:
            adapter = self._closing.pop()
            try:
                await adapter.close()
            except Exception:
                log.exception("closing adapter %s", adapter.name)

    async def close_all(self) -> None:
        for adapter in list(self._live.values()):
            self._closing.append(adapter)
        await self.close_retired()

    # ------------------------------------------------------------ policy

    def policy_configs(self, decls: Iterable[AdapterDecl]) -> list[AdapterConfig]:
        """Adapter configs from policy declarations, with ``${ENV}`` references resolved."""
        try:
            return adapter_configs(decls)
        except PolicyInvalid as exc:
            raise AdapterConfigInvalid(f"policy {exc.message}", field="adapters") from None

    def sync_policy(self, configs: Iterable[AdapterConfig]) -> list[int]:
        """Upsert the policy's adapters; returns ids of policy adapters no longer declared."""
        declared = set()
        for config in configs:
            rec, _ = self.upsert(config, source="policy", keep_token=False)
            declared.add(rec.id)
        return [
            r.id for r in self._records.values() if r.source == "policy" and r.id not in declared
        ]


def reseal_secrets(
    conn: Connection, box: SecretBox, known: Mapping[int, Iterable[str]] | None = None
) -> int:
    """Encrypt every adapter secret under the box's first key; returns the rows changed.

    Values written before encryption are sealed, sealed ones re-encrypted (a rotation).
    ``known`` adds secret setting names per adapter id (from the live adapters' settings
    models) to the secret-sounding names. Deleted adapters are included: their secrets
    stay in the store.
    """
    changed = 0
    for row in conn.execute(select(adapters.c.id, adapters.c.auth_token, adapters.c.config)):
        config = dict(row.config or {})
        names = secret_keys(None, config) | set((known or {}).get(row.id, ()))
        names |= {k for k, v in config.items() if box.is_sealed(v)}
        new_config = {k: box.rotate(v) if k in names else v for k, v in config.items()}
        new_token = box.rotate(row.auth_token) if row.auth_token else row.auth_token
        if new_config != config or new_token != row.auth_token:
            conn.execute(
                update(adapters)
                .where(adapters.c.id == row.id)
                .values(config=new_config, auth_token=new_token)
            )
            changed += 1
    return changed


def unsealed_secrets(conn: Connection, box: SecretBox, known: Mapping[int, Iterable[str]]) -> int:
    """How many adapter rows still hold a secret in clear text."""
    count = 0
    for row in conn.execute(select(adapters.c.id, adapters.c.auth_token, adapters.c.config)):
        config = dict(row.config or {})
        names = secret_keys(None, config) | set(known.get(row.id, ()))
        clear = [k for k in names if k in config and not box.is_sealed(config[k])]
        if clear or (row.auth_token and not box.is_sealed(row.auth_token)):
            count += 1
    return count
