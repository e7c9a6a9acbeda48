"""The policy through the API with the files still the truth (issue 9, items 6 and 7).

Objects declared in the policy directory are read-only; objects created through the API
live in the store as a layer over the files, marked ``managed_by``, survive hot reloads
and restarts, and are exported as YAML that the directory takes as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator.cli import app as cli
from orchestrator.policy_doc import LAYER_KEY
from orchestrator.store.models import kv
from tests.unit.orchestrator.test_signals_api import Client, signal, start
from tests.unit.policies.mmdb_writer import write_country_mmdb

REFERENCE_THRESHOLDS = {
    "target_ip": "203.0.113.10",
    "thresholds": {"tier1_bps": 1000000, "tier2_bps": 5000000},
}
FILES = {
    "adapters.yaml": "adapters:\n  - name: edge\n    adapter_type: fake\n",
    "escalation.yaml": "escalation:\n  hysteresis: 0.1\n  tiers:\n"
    "    - {name: tier1, bps: 1G, intents: [{type: blackhole}], adapters: [edge]}\n"
    "    - {name: tier2, bps: 5G, intents: [{type: scrubbing}], adapters: [edge]}\n",
    "tables.yaml": "settings:\n  dry_run: false\n"
    "thresholds:\n  - {target_ip: 198.51.100.0/24, thresholds: {tier1_bps: 2G}}\n"
    "allowlist:\n  - {ip_address: 192.0.2.53, label: resolver}\n",
}


def _code(r: Any) -> tuple[int, str, str | None]:
    body = r.json()
    assert body["ok"] is False, body
    return r.status_code, body["error"]["code"], body["error"].get("field")


def _layer(c: Client) -> Any:
    with c.svc.engine.connect() as conn:
        return conn.execute(select(kv.c.value).where(kv.c.key == LAYER_KEY)).scalar()


async def test_fresh_store_has_the_default_tiers_and_takes_the_reference_example(
    tmp_path: Path,
) -> None:
    c = await start(tmp_path)
    try:
        view = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]
        assert [(t["name"], t["bps"], t["ttl"]) for t in view["tiers"]] == [
            ("tier1", 100_000_000, 300),
            ("tier2", 500_000_000, 300),
            ("tier3", 2_000_000_000, 300),
            ("tier4", 5_000_000_000, 300),
        ]
        assert [t["intents"][0]["type"] for t in view["tiers"]] == [
            "flowspec_rate_limit",
            "flowspec_drop",
            "blackhole",
            "scrubbing",
        ]
        assert view["tiers"][2]["intents"][0]["communities"] == ["65535:666"]
        assert view["managed_by"] == "api"
        # a geo lockdown needs the service's country database
        r = await c(
            "PUT", "/mitigation/escalation-policy", json={"geo_lockdown": {"countries": ["CN"]}}
        )
        assert _code(r) == (422, "geo_database_not_configured", "geo_lockdown")
        # the reference's own example (was: refused, no tiers at all)
        r = await c("POST", "/mitigation/thresholds", json=REFERENCE_THRESHOLDS)
        assert r.status_code == 200, r.text
        entry = r.json()["threshold"]
        assert entry["target_ip"] == "203.0.113.10/32" and entry["managed_by"] == "api"
        # the default tiers decide but have no adapter until given one
        r = await c("POST", "/incidents", json=signal(target_ip="203.0.113.10", bps="2M"))
        d = r.json()["decision"]
        assert d["tier"] == "tier1" and d["rules"] == []
        assert any("names no adapter" in line for line in d["explanation"])
        await c("POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"})
        r = await c("PUT", "/mitigation/escalation-policy", json={"adapters": ["edge"]})
        assert r.status_code == 200, r.text
        r = await c("POST", "/incidents", json=signal(target_ip="203.0.113.11", bps="3G"))
        d = r.json()["decision"]
        assert d["tier"] == "tier3" and d["rules"][0]["intent"].startswith(
            "blackhole 203.0.113.11/32"
        )
    finally:
        await c.svc.stop()


async def test_reference_shapes_on_the_escalation_policy(tmp_path: Path) -> None:
    mmdb = write_country_mmdb(tmp_path / "c.mmdb", {"198.18.0.0/16": "CN"})
    c = await start(tmp_path, geoip_database=mmdb)
    try:
        view = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]
        # what GET shows can be sent back (was: "escalation" refused as unknown_parameter)
        r = await c("PUT", "/mitigation/escalation-policy", json={"escalation": view["escalation"]})
        assert r.status_code == 200, r.text
        r = await c(
            "PUT",
            "/mitigation/escalation-policy",
            json={
                "thresholds": {"tier1_bps": 200_000_000, "tier2": {"pps": "2M"}},
                "ttl": {"tier2": 60},
                "escalation": {"hold_down_seconds": 7, "episode_timeout_seconds": 600},
                "dry_run": True,
            },
        )
        assert r.status_code == 200, r.text
        p = r.json()["policy"]
        assert p["thresholds"]["tier1"] == {"bps": 200_000_000, "pps": None}
        assert p["thresholds"]["tier2"] == {"bps": 500_000_000, "pps": 2_000_000}
        assert p["ttl"] == {"tier1": 300, "tier2": 60, "tier3": 300, "tier4": 300}
        assert p["escalation"]["hold_down_seconds"] == 7
        assert p["escalation"]["episode_timeout_seconds"] == 600
        assert c.svc.policy.escalation.hold_down_seconds == 7 and c.svc.policy.settings.dry_run
        r = await c("PUT", "/mitigation/escalation-policy", json={"ttl": 120})
        assert set(r.json()["policy"]["ttl"].values()) == {120}

        geo = {"countries": ["CN", "ru"], "action": "block"}
        r = await c("PUT", "/mitigation/escalation-policy", json={"geo_lockdown": geo})
        assert r.status_code == 200, r.text
        g = r.json()["policy"]["geo_lockdown"]
        assert (g["countries"], g["mode"], g["from_tier"]) == (["CN", "RU"], "block", "tier1")
        assert g["database"] == str(mmdb)
        # a file path is the service's configuration, not a write token's to choose
        put = "/mitigation/escalation-policy"
        r = await c("PUT", put, json={"geo_lockdown": {**geo, "database": "/etc/shadow"}})
        assert _code(r) == (422, "unknown_parameter", "geo_lockdown.database")
        r = await c("PUT", "/mitigation/escalation-policy", json={"geo_lockdown": None})
        assert r.json()["policy"]["geo_lockdown"] is None
        # everything above lives in the layer, and survives a restart
        assert _layer(c)["escalation"]["hold_down_seconds"] == 7
    finally:
        await c.svc.stop()
    c2 = await start(tmp_path)
    try:
        assert c2.svc.policy.escalation.hold_down_seconds == 7
        assert c2.svc.policy.escalation.tiers[1].ttl == 120
    finally:
        await c2.svc.stop()


async def test_bad_input_gets_a_specific_code_and_changes_nothing(tmp_path: Path) -> None:
    mmdb = write_country_mmdb(tmp_path / "c.mmdb", {"198.18.0.0/16": "CN"})
    c = await start(tmp_path, geoip_database=mmdb)
    try:
        put = "/mitigation/escalation-policy"
        await c("PUT", put, json={"escalation": {"hold_down_seconds": 3}})
        before = (await c("GET", put)).json()["policy"]
        layer = _layer(c)
        th, ul = "/mitigation/thresholds", "/allowlist"
        geo = {"countries": ["CN"]}
        ip = {"target_ip": "203.0.113.1"}
        blackhole = [{"type": "blackhole"}]
        bad: list[tuple[str, str, dict[str, Any], tuple[str, str | None]]] = [
            (
                "PUT",
                put,
                {"thresholds": {"tier9_bps": 5}},
                ("unknown_tier", "thresholds.tier9_bps"),
            ),
            (
                "PUT",
                put,
                {"thresholds": {"tier9": {"bps": 5}}},
                ("unknown_tier", "thresholds.tier9"),
            ),
            (
                "PUT",
                put,
                {"thresholds": {"tier1_mbps": 5}},
                ("invalid_parameter", "thresholds.tier1_mbps"),
            ),
            (
                "PUT",
                put,
                {"thresholds": {"tier1": {"kbps": 5}}},
                ("unknown_parameter", "thresholds.tier1.kbps"),
            ),
            ("PUT", put, {"thresholds": {"tier2_bps": "1k"}}, ("invalid_policy", "escalation")),
            ("PUT", put, {"ttl": {"tier7": 60}}, ("unknown_tier", "ttl.tier7")),
            ("PUT", put, {"adapters": {"tier1": ["nope"]}}, ("invalid_policy", None)),
            ("PUT", put, {"colour": "red"}, ("unknown_parameter", "colour")),
            (
                "PUT",
                put,
                {"escalation": {"hold_down": 5}},
                ("unknown_parameter", "escalation.hold_down"),
            ),
            (
                "PUT",
                put,
                {"escalation": {"hold_down_seconds": -1}},
                ("invalid_policy", "escalation.hold_down_seconds"),
            ),
            (
                "PUT",
                put,
                {"tiers": [{"bps": "1G", "intents": blackhole}]},
                ("missing_parameter", "tiers.0.name"),  # the request schema says so first
            ),
            (
                "PUT",
                put,
                {"geo_lockdown": {**geo, "database": "/etc/shadow"}},
                ("unknown_parameter", "geo_lockdown.database"),
            ),
            (
                "PUT",
                put,
                {"geo_lockdown": {**geo, "action": "nuke"}},
                ("invalid_parameter", "geo_lockdown.action"),
            ),
            (
                "PUT",
                put,
                {"geo_lockdown": {**geo, "from_tier": "t9"}},
                ("unknown_tier", "geo_lockdown.from_tier"),
            ),
            (
                "PUT",
                put,
                {"geo_lockdown": {**geo, "countries": ["XX"], "enabled": False}},
                ("invalid_policy", "geo_lockdown.countries.0"),
            ),
            (
                "POST",
                th,
                {**ip, "thresholds": {"tier5_bps": 1}},
                ("unknown_tier", "thresholds.tier5_bps"),
            ),
            ("POST", th, {**ip, "thresholds": {}}, ("missing_parameter", "thresholds")),
            (
                "POST",
                th,
                {**ip, "thresholds": {"tier1_bps": 1}, "x": 1},
                ("unknown_parameter", "x"),
            ),
            ("POST", ul, {"ip_address": "203.0.113.0/33"}, ("invalid_parameter", "ip_address")),
        ]
        for method, path, body, want in bad:
            r = await c(method, path, json=body)
            status, code, field = _code(r)
            assert (status, code) == (422, want[0]), (body, r.text)
            if want[1] is not None:
                assert field == want[1], (body, r.text)
        assert (await c("GET", put)).json()["policy"] == before
        assert _layer(c) == layer
        assert (await c("GET", "/mitigation/thresholds")).json()["thresholds"] == []
    finally:
        await c.svc.stop()


async def test_api_objects_are_a_layer_over_the_files(tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir()
    for name, text in FILES.items():
        (pdir / name).write_text(text)
    c = await start(tmp_path, pdir)
    rt = c.app.state.runtime
    try:
        # what the files declare is read-only, naming the part
        put = "/mitigation/escalation-policy"
        assert _code(await c("PUT", put, json={"thresholds": {"tier1_bps": 1}})) == (
            409,
            "read_only",
            "thresholds",
        )
        assert _code(await c("PUT", put, json={"dry_run": True}))[:2] == (409, "read_only")
        r = await c("PUT", put, json={"escalation": {"hysteresis": 0.3}})
        assert _code(r) == (409, "read_only", "escalation.hysteresis")
        r = await c(
            "POST",
            "/mitigation/thresholds",
            json={"target_ip": "198.51.100.0/24", "thresholds": {"tier1_bps": 1}},
        )
        assert _code(r) == (409, "read_only", "target_ip")
        r = await c("POST", "/allowlist", json={"ip_address": "192.0.2.53"})
        assert _code(r) == (409, "duplicate_entry", "ip_address")
        files_view = (await c("GET", "/allowlist")).json()["entries"]
        assert [e["managed_by"] for e in files_view] == ["policy"]
        assert _code(await c("DELETE", f"/allowlist/{files_view[0]['id']}"))[:2] == (
            409,
            "read_only",
        )
        [t] = (await c("GET", "/mitigation/thresholds")).json()["thresholds"]
        assert t["managed_by"] == "policy"
        assert _code(await c("DELETE", f"/mitigation/thresholds/{t['id']}"))[:2] == (
            409,
            "read_only",
        )

        # what they leave out can be created through the API
        r = await c(
            "PUT", put, json={"escalation": {"hold_down_seconds": 4}, "baseline_mode": "dynamic"}
        )
        assert r.status_code == 200, r.text
        view = r.json()["policy"]
        assert view["managed_by"] == "policy"
        assert view["managed_by_field"]["escalation.hold_down_seconds"] == "api"
        assert view["managed_by_field"]["escalation.hysteresis"] == "policy"
        assert view["managed_by_field"]["dry_run"] == "policy"
        r = await c(
            "POST",
            "/mitigation/thresholds",
            json={**REFERENCE_THRESHOLDS, "thresholds": {"tier1_bps": "500M"}},
        )
        assert r.status_code == 200 and r.json()["threshold"]["managed_by"] == "api"
        r = await c(
            "POST",
            "/allowlist",
            json={"ip_address": "198.51.100.77", "scope": "node", "node": "edge-1"},
        )
        assert r.status_code == 201 and r.json()["entry"]["managed_by"] == "api"
        entries = (await c("GET", "/allowlist")).json()["entries"]
        assert [(e["ip_address"], e["managed_by"]) for e in entries] == [
            ("192.0.2.53/32", "policy"),
            ("198.51.100.77/32", "api"),
        ]
        assert c.svc.policy.escalation.hold_down_seconds == 4
        assert c.svc.policy.baseline.mode == "dynamic"

        # a hot reload of changed files keeps the API's objects in force
        (pdir / "escalation.yaml").write_text(FILES["escalation.yaml"].replace("5G", "6G"))
        status = await rt.reload()
        assert status is not None and status.ok, status
        assert c.svc.policy.escalation.tiers[1].bps == 6_000_000_000
        assert c.svc.policy.escalation.hold_down_seconds == 4
        assert len(c.svc.policy.thresholds) == 2 and len(c.svc.policy.allowlist) == 2

        # export: the API's objects as a policy file the directory takes as is
        r = await c("GET", "/policy/export")
        exported = r.json()["yaml"]
        doc = yaml.safe_load(exported)
        assert doc == {
            "escalation": {"hold_down_seconds": 4},
            "baseline": {"mode": "dynamic"},
            "thresholds": [{"target_ip": "203.0.113.10/32", "thresholds": {"tier1_bps": "500M"}}],
            "allowlist": [{"ip_address": "198.51.100.77/32", "scope": "node", "node": "edge-1"}],
        }
        (pdir / "api.yaml").write_text(exported)
        lint = CliRunner().invoke(cli, ["policy", "lint", str(pdir)])
        assert lint.exit_code == 0, lint.output
        before = c.svc.policy
        status = await rt.reload()
        assert status is not None and status.ok, status
        now = c.svc.policy
        assert now.escalation.hold_down_seconds == 4 and now.baseline.mode == "dynamic"
        key = str
        assert sorted(map(key, now.thresholds.to_list())) == sorted(
            map(key, before.thresholds.to_list())
        )
        assert sorted(map(key, now.allowlist.to_list())) == sorted(
            map(key, before.allowlist.to_list())
        )
        assert {e["managed_by"] for e in (await c("GET", "/allowlist")).json()["entries"]} == {
            "policy"
        }
        assert (await c("GET", "/policy/export")).json()["document"] == {}
    finally:
        await c.svc.stop()


async def test_export_command_from_the_store(tmp_path: Path) -> None:
    c = await start(tmp_path)
    try:
        await c("POST", "/allowlist", json={"ip_address": "203.0.113.53", "label": "dns"})
        await c(
            "PUT", "/mitigation/escalation-policy", json={"escalation": {"hold_down_seconds": 2}}
        )
    finally:
        await c.svc.stop()
    out = tmp_path / "api.yaml"
    db = f"sqlite:///{tmp_path / 'sluice.db'}"
    result = CliRunner().invoke(cli, ["policy", "export", "--database", db, "--output", str(out)])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    # the default tiers were in force (never changed): written out, so the export
    # reproduces the policy when committed
    assert [t["name"] for t in doc["escalation"]["tiers"]] == ["tier1", "tier2", "tier3", "tier4"]
    doc["escalation"].pop("tiers")
    assert doc["allowlist"] == [
        {"ip_address": "203.0.113.53/32", "scope": "workspace", "label": "dns"}
    ]
    assert doc["escalation"] == {"hold_down_seconds": 2}
    assert out.read_text().startswith("# Policy objects created through Sluice's API")


async def test_files_that_clash_with_api_objects_are_refused_on_reload(tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir()
    for name, text in FILES.items():
        (pdir / name).write_text(text)
    c = await start(tmp_path, pdir)
    rt = c.app.state.runtime
    try:
        r = await c("POST", "/allowlist", json={"ip_address": "203.0.113.0/24"})
        assert r.status_code == 201, r.text
        before = c.svc.policy
        # a file now allowlists an address inside the API's entry: one scope, overlapping
        (pdir / "more.yaml").write_text("allowlist:\n  - ip_address: 203.0.113.9\n")
        status = await rt.reload()
        assert status is not None and not status.ok
        assert "created through the API" in (status.error or "")
        assert "overlaps" in (status.error or "")
        assert c.svc.policy is before
        (pdir / "more.yaml").unlink()
        status = await rt.reload()
        assert status is not None and status.ok and c.svc.policy is before
    finally:
        await c.svc.stop()
