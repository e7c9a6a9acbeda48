"""Operators and roles: Argon2 passwords, HttpOnly SameSite session cookies with CSRF, and
the one ladder shared with API tokens (viewer=read, operator=write, admin=admin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from orchestrator.store.models import audit_log, operators, rules
from tests.unit.orchestrator.conftest import Api

PASSWORD = "correct horse battery"


async def login(api: Api, username: str, password: str = PASSWORD) -> tuple[str, str]:
    """Log in; returns the session cookie's value and the CSRF token."""
    r = await api.call(
        "POST", "/auth/login", token=None, json={"username": username, "password": password}
    )
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    sid = cookie.split(";", 1)[0].split("=", 1)[1]
    return sid, str(r.json()["csrf"])


async def as_session(
    api: Api, sid: str, method: str, path: str, csrf: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"Cookie": f"sluice_session={sid}"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return await api.call(method, path, token=None, headers=headers, **kw)


async def test_sessions_roles_and_csrf(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    edge = await api.fake()
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        body = await api.ok(
            "POST",
            "/workspace/operators",
            201,
            json={"username": name, "password": PASSWORD, "role": role},
        )
        assert body["operator"]["role"] == role
    with api.svc.engine.connect() as conn:
        hashes = conn.execute(select(operators.c.password_hash)).scalars().all()
    assert all(h.startswith("$argon2id$") and PASSWORD not in h for h in hashes)

    # bad input is refused, specifically, and changes nothing
    r = await api.call("POST", "/workspace/operators", json={"username": "x", "password": "short"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
    r = await api.call(
        "POST", "/workspace/operators", json={"username": "vera", "password": PASSWORD}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "operator_exists"
    r = await api.call(
        "POST", "/auth/login", token=None, json={"username": "vera", "password": "nope" * 4}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    r = await api.call(
        "POST", "/auth/login", token=None, json={"username": "nobody", "password": PASSWORD}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    assert len((await api.ok("GET", "/workspace/operators"))["operators"]) == 3

    rule = await api.ok(
        "POST",
        "/mitigation/rules",
        201,
        json={"intent_type": "blackhole", "target_ip": "203.0.113.7", "adapter_id": edge},
    )
    rule_id = rule["rule"]["id"]

    # a viewer reads, and cannot withdraw even with its CSRF token
    vsid, vcsrf = await login(api, "vera")
    me = (await as_session(api, vsid, "GET", "/auth/me")).json()
    assert (me["username"], me["role"], me["kind"], me["csrf"]) == (
        "vera",
        "viewer",
        "session",
        vcsrf,
    )
    r = await as_session(api, vsid, "GET", "/mitigation/rules")
    assert r.status_code == 200 and r.json()["total"] == 1
    r = await as_session(
        api, vsid, "DELETE", f"/mitigation/rules/{rule_id}", vcsrf, json={"reason": "x"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text

    # an operator withdraws, but only with the CSRF header of its own session
    osid, ocsrf = await login(api, "otto")
    r = await as_session(api, osid, "DELETE", f"/mitigation/rules/{rule_id}", json={"reason": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = await as_session(
        api, osid, "DELETE", f"/mitigation/rules/{rule_id}", vcsrf, json={"reason": "x"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    with api.svc.engine.connect() as conn:
        assert conn.execute(select(rules.c.state).where(rules.c.id == rule_id)).scalar() == "active"
    r = await as_session(
        api, osid, "DELETE", f"/mitigation/rules/{rule_id}", ocsrf, json={"reason": "done"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["rule"]["state"] in ("withdrawing", "withdrawn")
    # ...and is not an admin: adapters and operators are out of reach
    r = await as_session(
        api, osid, "POST", "/mitigation/adapters", ocsrf, json={"adapter_type": "fake", "name": "x"}
    )
    assert r.status_code == 403
    r = await as_session(api, osid, "GET", "/workspace/operators")
    assert r.status_code == 403
    r = await as_session(api, osid, "GET", "/workspace/tokens")
    assert r.status_code == 403
    # an admin session may
    asid, acsrf = await login(api, "ada")
    r = await as_session(
        api, asid, "POST", "/mitigation/adapters", acsrf, json={"adapter_type": "fake", "name": "x"}
    )
    assert r.status_code == 201, r.text

    # logout ends the session on the server, not only in the browser
    r = await as_session(api, osid, "POST", "/auth/logout", ocsrf)
    assert r.status_code == 200 and "sluice_session=" in r.headers["set-cookie"]
    r = await as_session(api, osid, "GET", "/mitigation/rules")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_session"

    # disabling ends the sessions; the last admin cannot be disabled
    await api.ok("DELETE", "/workspace/operators/vera")
    r = await as_session(api, vsid, "GET", "/mitigation/rules")
    assert r.status_code == 401
    r = await api.call("DELETE", "/workspace/operators/ada")
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin_operator"
    actions = [e["action"] for e in (await api.ok("GET", "/audit"))["entries"]]
    assert {"operator.create", "operator.login", "operator.disable"} <= set(actions)


async def test_tokens_take_role_names(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    body = await api.ok("POST", "/workspace/tokens", 201, json={"name": "noc", "scope": "viewer"})
    assert (body["scope"], body["role"]) == ("read", "viewer")
    viewer = body["token"]
    me = (await api.call("GET", "/auth/me", token=viewer)).json()
    assert (me["role"], me["kind"], me["csrf"]) == ("viewer", "token", None)
    r = await api.call("POST", "/mitigation/rules", token=viewer, json={})
    assert r.status_code == 403 and "role operator" in r.json()["error"]["message"]
    writer = await api.token("operator")
    r = await api.call(
        "POST", "/mitigation/adapters", token=writer, json={"adapter_type": "fake", "name": "x"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    listed = (await api.ok("GET", "/workspace/tokens"))["tokens"]
    assert {(t["scope"], t["role"]) for t in listed} >= {("read", "viewer"), ("write", "operator")}


async def test_admin_changes_role_password_and_state(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    for name, role in (("ada", "admin"), ("otto", "operator")):
        r = await api.call(
            "POST",
            "/workspace/operators",
            json={"username": name, "password": PASSWORD, "role": role},
        )
        assert r.status_code == 201, r.text
    osid, _ = await login(api, "otto")

    # a role change ends the operator's sessions (they carried the old role)
    r = await api.call("PATCH", "/workspace/operators/otto", json={"role": "viewer"})
    assert r.status_code == 200 and r.json()["operator"]["role"] == "viewer", r.text
    r = await as_session(api, osid, "GET", "/auth/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_session"

    # a new password: the old one no longer logs in
    new = "an entirely new passphrase"
    r = await api.call("PATCH", "/workspace/operators/otto", json={"password": new})
    assert r.status_code == 200, r.text
    r = await api.call(
        "POST", "/auth/login", token=None, json={"username": "otto", "password": PASSWORD}
    )
    assert r.status_code == 401
    await login(api, "otto", new)

    # bad bodies change nothing: a short password with a role, an unknown role, nothing
    for body, field in (
        ({"role": "admin", "password": "short"}, "password"),
        ({"role": "root"}, "role"),
        ({}, "role"),
    ):
        r = await api.call("PATCH", "/workspace/operators/otto", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"].startswith(field), r.text
    got = (await api.call("GET", "/workspace/operators")).json()["operators"]
    assert {o["username"]: o["role"] for o in got}["otto"] == "viewer"

    # disable and enable again; unknown names are 404
    r = await api.call("PATCH", "/workspace/operators/otto", json={"disabled": True})
    assert r.status_code == 200 and r.json()["operator"]["disabled"] is True
    r = await api.call(
        "POST", "/auth/login", token=None, json={"username": "otto", "password": new}
    )
    assert r.status_code == 401
    r = await api.call("PATCH", "/workspace/operators/otto", json={"disabled": False})
    assert r.status_code == 200 and r.json()["operator"]["disabled"] is False
    await login(api, "otto", new)
    r = await api.call("PATCH", "/workspace/operators/nobody", json={"role": "viewer"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "operator_not_found"

    # the last enabled admin keeps its role
    r = await api.call("PATCH", "/workspace/operators/ada", json={"role": "operator"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin_operator"

    # admin only: an operator-scope token and an admin's session without CSRF are refused
    made = (
        await api.call("POST", "/workspace/tokens", json={"name": "w", "scope": "write"})
    ).json()
    r = await api.call(
        "PATCH", "/workspace/operators/otto", token=made["token"], json={"role": "admin"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    asid, acsrf = await login(api, "ada")
    r = await as_session(api, asid, "PATCH", "/workspace/operators/otto", json={"role": "admin"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = await as_session(
        api, asid, "PATCH", "/workspace/operators/otto", acsrf, json={"role": "admin"}
    )
    assert r.status_code == 200 and r.json()["operator"]["role"] == "admin"
    with api.svc.engine.connect() as conn:
        assert (
            conn.execute(
                select(operators.c.role).where(operators.c.username == "otto")
            ).scalar_one()
            == "admin"
        )


def audit_actions(api: Api) -> list[str]:
    with api.svc.engine.connect() as conn:
        return [str(a) for a in conn.scalars(select(audit_log.c.action).order_by(audit_log.c.id))]


def stored(api: Api, username: str) -> Any:
    with api.svc.engine.connect() as conn:
        return conn.execute(select(operators).where(operators.c.username == username)).one()


async def test_a_patch_changes_all_it_names_or_nothing(
    make_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api: Api = await make_api()
    for name, role in (("ada", "admin"), ("otto", "operator")):
        await api.ok(
            "POST",
            "/workspace/operators",
            201,
            json={"username": name, "password": PASSWORD, "role": role},
        )
    asid, _ = await login(api, "ada")
    before, audited = stored(api, "ada"), audit_actions(api)
    new = "an entirely new passphrase"

    # each part valid alone, the whole refused: the last admin would be disabled
    r = await api.call(
        "PATCH", "/workspace/operators/ada", json={"password": new, "disabled": True}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin_operator", r.text
    # a valid role with a password that is too short
    r = await api.call(
        "PATCH", "/workspace/operators/ada", json={"role": "viewer", "password": "short"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "password_too_short"
    assert r.json()["error"]["field"] == "password"
    assert stored(api, "ada") == before and audit_actions(api) == audited
    await login(api, "ada")  # the old password still works
    assert (await as_session(api, asid, "GET", "/auth/me")).status_code == 200  # session kept

    # a disabled account changes only if the same patch enables it
    await api.ok("PATCH", "/workspace/operators/otto", json={"disabled": True})
    disabled, audited = stored(api, "otto"), audit_actions(api)
    r = await api.call("PATCH", "/workspace/operators/otto", json={"role": "admin"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "operator_disabled", r.text
    assert stored(api, "otto") == disabled and audit_actions(api) == audited

    # a step failing late (the audit entry) rolls the whole patch back
    def broken(*_a: Any, **_kw: Any) -> str:
        raise RuntimeError("audit store is gone")

    monkeypatch.setattr(api.app.state.operators.audit, "append", broken)
    with pytest.raises(RuntimeError):
        await api.call(
            "PATCH",
            "/workspace/operators/otto",
            json={"disabled": False, "role": "admin", "password": new},
        )
    monkeypatch.undo()
    assert stored(api, "otto") == disabled and audit_actions(api) == audited

    # all at once, with one audit entry
    body = await api.ok(
        "PATCH",
        "/workspace/operators/otto",
        json={"disabled": False, "role": "admin", "password": new},
    )
    assert (body["operator"]["role"], body["operator"]["disabled"]) == ("admin", False)
    assert audit_actions(api) == [*audited, "operator.change"]
    await login(api, "otto", new)
