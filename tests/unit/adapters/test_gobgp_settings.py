"""GoBGP adapter settings, the delete-request guard, and the stub builder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfig, Capability, Registry
from adapters.gobgp import GoBgpAdapter
from adapters.gobgp.adapter import _delete_request, parse_endpoint
from adapters.gobgp.build_stubs import (
    DEBIAN_PROTO_DIR,
    PROTOS,
    StubError,
    build,
    find_proto_dir,
    fix_imports,
)
from adapters.gobgp.proto import api
from adapters.gobgp.render import render_path
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent


def config(endpoint: str = "unix:///run/gobgp/api.sock", **extra: Any) -> AdapterConfig:
    return AdapterConfig(name="gb", adapter_type="gobgp", endpoint=endpoint, config=extra)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("unix:///run/gobgpd/api.sock", "unix:///run/gobgpd/api.sock"),
        ("unix:/run/gobgp.sock", "unix:///run/gobgp.sock"),
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("[::1]:50051", "[::1]:50051"),
        ("gobgp.example.net:50051", "gobgp.example.net:50051"),
    ],
)
def test_endpoints_accepted(given: str, expected: str) -> None:
    assert parse_endpoint(given) == expected


@pytest.mark.parametrize("bad", ["", "unix://relative.sock", "127.0.0.1", "host:0", "h:99999"])
def test_bad_endpoint_fails_at_creation_naming_the_field(bad: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        GoBgpAdapter.from_config(config(bad))
    assert err.value.field == "endpoint"


def test_bad_settings_name_their_field() -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        GoBgpAdapter.from_config(config(communities=["65536:1"]))
    assert err.value.field == "config.communities.0"
    with pytest.raises(AdapterConfigInvalid) as err:
        GoBgpAdapter.from_config(config(next_hop_v4="2001:db8::1"))
    assert err.value.field == "config.next_hop_v4"
    with pytest.raises(AdapterConfigInvalid) as err:
        GoBgpAdapter.from_config(config(timeout=0))
    assert err.value.field == "config.timeout"
    with pytest.raises(AdapterConfigInvalid) as err:
        GoBgpAdapter.from_config(config(colour="blue"))
    assert err.value.field == "config.colour"


def test_capabilities_narrow_but_never_widen() -> None:
    narrow = AdapterConfig(
        name="gb",
        adapter_type="gobgp",
        endpoint="unix:///run/gobgp/x.sock",
        capabilities=("blackhole",),
    )
    assert GoBgpAdapter.from_config(narrow).capabilities == {Capability.BLACKHOLE}
    wide = AdapterConfig(
        name="gb",
        adapter_type="gobgp",
        endpoint="unix:///run/gobgp/x.sock",
        capabilities=("scrubbing",),
    )
    with pytest.raises(AdapterConfigInvalid, match="cannot carry scrubbing"):
        GoBgpAdapter.from_config(wide)


def test_registered_under_its_entry_point() -> None:
    assert Registry().get("gobgp") is GoBgpAdapter  # type: ignore[comparison-overlap]


def test_settings_communities_are_canonical() -> None:
    adapter = GoBgpAdapter.from_config(config(communities=["blackhole", "64500:1"]))
    assert adapter.settings.communities == ("65535:666", "64500:1")
    assert "unix:///run/gobgp/api.sock" in repr(adapter)


def test_delete_request_never_empty() -> None:
    with pytest.raises(ValueError, match="delete every local path"):
        _delete_request(None)
    with pytest.raises(ValueError, match="delete every local path"):
        _delete_request(api.Path())
    path = render_path(build_intent({"kind": "blackhole", "prefix": "192.0.2.1"}))
    req = _delete_request(path)
    assert req.path.is_withdraw
    assert req.path.nlri == path.nlri
    assert req.family == path.family
    assert not req.uuid


# ---------------------------------------------------------------- build_stubs


def test_fix_imports_makes_sibling_imports_relative() -> None:
    text = "import gobgp_pb2 as gobgp__pb2\nimport grpc\nfrom attribute_pb2 import X\n"
    assert fix_imports(text) == (
        "from . import gobgp_pb2 as gobgp__pb2\nimport grpc\nfrom .attribute_pb2 import X\n"
    )


def test_missing_protos_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(StubError, match="apt-get install golang-github-osrg-gobgp-dev"):
        find_proto_dir(str(tmp_path))


def test_proto_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROTOS:
        (tmp_path / name).write_text("")
    monkeypatch.setenv("SLUICE_GOBGP_PROTO_DIR", str(tmp_path))
    assert find_proto_dir(None) == tmp_path


@pytest.mark.skipif(not DEBIAN_PROTO_DIR.is_dir(), reason="Debian GoBGP protos not installed")
def test_build_is_idempotent_and_importable(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert build(DEBIAN_PROTO_DIR, out) is True
    assert build(DEBIAN_PROTO_DIR, out) is False
    text = (out / "attribute_pb2.py").read_text()
    assert "from . import gobgp_pb2" in text
    assert "\nimport gobgp_pb2" not in text
    assert not (out / "attribute_pb2_grpc.py").exists()


def test_stub_builder_does_not_need_the_stubs() -> None:
    """``python -m adapters.gobgp.build_stubs`` must run on a fresh checkout."""
    code = (
        "import sys, adapters.gobgp.build_stubs; "
        "print(any(m.startswith('adapters.gobgp._generated') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
