"""The declared contract's pieces: session states, the polling watch, the protocols."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from adapters.base import (
    AdapterConfig,
    BgpSpeaker,
    Diverting,
    Health,
    Registry,
    SessionChange,
    SessionState,
    poll_sessions,
)
from adapters.fake import FakeAdapter, FakeSpeaker

E, A, U = SessionState.ESTABLISHED, SessionState.ACTIVE, SessionState.UNKNOWN


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("Established", SessionState.ESTABLISHED),  # BIRD, FRR
        ("established", SessionState.ESTABLISHED),  # GoBGP
        ("BGP_FSM_ESTABLISHED", SessionState.ESTABLISHED),
        ("up", SessionState.ESTABLISHED),  # ExaBGP neighbor-changes
        ("down", SessionState.IDLE),
        ("connected", SessionState.CONNECT),
        ("Idle (Admin)", SessionState.IDLE),  # FRR, shut down
        ("OpenSent", SessionState.OPENSENT),
        ("Clearing", SessionState.UNKNOWN),
        ("", SessionState.UNKNOWN),
    ],
)
def test_daemon_words_become_fsm_states(word: str, state: SessionState) -> None:
    assert SessionState.parse(word) is state


def test_health_sessions_are_states() -> None:
    health = Health(True, 1.0, "x", {"192.0.2.2": "Established"})  # type: ignore[dict-item]
    assert health.sessions == {"192.0.2.2": SessionState.ESTABLISHED}
    assert health.to_dict()["sessions"] == {"192.0.2.2": "established"}


async def test_poll_watch_reports_first_states_then_changes_and_unreachable() -> None:
    script: list[Mapping[str, SessionState] | Exception] = [
        {"a": SessionState.ESTABLISHED, "b": SessionState.ACTIVE},
        {"a": SessionState.ESTABLISHED, "b": SessionState.ACTIVE},  # no change
        {"a": SessionState.ESTABLISHED, "b": SessionState.ESTABLISHED},
        OSError("speaker gone"),
        OSError("still gone"),
        {"a": SessionState.ESTABLISHED},  # b no longer configured
    ]
    pauses: list[float] = []

    async def read() -> Mapping[str, SessionState]:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    watch = poll_sessions(read, 0.5, sleep)
    got = [await anext(watch) for _ in range(6)]
    await watch.aclose()
    assert got == [
        SessionChange("a", E, None),
        SessionChange("b", A, None),
        SessionChange("b", E, A),
        SessionChange("a", U, E),  # unreachable: every known peer unknown, once
        SessionChange("b", U, E),
        SessionChange("a", E, U),  # b, gone from the configuration, stays unknown
    ]
    assert not script
    assert set(pauses) == {0.5}


def test_protocols_are_declared_not_guessed() -> None:
    plain = Registry().create(AdapterConfig(name="p", adapter_type="fake"))
    speaker = Registry().create(
        AdapterConfig(name="s", adapter_type="fake", config={"sessions": {"192.0.2.2": "Idle"}})
    )
    assert isinstance(plain, FakeAdapter) and not isinstance(plain, BgpSpeaker)
    assert isinstance(speaker, FakeSpeaker) and isinstance(speaker, BgpSpeaker)
    assert not isinstance(plain, Diverting)
