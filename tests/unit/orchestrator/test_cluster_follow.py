"""Adapters created, changed or deleted through one instance reach the others' hubs
without a restart (several instances on one PostgreSQL), so the leases can hand any
adapter to whichever instance should drive it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.base import AdapterConfig
from adapters.fake import FakeAdapter
from orchestrator.service import Service
from policies.errors import NotFound
from tests.unit.orchestrator.conftest import add_fake, bh, policy, req, settings_for
from tests.unit.orchestrator.test_cluster import AUDIT_KEY, _driver, _pause, _state, _until

pytestmark = pytest.mark.usefixtures("postgres")


def _has(svc: Service, name: str) -> bool:
    try:
        svc.hub.by_name(name)
    except NotFound:
        return False
    return True


async def test_an_adapter_made_through_one_instance_is_driven_by_another(
    tmp_path: Path, postgres_url: str
) -> None:
    made: list[Service] = []
    try:
        for k in range(2):  # both started before the adapter exists
            svc = Service(
                settings_for(
                    tmp_path / f"i{k}",
                    database_url=postgres_url,
                    lease_seconds=3.0,
                    audit_key=AUDIT_KEY,
                ),
                policy=policy(),
            )
            await svc.start()
            made.append(svc)
        a, b = made
        aid, _ = await add_fake(a, "edge")  # through A; nobody restarts or reloads B
        await _until(lambda: _has(b, "edge"), 10, "B's hub has the adapter A created")
        assert b.hub.get(aid).name == "edge"
        await _until(lambda: _driver(made, aid) is not None, 10, "someone drives it")
        first = _driver(made, aid)
        assert first is not None
        other = b if first is a else a
        rid = int((await other.create_rule(req(bh("198.51.100.1"), aid))).rule["id"])
        await _until(lambda: _state(a, rid) == "active", 10, "the driver sends it")

        await _pause(first)  # the driver stops renewing: the other one takes over
        await _until(lambda: other.drives(aid), 15, "the other instance takes over")
        rid2 = int((await first.create_rule(req(bh("198.51.100.2"), aid))).rule["id"])
        await _until(lambda: _state(other, rid2) == "active", 10, "sent by the new driver")
        fake = other.hub.live(aid)
        assert isinstance(fake, FakeAdapter)
        assert len(fake.held) == 2  # both rules, through the adapter it never saw created

        # changed through the paused instance: the driver rebuilds it and reconciles
        await first.upsert_adapter(
            AdapterConfig(name="edge", adapter_type="fake", config={"readback": False}),
            adapter_id=aid,
            actor="test",
        )
        await _until(lambda: other.hub.get(aid).config.get("readback") is False, 10, "the change")
        rebuilt = other.hub.live(aid)
        assert isinstance(rebuilt, FakeAdapter) and rebuilt is not fake
        await _until(lambda: len(rebuilt.held) == 2, 10, "the rebuilt adapter reconciled")

        # deleted through the paused instance: gone from the driver's hub and leases
        await first.delete_adapter(aid, "test", force=True)
        await _until(lambda: not _has(other, "edge"), 10, "the deletion")
        await _until(lambda: not other.drives(aid), 10, "no longer driven")
    finally:
        for svc in made:
            await svc.stop()
