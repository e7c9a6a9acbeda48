"""``POST /policy/plan``: what a proposed policy document would decide differently.

Nothing is saved; bad documents and signals are refused with a code naming the field.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import settings_for
from tests.unit.orchestrator.test_signals_api import ADMIN, TIERS, Client, signal

READ = "r" * 64


async def test_plan_previews_a_change_and_saves_nothing(tmp_path: Path) -> None:
    svc = Service(settings_for(tmp_path, admin_token=ADMIN))
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    try:
        bootstrap_token(svc, app.state.tokens)
        app.state.runtime.load_state()
        app.state.policy_doc.load()
        c = Client(app, svc)
        assert (
            await c("POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"})
        ).status_code == 201
        r = await c("PUT", "/mitigation/escalation-policy", json={"tiers": TIERS})
        assert r.status_code == 200, r.text
        r = await c("POST", "/incidents", json=signal(target_ip="203.0.113.20", bps="800M"))
        assert r.json()["decision"]["tier"] == "tier2", r.text
        r = await c("POST", "/incidents", json=signal(target_ip="203.0.113.21", bps="50M"))
        assert r.status_code in (200, 201), r.text
        exported = (await c("GET", "/policy/export")).json()["yaml"]

        # the document as exported: nothing would change
        r = await c("POST", "/policy/plan", json={"document": exported})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["signals"], body["source"], body["changed"]) == (2, "recent incidents", 0)

        # tier2 raised to 1G: the 800M attack stays on tier1 (a rate limit, not a drop)
        changed = exported.replace("bps: 500M", "bps: 1G")
        assert changed != exported
        r = await c("POST", "/policy/plan", json={"document": changed})
        body = r.json()
        assert body["changed"] == 1, body
        (change,) = body["changes"]
        assert change["target"] == "203.0.113.20"
        assert (change["before"]["tier"], change["after"]["tier"]) == ("tier2", "tier1")
        assert "tier2 -> " in change["text"] or "/tier2 ->" in change["text"]
        assert body["summary"] == "1 of 2 signal(s) decided differently"

        # recorded signals given: replayed in order through both policies
        rec = [
            {**signal(target_ip="198.51.100.1", bps="800M"), "at": 0},
            {**signal(target_ip="198.51.100.1", bps="800M"), "at": 60},
        ]
        r = await c("POST", "/policy/plan", json={"document": changed, "signals": rec})
        body = r.json()
        assert (body["source"], body["signals"]) == ("given", 2)
        assert body["changed"] >= 1 and body["changes"][-1]["after"]["tier"] == "tier1"

        # nothing was saved: the policy in force still has tier2 at 500M
        tiers = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]["tiers"]
        assert [t["bps"] for t in tiers if t["name"] == "tier2"] == [500_000_000]

        # a viewer may preview (it changes nothing)
        made = (await c("POST", "/workspace/tokens", json={"name": "v", "scope": "read"})).json()
        r = await c(
            "POST",
            "/policy/plan",
            json={"document": exported},
            headers={"Authorization": f"Bearer {made['token']}"},
        )
        assert r.status_code == 200, r.text

        # bad input: a clear code and field, nothing changes
        for payload, code, field in (
            ({"document": "escalation: [unclosed"}, "invalid_document", "document"),
            ({"document": "- a list"}, "invalid_document", "document"),
            (
                {"document": "escalation:\n  tiers:\n  - name: t\n    bps: lots\n"},
                None,
                "escalation.tiers.0.bps",
            ),
            (
                {"document": exported, "signals": [{"target_ip": "not an address"}]},
                "invalid_signal",
                "signals.0",
            ),
            ({"document": exported, "extra": 1}, None, "extra"),
        ):
            r = await c("POST", "/policy/plan", json=payload)
            assert r.status_code in (400, 422), (payload, r.text)
            err = r.json()["error"]
            assert err["field"] is not None and err["field"].startswith(field), (payload, err)
            if code is not None:
                assert err["code"] == code, err
    finally:
        await svc.stop()
