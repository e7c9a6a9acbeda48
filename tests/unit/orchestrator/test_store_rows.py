"""Bulk row inserts (orchestrator.store.rows) store exactly what SQLAlchemy's insert stores.

The intake writes its rows through :func:`insert_rows` (on SQLite bound with the columns'
own processors and handed to the driver). Rows written both ways must read back equal,
JSON, timestamps, NULLs and booleans included; :func:`insert_returning_ids` must map each
new row to its id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, insert, select, update

from orchestrator.cluster import write
from orchestrator.store.db import make_engine, migrate
from orchestrator.store.models import decisions, incidents, rules
from orchestrator.store.rows import insert_returning_ids, insert_rows, update_rows

pytestmark = pytest.mark.postgresql

NOW = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)


def engine_for(tmp_path: Path, store_url: str | None) -> Engine:
    engine = make_engine(store_url or f"sqlite:///{tmp_path / 'rows.db'}")
    migrate(engine)
    return engine


def incident(n: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "target": f"198.18.0.{n}",
        "node": None if n % 2 else "edge-1",
        "status": "open",
        "attack_family": "udp_flood",
        "severity": "high",
        "peak_bps": 3e9 + n,
        "peak_pps": 4e5,
        "last_signal": {"target_ip": f"198.18.0.{n}", "ports": [123, n], "nested": {"a": None}},
        "signals": n,
        "opened_at": NOW,
        "updated_at": NOW + timedelta(seconds=n),
        "resolved_at": None,
        "source": "fnm" if n % 3 else None,
        "event_id": f"e{n}" if n % 3 else None,
        "raw_details": None if n % 2 else {"k": "ü ✓", "list": []},
        "tier": None,
        "held_until": None,
        "resolved_by": None,
    }
    return {**base, **kw}


def read(engine: Engine, table: Any, ids: list[Any]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.id)).all()
    return [dict(r._mapping) for r in rows]


def test_rows_read_back_as_sqlalchemy_writes_them(tmp_path: Path, store_url: str | None) -> None:
    engine = engine_for(tmp_path, store_url)
    fast = [incident(n) for n in range(1, 8)]
    slow = [incident(n) for n in range(1, 8)]
    with write(engine) as conn:
        insert_rows(conn, incidents, fast)
        conn.execute(insert(incidents), slow)
    got_fast = read(engine, incidents, [r["id"] for r in fast])
    got_slow = read(engine, incidents, [r["id"] for r in slow])
    assert len(got_fast) == len(got_slow) == 7
    by_id = {r["id"]: r for r in got_slow}
    for row, given, twin in zip(
        sorted(got_fast, key=lambda r: r["target"]),
        sorted(fast, key=lambda r: r["target"]),
        sorted(slow, key=lambda r: r["target"]),
        strict=True,
    ):
        assert row == {**by_id[twin["id"]], "id": given["id"]}
        assert row["opened_at"] == NOW and row["opened_at"].tzinfo is not None
        assert row["last_signal"] == given["last_signal"]
        assert row["raw_details"] == given["raw_details"]

    # decisions: JSON columns only, with an empty list and a list of dicts
    with write(engine) as conn:
        insert_rows(
            conn,
            decisions,
            [
                {
                    "incident_id": fast[0]["id"],
                    "at": NOW,
                    "status": "announce",
                    "tier": "tier2",
                    "explanation": ["a", "b"],
                    "rules": [{"rule_id": 1, "deduplicated": False}],
                    "refused": [],
                    "withdrawn": [],
                }
            ],
        )
        stored = conn.execute(select(decisions)).one()
    assert stored.rules == [{"rule_id": 1, "deduplicated": False}]
    assert stored.refused == [] and stored.at == NOW


def test_insert_returning_ids_maps_every_row(tmp_path: Path, store_url: str | None) -> None:
    engine = engine_for(tmp_path, store_url)
    with write(engine) as conn:
        conn.execute(insert(incidents), [incident(1)])
        inc_id = conn.execute(select(incidents.c.id)).scalar_one()
    adapter_id = _adapter(engine)

    def rule(key: str, dry: bool) -> dict[str, Any]:
        return {
            "key": key,
            "kind": "blackhole",
            "target": "198.18.0.1",
            "intent": f"blackhole 198.18.0.1/32; community {key}",
            "adapter_id": adapter_id,
            "state": "active" if dry else "pending",
            "end_state": None,
            "dry_run": dry,
            "origin": "policy",
            "reason": "",
            "explanation": None,
            "incident_id": inc_id,
            "created_by": "test",
            "ttl": 60,
            "created_at": NOW,
            "updated_at": NOW,
            "expires_at": NOW + timedelta(seconds=60),
            "activated_at": NOW if dry else None,
            "ended_at": None,
            "error": None,
            "attempts": 0,
            "next_attempt_at": None,
        }

    for batch in ([rule("a", False), rule("b", True)], [rule("c", False)]):
        with write(engine) as conn:
            got = insert_returning_ids(conn, rules, batch, rules.c.key, rules.c.dry_run)
        assert [(r.key, bool(r.dry_run)) for r in got] == [(b["key"], b["dry_run"]) for b in batch]
        stored = read(engine, rules, [r.id for r in got])
        assert [(s["key"], s["expires_at"]) for s in stored] == [
            (b["key"], b["expires_at"]) for b in batch
        ]


def _adapter(engine: Engine) -> int:
    from orchestrator.store.models import adapters

    with write(engine) as conn:
        conn.execute(
            insert(adapters).values(
                name="edge",
                adapter_type="fake",
                config={},
                created_at=NOW,
                updated_at=NOW,
            )
        )
        return int(conn.execute(select(adapters.c.id)).scalar_one())


def test_json_columns_take_what_json_dumps_took(tmp_path: Path, store_url: str | None) -> None:
    """orjson writes the JSON columns; an integer beyond its 64 bits (a detector's
    raw_details may hold one) is still stored, as it was with json.dumps."""
    engine = engine_for(tmp_path, store_url)
    big = {"counter": 2**70, "ok": 1}
    row = incident(1, raw_details=big)
    with write(engine) as conn:
        insert_rows(conn, incidents, [row])
    [stored] = read(engine, incidents, [row["id"]])
    assert stored["raw_details"] == big


def test_a_row_given_again_is_stored_again(tmp_path: Path, store_url: str | None) -> None:
    """The intake hands repeats of one decision the same row object (bound once on
    SQLite): each occurrence is a row of its own, in its place, equal to the others."""
    engine = engine_for(tmp_path, store_url)
    inc = incident(1)
    with write(engine) as conn:
        insert_rows(conn, incidents, [inc])

    def decision(status: str) -> dict[str, Any]:
        return {
            "incident_id": inc["id"],
            "at": NOW,
            "status": status,
            "tier": None,
            "explanation": [status],
            "rules": [],
            "refused": [],
            "withdrawn": [],
        }

    steady, held = decision("steady"), decision("held")
    with write(engine) as conn:
        insert_rows(conn, decisions, [steady, steady, held, steady, held])
    with engine.connect() as conn:
        got = conn.execute(
            select(decisions.c.status, decisions.c.explanation).order_by(decisions.c.id)
        ).all()
    assert [(r.status, r.explanation) for r in got] == [
        ("steady", ["steady"]),
        ("steady", ["steady"]),
        ("held", ["held"]),
        ("steady", ["steady"]),
        ("held", ["held"]),
    ]


def test_updated_rows_read_back_as_sqlalchemy_updates_them(
    tmp_path: Path, store_url: str | None
) -> None:
    """:func:`update_rows` (the intake's incident updates) against SQLAlchemy's update."""
    engine = engine_for(tmp_path, store_url)
    fast, slow = [incident(n) for n in range(1, 5)], [incident(n) for n in range(1, 5)]
    with write(engine) as conn:
        insert_rows(conn, incidents, [*fast, *slow])
    cols = ("node", "last_signal", "signals", "updated_at", "raw_details", "held_until")

    def changed(row: dict[str, Any], n: int) -> dict[str, Any]:
        return {
            "id": row["id"],
            "node": None if n % 2 else f"edge-{n}",
            "last_signal": {"bps": n * 1e9, "ports": [n], "text": "ü"},
            "signals": 100 + n,
            "updated_at": NOW + timedelta(minutes=n),
            "raw_details": {"n": n} if n % 2 else None,
            "held_until": NOW + timedelta(hours=1) if n % 2 else None,
        }

    with write(engine) as conn:
        update_rows(conn, incidents, "id", cols, [changed(r, n) for n, r in enumerate(fast, 1)])
        conn.execute(
            update(incidents)
            .where(incidents.c.id == bindparam("b_id"))
            .values({c: bindparam("b_" + c) for c in cols}),
            [{f"b_{k}": v for k, v in changed(r, n).items()} for n, r in enumerate(slow, 1)],
        )
    got_fast = read(engine, incidents, [r["id"] for r in fast])
    got_slow = read(engine, incidents, [r["id"] for r in slow])
    key = {r["id"]: n for n, r in enumerate([*fast, *slow])}
    got_fast.sort(key=lambda r: key[r["id"]])
    got_slow.sort(key=lambda r: key[r["id"]])
    for n, (a, b) in enumerate(zip(got_fast, got_slow, strict=True), 1):
        assert a["signals"] == 100 + n and a["last_signal"]["ports"] == [n]
        assert {**a, "id": b["id"], "target": b["target"]} == b
