"""The audit log can be trusted (issue 10, item 3): a keyed chain, an anchored head, entries
in the transaction of their change, and each kind of tampering reported with its own code.

Every test works on a real service and its SQLite store; the tampering is done the way an
attacker with write access to the database would do it (SQL on the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, delete, func, select, update
from typer.testing import CliRunner

from adapters.base import AdapterConfig
from orchestrator.cli import app as cli_app
from orchestrator.service import Service
from orchestrator.store.audit import (
    ANCHOR_FILE,
    GENESIS,
    KEY_FILE,
    Anchor,
    Problem,
    entry_hash,
    verify,
)
from orchestrator.store.models import adapters, audit_log
from tests.unit.orchestrator.conftest import add_fake, bh, policy, req, settings_for

# the store itself is under test here: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql


def store_bytes(data_dir: Path) -> bytes:
    """The SQLite store as it is on disk: the database file and its WAL."""
    return b"".join(f.read_bytes() for f in sorted(data_dir.glob("sluice.db*")))


async def _with_entries(make_service: Any, n: int = 5) -> Service:
    svc: Service = await make_service()
    aid, _ = await add_fake(svc)
    for i in range(n):
        await svc.create_rule(req(bh(f"203.0.113.{i + 1}"), aid, reason=f"r{i}"))
    assert svc.verify_audit().ok, svc.verify_audit()
    return svc


def _rechain_unkeyed(conn: Connection, start: int) -> None:
    """What an attacker without the key does after an edit: recompute every hash after it."""
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).all()
    prev = GENESIS
    for row in rows:
        if row.id >= start:
            fields = (row.id, row.at, row.actor, row.action, row.target, row.detail, prev)
            digest = entry_hash(fields)
            conn.execute(
                update(audit_log)
                .where(audit_log.c.id == row.id)
                .values(prev_hash=prev, hash=digest)
            )
            prev = digest
        else:
            prev = row.hash


async def test_deleting_the_last_entries_is_truncation(make_service: Any) -> None:
    svc = await _with_entries(make_service)
    with svc.engine.begin() as conn:
        last = conn.execute(select(func.max(audit_log.c.id))).scalar_one()
        conn.execute(delete(audit_log).where(audit_log.c.id >= last - 1))
    res = svc.verify_audit()
    assert not res.ok
    assert res.code is Problem.TRUNCATED, res
    assert res.first_bad_id == last - 1


async def test_rewritten_and_rechained_entry_is_detected(make_service: Any) -> None:
    svc = await _with_entries(make_service)
    with svc.engine.begin() as conn:
        conn.execute(
            update(audit_log).where(audit_log.c.id == 3).values(detail='{"reason":"routine"}')
        )
        _rechain_unkeyed(conn, 3)
    res = svc.verify_audit()
    assert not res.ok
    assert res.code is Problem.RECHAINED, res
    assert res.first_bad_id == 3


async def test_modified_deleted_and_wrong_key_have_their_own_codes(make_service: Any) -> None:
    svc = await _with_entries(make_service)
    with svc.engine.connect() as conn:
        wrong = verify(conn, b"k" * 32, None)
    assert wrong.code is Problem.WRONG_KEY
    # the anchor names the key: another key is refused before the entries are read
    with svc.engine.connect() as conn:
        assert verify(conn, b"k" * 32, svc.audit.anchor).code is Problem.WRONG_KEY

    with svc.engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 4).values(actor="someone-else"))
    res = svc.verify_audit()
    assert (res.code, res.first_bad_id) == (Problem.ENTRY_MODIFIED, 4)

    with svc.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id.in_([4, 5])))
    res = svc.verify_audit()
    assert (res.code, res.first_bad_id) == (Problem.ENTRIES_DELETED, 6)


async def test_replacing_the_whole_log_with_a_keyed_copy_does_not_match_the_anchor(
    make_service: Any,
) -> None:
    """Even a forger holding the key cannot go back on an anchored head."""
    svc = await _with_entries(make_service)
    with svc.engine.begin() as conn:
        last = conn.execute(select(func.max(audit_log.c.id))).scalar_one()
        conn.execute(delete(audit_log).where(audit_log.c.id >= 3))
    # re-append the same number of entries under the real key, with other content
    for i in range(3, last + 1):
        with svc.engine.begin() as conn:
            svc.audit.append(conn, actor="forger", action="rule.create", target=f"rule:{i}")
    res = svc.verify_audit()
    assert (res.code, res.first_bad_id) == (Problem.RECHAINED, last), res


async def test_a_deleted_anchor_is_reported_and_not_recreated_behind_our_back(
    make_service: Any, tmp_path: Path
) -> None:
    svc = await _with_entries(make_service, n=1)
    assert svc.audit.anchor is not None
    assert svc.audit.anchor.flush()  # (the anchor is written after commits, on a thread)
    svc.audit.anchor.path.unlink()
    assert svc.verify_audit().code is Problem.ANCHOR_MISSING
    # later commits do not quietly anchor whatever the log holds now
    aid = svc.hub.by_name("fake").id
    await svc.create_rule(req(bh("203.0.113.99"), aid))
    assert svc.audit.anchor.flush()
    assert not (tmp_path / ANCHOR_FILE).exists()
    assert svc.verify_audit().code is Problem.ANCHOR_MISSING
    await svc.stop()
    # the next start re-anchors and says so in the log
    again = Service(settings_for(tmp_path, database_url=svc.settings.database_url), policy=policy())
    await again.start()
    try:
        assert again.verify_audit().ok
        with again.engine.connect() as conn:
            last = conn.execute(
                select(audit_log.c.action).order_by(audit_log.c.id.desc()).limit(1)
            ).scalar_one()
        assert last == "audit.reanchored"
    finally:
        await again.stop()


async def test_adapter_changes_commit_with_their_audit_entry_across_two_processes(
    tmp_path: Path, store_url: str | None
) -> None:
    """Two services on one store: every adapter written has its entry, the chain holds.

    The old audit log cached its head per process: the second process's entry made the
    first one's next id collide, and the adapter was committed without an entry.
    """
    one = Service(settings_for(tmp_path, database_url=store_url), policy=policy())
    two = Service(settings_for(tmp_path, database_url=store_url), policy=policy())
    await one.start()
    await two.start()
    try:
        for i in range(3):
            await add_fake(one, f"a{i}")
            await add_fake(two, f"b{i}")
        with one.engine.connect() as conn:
            ids = set(conn.execute(select(adapters.c.id)).scalars())
            audited = {
                int(t.removeprefix("adapter:"))
                for t in conn.execute(
                    select(audit_log.c.target).where(audit_log.c.action == "adapter.create")
                ).scalars()
            }
        assert len(ids) == 6 and audited == ids
        res = one.verify_audit()
        assert res.ok, res
    finally:
        await one.stop()
        await two.stop()


async def test_an_adapter_write_rolls_back_with_a_failing_audit_entry(make_service: Any) -> None:
    svc: Service = await make_service()

    def fail(*_: Any) -> None:
        raise RuntimeError("audit store unavailable")

    cfg = AdapterConfig(name="x", adapter_type="fake")
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        svc.hub.upsert(cfg, on_write=fail)
    with svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(adapters)).scalar_one() == 0


async def test_legacy_unkeyed_log_is_sealed_on_upgrade(
    tmp_path: Path, store_url: str | None
) -> None:
    svc = Service(settings_for(tmp_path, database_url=store_url), policy=policy())
    await svc.start()
    await add_fake(svc)
    await svc.stop()
    # turn the store into one written by the old version: unkeyed chain, no anchor
    with svc.engine.begin() as conn:
        _rechain_unkeyed(conn, 1)
        legacy = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    (tmp_path / ANCHOR_FILE).unlink()
    with svc.engine.connect() as conn:
        assert verify(conn, svc.audit.key, None).code is Problem.NOT_KEYED

    svc.engine.dispose()  # used again after stop()
    again = Service(settings_for(tmp_path, database_url=store_url), policy=policy())
    await again.start()
    try:
        res = again.verify_audit()
        assert res.ok and res.entries == legacy + 1, res
        with again.engine.connect() as conn:
            seal = conn.execute(select(audit_log).where(audit_log.c.id == legacy + 1)).one()
        assert seal.action == "audit.keyed" and f'"legacy_entries":{legacy}' in seal.detail
        await add_fake(again, "after")
        assert again.verify_audit().ok
        # the old part is still checked: editing it is caught
        with again.engine.begin() as conn:
            conn.execute(update(audit_log).where(audit_log.c.id == 1).values(actor="x"))
        assert again.verify_audit().code is Problem.ENTRY_MODIFIED
    finally:
        await again.stop()


async def test_key_and_anchor_files_are_private_and_the_key_is_not_in_the_store(
    make_service: Any, tmp_path: Path
) -> None:
    svc = await _with_entries(make_service, n=1)
    for name in (KEY_FILE, ANCHOR_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    key_hex = (tmp_path / KEY_FILE).read_text().strip()
    assert key_hex == svc.audit.key.hex()
    if svc.settings.database_url is None:  # SQLite: the files as they are on disk
        assert key_hex.encode() not in store_bytes(tmp_path)
    assert svc.audit.anchor is not None and svc.audit.anchor.flush()
    state = Anchor(tmp_path / ANCHOR_FILE).read()
    with svc.engine.connect() as conn:
        head = conn.execute(
            select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
        ).one()
    assert state is not None and (state.id, state.mac) == (head.id, head.hash)


async def test_cli_verify_exit_status_names_the_problem(make_service: Any, tmp_path: Path) -> None:
    svc = await _with_entries(make_service)
    url = svc.settings.sqlalchemy_url()
    runner = CliRunner()

    def run() -> Any:
        return runner.invoke(
            cli_app, ["audit", "verify", "--database", url, "--data-dir", str(tmp_path), "--json"]
        )

    r = run()
    assert r.exit_code == 0, r.output
    assert '"code": "ok"' in r.output
    with svc.engine.begin() as conn:
        last = conn.execute(select(func.max(audit_log.c.id))).scalar_one()
        conn.execute(delete(audit_log).where(audit_log.c.id == last))
    r = run()
    assert r.exit_code == 5 and '"code": "truncated"' in r.output, r.output
    with svc.engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 2).values(actor="x"))
    r = run()
    assert r.exit_code == 3 and '"code": "entry_modified"' in r.output, r.output


async def test_a_rolled_back_entry_does_not_move_the_anchor(make_service: Any) -> None:
    svc = await _with_entries(make_service, n=1)
    anchor = svc.audit.anchor
    assert anchor is not None
    assert anchor.flush()  # (the anchor is written after commits, on a thread)
    before = anchor.read()
    with pytest.raises(RuntimeError), svc.engine.begin() as conn:
        svc.audit.append(conn, actor="t", action="x", target="y")
        raise RuntimeError("the change failed")
    assert anchor.flush() and anchor.read() == before
    with svc.engine.begin() as conn:
        svc.audit.append(conn, actor="t", action="x", target="y")
    assert anchor.flush()
    after = anchor.read()
    assert before is not None and after is not None and after.id == before.id + 1
    assert svc.verify_audit().ok
