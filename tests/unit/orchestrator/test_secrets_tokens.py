"""Secrets at rest and token hardening (issue 10, items 4 and 5), on a real service.

The store is read as bytes from disk, the fake AWS Shield provider is a real HTTP server on
loopback, and the offline CLI commands run in-process against the same files.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, update
from typer.testing import CliRunner

from labs.vendors.aws import ShieldServer
from orchestrator.cli import app as cli_app
from orchestrator.instance import InstanceLock
from orchestrator.service import Service
from orchestrator.store.crypto import KEY_FILE, PREFIX
from orchestrator.store.models import adapters
from orchestrator.tokens import TokenStore
from policies.errors import AuthError
from tests.unit.orchestrator.conftest import ADMIN, Api, policy, settings_for
from tests.unit.orchestrator.test_audit_trust import store_bytes

AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EIP = "arn:aws:ec2:us-east-1:123456789012:eip-allocation/eipalloc-0123456789abcdef0"
FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.0}
LOOPBACK = ("loopback",)  # the fake provider listens on loopback: allowed explicitly


@pytest.fixture
def shield() -> Iterator[ShieldServer]:
    with ShieldServer() as srv:
        yield srv


def shield_body(srv: ShieldServer) -> dict[str, Any]:
    return {
        "type": "aws_shield",
        "name": "shield",
        "endpoint": srv.url,
        "auth_token": AWS_SECRET,
        "config": {
            **FAST,
            "access_key_id": AWS_KEY,
            "targets": [{"prefix": "203.0.113.64/26", "resource_arn": EIP}],
        },
    }


def error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert body["ok"] is False, body
    return r.status_code, body["error"]["code"]


# ---------------------------------------------------------------- secrets at rest


async def test_adapter_secrets_are_encrypted_in_the_store(
    make_api: Any, shield: ShieldServer, tmp_path: Path
) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    iid = (await api.ok("POST", "/scrubbing", 201, json=shield_body(shield)))["integration"]["id"]
    if api.svc.settings.database_url is None:  # SQLite: the files as they are on disk
        on_disk = store_bytes(tmp_path)
        assert AWS_SECRET.encode() not in on_disk
        assert AWS_KEY.encode() not in on_disk
    with api.svc.engine.connect() as conn:
        row = conn.execute(select(adapters).where(adapters.c.id == iid)).one()
    assert row.auth_token.startswith(PREFIX)
    assert row.config["access_key_id"].startswith(PREFIX)
    # the service still signs with the real secret: the provider accepts it
    test = await api.ok("POST", f"/scrubbing/{iid}/test")
    assert test["test"]["ok"] is True, test


async def test_status_shows_no_secret(make_api: Any, shield: ShieldServer) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    iid = (await api.ok("POST", "/scrubbing", 201, json=shield_body(shield)))["integration"]["id"]
    r = await api.call("GET", f"/scrubbing/{iid}/status")
    assert r.status_code == 200, r.text
    assert AWS_KEY not in r.text and AWS_SECRET not in r.text
    assert r.json()["provider"]["provider"]["region"] == "us-east-1"  # the rest is shown
    for path in ("/scrubbing", f"/scrubbing/{iid}", "/mitigation/adapters"):
        text = (await api.call("GET", path)).text
        assert AWS_KEY not in text and AWS_SECRET not in text, path


async def test_clear_text_secrets_of_an_old_store_are_sealed_at_start(
    make_api: Any, shield: ShieldServer, tmp_path: Path
) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    iid = (await api.ok("POST", "/scrubbing", 201, json=shield_body(shield)))["integration"]["id"]
    svc = api.svc
    await svc.stop()
    with svc.engine.begin() as conn:  # as the old version stored it
        conn.execute(
            update(adapters)
            .where(adapters.c.id == iid)
            .values(
                auth_token=AWS_SECRET,
                config={**shield_body(shield)["config"]},
            )
        )
    svc.engine.dispose()  # used again after stop()
    again = Service(
        settings_for(tmp_path, egress_allow=LOOPBACK, database_url=api.svc.settings.database_url),
        policy=policy(),
    )
    await again.start()
    try:
        with again.engine.connect() as conn:
            row = conn.execute(select(adapters).where(adapters.c.id == iid)).one()
        assert row.auth_token.startswith(PREFIX) and row.config["access_key_id"].startswith(PREFIX)
        assert (await again.test_adapter(iid))["ok"] is True
    finally:
        await again.stop()


async def test_data_directory_and_store_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    svc = Service(settings_for(data), policy=policy())
    await svc.start()
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        files = sorted(p.name for p in data.iterdir() if p.is_file())
        assert {"sluice.db", "sluice.db-wal", "sluice.db-shm", KEY_FILE} <= set(files)
        for name in files:
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    finally:
        await svc.stop()


async def test_secrets_rotate_reencrypts_under_a_new_key(
    make_api: Any, shield: ShieldServer, tmp_path: Path
) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    iid = (await api.ok("POST", "/scrubbing", 201, json=shield_body(shield)))["integration"]["id"]
    await api.svc.stop()
    old_key = (tmp_path / KEY_FILE).read_text().strip()
    with api.svc.engine.connect() as conn:
        before = conn.execute(select(adapters.c.auth_token).where(adapters.c.id == iid)).one()[0]

    rotate = ["secrets", "rotate", "--data-dir", str(tmp_path)]
    rotate += ["--database", api.svc.settings.sqlalchemy_url()]
    with InstanceLock(tmp_path):  # a running service holds the data directory
        r = CliRunner().invoke(cli_app, rotate)
    assert r.exit_code == 2 and "another Sluice service" in r.output, r.output
    assert (tmp_path / KEY_FILE).read_text().strip() == old_key
    r = CliRunner().invoke(cli_app, rotate)
    assert r.exit_code == 0, r.output
    new_key = (tmp_path / KEY_FILE).read_text().strip()
    assert new_key != old_key and "\n" not in new_key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    with api.svc.engine.connect() as conn:
        after = conn.execute(select(adapters.c.auth_token).where(adapters.c.id == iid)).one()[0]
    api.svc.engine.dispose()  # used again after stop()
    assert after != before
    token = after.removeprefix(PREFIX).encode()
    assert Fernet(new_key.encode()).decrypt(token) == f'"{AWS_SECRET}"'.encode()
    with pytest.raises(InvalidToken):
        Fernet(old_key.encode()).decrypt(token)

    again = Service(
        settings_for(tmp_path, egress_allow=LOOPBACK, database_url=api.svc.settings.database_url),
        policy=policy(),
    )
    await again.start()
    try:
        assert (await again.test_adapter(iid))["ok"] is True
        assert again.verify_audit().ok  # the rotation is in the audit log, keyed
    finally:
        await again.stop()


# ---------------------------------------------------------------- tokens


async def test_failed_token_lookups_are_cached_in_bounded_memory(make_api: Any) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    store = TokenStore(api.svc.engine, api.svc.audit, cache_size=200)
    assert store.authenticate(f"Bearer {ADMIN}").scope == "admin"
    for i in range(1000):
        with pytest.raises(AuthError, match="invalid or revoked"):
            store.authenticate(f"Bearer {i:064x}")
    assert store.cache_len() <= 200
    assert store.authenticate(f"Bearer {ADMIN}").scope == "admin"


async def test_a_token_created_elsewhere_is_accepted_after_a_miss(make_api: Any) -> None:
    now = [0.0]
    api: Api = await make_api(egress_allow=LOOPBACK)
    store = TokenStore(api.svc.engine, api.svc.audit, cache_ttl=5.0, clock=lambda: now[0])
    other = TokenStore(api.svc.engine, api.svc.audit)  # another process
    token = "b" * 64
    with pytest.raises(AuthError, match="invalid or revoked"):
        store.authenticate(f"Bearer {token}")
    other.create("late", "read", actor="test", token=token)
    now[0] = 6.0
    assert store.authenticate(f"Bearer {token}").name == "late"


async def test_failed_authentication_is_rate_limited_per_address(make_api: Any) -> None:
    api: Api = await make_api(auth_failures_per_minute=5)
    for _ in range(10):  # no credentials at all: not a guess, not counted
        r = await api.call("GET", "/mitigation/rules", token=None)
        assert error(r) == (401, "missing_token")
    for _ in range(5):
        r = await api.call("GET", "/mitigation/rules", token="x" * 64)
        assert r.status_code == 401
    r = await api.call("GET", "/mitigation/rules", token="x" * 64)
    assert error(r) == (429, "too_many_auth_failures")
    assert int(r.headers["retry-after"]) >= 1
    # the address is locked out for the window, even with a good token
    r = await api.call("GET", "/mitigation/rules")
    assert error(r) == (429, "too_many_auth_failures")
    # another client address is not
    transport = httpx.ASGITransport(app=api.app, client=("192.0.2.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as other:
        r = await other.get(
            "/api/v1/mitigation/rules", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.status_code == 200, r.text


async def test_node_keys_are_rate_limited(make_api: Any) -> None:
    api: Api = await make_api(agent_rate_limit_per_minute=5)
    reg = await api.ok("POST", "/nodes", 201, json={"name": "n1", "ip": "192.0.2.1"})
    headers = {"X-Node-UUID": reg["node"]["id"]}
    key = reg["api_key"]
    for _ in range(5):
        r = await api.call("POST", "/agent/heartbeat", token=key, headers=headers, json={})
        assert r.status_code == 200, r.text
    r = await api.call("POST", "/agent/heartbeat", token=key, headers=headers, json={})
    assert error(r) == (429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1


async def test_wrong_node_keys_count_as_failed_authentication(make_api: Any) -> None:
    api: Api = await make_api(auth_failures_per_minute=3)
    reg = await api.ok("POST", "/nodes", 201, json={"name": "n1", "ip": "192.0.2.1"})
    headers = {"X-Node-UUID": reg["node"]["id"]}
    for _ in range(3):
        r = await api.call("POST", "/agent/heartbeat", token="f" * 64, headers=headers, json={})
        assert r.status_code == 401
    r = await api.call("POST", "/agent/heartbeat", token="f" * 64, headers=headers, json={})
    assert error(r) == (429, "too_many_auth_failures")


async def test_the_last_admin_token_cannot_be_revoked(make_api: Any) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    [me] = (await api.ok("GET", "/workspace/tokens"))["tokens"]
    r = await api.call("DELETE", f"/workspace/tokens/{me['id']}")
    assert error(r) == (409, "last_admin_token")
    r = await api.call("GET", "/workspace/tokens")
    assert r.status_code == 200  # still administrable
    # with a second admin token the first can go
    second = await api.token("admin")
    await api.ok("DELETE", f"/workspace/tokens/{me['id']}", token=second)
    listed = (await api.ok("GET", "/workspace/tokens", token=second))["tokens"]
    r = await api.call("DELETE", f"/workspace/tokens/{listed[-1]['id']}", token=second)
    assert error(r) == (409, "last_admin_token")


async def test_tokens_create_offline_recovers_administration(make_api: Any, tmp_path: Path) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    url = api.svc.settings.sqlalchemy_url()
    r = CliRunner().invoke(
        cli_app,
        ["tokens", "create", "rescue", "--scope", "admin", "--database", url],
        env={"SLUICE_DATA_DIR": str(tmp_path)},
    )
    assert r.exit_code == 0, r.output
    token = r.stdout.strip().splitlines()[-1]
    assert len(token) == 64
    listed = (await api.ok("GET", "/workspace/tokens", token=token))["tokens"]
    assert [t["name"] for t in listed] == ["admin", "rescue"]
    assert api.svc.verify_audit().ok  # the CLI's entry is keyed with the service's key


async def test_a_wrong_secrets_key_leaves_the_adapter_unbuilt_not_the_service(
    make_api: Any, shield: ShieldServer, tmp_path: Path
) -> None:
    api: Api = await make_api(egress_allow=LOOPBACK)
    iid = (await api.ok("POST", "/scrubbing", 201, json=shield_body(shield)))["integration"]["id"]
    await api.svc.stop()
    other = Fernet.generate_key().decode()
    again = Service(
        settings_for(
            tmp_path,
            egress_allow=LOOPBACK,
            secret_key=other,
            database_url=api.svc.settings.database_url,
        ),
        policy=policy(),
    )
    await again.start()
    try:
        rec = again.hub.get(iid)
        assert again.hub.live(iid) is None
        assert rec.error is not None and "cannot be decrypted" in rec.error
        assert AWS_SECRET not in str(rec.to_api()) and AWS_KEY not in str(rec.to_api())
    finally:
        await again.stop()
