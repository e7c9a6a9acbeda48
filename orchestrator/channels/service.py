"""Alert channels: the store (secrets write-only), incident events -> deliveries, retries.

Incident events come from the event log (:class:`~orchestrator.runbooks.consumer.Consumer`).
Correlation: an opened incident joins the group of an earlier incident of the same attack
family whose top sources overlap its own and which opened within :data:`GROUP_WINDOW`
(typically the same attack seen by several nodes); the group's key is the first
incident's id, and it is the PagerDuty/OpsGenie dedup key. A channel gets one delivery per
group and event kind: the row in ``channel_deliveries`` is unique on
(channel, group, kind), so a second instance or a replay after a restart cannot send it
again. The group is resolved (PagerDuty ``resolve``) when its first incident resolves.

A delivery is tried :data:`ATTEMPTS` times with exponential backoff; every attempt and the
last error are recorded on its row (``GET /channels`` shows the recent ones).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, select, update

from orchestrator.channels.transports import TYPES, DeliveryFailed, Egress, Message, check_config
from orchestrator.cluster import write
from orchestrator.runbooks.consumer import Batch, insert_new
from orchestrator.runbooks.steps import FAMILIES, SEVERITIES, SEVERITY_RANK
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import alert_groups, channel_deliveries, channels
from policies.errors import NotFound, ValidationFailed

log = logging.getLogger("sluice.channels")
GROUP_WINDOW = timedelta(minutes=5)
ATTEMPTS = 4
EVENTS = ("incident.opened", "incident.escalated", "incident.resolved")


def check_filters(f: Any) -> dict[str, Any]:
    if f is None:
        f = {}
    if not isinstance(f, Mapping):
        raise ValidationFailed("filters must be an object", code="invalid_channel", field="filters")
    for k in f:
        if k not in ("events", "min_severity", "attack_family"):
            raise ValidationFailed(
                f"unknown filter {k!r}", code="invalid_channel", field=f"filters.{k}"
            )
    evs = f.get("events", ["incident.opened", "incident.resolved"])
    if not isinstance(evs, list) or any(e not in EVENTS for e in evs):
        raise ValidationFailed(
            f"filters.events lists {', '.join(EVENTS)}",
            code="invalid_channel",
            field="filters.events",
        )
    sev = f.get("min_severity", "any")
    if sev != "any" and sev not in SEVERITIES:
        raise ValidationFailed(
            f"unknown severity {sev!r}", code="unknown_severity", field="filters.min_severity"
        )
    fam = f.get("attack_family", "any")
    if fam != "any" and fam not in FAMILIES:
        raise ValidationFailed(
            f"unknown attack family {fam!r}", code="unknown_family", field="filters.attack_family"
        )
    return {"events": evs, "min_severity": sev, "attack_family": fam}


def _passes(filters: Mapping[str, Any], kind: str, ctx: Mapping[str, Any]) -> bool:
    if kind not in filters["events"]:
        return False
    sev = filters["min_severity"]
    if sev != "any" and SEVERITY_RANK.get(str(ctx.get("severity")), -1) < SEVERITY_RANK[sev]:
        return False
    fam = filters["attack_family"]
    return bool(fam == "any" or ctx.get("attack_family") == fam)


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "channel_type": row.channel_type,
        "config": row.config,
        "secrets_set": sorted(row.secrets),  # names only: secrets are write-only
        "filters": row.filters,
        "enabled": row.enabled,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def describe(kind: str, ctx: Mapping[str, Any]) -> tuple[str, str]:
    what = {
        "incident.opened": "DDoS incident opened",
        "incident.escalated": "DDoS incident escalated",
        "incident.resolved": "DDoS incident resolved",
    }.get(kind, "Sluice test message")
    title = f"{what}: {ctx.get('attack_family', '?')} on {ctx.get('target_ip', '?')}"
    text = (
        f"severity {ctx.get('severity')}, {float(ctx.get('pps') or 0):,.0f} pps, "
        f"node {ctx.get('node') or '-'}, incident {ctx.get('incident_id')}"
    )
    return title, text


class ChannelService:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        egress: Egress,
        *,
        retry_base: float = 0.5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.egress = egress
        self.retry_base = retry_base
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        # test hook / metrics: called with (channel_id, event kind) after each delivery
        self.delivered: list[tuple[str, str, str, datetime]] = []

    # ------------------------------------------------------------ store

    def list_all(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(channels).order_by(channels.c.created_at)).all()
            recent = conn.execute(
                select(channel_deliveries).order_by(channel_deliveries.c.id.desc()).limit(200)
            ).all()
        out = []
        for r in rows:
            v = _view(r)
            v["recent_deliveries"] = [
                {
                    "event_kind": d.event_kind,
                    "incident_id": d.incident_id,
                    "group_key": d.group_key,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "created_at": d.created_at.isoformat(),
                    "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
                }
                for d in recent
                if d.channel_id == r.id
            ][:10]
            out.append(v)
        return out

    def _row(self, conn: Any, ident: str) -> Any:
        row = conn.execute(
            select(channels).where((channels.c.id == ident) | (channels.c.name == ident))
        ).first()
        if row is None:
            raise NotFound(f"alert channel {ident!r} does not exist", code="channel_not_found")
        return row

    def get(self, ident: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return _view(self._row(conn, ident))

    def exists(self, ident: str) -> bool:
        try:
            self.get(ident)
        except NotFound:
            return False
        return True

    def upsert(self, body: Mapping[str, Any], *, actor: str) -> tuple[dict[str, Any], bool]:
        """Create (no ``id``) or update a channel; returns (view, created)."""
        ident = body.get("id")
        name = body.get("name")
        now = self.clock()
        with write(self.engine) as conn:
            existing = self._row(conn, str(ident)) if ident else None
            kind = body.get("channel_type", existing.channel_type if existing else None)
            if existing is not None and kind != existing.channel_type:
                raise ValidationFailed(
                    "channel_type cannot change; delete and create the channel",
                    code="invalid_channel",
                    field="channel_type",
                )
            if existing is None and (not isinstance(name, str) or not name.strip()):
                raise ValidationFailed("name is required", code="invalid_channel", field="name")
            cfg, sec = check_config(
                str(kind),
                body.get("config", existing.config if existing else {}),
                body.get("secrets", {}),
                existing=existing.secrets if existing else None,
            )
            filters = check_filters(body.get("filters", existing.filters if existing else None))
            enabled = body.get("enabled", existing.enabled if existing else True)
            if not isinstance(enabled, bool):
                raise ValidationFailed(
                    "enabled must be true or false", code="invalid_channel", field="enabled"
                )
            values = {
                "name": name if isinstance(name, str) and name.strip() else existing.name,  # type: ignore[union-attr]  # existing when no name
                "config": cfg,
                "secrets": sec,
                "filters": filters,
                "enabled": enabled,
                "updated_at": now,
            }
            clash = conn.execute(
                select(channels.c.id).where(channels.c.name == values["name"])
            ).first()
            if clash is not None and (existing is None or clash.id != existing.id):
                raise ValidationFailed(
                    f"a channel named {values['name']!r} exists",
                    code="duplicate_channel",
                    field="name",
                )
            if existing is None:
                cid = str(uuid.uuid4())
                conn.execute(
                    insert(channels).values(id=cid, channel_type=kind, created_at=now, **values)
                )
            else:
                cid = existing.id
                conn.execute(update(channels).where(channels.c.id == cid).values(**values))
            self.audit.append(
                conn,
                actor=actor,
                action="channel.create" if existing is None else "channel.update",
                target=f"channel:{cid}",
                detail={"name": values["name"], "channel_type": kind},
            )
            view = _view(self._row(conn, cid))
        return view, existing is None

    def delete(self, ident: str, *, actor: str) -> dict[str, Any]:
        with write(self.engine) as conn:
            row = self._row(conn, ident)
            conn.execute(
                delete(channel_deliveries).where(channel_deliveries.c.channel_id == row.id)
            )
            conn.execute(delete(channels).where(channels.c.id == row.id))
            self.audit.append(
                conn, actor=actor, action="channel.delete", target=f"channel:{row.id}", detail={}
            )
        return {"id": row.id, "deleted": True}

    # ------------------------------------------------------------ sending

    async def send_now(self, ident: str, msg: Message) -> dict[str, Any]:
        """One attempt, no record (the test endpoint and the notify_channel step)."""
        with self.engine.connect() as conn:
            row = self._row(conn, ident)
        return await TYPES[row.channel_type].send(self.egress, row.config, row.secrets, msg)

    def _group(self, conn: Any, incident_id: str, ctx: Mapping[str, Any], now: datetime) -> str:
        """The correlated group of an incident (assigned once, when first asked)."""
        mine = conn.execute(
            select(alert_groups.c.group_key).where(alert_groups.c.incident_id == incident_id)
        ).scalar()
        if mine is not None:
            return str(mine)
        sources = sorted(set(ctx.get("sources") or []))
        family = str(ctx.get("attack_family") or "unknown")
        key = incident_id
        if sources:
            recent = conn.execute(
                select(alert_groups)
                .where(
                    and_(
                        alert_groups.c.attack_family == family,
                        alert_groups.c.at >= now - GROUP_WINDOW,
                    )
                )
                .order_by(alert_groups.c.at)
            ).all()
            for r in recent:
                if set(r.sources) & set(sources):
                    key = r.group_key
                    break
        row = {
            "incident_id": incident_id,
            "group_key": key,
            "attack_family": family,
            "sources": sources,
            "node": ctx.get("node"),
            "at": now,
        }
        if not insert_new(conn, alert_groups, [row]):  # another instance grouped it first
            key = str(
                conn.execute(
                    select(alert_groups.c.group_key).where(
                        alert_groups.c.incident_id == incident_id
                    )
                ).scalar()
            )
        return key

    async def on_events(self, batch: Batch) -> int:
        """Queue the deliveries a page of incident events calls for; returns how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(channels).where(channels.c.enabled.is_(True))).all()
        if not rows:
            return 0
        now = self.clock()
        queued: list[tuple[int, Any, Message]] = []
        with write(self.engine) as conn:
            for kind, incident_id, ctx, _ in batch:
                wanted = [r for r in rows if _passes(r.filters, kind, ctx)]
                if not wanted:
                    continue
                group = self._group(conn, incident_id, ctx, now)
                if kind != "incident.opened" and group != incident_id:
                    continue  # the group speaks through its first incident
                title, text = describe(kind, ctx)
                sev = str(ctx.get("severity") or "medium")
                msg = Message(kind, group, title, text, sev, dict(ctx))
                for r in wanted:
                    ids = insert_new(
                        conn,
                        channel_deliveries,
                        [
                            {
                                "channel_id": r.id,
                                "group_key": group,
                                "event_kind": kind,
                                "incident_id": incident_id,
                                "status": "pending",
                                "attempts": 0,
                                "payload": {"title": title, "text": text},
                                "created_at": now,
                            }
                        ],
                    )
                    # nothing inserted: already delivered (or being delivered) for the group
                    queued.extend((int(i), r, msg) for i in ids)
        loop = asyncio.get_running_loop()
        for did, row, msg in queued:
            task = loop.create_task(self._deliver(did, row, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(queued)

    async def _deliver(self, delivery_id: int, row: Any, msg: Message) -> None:
        channel_id = row.id
        error: str | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await TYPES[row.channel_type].send(self.egress, row.config, row.secrets, msg)
            except DeliveryFailed as exc:
                error = str(exc)
                self._record(delivery_id, attempt, "pending", error)
                if not exc.retry or attempt == ATTEMPTS:
                    break
                await asyncio.sleep(self.retry_base * 2 ** (attempt - 1))
                continue
            except Exception as exc:  # a bug in a sender must not kill the consumer
                log.exception("channel %s: delivery crashed", channel_id)
                error = f"{type(exc).__name__}: {exc}"
                break
            now = self.clock()
            self._record(delivery_id, attempt, "delivered", None, now)
            self.delivered.append((channel_id, msg.event, msg.dedup_key, now))
            return
        self._record(delivery_id, ATTEMPTS, "failed", error)
        log.warning("channel %s: delivery %d failed: %s", channel_id, delivery_id, error)

    def _record(
        self,
        delivery_id: int,
        attempts: int,
        status: str,
        error: str | None,
        at: datetime | None = None,
    ) -> None:
        with write(self.engine) as conn:
            conn.execute(
                update(channel_deliveries)
                .where(channel_deliveries.c.id == delivery_id)
                .values(attempts=attempts, status=status, last_error=error, delivered_at=at)
            )

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
