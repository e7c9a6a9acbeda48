"""/metrics after a scripted scenario: every series has the value the scenario implies.

Also: the alert rules and the Grafana dashboard name only series the service exports,
and ``promtool`` (Debian's prometheus package) accepts the rules file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.metrics import SluiceCollector
from orchestrator.service import Service
from orchestrator.store.models import events, rules
from tests.conftest import need
from tests.unit.orchestrator.conftest import settings_for
from tests.unit.orchestrator.test_signals_api import ADMIN, TIERS, Client, H, signal

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy" / "monitoring" / "sluice-alerts.yml"
GRAFANA = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (
        f"{name}{labels} missing; have {sorted(k for k in samples if k[0] == name)}"
    )
    return samples[key]


def log_samples(collector: SluiceCollector) -> list[tuple[str, dict[str, str], float]]:
    collector._follow()
    out = [(s.name, s.labels, s.value) for fam in collector._from_log() for s in fam.samples]
    assert any(name.startswith("sluice_expiry_lateness") and v for name, _, v in out)
    return sorted(out, key=lambda x: (x[0], sorted(x[1].items())))


async def scrape(
    c: Client, path: str = "/metrics", headers: dict[str, str] | None = None
) -> Samples:
    r = await c.http.get(path, headers=H if headers is None else headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def test_series_after_a_scenario(tmp_path: Path) -> None:
    clock = Clock()
    svc = Service(settings_for(tmp_path, admin_token=ADMIN), clock=clock)
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    try:
        bootstrap_token(svc, app.state.tokens)
        app.state.runtime.load_state()
        app.state.policy_doc.load()
        c = Client(app, svc)
        r = await c(
            "POST",
            "/mitigation/adapters",
            json={
                "adapter_type": "fake",
                "name": "edge",
                "config": {"sessions": {"192.0.2.1": "established", "192.0.2.2": "active"}},
            },
        )
        assert r.status_code == 201, r.text
        r = await c(
            "POST",
            "/mitigation/adapters",
            json={
                "adapter_type": "fake",
                "name": "bad",
                "config": {"fail_announce": "refused by the router", "fail_retryable": False},
            },
        )
        bad = r.json()["adapter"]["id"]
        r = await c("POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "spare"})
        spare = r.json()["adapter"]["id"]
        edge = svc.hub.by_name("edge").id
        assert (
            await c("PUT", "/mitigation/escalation-policy", json={"tiers": TIERS})
        ).status_code == 200
        for adapter in (edge, bad):
            assert (await c("POST", f"/mitigation/adapters/{adapter}/test")).status_code == 200

        # signals: two on one attack (one incident), one refused by a capability guardrail
        statuses = []
        for body in (signal(), signal(bps="900M")):
            r = await c("POST", "/incidents", json=body)
            assert r.status_code in (200, 201), r.text
            statuses.append(r.json()["decision"]["status"])
        r = await c(
            "POST",
            "/mitigation/adapters",
            json={
                "adapter_type": "fake",
                "name": "edge",
                "capabilities": ["flowspec"],
                "config": {"sessions": {"192.0.2.1": "established", "192.0.2.2": "active"}},
            },
        )
        assert r.status_code == 200, r.text
        r = await c("POST", "/incidents", json=signal(target_ip="198.51.100.8", bps="5G"))
        statuses.append(r.json()["decision"]["status"])
        assert r.json()["decision"]["refused"][0]["code"] == "capability_missing"

        # manual rules: one that fails, one that expires late
        r = await c(
            "POST",
            "/mitigation/rules",
            json={"intent_type": "blackhole", "target_ip": "203.0.113.9", "adapter_id": bad},
        )
        assert r.json()["rule"]["state"] == "failed", r.text
        r = await c(
            "POST",
            "/mitigation/rules",
            json={
                "intent_type": "blackhole",
                "target_ip": "203.0.113.10",
                "adapter_id": spare,
                "ttl": 5,
            },
        )
        short = r.json()["rule"]["id"]
        assert r.json()["rule"]["state"] == "active", r.text
        clock.offset = timedelta(seconds=12)
        assert await svc.expire_due() == 1
        await svc.dispatcher.drain()

        m = await scrape(c)
        with svc.engine.connect() as conn:
            states = conn.execute(select(rules.c.state, rules.c.adapter_id)).all()
            kinds = conn.execute(select(events.c.kind)).scalars().all()
            exp = conn.execute(select(rules.c.expires_at).where(rules.c.id == short)).scalar_one()
            expired_at = conn.execute(
                select(events.c.at).where(
                    events.c.rule_id == short, events.c.kind == "rule.expired"
                )
            ).scalar_one()
            made = conn.execute(
                select(rules.c.created_at, events.c.at)
                .join(events, events.c.rule_id == rules.c.id)
                .where(events.c.kind == "rule.active")
            ).all()
        names = {edge: "edge", bad: "bad", spare: "spare"}
        want: dict[tuple[str, str], int] = {}
        for state, adapter in states:
            want[(state, names[adapter])] = want.get((state, names[adapter]), 0) + 1
        assert want[("failed", "bad")] == 1 and want[("expired", "spare")] == 1
        for (state, name), n in want.items():
            assert value(m, "sluice_rules", state=state, adapter=name) == n
        assert value(m, "sluice_rule_failures_total", adapter="bad") == 1
        assert value(m, "sluice_adapter_up", adapter="edge", type="fake") == 1
        assert value(m, "sluice_adapter_up", adapter="bad", type="fake") == 1
        assert (
            value(m, "sluice_bgp_session_up", adapter="edge", peer="192.0.2.1", state="established")
            == 1
        )
        assert (
            value(m, "sluice_bgp_session_up", adapter="edge", peer="192.0.2.2", state="active") == 0
        )
        assert value(m, "sluice_bgp_session_transitions_total", adapter="edge", direction="up") == 1
        assert value(m, "sluice_signals_total") == 3
        for status in set(statuses):
            assert value(m, "sluice_decisions_total", status=status) == statuses.count(status)
        assert value(m, "sluice_guardrail_refusals_total", code="capability_missing") == 1
        assert value(m, "sluice_incidents_open", status="mitigating") >= 1
        n_active = len(made)
        assert n_active == kinds.count("rule.active") and n_active >= 2
        assert value(m, "sluice_request_to_announce_seconds_count") == n_active
        total = sum((at - created).total_seconds() for created, at in made)
        assert abs(value(m, "sluice_request_to_announce_seconds_sum") - total) < 1e-6
        lateness = (expired_at - exp).total_seconds()
        assert lateness >= 7  # the clock jumped 12 s past a 5 s TTL
        assert value(m, "sluice_expiry_lateness_seconds_count") == 1
        assert abs(value(m, "sluice_expiry_lateness_seconds_sum") - lateness) < 1e-6
        assert value(m, "sluice_expiry_lateness_seconds_bucket", le="5.0") == 0
        assert value(m, "sluice_expiry_lateness_seconds_bucket", le="10.0") == 1
        assert value(m, "sluice_expiry_overdue_seconds") == 0
        assert value(m, "sluice_policy_reload_ok") == 1
        assert value(m, "sluice_events_total", kind="rule.failed", adapter="bad") == 1

        # a second scrape reads only what is new, and counts nothing twice
        m2 = await scrape(c)
        assert value(m2, "sluice_request_to_announce_seconds_count") == n_active
        assert value(m2, "sluice_signals_total") == 3

        # an active rule past its expiry shows as overdue (the sweep did not run)
        r = await c(
            "POST",
            "/mitigation/rules",
            json={
                "intent_type": "blackhole",
                "target_ip": "203.0.113.11",
                "adapter_id": spare,
                "ttl": 5,
            },
        )
        clock.offset += timedelta(seconds=65)
        m3 = await scrape(c)
        assert value(m3, "sluice_expiry_overdue_seconds") >= 60

        # /metrics at the root needs a token unless the operator made it public
        r = await c.http.get("/metrics")
        assert r.status_code == 401

        # the first scrape's database aggregates equal reading the log row by row
        aggregated = log_samples(SluiceCollector(svc, aggregate_after=0))
        row_by_row = log_samples(SluiceCollector(svc, aggregate_after=None))
        assert [(n, lb) for n, lb, _ in aggregated] == [(n, lb) for n, lb, _ in row_by_row]
        assert [v for *_, v in aggregated] == pytest.approx([v for *_, v in row_by_row])
    finally:
        await svc.stop()


async def test_public_metrics_and_policy_reload(tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    shutil.copytree(ROOT / "policies" / "examples" / "default", pdir)
    svc = Service(settings_for(tmp_path, admin_token=ADMIN, policy_dir=pdir, metrics_public=True))
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    try:
        bootstrap_token(svc, app.state.tokens)
        app.state.runtime.load_state()
        c = Client(app, svc)
        rt = app.state.runtime
        m = await scrape(c, headers={})
        assert value(m, "sluice_policy_reloads_total") == 0
        assert value(m, "sluice_policy_reload_ok") == 1
        settings_file = pdir / "settings.yaml"
        settings_file.write_text(settings_file.read_text() + "\n# changed\n")
        status = await rt.reload()
        assert status is not None and status.ok, status
        m = await scrape(c, headers={})
        assert value(m, "sluice_policy_reloads_total") == 1
        settings_file.write_text("settings: [this is not a mapping\n")
        status = await rt.reload()
        assert status is not None and not status.ok
        m = await scrape(c, headers={})
        assert value(m, "sluice_policy_reload_ok") == 0
        assert value(m, "sluice_policy_reloads_total") == 1
        # the API's own /api/v1/metrics still needs a token
        assert (await c.http.get("/api/v1/metrics")).status_code == 401
    finally:
        await svc.stop()


SERIES = re.compile(r"\b(sluice_[a-z_]+)")


def exported() -> set[str]:
    """Every series name the service can export (families and their sample names)."""
    from orchestrator import dispatcher, metrics, reconcile

    names = {"sluice_adapter_operations_total", "sluice_reconcile_drift_total"}
    names |= {f"sluice_adapter_batch_seconds_{s}" for s in ("bucket", "count", "sum")}
    assert dispatcher.OPS_TOTAL and reconcile.DRIFT  # the two families named above
    src = Path(metrics.__file__).read_text()
    for fam in re.findall(r'"(sluice_[a-z_]+)"', src):
        names |= {fam, f"{fam}_total", f"{fam}_bucket", f"{fam}_count", f"{fam}_sum"}
    return names


def test_alert_rules_and_dashboard_name_existing_series() -> None:
    doc: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
    assert {
        "SluiceSpeakerDown",
        "SluiceRulesFailing",
        "SluiceReconcileDrift",
        "SluiceExpiryLate",
        "SluicePolicyReloadFailing",
    } <= set(alerts)
    known = exported()
    exprs = list(alerts.values())
    dash = json.loads(GRAFANA.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for expr in exprs:
        for name in SERIES.findall(expr):
            assert name in known, f"{name} in {expr!r} is not a series Sluice exports"


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool missing (Debian package prometheus)")
    assert promtool is not None
    out = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout, out.stdout
