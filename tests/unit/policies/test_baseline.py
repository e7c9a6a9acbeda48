"""Dynamic baselines: learning, bounds, snapshot/restore, and their use by the engine."""

from __future__ import annotations

from pathlib import Path

from policies.baseline import BaselineStore
from policies.engine import evaluate
from policies.state import EngineState
from policies.tiers import Baseline
from tests.unit.policies.helpers import make_policy, sig

CFG = Baseline(
    mode="dynamic",
    window_seconds=3600,
    slots=60,
    min_slots=10,
    percentile=99,
    multiplier=3,
    floor_bps=1_000_000,
    floor_pps=1_000,
    max_targets=3,
)


def test_learns_multiplier_times_percentile_of_interval_maxima() -> None:
    store = BaselineStore(CFG)
    for minute in range(60):
        for second in range(0, 60, 10):
            store.observe("h", minute * 60 + second, bps=10e6 + second * 1e5, pps=5000)
    value = store.value("h", 3599)
    assert value is not None
    assert value.bps == 3 * (10e6 + 50 * 1e5)
    assert value.pps == 15000
    assert value.slots == 60


def test_floor_and_learning_period() -> None:
    store = BaselineStore(CFG)
    for minute in range(5):
        store.observe("h", minute * 60, bps=100, pps=1)
    assert store.value("h", 300) is None  # fewer than min_slots intervals
    for minute in range(5, 12):
        store.observe("h", minute * 60, bps=100, pps=1)
    value = store.value("h", 12 * 60)
    assert value is not None and (value.bps, value.pps) == (1_000_000, 1_000)


def test_old_intervals_fall_out_of_the_window() -> None:
    store = BaselineStore(CFG)
    for minute in range(60):
        store.observe("h", minute * 60, bps=50e6, pps=1)
    for minute in range(60, 120):
        store.observe("h", minute * 60, bps=2e6, pps=1)
    value = store.value("h", 120 * 60 - 1)
    assert value is not None and value.bps == 6e6


def test_memory_is_bounded_per_target_and_in_targets() -> None:
    store = BaselineStore(CFG)
    for t in range(100_000):
        store.observe("h", t, bps=t, pps=1)
    assert len(store._rings["h"].bps) == CFG.slots
    for name in ("a", "b", "c"):
        store.observe(name, 0, 1, 1)
    assert len(store) == 3
    assert "h" not in store._rings  # least recently updated is evicted


def test_snapshot_restore() -> None:
    store = BaselineStore(CFG)
    for minute in range(30):
        store.observe("h", minute * 60, bps=20e6, pps=100)
    again = BaselineStore.from_dict(CFG, store.to_dict())
    assert again.value("h", 1799) == store.value("h", 1799)
    other = Baseline(mode="dynamic", window_seconds=7200, slots=60)
    assert len(BaselineStore.from_dict(other, store.to_dict())) == 0  # another layout


def test_engine_scales_tiers_onto_the_baseline(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        baseline={
            "mode": "dynamic",
            "window_seconds": 3600,
            "slots": 60,
            "min_slots": 10,
            "multiplier": 3,
            "floor_bps": "1M",
        },
    )
    state = EngineState()
    assert evaluate(sig("192.0.2.20", 150e6), policy, state, 0).tier == "tier1"  # learning
    for minute in range(60):
        state.observe(policy.baseline, "192.0.2.30", minute * 60, 100e6, 1000)  # busy host
        state.observe(policy.baseline, "192.0.2.40", minute * 60, 2e6, 10)  # quiet host
    busy = evaluate(sig("192.0.2.30", 250e6), policy, state, 3600)
    assert busy.status == "below"  # 3 x 100M = 300M is its tier1
    assert "dynamic baseline" in busy.explanation[0]
    quiet = evaluate(sig("192.0.2.40", 20e6), policy, state, 3600)
    assert quiet.tier == "tier1"  # 3 x 2M = 6M, above its 6M tier1
    assert evaluate(sig("192.0.2.40", 40e6), policy, EngineState(), 0).status == "below"


def test_attack_traffic_does_not_teach_the_baseline(tmp_path: Path) -> None:
    policy = make_policy(tmp_path)
    state = EngineState()
    evaluate(sig("192.0.2.30", 3e9), policy, state, 0)
    assert state.observe(policy.baseline, "192.0.2.30", 1, 3e9, 1) is False
    assert state.observe(policy.baseline, "192.0.2.31", 1, 3e6, 1) is True


def test_engine_state_round_trip_keeps_baselines(tmp_path: Path) -> None:
    state = EngineState()
    for minute in range(20):
        state.observe(CFG, "h", minute * 60, 5e6, 50)
    restored = EngineState.from_dict(state.to_dict(), CFG)
    assert restored.baselines(CFG).value("h", 1199) == state.baselines(CFG).value("h", 1199)


def test_restore_without_config_waits_for_the_policy_config() -> None:
    state = EngineState()
    for minute in range(20):
        state.observe(CFG, "h", minute * 60, 5e6, 50)
    snapshot = state.to_dict()
    restored = EngineState.from_dict(snapshot)  # as an orchestrator that has no policy yet
    assert restored.to_dict()["baselines"] == snapshot["baselines"]
    assert restored.baselines(CFG).value("h", 1199) == state.baselines(CFG).value("h", 1199)
