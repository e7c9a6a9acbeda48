"""The adapter contract (adapters/base.py), checked against every registered adapter.

Every adapter type declared in pyproject's ``sluice.adapters`` entry points runs these
tests against its real backend through a harness (tests/contract/harnesses.py); a type
without a harness fails. The contract: bad settings are refused naming the field; an
intent outside the adapter's capabilities is refused, not retryable; one outcome per
rule, in order; announce and withdraw are idempotent; read-back includes every announced
rule, also from a fresh instance; a backend that is down gives retryable outcomes and
raises nothing; no secret appears in an error; ``close()`` twice is harmless; BGP
speakers and diverting integrations declare their extras as protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence

import pytest

from adapters.base import (
    Adapter,
    BgpSpeaker,
    Capability,
    Diverting,
    Outcome,
    Registry,
    RuleRef,
    SessionChange,
    SessionState,
)
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.contract.harnesses import ACCESS, Harness

SAMPLES = {
    Capability.BLACKHOLE: {"kind": "blackhole", "prefix": "192.0.2.99/32"},
    Capability.FLOWSPEC: {"kind": "flowspec", "destination": "192.0.2.99/32", "protocol": "udp"},
    Capability.SCRUBBING: {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
}


def no_secret(h: Harness, *texts: object) -> None:
    for text in texts:
        for secret in h.secrets:
            assert secret not in str(text), f"a secret leaked: {text!r}"


def errors(outcomes: Sequence[Outcome]) -> list[str]:
    return [o.error or "" for o in outcomes]


async def withdraw_all(h: Harness, refs: Sequence[RuleRef]) -> None:
    adapter = h.make()
    try:
        outs = await adapter.withdraw(refs)
        assert all(o.ok for o in outs), errors(outs)
    finally:
        await adapter.close()
    for ref in refs:
        h.wait_held(ref, held=False)


def test_every_registered_adapter_is_covered(harness: Harness) -> None:
    cls: object = Registry().get(harness.adapter_type)
    adapter = harness.make()
    assert isinstance(adapter, Adapter)
    assert type(adapter).adapter_type == harness.adapter_type
    assert cls is not None
    asyncio.run(adapter.close())


def test_bad_settings_are_refused_naming_the_field(harness: Harness) -> None:
    good = harness.config()
    cases = [({"config": {**good.config, "no_such_setting": 1}}, "config.no_such_setting")]
    for update, where in [*cases, *harness.bad]:
        with pytest.raises(AdapterConfigInvalid) as err:
            Registry(access=ACCESS).create(good.model_copy(update=update))
        assert err.value.field == where, (update, err.value)
        assert where in err.value.message, err.value.message
        no_secret(harness, err.value.message)


async def test_an_unsupported_intent_is_refused_not_retried(harness: Harness) -> None:
    cls = Registry().get(harness.adapter_type)
    missing = sorted(set(Capability) - cls.supported)
    config = harness.config()
    if not missing:  # it carries everything: narrow it
        missing = [Capability.SCRUBBING]
        config = config.model_copy(
            update={"capabilities": tuple(c for c in cls.supported if c not in missing)}
        )
    adapter = harness.make(config)
    try:
        for kind in missing:
            ref = RuleRef(9, build_intent(SAMPLES[kind]))
            for op in (adapter.announce, adapter.withdraw):
                [out] = await op([ref])
                assert out.rule_id == 9
                assert not out.ok and not out.retryable, out
                assert str(kind) in (out.error or ""), out.error
                no_secret(harness, out.error)
    finally:
        await adapter.close()


async def test_one_outcome_per_rule_in_order_and_idempotent(harness: Harness) -> None:
    refs = harness.refs(first_id=10)
    cls = Registry().get(harness.adapter_type)
    odd = next((c for c in Capability if c not in cls.supported), None)
    batch = list(refs)
    if odd is not None:  # a refused rule in the middle keeps its place
        batch.insert(1, RuleRef(99, build_intent(SAMPLES[odd])))
    adapter = harness.make()
    try:
        outs = await adapter.announce(batch)
        assert [o.rule_id for o in outs] == [r.rule_id for r in batch]
        no_secret(harness, *errors(outs))
        by_id = {o.rule_id: o for o in outs}
        if odd is not None:
            assert not by_id[99].ok and not by_id[99].retryable
        if not harness.announces:
            assert all(not by_id[r.rule_id].ok for r in refs)
            assert all(not by_id[r.rule_id].retryable for r in refs)
            for ref in refs:
                h_holds = harness.holds(ref)
                assert not h_holds, f"{ref.key} refused yet the backend holds it"
            return
        assert all(by_id[r.rule_id].ok for r in refs), errors(outs)
        for ref in refs:
            harness.wait_held(ref)

        again = await adapter.announce(refs)  # idempotent
        assert [o.rule_id for o in again] == [r.rule_id for r in refs]
        assert all(o.ok for o in again), errors(again)
        for ref in refs:
            harness.wait_held(ref)

        gone = await adapter.withdraw(list(reversed(refs)))
        assert [o.rule_id for o in gone] == [r.rule_id for r in reversed(refs)]
        assert all(o.ok for o in gone), errors(gone)
        for ref in refs:
            harness.wait_held(ref, held=False)
        twice = await adapter.withdraw(refs)  # withdrawing what is gone is fine too
        assert all(o.ok for o in twice), errors(twice)
    finally:
        await adapter.close()


async def test_read_back_includes_every_announced_rule_also_from_a_fresh_instance(
    harness: Harness,
) -> None:
    if not harness.announces:
        pytest.skip("this integration refuses announce by design; see the ordering test")
    refs = harness.refs(first_id=20, rules=harness.readback_rules)
    first = harness.make()
    try:
        outs = await first.announce(refs)
        assert all(o.ok for o in outs), errors(outs)
        held = await first.active()
    finally:
        await first.close()
    try:
        if not harness.readback:
            assert held is None, "an adapter without read-back must say so with None"
            return
        assert held is not None and {r.key for r in refs} <= held, held
        fresh = harness.make()
        try:
            again = await fresh.active()
        finally:
            await fresh.close()
        assert again is not None and {r.key for r in refs} <= again, again
    finally:
        await withdraw_all(harness, refs)


async def test_a_backend_that_is_down_gives_retryable_outcomes(harness: Harness) -> None:
    """Announced while up; the backend goes down: new announces and the withdrawal of
    what it holds fail retryably (nothing raises); back up: both work again."""
    held = harness.refs(first_id=30)[:1]
    new = harness.refs(first_id=31)[1:] or harness.refs(first_id=31)[:1]  # one-rule backends
    adapter = harness.make()
    try:
        if harness.announces:
            outs = await adapter.announce(held)
            assert all(o.ok for o in outs), errors(outs)
        with harness.down():
            # an integration that refuses announce by design (OVH) holds nothing to withdraw
            for op, refs in ((adapter.announce, new), (adapter.withdraw, held)):
                if not harness.announces:
                    break
                outs = await op(refs)
                assert [o.rule_id for o in outs] == [r.rule_id for r in refs]
                assert all(not o.ok and o.retryable for o in outs), outs
                no_secret(harness, *errors(outs))
            health = await adapter.check()
            assert not health.ok, health
            no_secret(harness, health.detail)
            if isinstance(adapter, BgpSpeaker):
                assert all(s != SessionState.ESTABLISHED for s in health.sessions.values())
        await adapter.close()
        adapter = harness.make()  # the backend is back: a fresh instance works
        assert (await adapter.check()).ok
        if harness.announces:
            outs = await adapter.announce(new)
            assert all(o.ok for o in outs), errors(outs)
            for ref in new:
                harness.wait_held(ref)
            await withdraw_all(harness, list({r.key: r for r in [*held, *new]}.values()))
    finally:
        await adapter.close()


async def test_wrong_credentials_leak_no_secret(harness: Harness) -> None:
    if harness.wrong_credentials is None:
        pytest.skip(f"{harness.adapter_type} has no credentials to get wrong")
    adapter = harness.make(harness.wrong_credentials)
    try:
        outs = await adapter.announce(harness.refs(first_id=40))
        assert all(not o.ok and not o.retryable for o in outs), outs
        health = await adapter.check()
        assert not health.ok
        no_secret(harness, *errors(outs), health.detail, repr(adapter), health.to_dict())
    finally:
        await adapter.close()


async def test_close_twice_is_harmless(harness: Harness) -> None:
    unused = harness.make()
    await unused.close()
    await unused.close()
    used = harness.make()
    await used.check()
    await used.close()
    await used.close()


def test_extras_are_declared_protocols(harness: Harness) -> None:
    adapter = harness.make()
    try:
        speaker = harness.speaker is not None
        assert isinstance(adapter, BgpSpeaker) == speaker
        cls = Registry().get(harness.adapter_type)
        if isinstance(adapter, Diverting):
            assert Capability.SCRUBBING in cls.supported
            assert adapter.mechanism
    finally:
        asyncio.run(adapter.close())


async def until(
    watch: AsyncGenerator[SessionChange, None],
    peers: set[str],
    wanted: Callable[[SessionState], bool],
    seconds: float,
) -> dict[str, SessionState]:
    """Read the watch until every peer in ``peers`` is in a wanted state; fail after ``seconds``."""
    seen: dict[str, SessionState] = {}

    async def run() -> None:
        while not (peers <= seen.keys() and all(wanted(seen[p]) for p in peers)):
            change = await anext(watch)
            seen[change.peer] = change.state

    try:
        await asyncio.wait_for(run(), seconds)
    except TimeoutError:
        raise AssertionError(
            f"sessions {sorted(peers)} not as wanted within {seconds} s: {seen}"
        ) from None
    return seen


def up(state: SessionState) -> bool:
    return state == SessionState.ESTABLISHED


def not_up(state: SessionState) -> bool:
    return state != SessionState.ESTABLISHED


async def test_a_speaker_watches_its_sessions(harness: Harness) -> None:
    """The receiver stops: its sessions are reported down; it returns: up again."""
    topo = harness.speaker
    if topo is None:
        pytest.skip("not a BGP speaker")
    adapter = harness.make()
    assert isinstance(adapter, BgpSpeaker)
    receiver = topo.receivers["bird"]
    peers = {nb.address for nb in receiver.neighbors}
    watch = adapter.watch_sessions()
    try:
        states = await adapter.session_states()
        assert peers <= set(states) and all(up(states[p]) for p in peers), (peers, states)
        first = await until(watch, peers, up, 10)  # the first report: every peer, as it is
        assert set(first) >= peers
        receiver.node.stop()
        try:
            await until(watch, peers, not_up, 20)
            health = await adapter.check()
            assert not health.ok and all(not_up(health.sessions[p]) for p in peers), health
        finally:
            receiver.node.start()
        await until(watch, peers, up, 90)
        assert (await adapter.check()).ok
    finally:
        await watch.aclose()
        await adapter.close()
