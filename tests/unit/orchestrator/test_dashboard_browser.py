"""The dashboard in a real Chromium (Debian's chromium + chromium-driver, via Selenium).

The service runs behind uvicorn on loopback; the browser logs in as an operator, sees a
rule created through the API appear without a reload (the event stream), withdraws it from
the page with a reason and sees it leave; runs a runbook's test from its page and sees the
per-step results, toggles it; previews a policy change's plan; a viewer gets no withdraw
button and is refused if it tries anyway; every page is saved as a screenshot under the
test's tmp directory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests import pcapgen as g
from tests.conftest import need, need_binaries
from tests.unit.orchestrator.test_event_stream import H, serving

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"
T = TypeVar("T")


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    need_binaries(CHROMIUM, CHROMEDRIVER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:  # pragma: no cover - a dev dependency
        need(False, "selenium missing (pip install -e '.[dev]')")
        raise
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def until(what: str, check: Callable[[], T | None], seconds: float = 30.0) -> T:
    """Poll ``check`` (in the browser's thread) until it gives something; fail loudly."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = check()
        except Exception:  # stale elements while the page redraws
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def log_in(driver: Any, base: str, user: str) -> None:
    driver.get(base + "/ui/rules")
    until("the login form", lambda: css(driver, "#login:not([hidden]) #username"))
    css(driver, "#username")[0].send_keys(user)
    css(driver, "#password")[0].send_keys(PASSWORD)
    css(driver, "#login-submit")[0].click()
    until("the rules page", lambda: css(driver, "#rules-table"))
    until("the login form to go", lambda: not css(driver, "#login")[0].is_displayed())
    until("the live stream", lambda: css(driver, "#live.on"))


def log_out(driver: Any) -> None:
    css(driver, "#logout")[0].click()
    until("the login form", lambda: css(driver, "#login:not([hidden])"))


def shoot(driver: Any, shots: Path, base: str, page: str, ready: str) -> Path:
    driver.execute_script("go(arguments[0])", f"/ui/{page}")
    until(f"page {page}", lambda: css(driver, ready))
    text = driver.execute_script("return document.getElementById('view').innerText")
    assert "[object " not in text and "undefined" not in text, text
    assert "null" not in [line.strip() for line in text.splitlines()], text  # a stray null
    path = shots / f"{page.replace('/', '-')}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000, f"{path} looks empty"
    return path


def click(driver: Any, selector: str) -> None:
    """Click the first match, again if a live redraw replaced it under the click."""

    def attempt() -> bool | None:
        found = css(driver, selector)
        if not found:
            return None
        found[0].click()
        return True

    until(f"a click on {selector}", attempt)


def row_ids(driver: Any) -> set[int]:
    return {
        int(r.get_attribute("data-rule-id")) for r in css(driver, "#rules-table tr[data-rule-id]")
    }


async def test_dashboard_in_chromium(tmp_path: Path) -> None:
    need_binaries(CHROMIUM, CHROMEDRIVER)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with (
        serving(tmp_path, None) as (_, base),
        httpx.AsyncClient(base_url=base + "/api/v1", headers=H, timeout=30) as api,
    ):
        r = await api.post(
            "/mitigation/adapters",
            json={
                "adapter_type": "fake",
                "name": "edge",
                "config": {"sessions": {"192.0.2.1": "established"}},
            },
        )
        edge = r.json()["adapter"]["id"]
        await api.post(f"/mitigation/adapters/{edge}/test")
        for name, role in (("otto", "operator"), ("vera", "viewer"), ("ada", "admin")):
            r = await api.post(
                "/workspace/operators", json={"username": name, "password": PASSWORD, "role": role}
            )
            assert r.status_code == 201, r.text
        r = await api.post(
            "/incidents",
            json={
                "target_ip": "198.51.100.20",
                "bps": "2G",
                "attack_family": "udp_flood",
                "severity": "high",
            },
        )
        assert r.status_code in (200, 201), r.text
        incident = r.json()["incident"]["id"]
        capture = g.write(tmp_path / "c.pcap", g.dns_reflection(200), fmt="pcap").read_bytes()
        r = await api.post(
            "/pcaps",
            params={"incident_id": incident},
            content=capture,
            headers={"Content-Type": "application/vnd.tcpdump.pcap"},
        )
        assert r.status_code == 201, r.text
        pcap = r.json()["pcap"]["id"]
        r = await api.post(
            "/runbooks",
            json={
                "name": "udp response",
                "trigger_conditions": {"min_severity": "medium", "attack_family": "udp_flood"},
                "steps": [
                    {"action_type": "log", "action_config": {"message": "{attack_family}"}},
                    {"action_type": "wait", "action_config": {"seconds": 0}},
                ],
            },
        )
        assert r.status_code == 201, r.text
        runbook = r.json()["runbook"]["id"]

        with chromium(tmp_path / "profile-operator") as driver:
            await asyncio.to_thread(log_in, driver, base, "otto")
            before = await asyncio.to_thread(row_ids, driver)

            # a rule made through the API shows up without a reload
            r = await api.post(
                "/mitigation/rules",
                json={
                    "intent_type": "blackhole",
                    "target_ip": "203.0.113.77",
                    "adapter_id": edge,
                    "reason": "from the API",
                },
            )
            assert r.status_code == 201, r.text
            rule_id = r.json()["rule"]["id"]
            assert rule_id not in before
            marker = await asyncio.to_thread(
                driver.execute_script, "return window.performance.timeOrigin + performance.now()"
            )
            await asyncio.to_thread(until, "the new rule's row", lambda: rule_id in row_ids(driver))
            assert marker  # the same document: the page was never reloaded
            still = await asyncio.to_thread(
                driver.execute_script, "return window.performance.timeOrigin + performance.now()"
            )
            assert still >= marker

            # withdraw it from the page, with a reason; it leaves the list
            def withdraw() -> None:
                click(driver, f"button.withdraw[data-rule='{rule_id}']")
                box = until("the reason box", lambda: css(driver, "input.withdraw-reason"))[0]
                box.send_keys("attack over")
                click(driver, "button.withdraw-confirm")
                until(
                    "the withdrawn rule to leave",
                    lambda: rule_id not in row_ids(driver) and css(driver, "#rules-table"),
                )

            await asyncio.to_thread(withdraw)
            got = (await api.get(f"/mitigation/rules/{rule_id}")).json()["rule"]
            assert got["state"] in ("withdrawing", "withdrawn")
            audit = (await api.get("/audit")).json()["entries"]
            assert any(e["actor"] == "otto" and str(rule_id) in e["target"] for e in audit), audit[
                :5
            ]

            # one screenshot per page (with a rule on the wire)
            r = await api.post(
                "/mitigation/rules",
                json={"intent_type": "blackhole", "target_ip": "203.0.113.80", "adapter_id": edge},
            )
            assert r.status_code == 201, r.text

            def screenshots() -> list[Path]:
                return [
                    shoot(driver, shots, base, "overview", "#rules-by-adapter"),
                    shoot(driver, shots, base, "rules", "#rules-table"),
                    shoot(driver, shots, base, "incidents", "main table"),
                    shoot(driver, shots, base, f"incident/{incident}", "main .card pre"),
                    shoot(driver, shots, base, "adapters", "main table"),
                    shoot(driver, shots, base, "policy", "#policy-tiers"),
                    shoot(driver, shots, base, "audit", "#audit-verify"),
                    shoot(driver, shots, base, "pcaps", "#pcaps-table"),
                    shoot(driver, shots, base, f"pcap/{pcap}", "#pcap-analysis"),
                    shoot(driver, shots, base, "jobs", "main h2"),
                ]

            taken = await asyncio.to_thread(screenshots)

            # runbooks: a test run from the page shows its execution with per-step results
            def runbook_pages() -> tuple[list[Path], list[str]]:
                shot = shoot(driver, shots, base, "runbooks", "#runbooks-table")
                click(driver, ".runbook-test")
                until("the execution", lambda: css(driver, ".execution .step-result"))
                steps = [e.text for e in css(driver, ".execution .step-result")]
                return [shot, shoot(driver, shots, base, f"runbook/{runbook}", ".execution")], steps

            pages, steps = await asyncio.to_thread(runbook_pages)
            taken += pages
            execs = (await api.get(f"/runbooks/{runbook}/executions")).json()["executions"]
            assert [e["mode"] for e in execs] == ["dry_run"], execs
            # each step's row on the page shows its action and its result
            want_steps = [(st["action_type"], st["status"]) for st in execs[0]["steps"]]
            assert [a for a, _ in want_steps] == ["log", "wait"], want_steps
            assert len(steps) == 2, steps
            for text, (action, status) in zip(steps, want_steps, strict=True):
                assert action in text and status in text, (text, action, status)

            def toggle() -> None:
                driver.execute_script("go('/ui/runbooks')")
                click(driver, ".runbook-toggle")
                until("the runbook disabled", lambda: css(driver, "#runbooks-table .s-disabled"))

            await asyncio.to_thread(toggle)
            assert (await api.get(f"/runbooks/{runbook}")).json()["runbook"]["active"] is False

            # the policy page's plan preview: edit the document, see what would change
            proposal = "escalation:\n  tiers:\n  - name: huge\n    bps: 100G\n    intents:\n"
            proposal += "    - type: blackhole\n"
            want = (await api.post("/policy/plan", json={"document": proposal})).json()
            assert want["changed"] >= 1, want

            def plan_preview() -> str:
                driver.execute_script("go('/ui/policy')")
                box = until("the plan editor", lambda: css(driver, "#plan-document"))[0]
                assert "tiers:" in box.get_attribute("value")  # the export, to edit
                box.clear()
                box.send_keys(proposal)
                click(driver, "#plan-preview")
                until(
                    "the plan", lambda: css(driver, "#plan-summary") or css(driver, "#plan-error")
                )
                assert not css(driver, "#plan-error"), css(driver, "#plan-error")[0].text
                driver.save_screenshot(str(shots / "policy-plan.png"))
                return str(css(driver, "#plan-summary")[0].text)

            summary = await asyncio.to_thread(plan_preview)
            assert summary.startswith(want["summary"]), (summary, want)
            taken.append(shots / "policy-plan.png")
            esc = (await api.get("/mitigation/escalation-policy")).json()["policy"]
            assert "huge" not in [t["name"] for t in esc["tiers"]]  # a preview saves nothing

            def verify_audit() -> str:
                driver.execute_script("go('/ui/audit')")
                until("the audit page", lambda: css(driver, "#audit-verify"))[0].click()
                el = until(
                    "the verification",
                    lambda: [e for e in css(driver, "#audit-verify-result") if e.text],
                )
                return str(el[0].text)

            assert "chain intact" in await asyncio.to_thread(verify_audit)
            await asyncio.to_thread(log_out, driver)

            # a viewer sees the rule list without withdraw buttons, and the API refuses it
            r = await api.post(
                "/mitigation/rules",
                json={"intent_type": "blackhole", "target_ip": "203.0.113.78", "adapter_id": edge},
            )
            other = r.json()["rule"]["id"]
            await asyncio.to_thread(log_in, driver, base, "vera")
            await asyncio.to_thread(
                until, "the viewer's rule list", lambda: other in row_ids(driver)
            )
            assert await asyncio.to_thread(css, driver, "button.withdraw") == []
            status = await asyncio.to_thread(
                driver.execute_async_script,
                """const done = arguments[arguments.length - 1];
                fetch('/api/v1/mitigation/rules/' + arguments[0], {method: 'DELETE',
                  headers: {'X-CSRF-Token': S.csrf, 'Content-Type': 'application/json'},
                  body: JSON.stringify({reason: 'viewer'})}).then(r => done(r.status));""",
                other,
            )
            assert status == 403
            assert (await api.get(f"/mitigation/rules/{other}")).json()["rule"]["state"] == "active"
            assert (
                await asyncio.to_thread(css, driver, "#nav a[data-page='operators']:not([hidden])")
                == []
            )
            await asyncio.to_thread(log_out, driver)

            # an admin sees the operators page
            await asyncio.to_thread(log_in, driver, base, "ada")
            taken.append(
                await asyncio.to_thread(shoot, driver, shots, base, "operators", "main table")
            )

        assert len(taken) == 14
        print(f"\nscreenshots: {shots}")
