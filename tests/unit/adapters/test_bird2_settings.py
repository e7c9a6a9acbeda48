"""bird2 adapter settings are validated when the adapter is created; errors name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfig, Capability, RuleRef
from adapters.bird2 import Bird2Adapter
from adapters.bird2.render import HEADER
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import allow


def make(tmp_path: Path, **config: Any) -> Bird2Adapter:
    base: dict[str, Any] = {
        "socket": str(tmp_path / "bird.ctl"),
        "include_file": str(tmp_path / "sluice.conf"),
    }
    return Bird2Adapter.from_config(
        AdapterConfig(
            name="b", adapter_type="bird2", config={**base, **config}, access=allow(tmp_path)
        )
    )


def test_defaults(tmp_path: Path) -> None:
    ad = make(tmp_path)
    assert ad.settings.control_socket == tmp_path / "bird.ctl"
    assert ad.capabilities == {Capability.BLACKHOLE, Capability.FLOWSPEC}


def test_endpoint_can_name_the_socket(tmp_path: Path) -> None:
    ad = Bird2Adapter.from_config(
        AdapterConfig(
            name="b",
            adapter_type="bird2",
            endpoint=f"unix://{tmp_path}/b.ctl",
            access=allow(tmp_path),
            config={"include_file": str(tmp_path / "x.conf")},
        )
    )
    assert ad.settings.control_socket == tmp_path / "b.ctl"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"include_file": "relative.conf"}, "config.include_file"),
        ({"include_file": "/nonexistent-dir-sluice/x.conf"}, "config.include_file"),
        ({"protocol_prefix": "bad name"}, "config.protocol_prefix"),
        ({"communities": ["70000:1"]}, "config.communities.0"),
        ({"next_hop_v4": "2001:db8::1"}, "config.next_hop_v4"),
        ({"timeout_s": 0}, "config.timeout_s"),
        ({"unknown": 1}, "config.unknown"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, config: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        make(tmp_path, **config)
    assert err.value.field == field


def test_missing_socket_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigInvalid, match=r"config\.socket"):
        Bird2Adapter.from_config(
            AdapterConfig(
                name="b", adapter_type="bird2", config={"include_file": str(tmp_path / "x")}
            )
        )


def test_cannot_widen_capabilities(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigInvalid, match="scrubbing"):
        Bird2Adapter.from_config(
            AdapterConfig(
                name="b",
                adapter_type="bird2",
                config={"socket": str(tmp_path / "x"), "include_file": str(tmp_path / "x")},
                access=allow(tmp_path),
                capabilities=(Capability.SCRUBBING,),
            )
        )


async def test_unreachable_socket_is_retryable_and_leaves_the_file(tmp_path: Path) -> None:
    ad = make(tmp_path)
    ref = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"}))
    [out] = await ad.announce([ref])
    assert not out.ok and out.retryable
    assert "unreachable" in (out.error or "")
    assert not (tmp_path / "sluice.conf").exists()  # restored to "no file"
    health = await ad.check()
    assert not health.ok and "unreachable" in health.detail


async def test_refuses_someone_elses_file(tmp_path: Path) -> None:
    (tmp_path / "sluice.conf").write_text("protocol static mine { ipv4; }\n")
    ad = make(tmp_path)
    ref = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"}))
    [out] = await ad.announce([ref])
    assert not out.ok and not out.retryable
    assert "not written by Sluice" in (out.error or "")
    assert (tmp_path / "sluice.conf").read_text().startswith("protocol static mine")
    assert HEADER not in (tmp_path / "sluice.conf").read_text()


async def test_scrubbing_and_per_peer_rules_are_refused_not_dropped(tmp_path: Path) -> None:
    ad = make(tmp_path)
    scrub = RuleRef(1, build_intent({"kind": "scrubbing", "prefix": "203.0.113.0/24"}))
    peers = RuleRef(
        2,
        build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32", "peers": ["192.0.2.2"]}),
    )
    outs = await ad.announce([scrub, peers])
    assert [o.ok for o in outs] == [False, False]
    assert not any(o.retryable for o in outs)
    assert "cannot carry scrubbing" in (outs[0].error or "")
    assert "cannot select peers" in (outs[1].error or "")
