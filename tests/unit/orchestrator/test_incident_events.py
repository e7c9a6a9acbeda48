"""Every detector event id that fed an incident names it: a signal that updates an
existing incident (``POST /incidents`` or the bulk form) records its ``source`` +
``event_id`` with the incident, so that a later ``unban`` by that event id, or a signal
carrying it, finds the incident, after a restart too, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.incidents import IncidentStore
from orchestrator.store.models import incident_events

pytestmark = pytest.mark.postgresql

TARGET = "198.51.100.40"


def ban(event_id: str | None, target: str = TARGET) -> dict[str, Any]:
    body: dict[str, Any] = {"target_ip": target, "bps": "1M"}
    if event_id is not None:
        body.update(source="det", event_id=event_id)
    return body


async def test_an_unban_by_any_event_that_fed_the_incident_resolves_it_after_a_restart(
    make_api: Any,
) -> None:
    api = await make_api()
    first = (await api.ok("POST", "/incidents", json=ban("e1")))["incident"]
    fed = (await api.ok("POST", "/incidents", json=ban("e2")))["incident"]
    bulk = await api.ok("POST", "/incidents/bulk", json={"signals": [ban("e3")]})
    assert fed["id"] == first["id"] and bulk["results"][0]["incident_id"] == first["id"]
    assert fed["event_id"] == "e1"  # the incident keeps the event that opened it
    with api.svc.engine.connect() as conn:
        recorded = conn.execute(
            select(incident_events.c.event_id, incident_events.c.incident_id)
        ).all()
    assert sorted(recorded) == [("e2", first["id"]), ("e3", first["id"])]
    await api.svc.stop()

    api = await make_api()  # a restart: nothing is known but what the store holds
    # a signal with a recorded event id names that incident (here: about another target)
    r = await api.call("POST", "/incidents", json=ban("e3", target="198.51.100.41"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "event_target_mismatch"
    again = (await api.ok("POST", "/incidents", json=ban("e2")))["incident"]
    assert again["id"] == first["id"] and again["signals"] == 4
    done = await api.ok(
        "POST", "/incidents", json={"action": "unban", "source": "det", "event_id": "e2"}
    )
    assert done["incident"]["id"] == first["id"]
    assert done["incident"]["status"] == "resolved"


async def test_an_incident_opened_without_event_id_takes_the_first_that_feeds_it(
    make_api: Any,
) -> None:
    api = await make_api()
    opened = (await api.ok("POST", "/incidents", json=ban(None)))["incident"]
    await api.ok("POST", "/incidents", json=ban("e1"))
    body = await api.ok("POST", "/incidents/bulk", json={"signals": [ban("e2"), ban("e1")]})
    assert {r["incident_id"] for r in body["results"]} == {opened["id"]}
    with api.svc.engine.connect() as conn:
        stored = IncidentStore.get(conn, opened["id"])
        named = IncidentStore.by_event(conn, [("det", "e1"), ("det", "e2"), ("det", "e9")])
    assert (stored.source, stored.event_id, stored.signals) == ("det", "e1", 4)
    assert {p: i.id for p, i in named.items()} == {
        ("det", "e1"): opened["id"],
        ("det", "e2"): opened["id"],
    }
    await api.svc.stop()
    api = await make_api()
    body = await api.ok(
        "POST",
        "/incidents/bulk",
        json={"signals": [{"action": "unban", "source": "det", "event_id": "e2"}]},
    )
    assert body["results"][0]["incident_id"] == opened["id"]
    assert body["results"][0]["incident_status"] == "resolved"


async def test_an_event_names_the_incident_it_fed_last(make_api: Any) -> None:
    """An event that named an ended incident and then fed a live one names the live one."""
    api = await make_api()
    old = (await api.ok("POST", "/incidents", json=ban("e1", target="198.51.100.42")))["incident"]
    await api.ok("POST", "/incidents", json={"action": "unban", "source": "det", "event_id": "e1"})
    live = (await api.ok("POST", "/incidents", json=ban("e7")))["incident"]
    fed = (await api.ok("POST", "/incidents", json=ban("e1")))["incident"]
    assert fed["id"] == live["id"] != old["id"]
    with api.svc.engine.connect() as conn:
        assert IncidentStore.by_event(conn, [("det", "e1")])[("det", "e1")].id == live["id"]
        _, by_event = IncidentStore.for_signals(conn, [], [("det", "e1"), ("det", "e7")])
    assert {p: i.id for p, i in by_event.items()} == {
        ("det", "e1"): live["id"],
        ("det", "e7"): live["id"],
    }
    done = await api.ok(
        "POST", "/incidents", json={"action": "unban", "source": "det", "event_id": "e1"}
    )
    assert done["incident"]["id"] == live["id"] and done["incident"]["status"] == "resolved"


async def test_the_incident_detail_lists_every_event_that_fed_it(make_api: Any) -> None:
    api = await make_api()
    first = (await api.ok("POST", "/incidents", json=ban("e1")))["incident"]
    await api.ok("POST", "/incidents", json=ban("e2"))
    await api.ok("POST", "/incidents/bulk", json={"signals": [ban("e3"), ban("e2")]})
    detail = (await api.ok("GET", f"/incidents/{first['id']}"))["incident"]
    fed = detail["detector_events"]
    assert [(e["source"], e["event_id"]) for e in fed] == [
        ("det", "e1"),
        ("det", "e2"),
        ("det", "e3"),
    ]
    assert fed[0]["at"] == first["opened_at"] < fed[1]["at"] <= fed[2]["at"]

    other = "198.51.100.43"  # opened without an event id: it takes the first that feeds it
    opened = (await api.ok("POST", "/incidents", json=ban(None, target=other)))["incident"]
    none = (await api.ok("GET", f"/incidents/{opened['id']}"))["incident"]
    assert none["detector_events"] == []
    await api.ok("POST", "/incidents", json=ban("e9", target=other))
    took = (await api.ok("GET", f"/incidents/{opened['id']}"))["incident"]
    assert took["event_id"] == "e9"
    assert [(e["event_id"], e["at"] > opened["opened_at"]) for e in took["detector_events"]] == [
        ("e9", True)
    ]
