"""The scrubbing contract, for every integration, against real HTTP fakes on loopback.

announce -> the provider's exact write requests, authenticated; the fake's state says
diverting; ``active()`` and ``status()`` read it back (also from a new adapter instance,
as after a restart); withdraw -> the exact undo requests. Wrong credentials, 4xx, 5xx,
timeouts and malformed answers give failed outcomes (retryable only when trying again
can help) that keep the vendor's message and never a secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base import Adapter, Capability, Registry, RuleRef
from adapters.scrubbing.common import ScrubbingAdapter
from labs.vendors.server import FakeVendorServer, Fault
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.integration.test_scrubbing_cases import CASES, Case

pytestmark = pytest.mark.parametrize("case", CASES, ids=str)


@pytest.fixture
def server(case: Case) -> Iterator[FakeVendorServer]:
    with case.server() as srv:
        yield srv


def make(case: Case, srv: FakeVendorServer, *, good: bool = True) -> ScrubbingAdapter[Any]:
    adapter = case.cls.from_config(case.config(srv, good))
    assert isinstance(adapter, ScrubbingAdapter)
    assert isinstance(adapter, Adapter)
    return adapter


def ref(prefix: str, rule_id: int = 1) -> RuleRef:
    return RuleRef(rule_id, build_intent({"kind": "scrubbing", "prefix": prefix}))


def no_secret(case: Case, text: str | None) -> None:
    for secret in case.secrets:
        assert secret not in (text or ""), f"secret leaked in {text!r}"


async def test_announce_read_back_and_withdraw(case: Case, server: FakeVendorServer) -> None:
    adapter = make(case, server)
    rule = ref(case.prefix)
    try:
        assert adapter.capabilities == {Capability.SCRUBBING}
        assert not case.diverting(server)
        assert await adapter.active() == frozenset()
        server.journal.clear()

        [out] = await adapter.announce([rule])
        assert out.ok, out.error
        assert case.writes(server.journal.all()) == case.announce
        for req in server.journal.all():
            case.auth(req)
        assert case.diverting(server)
        assert rule.key in (await adapter.active() or frozenset())
        status = (await adapter.status()).to_dict()
        assert status["diverting"] is True, status
        assert status["connection"]["ok"] is True, status
        assert status["integration"] == case.adapter_type
        no_secret(case, repr(status))

        [again] = await adapter.announce([rule])  # idempotent
        assert again.ok, again.error
        assert case.diverting(server)

        server.journal.clear()
        [out] = await adapter.withdraw([rule])
        assert out.ok, out.error
        assert case.writes(server.journal.all()) == case.withdraw
        for req in server.journal.all():
            case.auth(req)
        assert not case.diverting(server)
        assert await adapter.active() == frozenset()
        assert (await adapter.status()).diverting is False

        [again] = await adapter.withdraw([rule])  # idempotent
        assert again.ok, again.error
    finally:
        await adapter.close()


async def test_a_restarted_sluice_still_knows_it_is_diverting(
    case: Case, server: FakeVendorServer
) -> None:
    first = make(case, server)
    rule = ref(case.prefix)
    [out] = await first.announce([rule])
    assert out.ok, out.error
    await first.close()

    second = make(case, server)  # nothing in memory
    try:
        assert (await second.status()).diverting is True
        held = await second.active() or frozenset()
        assert held, "a diverting provider must show up in the read-back"
        [out] = await second.announce([rule])  # reconciliation re-announces: no change
        assert out.ok
        assert rule.key in (await second.active() or frozenset())
        [out] = await second.withdraw([rule])
        assert out.ok and not case.diverting(server)
    finally:
        await second.close()


async def test_wrong_credentials_fail_without_leaking_them(
    case: Case, server: FakeVendorServer
) -> None:
    adapter = make(case, server, good=False)
    try:
        [out] = await adapter.announce([ref(case.prefix)])
        assert not out.ok and not out.retryable, out
        no_secret(case, out.error)
        health = await adapter.check()
        assert not health.ok
        no_secret(case, health.detail)
        status = await adapter.status()
        assert status.diverting is None and status.error
        no_secret(case, repr(status.to_dict()))
        assert not case.diverting(server)
    finally:
        await adapter.close()


async def test_vendor_failures_become_failed_outcomes(case: Case, server: FakeVendorServer) -> None:
    adapter = make(case, server)
    rule = ref(case.prefix)
    try:
        await adapter.check()  # sessions, clocks and the like are set up first

        server.faults.add(Fault.answer(400, case.refused_body), times=50)
        [out] = await adapter.announce([rule])
        assert not out.ok and not out.retryable, out
        assert case.refused_text in (out.error or ""), out.error
        server.faults.clear()

        server.faults.add(Fault.answer(503, {"message": "maintenance"}), times=50)
        [out] = await adapter.announce([rule])
        assert not out.ok and out.retryable, out
        assert "503" in (out.error or "")
        server.faults.clear()

        server.faults.add(Fault.delay(1.5), times=50)
        [out] = await adapter.announce([rule])
        assert not out.ok and out.retryable and "timed out" in (out.error or ""), out
        server.faults.clear()

        server.faults.add(Fault.malformed(), times=50)
        [out] = await adapter.announce([rule])
        assert not out.ok and out.retryable, out
        server.faults.clear()

        server.faults.add(Fault.drop(), times=50)
        [out] = await adapter.announce([rule])
        assert not out.ok and out.retryable, out
        server.faults.clear()

        for text in (adapter.label, repr(adapter)):
            no_secret(case, text)
        [out] = await adapter.announce([rule])  # the provider is back
        assert out.ok, out.error
        assert case.diverting(server)
    finally:
        await adapter.close()


async def test_prefixes_outside_the_targets_and_other_intents_are_refused(
    case: Case, server: FakeVendorServer
) -> None:
    adapter = make(case, server)
    try:
        server.journal.clear()
        outs = await adapter.announce(
            [
                ref(case.outside, 1),
                RuleRef(2, build_intent({"kind": "blackhole", "prefix": case.prefix})),
            ]
        )
        assert [o.ok for o in outs] == [False, False]
        assert [o.retryable for o in outs] == [False, False]
        assert "not inside any configured target prefix" in (outs[0].error or "")
        assert "cannot carry blackhole" in (outs[1].error or "")
        assert case.writes(server.journal.all()) == []
    finally:
        await adapter.close()


async def test_declared_entry_point_and_settings_checked_at_creation(
    case: Case, server: FakeVendorServer
) -> None:
    loaded: object = Registry().get(case.adapter_type)
    assert loaded is case.cls
    good = case.config(server, True)
    no_token = good.model_copy(update={"auth_token": None})
    with pytest.raises(AdapterConfigInvalid) as err:
        case.cls.from_config(no_token)
    assert err.value.field == "auth_token"
    bare = good.model_copy(update={"config": {}})
    with pytest.raises(AdapterConfigInvalid) as err:
        case.cls.from_config(bare)
    assert (err.value.field or "").startswith("config."), err.value
    bad_endpoint = good.model_copy(update={"endpoint": "ftp://example.net"})
    with pytest.raises(AdapterConfigInvalid) as err:
        case.cls.from_config(bad_endpoint)
    assert err.value.field == "endpoint"
    for secret in case.secrets:
        assert secret not in str(err.value)
