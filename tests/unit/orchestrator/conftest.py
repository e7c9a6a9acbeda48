"""Fixtures: a real service on a temporary SQLite store with fake adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfig, Capability
from adapters.fake import FakeAdapter
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


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Service] = []

    async def make(pol: Policy | None = None, **settings_kw: Any) -> Service:
        svc = Service(settings_for(tmp_path, **settings_kw), policy=pol or policy())
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
