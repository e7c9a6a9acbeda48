"""frr adapter settings and failure modes that need no daemon."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from adapters.access import HostAccess
from adapters.base import AdapterConfig, Capability, RuleRef
from adapters.frr import FrrAdapter
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import allow


def make(access: HostAccess | None = None, **config: Any) -> FrrAdapter:
    return FrrAdapter.from_config(
        AdapterConfig(
            name="f",
            adapter_type="frr",
            config={"asn": 65001, **config},
            access=access or allow(Path(tempfile.gettempdir())),
        )
    )


def test_defaults_and_argv(tmp_path: Path) -> None:
    ad = make(vty_socket_dir=str(tmp_path), pathspace="r1")
    assert ad.capabilities == {Capability.BLACKHOLE}
    assert ad.settings.argv() == ["vtysh", "--vty_socket", str(tmp_path), "-N", "r1"]
    # the program is the service's, from its own configuration
    ad = make(allow(tmp_path, vtysh="/opt/frr/bin/vtysh"))
    assert ad.settings.argv() == ["/opt/frr/bin/vtysh"]
    assert ad.settings.route_map == "SLUICE-RTBH"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"asn": 0}, "config.asn"),
        ({"vty_socket_dir": "/nonexistent-sluice-dir"}, "config.vty_socket_dir"),
        ({"route_map": "has space"}, "config.route_map"),
        ({"large_communities": ["1:2"]}, "config.large_communities.0"),
        ({"next_hop_v6": "192.0.2.1"}, "config.next_hop_v6"),
    ],
)
def test_bad_settings_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        make(**config)
    assert err.value.field == field


def test_missing_asn() -> None:
    with pytest.raises(AdapterConfigInvalid, match=r"config\.asn"):
        FrrAdapter.from_config(AdapterConfig(name="f", adapter_type="frr"))


def test_flowspec_capability_cannot_be_asked_for() -> None:
    with pytest.raises(AdapterConfigInvalid, match="flowspec"):
        FrrAdapter.from_config(
            AdapterConfig(
                name="f",
                adapter_type="frr",
                config={"asn": 65001},
                capabilities=(Capability.FLOWSPEC,),
            )
        )


async def test_unreachable_vtysh_socket_is_retryable(tmp_path: Path) -> None:
    ad = make(vty_socket_dir=str(tmp_path))  # an empty dir: no daemon sockets
    bh = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"}))
    fs = RuleRef(2, build_intent({"kind": "flowspec", "destination": "203.0.113.5/32"}))
    out = await ad.announce([bh, fs])
    assert not out[0].ok and out[0].retryable
    assert "unreachable" in (out[0].error or "") or "cannot run" in (out[0].error or "")
    assert not out[1].ok and not out[1].retryable
    assert "cannot carry flowspec" in (out[1].error or "")
    health = await ad.check()
    assert not health.ok


async def test_missing_vtysh_binary_is_retryable(tmp_path: Path) -> None:
    ad = make(allow(tmp_path, vtysh=str(tmp_path / "no-vtysh")))
    [out] = await ad.withdraw(
        [RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"}))]
    )
    assert not out.ok and out.retryable and "cannot run" in (out.error or "")
