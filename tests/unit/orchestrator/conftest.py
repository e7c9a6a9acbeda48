"""Fixtures: a real service on a temporary store (SQLite and PostgreSQL) with fake adapters."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base import AdapterConfig, Capability
from adapters.fake import FakeAdapter
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import RuleRequest, Service
from orchestrator.settings import Settings
from policies.guardrails import Guardrails
from policies.intents import AnyIntent, build_intent
from policies.schema import GlobalSettings, Policy

MakeService = Callable[..., "Service"]


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "api_wait_seconds": 2.0,
        "retry_base": 0.05,
        "retry_max": 0.2,
        "max_attempts": 3,
    }
    base.update(kw)
    return Settings(**base)


def policy(**kw: Any) -> Policy:
    g = kw.pop("guardrails", None) or Guardrails()
    return Policy(settings=GlobalSettings(**kw), guardrails=g)


# Every service test runs on SQLite (the default store). Modules where the store itself is
# what is tested (rules, lifecycle and event log, audit chain, durable executions) are
# marked ``postgresql`` and run on PostgreSQL too; SLUICE_TEST_STORES=all runs every
# service test on both.
ALL_STORES = os.environ.get("SLUICE_TEST_STORES") == "all"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_url" in metafunc.fixturenames:
        both = ALL_STORES or metafunc.definition.get_closest_marker("postgresql") is not None
        stores = ["sqlite", "postgresql"] if both else ["sqlite"]
        metafunc.parametrize("store_url", stores, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The store the service under test runs on: None (SQLite, the default) or PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def make_service(tmp_path: Path, store_url: str | None) -> AsyncIterator[Callable[..., Any]]:
    started: list[Service] = []

    async def make(
        pol: Policy | None = None, clock: Callable[[], datetime] | None = None, **settings_kw: Any
    ) -> Service:
        settings_kw.setdefault("database_url", store_url)
        svc = Service(settings_for(tmp_path, **settings_kw), policy=pol or policy(), clock=clock)
        await svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if svc.started:
            await svc.stop()


async def add_fake(
    svc: Service, name: str = "fake", caps: list[str] | None = None, **config: Any
) -> tuple[int, FakeAdapter]:
    rec, _ = await svc.upsert_adapter(
        AdapterConfig(
            name=name,
            adapter_type="fake",
            config=config,
            capabilities=tuple(Capability(c) for c in caps) if caps else None,
        ),
        adapter_id=None,
        actor="test",
    )
    adapter = svc.hub.live(rec["id"])
    assert isinstance(adapter, FakeAdapter)
    return rec["id"], adapter


def bh(prefix: str = "203.0.113.5", **kw: Any) -> AnyIntent:
    return build_intent({"kind": "blackhole", "prefix": prefix, **kw})


def fs(dst: str = "203.0.113.5", **kw: Any) -> AnyIntent:
    return build_intent({"kind": "flowspec", "destination": dst, **kw})


def req(intent: AnyIntent, adapter: int | str, **kw: Any) -> RuleRequest:
    return RuleRequest(intent=intent, adapter=adapter, **kw)


# ---------------------------------------------------------------- the REST API in-process

ADMIN = "a" * 64


class LimitClock:
    """The clock of an app's request limiters in tests: it stands still unless a test moves
    it, in the middle of a minute.

    On PostgreSQL the per-token and per-node limits count in fixed calendar minutes
    (``rate_windows``): on the real clock, a test whose requests straddle a minute
    boundary would see its count start again. Frozen, every request of a test falls in
    one window however slow the machine is.
    """

    START = 1_800_000_030.0  # half a minute into a minute

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def freeze_limiters(app: Any, clock: LimitClock) -> None:
    """Put ``clock`` under every request limiter of ``app`` (per token, per node, failed
    authentications per address)."""
    app.state.limiter.clock = clock
    app.state.agent_limiter.clock = clock
    app.state.auth_failures.clock = clock


class Api:
    """The app over an in-process transport, with the admin token by default; its request
    limiters run on :attr:`clock` (a :class:`LimitClock`)."""

    def __init__(
        self, client: httpx.AsyncClient, svc: Service, app: Any = None, clock: Any = None
    ) -> None:
        self.client = client
        self.svc = svc
        self.app = app  # for a second client (another client address)
        self.clock: LimitClock = clock or LimitClock()

    async def call(
        self, method: str, path: str, token: str | None = ADMIN, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return await self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> dict[str, Any]:
        r = await self.call(method, path, **kw)
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        assert body["ok"] is True
        return body

    async def token(self, scope: str, **kw: Any) -> str:
        r = await self.call("POST", "/workspace/tokens", json={"name": scope, "scope": scope, **kw})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def fake(self, name: str = "edge", **config: Any) -> int:
        r = await self.call(
            "POST",
            "/mitigation/adapters",
            json={"adapter_type": "fake", "name": name, "endpoint": "", "config": config},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["adapter"]["id"])


@pytest.fixture
async def make_api(tmp_path: Path, store_url: str | None) -> AsyncIterator[Callable[..., Any]]:
    made: list[Service] = []

    async def make(**settings_kw: Any) -> Api:
        settings_kw.setdefault("admin_token", ADMIN)
        settings_kw.setdefault("database_url", store_url)
        svc = Service(settings_for(tmp_path, **settings_kw), policy=policy(cooldown_seconds=0))
        await svc.start()
        made.append(svc)
        app = create_app(svc, run_scheduler=False)
        clock = LimitClock()
        freeze_limiters(app, clock)
        bootstrap_token(svc, app.state.tokens)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sluice")
        return Api(client, svc, app, clock)

    yield make
    for svc in made:
        if svc.started:
            await svc.stop()
