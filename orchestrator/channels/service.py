"""Alert channels: the store (secrets write-only, encrypted at rest), incident events ->
deliveries, retries that survive a restart.

Incident events come from the event log (:class:`~orchestrator.runbooks.consumer.Consumer`),
woken by the log's in-process notification when a commit wrote events (no polling
interval in the path). Correlation: an opened incident joins the group of an earlier
incident of the same attack family whose top sources overlap its own and which opened
within :data:`GROUP_WINDOW` (typically the same attack seen by several nodes); the group's
key is the first incident's id, and it is the PagerDuty/OpsGenie dedup key. A channel gets
one delivery per group and event kind: the row in ``channel_deliveries`` is unique on
(channel, group, kind), so a second instance or a replay after a restart cannot create it
again. The group is resolved (PagerDuty ``resolve``) when its first incident resolves.
A page of events is handled in one transaction with a few statements (the recent groups
read once, the groups and deliveries inserted with one ``INSERT .. RETURNING`` each).

**Sending.** The connections are made on a loop of their own (:mod:`.sender`), so a
burst of intake on the main loop does not hold a message back. At most
:attr:`ChannelService.concurrency` messages are in flight at once; each outcome is
committed through the group commit (:class:`~orchestrator.runbooks.journal.Journal`). A
delivery is tried :data:`ATTEMPTS` times with exponential backoff; every attempt, the last
error and the time of the next attempt are on its row (``GET /channels`` shows the recent
ones).

**Durable deliveries** (the rule): a delivery row is ``pending`` or ``retrying`` until an
attempt is confirmed (``delivered``) or the attempts are spent or the failure is permanent
(``failed``). Its row holds the message, the attempts made, ``next_attempt_at`` and a
lease (``owner``, ``lease_until``) taken when it is created or taken over. On start-up the
service resumes every ``pending``/``retrying`` delivery (on SQLite, one instance: all of
them; on PostgreSQL: those whose lease lapsed), waiting until ``next_attempt_at`` first, so
the backoff holds across the restart; while running it takes over lapsed leases of other
instances. A ``delivered`` row is never sent again. An attempt that was in flight when the
process died was not confirmed, so it is made again: at-least-once, and the provider's
dedup key (PagerDuty ``dedup_key``, OpsGenie ``alias``) makes the repeat harmless there.

**Secrets** (webhook URLs with their tokens, bot tokens, routing and API keys, SMTP
credentials, the webhook signing secret) are sealed value by value with the service's
secrets key (:class:`~orchestrator.store.crypto.SecretBox`, as adapter secrets are) and
opened only to send. Rows written before encryption are sealed at start-up
(:func:`reseal_channel_secrets`, also run by ``sluice secrets rotate``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select, true, update

from orchestrator.channels.sender import SendLoop
from orchestrator.channels.transports import (
    DeliveryFailed,
    Egress,
    Message,
    check_config,
    check_egress,
)
from orchestrator.cluster import write, writers
from orchestrator.runbooks.consumer import Batch, insert_new, insert_new_rows
from orchestrator.runbooks.journal import Journal
from orchestrator.runbooks.steps import FAMILIES, SEVERITIES, SEVERITY_RANK
from orchestrator.store.audit import AuditLog
from orchestrator.store.crypto import SecretBox
from orchestrator.store.models import alert_groups, channel_deliveries, channels
from policies.errors import NotFound, ValidationFailed

log = logging.getLogger("sluice.channels")
GROUP_WINDOW = timedelta(minutes=5)
ATTEMPTS = 4
OPEN = ("pending", "retrying")  # a delivery not yet confirmed nor given up
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


def reseal_channel_secrets(conn: Connection, box: SecretBox, *, rotate: bool = True) -> int:
    """Seal every channel secret stored in clear (and, with ``rotate``, re-encrypt the
    sealed ones under the first key); returns the rows changed."""
    changed = 0
    for row in conn.execute(select(channels.c.id, channels.c.secrets)).all():
        old = dict(row.secrets or {})
        new = {k: box.rotate(v) if rotate else box.seal(v) for k, v in old.items()}
        if new != old:
            conn.execute(update(channels).where(channels.c.id == row.id).values(secrets=new))
            changed += 1
    return changed


class ChannelService:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        egress: Egress,
        *,
        box: SecretBox | None = None,
        retry_base: float = 0.5,
        lease: float = 60.0,
        concurrency: int = 32,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.egress = egress
        self.box = box  # None: secrets stored as given (tests of old stores only)
        self.retry_base = retry_base
        self.lease = lease  # covers one attempt (the transports time out well before)
        self.concurrency = concurrency
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self.journal = Journal(engine)
        self.sender = SendLoop(concurrency)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._bg: asyncio.Task[None] | None = None
        # test hook / metrics: (channel id, event kind, dedup key, time) after each delivery
        self.delivered: list[tuple[str, str, str, datetime]] = []

    def _seal(self, secrets: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.box.seal(v) for k, v in secrets.items()} if self.box else dict(secrets)

    def _open(self, secrets: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.box.open(v) for k, v in secrets.items()} if self.box else dict(secrets)

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
                    "next_attempt_at": (
                        d.next_attempt_at.isoformat()
                        if d.next_attempt_at and d.status == "retrying"
                        else None
                    ),
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
                existing=self._open(existing.secrets) if existing else None,
            )
            # what this request sets (a stored destination is checked again when used)
            given: Mapping[str, Any] = body.get("secrets") or {}
            check_egress(
                self.egress.policy,
                str(kind),
                cfg if existing is None or "config" in body else {},
                {k: v for k, v in sec.items() if k in given},
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
                "secrets": self._seal(sec),
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
        return await self.sender.send(
            self.egress, row.channel_type, row.config, self._open(row.secrets), msg
        )

    def _groups(self, conn: Connection, batch: Batch, now: datetime) -> dict[str, str]:
        """The correlated group of each incident of a page (assigned once, when first asked).

        The groups of the window are read once; the page's new ones are inserted with one
        statement, and one another instance inserted first is read back."""
        ids = sorted({iid for _, iid, _, _ in batch})
        known = {
            r.incident_id: str(r.group_key)
            for r in conn.execute(
                select(alert_groups.c.incident_id, alert_groups.c.group_key).where(
                    alert_groups.c.incident_id.in_(ids)
                )
            ).all()
        }
        recent = [
            (r.attack_family, set(r.sources), str(r.group_key))
            for r in conn.execute(
                select(alert_groups)
                .where(alert_groups.c.at >= now - GROUP_WINDOW)
                .order_by(alert_groups.c.at)
            ).all()
        ]
        new: list[dict[str, Any]] = []
        for _, iid, ctx, _ in batch:
            if iid in known:
                continue
            sources = sorted(set(ctx.get("sources") or []))
            family = str(ctx.get("attack_family") or "unknown")
            key = iid
            if sources:
                key = next(
                    (g for fam, src, g in recent if fam == family and src & set(sources)), iid
                )
            known[iid] = key
            recent.append((family, set(sources), key))
            new.append(
                {
                    "incident_id": iid,
                    "group_key": key,
                    "attack_family": family,
                    "sources": sources,
                    "node": ctx.get("node"),
                    "at": now,
                }
            )
        mine = set(insert_new(conn, alert_groups, new))
        lost = [r["incident_id"] for r in new if r["incident_id"] not in mine]
        if lost:  # another instance grouped these first: its group counts
            for r in conn.execute(
                select(alert_groups.c.incident_id, alert_groups.c.group_key).where(
                    alert_groups.c.incident_id.in_(lost)
                )
            ).all():
                known[r.incident_id] = str(r.group_key)
        return known

    def any_enabled(self) -> bool:
        """Whether a channel could be sent to (the consumer skips incident events otherwise)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(channels.c.id).where(channels.c.enabled.is_(True)).limit(1)
            ).first()
        return row is not None

    async def on_events(self, batch: Batch) -> int:
        """Queue the deliveries a page of incident events calls for; returns how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(channels).where(channels.c.enabled.is_(True))).all()
        wanted = [
            (kind, iid, ctx, [r for r in rows if _passes(r.filters, kind, ctx)])
            for kind, iid, ctx, _ in batch
        ]
        wanted = [w for w in wanted if w[3]]
        if not wanted:
            return 0
        now = self.clock()
        by_channel = {r.id: r for r in rows}
        new: dict[tuple[str, str, str], dict[str, Any]] = {}
        with write(self.engine) as conn:
            groups = self._groups(conn, [(k, i, c, 0) for k, i, c, _ in wanted], now)
            for kind, iid, ctx, chans in wanted:
                group = groups[iid]
                if kind != "incident.opened" and group != iid:
                    continue  # the group speaks through its first incident
                title, text = describe(kind, ctx)
                payload = {
                    "title": title,
                    "text": text,
                    "severity": str(ctx.get("severity") or "medium"),
                    "context": dict(ctx),
                }
                for r in chans:
                    new.setdefault(
                        (r.id, group, kind),
                        {
                            "channel_id": r.id,
                            "group_key": group,
                            "event_kind": kind,
                            "incident_id": iid,
                            "status": "pending",
                            "attempts": 0,
                            "payload": payload,
                            "created_at": now,
                            "next_attempt_at": now,
                            "owner": self.owner,
                            "lease_until": now + timedelta(seconds=self.lease),
                        },
                    )
            # only the ones this call created: already delivered (or being) for the group
            made = insert_new_rows(
                conn,
                channel_deliveries,
                list(new.values()),
                channel_deliveries.c.id,
                channel_deliveries.c.channel_id,
                channel_deliveries.c.group_key,
                channel_deliveries.c.event_kind,
            )
        for did, cid, group, kind in made:
            ch = by_channel[cid]
            msg = _message(kind, group, new[(cid, group, kind)]["payload"])
            # the first attempt starts at once on the send loop
            first = self.sender.submit(
                self.egress, ch.channel_type, ch.config, self._open(ch.secrets), msg
            )
            self._launch(int(did), ch, msg, 0, first=first)
        return len(made)

    def _launch(
        self,
        did: int,
        channel: Any,
        msg: Message,
        attempts: int,
        *,
        not_before: datetime | None = None,
        first: concurrent.futures.Future[dict[str, Any]] | None = None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._deliver(did, channel, msg, attempts, not_before=not_before, first=first),
            name=f"delivery-{did}",
        )
        self._tasks[did] = task
        task.add_done_callback(lambda _t: self._tasks.pop(did, None))

    async def _deliver(
        self,
        did: int,
        channel: Any,
        msg: Message,
        attempts: int,
        *,
        not_before: datetime | None = None,
        first: concurrent.futures.Future[dict[str, Any]] | None = None,
    ) -> None:
        try:
            while True:
                if not_before is not None:
                    left = (not_before - self.clock()).total_seconds()
                    if left > 0:
                        await asyncio.sleep(left)
                attempt = attempts + 1
                error: str | None = None
                retry = True
                try:  # bounded by the send loop (self.concurrency in flight)
                    if first is not None:  # already on its way
                        sending, first = asyncio.wrap_future(first), None
                        await sending
                    else:
                        await self.sender.send(
                            self.egress,
                            channel.channel_type,
                            channel.config,
                            self._open(channel.secrets),
                            msg,
                        )
                except DeliveryFailed as exc:
                    error, retry = str(exc), exc.retry
                except Exception as exc:  # a bug in a sender must not kill the consumer
                    log.exception("channel %s: delivery crashed", channel.id)
                    error, retry = f"{type(exc).__name__}: {exc}", False
                now = self.clock()
                if error is None:
                    await self.journal.write(_record(did, attempt, "delivered", None, at=now))
                    self.delivered.append((channel.id, msg.event, msg.dedup_key, now))
                    return
                if not retry or attempt >= ATTEMPTS:
                    await self.journal.write(_record(did, attempt, "failed", error))
                    log.warning("channel %s: delivery %d failed: %s", channel.id, did, error)
                    return
                # the next attempt's time is committed before waiting: a restart keeps it
                not_before = now + timedelta(seconds=self.retry_base * 2 ** (attempt - 1))
                await self.journal.write(
                    _record(
                        did,
                        attempt,
                        "retrying",
                        error,
                        next_at=not_before,
                        lease_until=not_before + timedelta(seconds=self.lease),
                    )
                )
                attempts = attempt
        except asyncio.CancelledError:
            if first is not None:  # cancelled before it was awaited: stop that send too
                first.cancel()
            # stopping: give the delivery back at once; a restart resumes it
            with contextlib.suppress(Exception), write(self.engine) as conn:
                conn.execute(
                    update(channel_deliveries)
                    .where(
                        and_(
                            channel_deliveries.c.id == did,
                            channel_deliveries.c.owner == self.owner,
                            channel_deliveries.c.status.in_(OPEN),
                        )
                    )
                    .values(lease_until=self.clock() - timedelta(seconds=1))
                )
            raise

    # ------------------------------------------------------------ resuming

    def recover(self, *, starting: bool = False) -> list[int]:
        """Take over unconfirmed deliveries nobody is sending; returns their ids.

        On start-up with a store of one instance (SQLite) every open delivery is taken;
        otherwise (and on PostgreSQL always) those whose lease lapsed."""
        now = self.clock()
        lapsed = or_(
            channel_deliveries.c.lease_until.is_(None), channel_deliveries.c.lease_until < now
        )
        mine = starting and not writers(self.engine).shared
        cond = and_(
            channel_deliveries.c.status.in_(OPEN),
            channel_deliveries.c.id.not_in(list(self._tasks)) if self._tasks else true(),
            true() if mine else lapsed,
        )
        with write(self.engine) as conn:
            rows = conn.execute(select(channel_deliveries).where(cond)).all()
            if not rows:
                return []
            taken = []
            for r in rows:
                start = max(now, r.next_attempt_at or now)
                got = conn.execute(
                    update(channel_deliveries)
                    .where(and_(channel_deliveries.c.id == r.id, cond))
                    .values(owner=self.owner, lease_until=start + timedelta(seconds=self.lease))
                ).rowcount
                if got:
                    taken.append(r)
            chans = {
                c.id: c
                for c in conn.execute(
                    select(channels).where(channels.c.id.in_({r.channel_id for r in taken}))
                ).all()
            }
        for r in taken:
            ch = chans.get(r.channel_id)
            if ch is None:  # pragma: no cover - deleting a channel deletes its deliveries
                continue
            msg = _message(r.event_kind, r.group_key, r.payload or {})
            log.info("channel %s: resuming delivery %d after %d attempts", ch.id, r.id, r.attempts)
            self._launch(int(r.id), ch, msg, int(r.attempts), not_before=r.next_attempt_at)
        return [int(r.id) for r in taken]

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.lease / 6))
            try:
                self.recover()
            except Exception:
                log.exception("resuming channel deliveries failed")

    def seal_stored(self) -> int:
        """Encrypt channel secrets a store from before encryption holds in clear."""
        if self.box is None:
            return 0
        with write(self.engine) as conn:
            n = reseal_channel_secrets(conn, self.box, rotate=False)
        if n:
            log.warning("encrypted the secrets of %d alert channels stored in clear text", n)
        return n

    async def start(self) -> None:
        self.sender.start(warm=self.egress)
        self.seal_stored()
        self.recover(starting=True)
        self._bg = asyncio.get_running_loop().create_task(
            self._recovery_loop(), name="delivery-recovery"
        )

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._bg] if self._bg else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bg = None
        await asyncio.to_thread(self.sender.stop)


def _message(kind: str, group: str, payload: Mapping[str, Any]) -> Message:
    ctx = dict(payload.get("context") or {})
    title, text = describe(kind, ctx)
    return Message(
        kind,
        group,
        str(payload.get("title") or title),
        str(payload.get("text") or text),
        str(payload.get("severity") or ctx.get("severity") or "medium"),
        ctx,
    )


def _record(
    did: int,
    attempts: int,
    status: str,
    error: str | None,
    *,
    at: datetime | None = None,
    next_at: datetime | None = None,
    lease_until: datetime | None = None,
) -> Callable[[Connection], None]:
    def op(conn: Connection) -> None:
        conn.execute(
            update(channel_deliveries)
            .where(and_(channel_deliveries.c.id == did, channel_deliveries.c.status.in_(OPEN)))
            .values(
                attempts=attempts,
                status=status,
                last_error=error,
                delivered_at=at,
                next_attempt_at=next_at,
                lease_until=lease_until,
            )
        )

    return op
