"""The tamper-evident audit log: a keyed (HMAC-SHA256) hash chain with an anchored head.

Each entry's MAC covers its own id, time, actor, action, target and detail, and the
previous entry's MAC, under a key that is never stored in the database (``SLUICE_AUDIT_KEY``
or the ``audit.key`` file in the data directory, created 0600 on first start). Whoever can
write the database but not read the key cannot forge an entry, rewrite one, or re-chain
the log after a rewrite.

The chain's head (last id and MAC, and the key's fingerprint) is anchored outside the log:
the ``audit.anchor`` file in the data directory is advanced after each transaction that
appended entries commits. Cutting entries off the end, or replacing the log by another
valid chain, no longer matches the anchor.

Entries are written through the caller's connection, inside the caller's transaction: the
change and its audit entry commit or roll back together. Nothing else is needed from the
caller; the anchor is advanced by engine events once the commit went through (see
:meth:`AuditLog.attach`).

:func:`verify` walks the chain and names the first problem with a machine-readable code
(:class:`Problem`). Logs written before the chain was keyed (plain SHA-256) are sealed on
the first start with a key: an ``audit.keyed`` entry records the old head, and verify
checks the old part with SHA-256 and everything from the seal on with the key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select

from orchestrator.cluster import write
from orchestrator.store.models import audit_log
from policies.errors import SluiceError

log = logging.getLogger("sluice.audit")

GENESIS = "0" * 64
SEAL_ACTION = "audit.keyed"
REANCHOR_ACTION = "audit.reanchored"
KEY_FILE = "audit.key"
ANCHOR_FILE = "audit.anchor"
_PENDING = "sluice.audit.pending"  # (id, mac) appended in the open transaction
_COMMITTING = "sluice.audit.committing"  # the same, once the transaction asked to commit


class AuditKeyError(SluiceError):
    """The audit key is missing or malformed."""

    code = "audit_key_error"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _body(fields: tuple[int, str, str, str, str, str, str]) -> bytes:
    # each field is length-prefixed: no choice of values encodes two entries the same way
    return "".join(f"{len(v)}:{v};" for v in map(str, fields)).encode()


def entry_hash(fields: tuple[int, str, str, str, str, str, str]) -> str:
    """Unkeyed SHA-256 of an entry: the scheme of logs written before the key (legacy)."""
    return hashlib.sha256(_body(fields)).hexdigest()


def entry_mac(key: bytes, fields: tuple[int, str, str, str, str, str, str]) -> str:
    """HMAC-SHA256 over (id, at, actor, action, target, detail, prev_hash)."""
    return hmac.new(key, _body(fields), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A fingerprint that names the key without revealing it."""
    return hmac.new(key, b"sluice audit key id", hashlib.sha256).hexdigest()[:16]


def write_private(path: Path, text: str, *, sync: bool = True) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text`` (fsync'd unless told)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def load_key(data_dir: Path, env_value: str | None, *, create: bool) -> bytes:
    """The audit key: ``env_value`` (hex, >= 32 bytes) or ``data_dir/audit.key``.

    The file is created (0600, 32 random bytes as hex) when missing and ``create`` is set.
    """
    if env_value:
        text, origin = env_value.strip(), "SLUICE_AUDIT_KEY"
    else:
        path = data_dir / KEY_FILE
        if not path.exists():
            if not create:
                raise AuditKeyError(
                    f"no audit key: {path} does not exist and SLUICE_AUDIT_KEY is not set"
                )
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(path, secrets.token_hex(32) + "\n")
        text, origin = path.read_text().strip(), str(path)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AuditKeyError(f"the audit key in {origin} is not hexadecimal") from None
    if len(key) < 32:
        raise AuditKeyError(f"the audit key in {origin} must be at least 32 bytes (64 hex digits)")
    return key


@dataclass(frozen=True)
class AnchorState:
    id: int
    mac: str
    key_id: str


class Anchor:
    """The chain's head kept outside the database: a small 0600 file, one JSON record.

    Written durably: the record goes to a temporary file in the same directory, which is
    fsync'd and renamed over the anchor, then the directory is fsync'd. A crash at any
    point leaves the previous anchor or the new one, never a torn or empty file (a
    leftover temporary file is overwritten by the next write). Writers take an exclusive
    ``flock`` on the directory, and the anchor only ever moves forward: concurrent writers
    (two processes on one store) keep the higher id.

    Those syncs take milliseconds (~10 ms a write on the development VM's ext4), too long
    for the thread that commits (the event loop's, on SQLite): commits hand their head to
    :meth:`advance_later`, and a thread of the anchor's own writes the newest head handed
    over, one durable write for all the commits that came meanwhile. The anchor may lag
    the log by that write (as it may lag it after any crash); :meth:`flush` waits for it,
    and :func:`verify` and :meth:`close` flush first.
    """

    TMP_SUFFIX = ".tmp"

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + self.TMP_SUFFIX)
        self.create = create  # False: never make the file (offline tools)
        self._lock = threading.Lock()
        self._dir_fd: int | None = None
        self._seen = False  # the file existed (or was made) in this process
        self._gone = False
        # advance_later: the newest head handed over and not yet written, and its writer
        self._wake = threading.Condition()
        self._pending: tuple[int, str, str] | None = None
        self._busy = False
        self._writer: threading.Thread | None = None
        self._closed = False

    def read(self) -> AnchorState | None:
        """The anchored head; None when there is no anchor file. ValueError if unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return AnchorState(int(data["id"]), str(data["mac"]), str(data["key_id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the audit anchor {self.path} is unreadable: {exc}") from None

    def _may_write(self) -> bool:
        """Whether to write the anchor; False when the file is missing and must not be made.

        A file deleted while this process uses it is not re-created: that would anchor
        whatever the log holds now. The deletion shows in verify (``anchor_missing``) until
        the next start, which re-anchors and records it in the log.
        """
        if self.path.exists():
            self._seen = True
            return True
        if self._seen:
            if not self._gone:
                self._gone = True
                log.error("the audit anchor %s was deleted; not re-creating it", self.path)
            return False
        return self.create

    def _directory(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        return self._dir_fd

    def advance(self, entry_id: int, mac: str, kid: str, *, force: bool = False) -> None:
        data = (canonical_json({"id": entry_id, "mac": mac, "key_id": kid}) + "\n").encode()
        with self._lock:
            if not self._may_write():
                return
            dir_fd = self._directory()
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            try:
                if not force:
                    try:
                        current = self.read()
                    except ValueError:
                        current = None  # unreadable: overwrite with a good record
                    if current is not None and current.id >= entry_id:
                        return
                self._replace(data, dir_fd)
                self._seen = True
            finally:
                fcntl.flock(dir_fd, fcntl.LOCK_UN)

    def _replace(self, data: bytes, dir_fd: int) -> None:
        """Temporary file written and fsync'd, renamed over the anchor, directory fsync'd."""
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.tmp.replace(self.path)
        os.fsync(dir_fd)

    # ------------------------------------------------------------ off the committing thread

    def advance_later(self, entry_id: int, mac: str, kid: str) -> None:
        """:meth:`advance` on the anchor's writer thread (the newest head wins)."""
        with self._wake:
            if self._closed:  # a commit after close: written here and now
                closed = True
            else:
                closed = False
                if self._pending is None or entry_id > self._pending[0]:
                    self._pending = (entry_id, mac, kid)
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="audit-anchor", daemon=True
                    )
                    self._writer.start()
                self._wake.notify_all()
        if closed:
            self._advance_logged(entry_id, mac, kid)

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:
                    return  # closed, nothing left to write
                head, self._pending, self._busy = self._pending, None, True
            try:
                self._advance_logged(*head)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _advance_logged(self, entry_id: int, mac: str, kid: str) -> None:
        try:
            self.advance(entry_id, mac, kid)
        except OSError:
            log.exception("cannot advance the audit anchor %s", self.path)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every head handed to :meth:`advance_later` is written (or failed);
        False if that took longer than ``timeout`` seconds."""
        with self._wake:
            return self._wake.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self) -> None:
        """Write what is pending, stop the writer thread and release the directory."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        with self._lock:
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None


class AuditLog:
    """Appends keyed entries in the caller's transaction; the anchor follows commits."""

    def __init__(self, key: bytes, anchor: Anchor | None = None) -> None:
        self.key = key
        self.key_id = key_id(key)
        self.anchor = anchor

    @classmethod
    def for_data_dir(cls, data_dir: Path, env_key: str | None) -> AuditLog:
        return cls(load_key(data_dir, env_key, create=True), Anchor(data_dir / ANCHOR_FILE))

    # ------------------------------------------------------------ the anchor follows commits

    def attach(self, engine: Engine) -> None:
        """Advance the anchor after each commit of a transaction that appended entries.

        ``commit`` fires just before the database commits: the entry moves to
        "committing"; an error or rollback drops it; when the connection goes back to the
        pool (after the commit went through) the anchor is advanced.
        """

        def on_commit(conn: Connection) -> None:
            pending = conn.info.pop(_PENDING, None)
            if pending is not None:
                conn.info[_COMMITTING] = pending

        def on_rollback(conn: Connection) -> None:
            conn.info.pop(_PENDING, None)
            conn.info.pop(_COMMITTING, None)

        def on_error(ctx: Any) -> None:
            conn = ctx.connection
            if conn is not None and not conn.closed and not conn.invalidated:
                with contextlib.suppress(Exception):  # never mask the error being handled
                    on_rollback(conn)

        def on_invalidate(_dbapi: Any, record: Any, _exc: Any) -> None:
            if record is not None:  # the connection is dropped: its commit is not known
                record.info.pop(_PENDING, None)
                record.info.pop(_COMMITTING, None)

        def on_checkin(_dbapi: Any, record: Any) -> None:
            info = record.info if record is not None else None
            if not info:
                return
            info.pop(_PENDING, None)
            done = info.pop(_COMMITTING, None)
            if done is not None:
                self._advance(done)

        def on_begin(conn: Connection) -> None:
            done = conn.info.pop(_COMMITTING, None)  # committed, connection kept open
            if done is not None:
                self._advance(done)

        event.listen(engine, "commit", on_commit)
        event.listen(engine, "rollback", on_rollback)
        event.listen(engine, "handle_error", on_error)
        event.listen(engine, "checkin", on_checkin)
        event.listen(engine, "invalidate", on_invalidate)
        event.listen(engine, "begin", on_begin)

    def _advance(self, head: tuple[int, str]) -> None:
        if self.anchor is not None:
            self.anchor.advance_later(head[0], head[1], self.key_id)

    # ------------------------------------------------------------ writing

    @staticmethod
    def _head(conn: Connection) -> tuple[int, str]:
        pending = conn.info.get(_PENDING)
        if pending is not None:  # this transaction appended already
            return (int(pending[0]), str(pending[1]))
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
        """Append one entry through ``conn`` (in its open transaction); returns its MAC.

        The head is read in the transaction: two processes on one store cannot fork the
        chain (the second insert of an id fails and its transaction rolls back).
        """
        last_id, prev = self._head(conn)
        entry_id = last_id + 1
        stamp = (at or datetime.now(UTC)).isoformat()
        detail_text = canonical_json(dict(detail or {}))
        digest = entry_mac(self.key, (entry_id, stamp, actor, action, target, detail_text, prev))
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
        conn.info[_PENDING] = (entry_id, digest)
        return digest

    def forget_head(self) -> None:
        """Kept for callers written for the cached head; the head is read per transaction."""

    # ------------------------------------------------------------ start-up

    def prepare(self, engine: Engine) -> None:
        """At start-up: seal a legacy (unkeyed) log, and anchor the head when unanchored."""
        with write(engine) as conn:
            first = conn.execute(select(audit_log).order_by(audit_log.c.id).limit(1)).first()
            if first is None:
                if self.anchor is not None and self._read_anchor() is None:
                    self.anchor.advance(0, GENESIS, self.key_id)
                return
            sealed = conn.execute(
                select(audit_log.c.id).where(audit_log.c.action == SEAL_ACTION).limit(1)
            ).first()
            keyed = sealed is not None or _mac_ok(self.key, first)
            if not keyed and not _legacy_ok(first):
                log.error(
                    "the first audit entry matches neither this audit key (%s) nor the unkeyed "
                    "hash of older versions; run 'sluice audit verify'",
                    self.key_id,
                )
            if not keyed and _legacy_ok(first):
                legacy = verify_legacy(conn)
                if not legacy.ok:
                    log.error(
                        "the audit log written before it was keyed is broken at entry %s (%s); "
                        "sealing it as it is - sluice audit verify will keep reporting it",
                        legacy.first_bad_id,
                        legacy.problem,
                    )
                self.append(
                    conn,
                    actor="system",
                    action=SEAL_ACTION,
                    target="audit",
                    detail={
                        "legacy_entries": legacy.entries,
                        "legacy_head": legacy.head,
                        "legacy_intact": legacy.ok,
                        "key_id": self.key_id,
                    },
                )
                log.warning(
                    "audit log upgraded: %d unkeyed entries sealed; new entries are keyed",
                    legacy.entries,
                )
                return
            if self.anchor is not None and self._read_anchor() is None:
                # the anchor is gone (deleted, or a data directory rebuilt around an old store):
                # re-anchor, and say so in the log itself
                log.error(
                    "the audit anchor %s is missing; re-anchoring at the current head "
                    "(recorded as an %s entry)",
                    self.anchor.path,
                    REANCHOR_ACTION,
                )
                self.append(conn, actor="system", action=REANCHOR_ACTION, target="audit")

    def _read_anchor(self) -> AnchorState | None:
        if self.anchor is None:
            return None
        try:
            return self.anchor.read()
        except ValueError:
            return None


def _fields(row: Any) -> tuple[int, str, str, str, str, str, str]:
    return (row.id, row.at, row.actor, row.action, row.target, row.detail, row.prev_hash)


def _mac_ok(key: bytes, row: Any) -> bool:
    return hmac.compare_digest(entry_mac(key, _fields(row)), str(row.hash))


def _legacy_ok(row: Any) -> bool:
    return bool(entry_hash(_fields(row)) == row.hash)


# ---------------------------------------------------------------- verification


class Problem(StrEnum):
    """What :func:`verify` found; each kind of tampering has its own code."""

    OK = "ok"
    ENTRY_MODIFIED = "entry_modified"  # an entry no longer matches its MAC
    ENTRIES_DELETED = "entries_deleted"  # a gap in the ids: entries removed from the middle
    TRUNCATED = "truncated"  # the chain ends before the anchored head
    RECHAINED = "rechained"  # entries rewritten and the chain recomputed after them
    WRONG_KEY = "wrong_key"  # the chain was written under another key
    ANCHOR_MISSING = "anchor_missing"  # entries exist but nothing anchors the head
    ANCHOR_INVALID = "anchor_invalid"  # the anchor file cannot be read
    NOT_KEYED = "not_keyed"  # a legacy unkeyed log that was never sealed


EXIT_CODES: dict[Problem, int] = {
    Problem.OK: 0,
    Problem.ENTRY_MODIFIED: 3,
    Problem.ENTRIES_DELETED: 4,
    Problem.TRUNCATED: 5,
    Problem.RECHAINED: 6,
    Problem.WRONG_KEY: 7,
    Problem.ANCHOR_MISSING: 8,
    Problem.ANCHOR_INVALID: 9,
    Problem.NOT_KEYED: 10,
}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str = ""
    head: str = GENESIS
    code: Problem = Problem.OK


def verify_legacy(conn: Connection, upto: int | None = None) -> VerifyResult:
    """The unkeyed SHA-256 chain of entries 1..``upto`` (all when None)."""
    prev, expected, count = GENESIS, 1, 0
    query = select(audit_log).order_by(audit_log.c.id)
    if upto is not None:
        query = query.where(audit_log.c.id <= upto)
    for row in conn.execute(query).yield_per(5000):
        count += 1
        if row.id != expected:
            return VerifyResult(
                False,
                count,
                row.id,
                f"entries {expected} to {row.id - 1} are missing",
                prev,
                Problem.ENTRIES_DELETED,
            )
        if row.prev_hash != prev or not _legacy_ok(row):
            return VerifyResult(
                False,
                count,
                row.id,
                "an entry written before the key no longer matches its hash",
                prev,
                Problem.ENTRY_MODIFIED,
            )
        prev = row.hash
        expected += 1
    return VerifyResult(True, count, head=prev)


def _flushed(anchor: Anchor | None) -> AnchorState | None:
    """The anchored head once every commit's advance is written. ValueError if unreadable."""
    if anchor is None:
        return None
    if not anchor.flush():
        log.warning("the audit anchor %s is still being written; verifying as it is", anchor.path)
    return anchor.read()


def verify(conn: Connection, key: bytes, anchor: Anchor | None) -> VerifyResult:
    """Check the chain under ``key`` and against ``anchor``; the first problem is reported."""
    kid = key_id(key)
    try:
        anchored = _flushed(anchor)
    except ValueError as exc:
        return VerifyResult(False, 0, None, str(exc), GENESIS, Problem.ANCHOR_INVALID)
    if anchored is not None and anchored.key_id != kid:
        return VerifyResult(
            False,
            0,
            None,
            f"the log is anchored under key {anchored.key_id}, not this key ({kid})",
            GENESIS,
            Problem.WRONG_KEY,
        )

    prev, expected, count = GENESIS, 1, 0
    seal = conn.execute(
        select(audit_log).where(audit_log.c.action == SEAL_ACTION).order_by(audit_log.c.id)
    ).first()
    if seal is not None and seal.id > 1:
        legacy = verify_legacy(conn, seal.id - 1)
        if not legacy.ok:
            return legacy
        prev, expected, count = legacy.head, seal.id, legacy.entries

    first_bad: VerifyResult | None = None
    macs_ok = 0
    keyed = 0
    last_row: Any = None
    suspect: Any = None  # first entry whose MAC failed, to tell an edit from a re-chain
    heads: dict[int, str] = {}
    rows = conn.execute(
        select(audit_log).where(audit_log.c.id >= expected).order_by(audit_log.c.id)
    ).yield_per(5000)
    for row in rows:
        count += 1
        keyed += 1
        mac_good = _mac_ok(key, row)
        macs_ok += mac_good
        if anchored is not None and row.id == anchored.id:
            heads[row.id] = str(row.hash)
        if first_bad is None:
            if suspect is not None:
                rechained = row.prev_hash == suspect.hash and not mac_good
                first_bad = VerifyResult(
                    False,
                    count,
                    suspect.id,
                    "entries were rewritten and the chain recomputed after them"
                    if rechained
                    else "the entry does not match its MAC (its content was changed)",
                    prev,
                    Problem.RECHAINED if rechained else Problem.ENTRY_MODIFIED,
                )
            elif row.id != expected:
                first_bad = VerifyResult(
                    False,
                    count,
                    row.id,
                    f"entries {expected} to {row.id - 1} are missing",
                    prev,
                    Problem.ENTRIES_DELETED,
                )
            elif row.prev_hash != prev or not mac_good:
                if mac_good:  # a valid entry that does not follow its predecessor
                    first_bad = VerifyResult(
                        False,
                        count,
                        row.id,
                        "the entry does not follow the previous one (the chain was spliced)",
                        prev,
                        Problem.RECHAINED,
                    )
                else:
                    suspect = row
        prev = row.hash
        expected = row.id + 1
        last_row = row

    if first_bad is None and suspect is not None:  # the last entry was changed
        first_bad = VerifyResult(
            False,
            count,
            suspect.id,
            "the entry does not match its MAC (its content was changed)",
            prev,
            Problem.ENTRY_MODIFIED,
        )
    if keyed and macs_ok == 0:
        if seal is None and last_row is not None and verify_legacy(conn).ok:
            return VerifyResult(
                False,
                count,
                None,
                "the log was written before audit keys and was never sealed (start the "
                "service once to seal it)",
                prev,
                Problem.NOT_KEYED,
            )
        return VerifyResult(
            False,
            count,
            None,
            f"no entry matches this key ({kid}): the log was written under another key",
            prev,
            Problem.WRONG_KEY,
        )
    if first_bad is not None:
        return first_bad

    if anchored is None:
        if count:
            return VerifyResult(
                False,
                count,
                None,
                "nothing anchors the head of the log (the audit.anchor file is missing)",
                prev,
                Problem.ANCHOR_MISSING,
            )
        return VerifyResult(True, 0, head=prev)
    last_id = int(last_row.id) if last_row is not None else 0
    if last_id < anchored.id:
        return VerifyResult(
            False,
            count,
            last_id + 1,
            f"the log ends at entry {last_id} but entry {anchored.id} was anchored: "
            "entries were cut off the end",
            prev,
            Problem.TRUNCATED,
        )
    if anchored.id > 0 and heads.get(anchored.id) != anchored.mac:
        return VerifyResult(
            False,
            count,
            anchored.id,
            f"entry {anchored.id} is not the entry that was anchored: the log was rewritten "
            "and re-chained",
            prev,
            Problem.RECHAINED,
        )
    return VerifyResult(True, count, head=prev)


__all__ = [
    "ANCHOR_FILE",
    "EXIT_CODES",
    "GENESIS",
    "KEY_FILE",
    "Anchor",
    "AnchorState",
    "AuditKeyError",
    "AuditLog",
    "Problem",
    "VerifyResult",
    "canonical_json",
    "entry_hash",
    "entry_mac",
    "key_id",
    "load_key",
    "verify",
    "verify_legacy",
]
