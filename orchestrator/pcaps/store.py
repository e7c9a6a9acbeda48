"""The PCAP store: capture files under ``data_dir/pcaps``, their rows, limits and retention.

An upload is streamed to a temporary file while its SHA-256 and size are counted (the
size limit stops it mid-stream), then walked once record by record (:func:`scan`): a
file that is not a readable capture, or holds no packet, is refused and deleted. Only
then is it renamed into place and its row written, in one transaction with its audit
entry; any refusal leaves nothing behind. Room is made by removing the oldest captures
when the total would pass the limit; captures older than the retention are removed by
:meth:`PcapStore.sweep`, which also clears leftovers of an interrupted upload.

A capture is never read whole: pages of packets seek to the nearest of the offsets kept
for every :data:`STRIDE`-th packet, the analysis streams the file once and its report is
kept in the row, and downloads stream the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from orchestrator.cluster import write
from orchestrator.pcaps.analysis import analyze, summarize
from orchestrator.pcaps.reader import PcapCorrupt, decode, open_capture
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import incidents, pcaps
from policies.errors import AuthError, NotFound, SluiceError, ValidationFailed

log = logging.getLogger("sluice.pcaps")

STRIDE = 1000  # a file offset is kept for every STRIDE-th packet
LEFTOVER_AGE = timedelta(hours=1)  # a temporary or unreferenced file older than this goes
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")

GeoLookup = Callable[[str], str | None]


class PcapTooLarge(ValidationFailed):
    code = "pcap_too_large"
    status = 413


class PcapStorageFull(SluiceError):
    code = "pcap_storage_full"
    status = 507


class IncidentNotForNode(AuthError):
    code = "incident_not_for_node"
    status = 403


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_total_bytes: int
    retention: timedelta


@dataclass(frozen=True)
class ScanResult:
    format: str
    link_type: int
    packets: int
    first_ts: float
    last_ts: float
    checkpoints: list[int]


@dataclass(frozen=True)
class _Upload:
    pcap_id: str
    incident_id: str
    node_id: str | None
    actor: str
    filename: str
    sha256: str
    size: int
    scan: ScanResult


def scan(path: Path) -> ScanResult:
    """Walk every record once: format, link type, count, time span and seek offsets."""
    checkpoints: list[int] = []
    count = 0
    first = last = 0.0
    with open_capture(path) as cap:
        for offset, ts, _ in cap.walk():
            if count % STRIDE == 0:
                checkpoints.append(offset)
                if count == 0:
                    first = ts
            last = ts
            count += 1
        fmt, link = cap.format, cap.link_type
    if count == 0:
        raise ValidationFailed("the capture holds no packet", code="empty_pcap")
    return ScanResult(fmt, link, count, first, last, checkpoints)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def safe_filename(given: str | None, fmt: str, incident_id: str, first: datetime) -> str:
    """A file name safe for Content-Disposition and shells, ending in the format's suffix."""
    suffix = f".{fmt}"
    stem = ""
    if given:
        stem = _SAFE_NAME.sub("_", Path(given).name).strip("._")[:100]
        for ext in (".pcapng", ".pcap", ".cap"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
    if not stem:
        stem = f"incident-{incident_id[:8]}-{first.strftime('%Y%m%dT%H%M%SZ')}"
    return stem + suffix


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "incident_id": row.incident_id,
        "node_id": row.node_id,
        "filename": row.filename,
        "format": row.format,
        "link_type": row.link_type,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "packet_count": row.packet_count,
        "captured_at": row.first_packet_at.isoformat(),
        "first_packet_at": row.first_packet_at.isoformat(),
        "last_packet_at": row.last_packet_at.isoformat(),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "analyzed": row.analyzed_at is not None,
    }


_LIST_COLUMNS = [c for c in pcaps.c if c.name not in ("checkpoints", "analysis")]


class PcapStore:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        directory: Path,
        limits: Limits,
        *,
        geo: Callable[[], GeoLookup | None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.dir = directory
        self.limits = limits
        self.geo = geo
        self.clock = clock
        self._finish = asyncio.Lock()  # room-making and inserting, one upload at a time
        self._analysing: dict[str, asyncio.Lock] = {}

    def path_of(self, row: Any) -> Path:
        return self.dir / f"{row.id}.{row.format}"

    def node_of(self, pcap: dict[str, Any]) -> str | None:
        """The node that saw the capture's attack: the uploading agent's, else the node
        its incident's signals came from."""
        if pcap["node_id"] is not None or pcap["incident_id"] is None:
            node: str | None = pcap["node_id"]
            return node
        with self.engine.connect() as conn:
            return conn.execute(
                select(incidents.c.node).where(incidents.c.id == pcap["incident_id"])
            ).scalar()

    # ------------------------------------------------------------ upload

    def check_incident(self, incident_id: str | None, node: dict[str, Any] | None) -> str:
        """The incident exists and, for a node, is one it may attach captures to."""
        if not incident_id:
            raise ValidationFailed(
                "incident_id is required (the incident this capture belongs to)",
                code="missing_parameter",
                field="incident_id",
            )
        with self.engine.connect() as conn:
            row = conn.execute(
                select(incidents.c.target, incidents.c.node).where(incidents.c.id == incident_id)
            ).first()
        if row is None:
            raise NotFound(
                f"incident {incident_id} does not exist",
                code="incident_not_found",
                field="incident_id",
            )
        if node is not None and row.node != node["id"] and row.target != node["ip"]:
            raise IncidentNotForNode(
                f"incident {incident_id} was not reported by this node and is not about "
                "its address",
                field="incident_id",
            )
        return incident_id

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        *,
        incident_id: str | None,
        node: dict[str, Any] | None,
        actor: str,
        filename: str | None = None,
        declared_length: int | None = None,
        expected_sha256: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store one upload; returns (the capture's view, deduplicated)."""
        incident_id = self.check_incident(incident_id, node)
        if expected_sha256 is not None:
            expected_sha256 = expected_sha256.strip().lower()
            if not _SHA256.fullmatch(expected_sha256):
                raise ValidationFailed(
                    "X-PCAP-SHA256 must be 64 hexadecimal digits",
                    code="invalid_parameter",
                    field="X-PCAP-SHA256",
                )
        if declared_length is not None and declared_length > self.limits.max_bytes:
            raise self._too_large()
        self.dir.mkdir(parents=True, exist_ok=True)
        pcap_id = str(uuid.uuid4())
        part = self.dir / f"{pcap_id}.part"
        try:
            digest, size = await self._receive(chunks, part)
            if expected_sha256 is not None and digest != expected_sha256:
                raise ValidationFailed(
                    f"the body's SHA-256 is {digest}, not the {expected_sha256} announced",
                    code="checksum_mismatch",
                    field="X-PCAP-SHA256",
                )
            existing = self._find(incident_id, digest)
            if existing is not None:
                return existing, True
            if size == 0:
                raise PcapCorrupt("the body is empty; send the capture file's bytes")
            result = await asyncio.to_thread(scan, part)
            async with self._finish:
                existing = self._find(incident_id, digest)
                if existing is not None:
                    return existing, True
                self._make_room(size, actor)
                up = _Upload(
                    pcap_id=pcap_id,
                    incident_id=incident_id,
                    node_id=node["id"] if node else None,
                    actor=actor,
                    filename=safe_filename(
                        filename, result.format, incident_id, _utc(result.first_ts)
                    ),
                    sha256=digest,
                    size=size,
                    scan=result,
                )
                return self._insert(up, part), False
        finally:
            part.unlink(missing_ok=True)

    def _too_large(self) -> PcapTooLarge:
        return PcapTooLarge(
            f"the capture is larger than the maximum of {self.limits.max_bytes} bytes",
        )

    async def _receive(self, chunks: AsyncIterator[bytes], part: Path) -> tuple[str, int]:
        sha = hashlib.sha256()
        size = 0
        with part.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise self._too_large()
                sha.update(chunk)
                out.write(chunk)
        return sha.hexdigest(), size

    def _find(self, incident_id: str, digest: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_LIST_COLUMNS).where(
                    and_(pcaps.c.incident_id == incident_id, pcaps.c.sha256 == digest)
                )
            ).first()
        return _view(row) if row is not None else None

    def _insert(self, up: _Upload, part: Path) -> dict[str, Any]:
        final = self.dir / f"{up.pcap_id}.{up.scan.format}"
        try:
            with write(self.engine) as conn:
                conn.execute(
                    insert(pcaps).values(
                        id=up.pcap_id,
                        incident_id=up.incident_id,
                        node_id=up.node_id,
                        filename=up.filename,
                        format=up.scan.format,
                        link_type=up.scan.link_type,
                        size_bytes=up.size,
                        sha256=up.sha256,
                        packet_count=up.scan.packets,
                        first_packet_at=_utc(up.scan.first_ts),
                        last_packet_at=_utc(up.scan.last_ts),
                        checkpoints=up.scan.checkpoints,
                        analysis=None,
                        analyzed_at=None,
                        created_by=up.actor,
                        created_at=self.clock(),
                    )
                )
                self.audit.append(
                    conn,
                    actor=up.actor,
                    action="pcap.upload",
                    target=f"pcap:{up.pcap_id}",
                    detail={
                        "incident_id": up.incident_id,
                        "sha256": up.sha256,
                        "size_bytes": up.size,
                        "packets": up.scan.packets,
                    },
                )
                part.rename(final)  # inside the transaction: a failed rename stores no row
        except Exception:
            self.audit.forget_head()
            raise
        return self.get(up.pcap_id)

    # ------------------------------------------------------------ limits and retention

    def _delete(self, rows: list[Any], actor: str, why: str) -> None:
        if not rows:
            return
        try:
            with write(self.engine) as conn:
                conn.execute(delete(pcaps).where(pcaps.c.id.in_([r.id for r in rows])))
                for r in rows:
                    self.audit.append(
                        conn,
                        actor=actor,
                        action="pcap.delete",
                        target=f"pcap:{r.id}",
                        detail={"reason": why, "sha256": r.sha256, "size_bytes": r.size_bytes},
                    )
        except Exception:
            self.audit.forget_head()
            raise
        for r in rows:
            self.path_of(r).unlink(missing_ok=True)
            self._analysing.pop(r.id, None)

    def _make_room(self, size: int, actor: str) -> None:
        cols = (pcaps.c.id, pcaps.c.format, pcaps.c.size_bytes, pcaps.c.sha256)
        with self.engine.connect() as conn:
            total = int(
                conn.execute(select(func.coalesce(func.sum(pcaps.c.size_bytes), 0))).scalar_one()
            )
            excess = total + size - self.limits.max_total_bytes
            if excess <= 0:
                return
            victims: list[Any] = []
            for row in conn.execute(select(*cols).order_by(pcaps.c.created_at, pcaps.c.id)):
                if excess <= 0:
                    break
                victims.append(row)
                excess -= row.size_bytes
        if excess > 0:
            raise PcapStorageFull(
                f"the capture ({size} bytes) does not fit in the store's "
                f"{self.limits.max_total_bytes} bytes"
            )
        log.info("pcap store full: removing %d oldest captures", len(victims))
        self._delete(victims, actor, "total size limit")

    def sweep(self) -> int:
        """Remove captures past the retention and leftovers of interrupted uploads."""
        now = self.clock()
        cols = (pcaps.c.id, pcaps.c.format, pcaps.c.size_bytes, pcaps.c.sha256)
        with self.engine.connect() as conn:
            old = conn.execute(
                select(*cols).where(pcaps.c.created_at < now - self.limits.retention)
            ).all()
            known = set(conn.execute(select(pcaps.c.id)).scalars())
        self._delete(list(old), "system", "retention")
        if self.dir.is_dir():
            cutoff = (now - LEFTOVER_AGE).timestamp()
            for f in self.dir.iterdir():
                if f.stem in known or not f.is_file():
                    continue
                if f.stat().st_mtime < cutoff:
                    log.info("removing leftover capture file %s", f.name)
                    f.unlink(missing_ok=True)
        return len(old)

    async def sweep_due(self) -> int:
        """The periodic job (on the event loop: the audit chain is not shared with threads)."""
        return self.sweep()

    # ------------------------------------------------------------ reading

    def _row(self, pcap_id: str, *columns: Any) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(select(*(columns or pcaps.c)).where(pcaps.c.id == pcap_id)).first()
        if row is None:
            raise NotFound(f"capture {pcap_id} does not exist", code="pcap_not_found")
        return row

    def get(self, pcap_id: str) -> dict[str, Any]:
        return _view(self._row(pcap_id, *_LIST_COLUMNS))

    def page(
        self, *, limit: int, offset: int, incident_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        where = pcaps.c.incident_id == incident_id if incident_id else None
        count = select(func.count()).select_from(pcaps)
        q = select(*_LIST_COLUMNS).order_by(
            pcaps.c.first_packet_at.desc(), pcaps.c.created_at.desc(), pcaps.c.id
        )
        if where is not None:
            q, count = q.where(where), count.where(where)
        with self.engine.connect() as conn:
            total = int(conn.execute(count).scalar_one())
            _check_offset(offset, total)
            rows = conn.execute(q.limit(limit).offset(offset)).all()
        return [_view(r) for r in rows], total

    def download(self, pcap_id: str) -> tuple[Path, dict[str, Any]]:
        row = self._row(pcap_id, *_LIST_COLUMNS)
        path = self.path_of(row)
        if not path.is_file():
            raise NotFound(
                f"the file of capture {pcap_id} is missing from the store",
                code="pcap_file_missing",
            )
        return path, _view(row)

    def packets(self, pcap_id: str, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """One page of parsed packets; reads only from the nearest kept offset on."""
        row = self._row(
            pcap_id, pcaps.c.id, pcaps.c.format, pcaps.c.packet_count, pcaps.c.checkpoints
        )
        total = int(row.packet_count)
        _check_offset(offset, total)
        start = row.checkpoints[offset // STRIDE]
        skip = offset % STRIDE
        out: list[dict[str, Any]] = []
        with open_capture(self.path_of(row)) as cap:
            for i, rec in enumerate(cap.records(start)):
                if i < skip:
                    continue
                out.append(decode(cap.link_type, rec).to_api(offset + len(out)))
                if len(out) == limit:
                    break
        return out, total

    async def analysis(self, pcap_id: str) -> tuple[dict[str, Any], bool]:
        """The capture's report: computed on first request, then read from the row."""
        row = self._row(pcap_id, pcaps.c.analysis)
        if row.analysis is not None:
            return dict(row.analysis), True
        lock = self._analysing.setdefault(pcap_id, asyncio.Lock())
        async with lock:
            row = self._row(pcap_id)
            if row.analysis is not None:
                return dict(row.analysis), True
            with self.engine.connect() as conn:
                target = conn.execute(
                    select(incidents.c.target).where(incidents.c.id == row.incident_id)
                ).scalar()
            report = await asyncio.to_thread(self._compute, self.path_of(row), target)
            with write(self.engine) as conn:
                conn.execute(
                    update(pcaps)
                    .where(pcaps.c.id == pcap_id)
                    .values(analysis=report, analyzed_at=self.clock())
                )
            return report, False

    def _compute(self, path: Path, target: str | None) -> dict[str, Any]:
        return summarize(analyze(path), target_hint=target, geo=self.geo())


def _check_offset(offset: int, total: int) -> None:
    if offset and offset >= total:
        raise ValidationFailed(
            f"offset {offset} is past the end ({total} items)",
            code="offset_out_of_range",
            field="offset",
        )
