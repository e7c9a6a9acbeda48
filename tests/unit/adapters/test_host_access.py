"""What adapter settings may touch on the host: programs, files, sockets and egress."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.access import HostAccess, PathRefused
from adapters.base import AdapterConfig, Registry, RuleRef
from adapters.bird2 import Bird2Adapter
from adapters.egress import EgressPolicy, EgressRefused
from adapters.exabgp import ExaBgpAdapter
from adapters.http import HttpClient, HttpSettings
from orchestrator.settings import Settings
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK, allow, loopback_name

# ---------------------------------------------------------------- egress


def refusal(allowed: list[str], addr: str, host: str = "hooks.example.net") -> str | None:
    return EgressPolicy.from_entries(allowed).refusal(host, ipaddress.ip_address(addr))


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_internal_addresses_are_refused_by_default(addr: str, why: str) -> None:
    text = refusal([], addr)
    assert text is not None and why in text and "SLUICE_EGRESS_ALLOW" in text


def test_public_addresses_pass() -> None:
    for addr in ("203.0.113.10", "8.8.8.8", "2001:db8::1", "2606:4700::1111"):
        assert refusal([], addr) is None


def test_only_an_entry_inside_the_range_opens_it() -> None:
    assert refusal(["127.0.0.1"], "127.0.0.1") is None
    assert refusal(["loopback"], "127.0.0.2") is None
    assert refusal(["loopback"], "::ffff:127.0.0.1") is None
    assert refusal(["127.0.0.1"], "127.0.0.2") is not None
    assert refusal(["private"], "10.9.9.9") is None and refusal(["10.0.0.0/8"], "10.1.1.1") is None
    assert "loopback" in (refusal(["0.0.0.0/0", "::/0"], "127.0.0.1") or "")
    assert "private" in (refusal(["0.0.0.0/0"], "10.0.0.1") or "")
    # link-local does not open the metadata address; only naming it does
    assert "metadata" in (refusal(["link-local"], "169.254.169.254") or "")
    assert refusal(["link-local"], "169.254.1.1") is None
    assert refusal(["169.254.169.254"], "169.254.169.254") is None


@pytest.mark.parametrize("entry", ["", "everything", "10.0.0.1/8", "http://x"])
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="neither an IP network nor one of"):
        EgressPolicy.from_entries([entry])


def test_creation_time_check_knows_literals_and_localhost() -> None:
    policy = EgressPolicy()
    assert "loopback" in (policy.check_host("localhost") or "")
    assert "loopback" in (policy.check_host("api.localhost.") or "")
    assert "loopback" in (policy.check_host("[::1]") or "")
    assert policy.check_host("hooks.example.net") is None  # a name: checked on connection
    assert LOOPBACK.egress.check_host("localhost") is None


async def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(EgressRefused, match=r"localhost resolves to .*loopback"):
        await EgressPolicy().resolve("localhost", 80)
    with pytest.raises(EgressRefused, match=r"0177\.0\.0\.1 resolves to 127\.0\.0\.1, loopback"):
        await EgressPolicy().resolve("0177.0.0.1", 80)  # octal: no literal to Python
    with pytest.raises(EgressRefused, match="cannot resolve"):
        await EgressPolicy().resolve("no-such-host.invalid", 80)
    assert [str(a) for a in await LOOPBACK.egress.resolve("127.0.0.1", 80)] == ["127.0.0.1"]


async def test_http_client_refuses_at_connection_and_does_not_retry() -> None:
    name, address = loopback_name()
    settings = HttpSettings.model_validate(
        {"endpoint": f"http://{name}:9", "retries": 3, "backoff": 0},
        context={"access": HostAccess()},
    )
    client = HttpClient(settings, label="thing adapter 't'")
    try:
        with pytest.raises(
            Exception, match=rf"{re.escape(name)} resolves to {re.escape(address)}, loopback"
        ) as err:
            await client.send("GET", "/x")
    finally:
        await client.close()
    assert getattr(err.value, "code", None) == "egress_refused"
    assert "attempts" not in str(err.value)  # refused once, not retried
    assert getattr(err.value, "retryable", True) is False


def test_http_endpoint_literal_refused_at_creation_naming_the_field() -> None:
    for endpoint in (
        "http://127.0.0.1:8080",
        "http://localhost",
        "http://[::1]",
        "http://10.0.0.5",
    ):
        with pytest.raises(AdapterConfigInvalid, match="egress policy") as err:
            ExaBgpAdapter.from_config(
                AdapterConfig(name="x", adapter_type="exabgp", endpoint=endpoint)
            )
        assert err.value.field == "endpoint"
    ExaBgpAdapter.from_config(
        AdapterConfig(
            name="x", adapter_type="exabgp", endpoint="http://127.0.0.1:8080", access=LOOPBACK
        )
    )


async def test_redirects_are_not_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/"})

    settings = HttpSettings.model_validate({"endpoint": "https://api.example.net"})
    client = HttpClient(settings, label="t", transport=httpx.MockTransport(handler))
    try:
        resp = await client.send("GET", "/x")
    finally:
        await client.close()
    assert resp.status_code == 302 and seen == ["https://api.example.net/x"]


# ---------------------------------------------------------------- paths


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "out").symlink_to(outside)
    (allowed / "passwd").symlink_to("/etc/passwd")
    return {"allowed": allowed, "outside": outside, "data": allowed / "data"}


def test_paths_resolve_inside_the_allowed_directories(tree: dict[str, Path]) -> None:
    access = HostAccess(allowed_dirs=(tree["allowed"],), denied_dirs=(tree["data"],))
    assert access.check_path(tree["allowed"] / "sub" / "x.conf") == tree["allowed"] / "sub/x.conf"
    assert access.check_path(tree["allowed"]) == tree["allowed"]
    for bad, why in [
        ("relative.conf", "absolute"),
        ("", "non-empty"),
        ("/a\x00b", "non-empty"),
        (f"{tree['allowed']}/../outside/x", "'..'"),
        (f"{tree['allowed']}/sub/../../outside/x", "'..'"),
        (str(tree["outside"] / "x"), "outside the directories"),
        (str(tree["allowed"] / "out" / "x"), "which resolves to"),
        (str(tree["allowed"] / "passwd"), "/etc/passwd"),
        (str(tree["data"] / "sluice.db"), "the service's own directory"),
        ("/etc/shadow", "outside the directories"),
    ]:
        with pytest.raises(PathRefused, match=why):
            access.check_path(bad)


def test_path_settings_outside_are_refused_with_the_field_named(tree: dict[str, Path]) -> None:
    access = allow(tree["allowed"])
    registry = Registry(access=access)
    inside = str(tree["allowed"] / "sub" / "f")
    outside = str(tree["outside"] / "f")
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("fake", {"state_file": outside}, "", "config.state_file"),
        ("log", {"path": outside}, "", "config.path"),
        ("bird2", {"socket": inside, "include_file": outside}, "", "config.include_file"),
        ("bird2", {"socket": outside, "include_file": inside}, "", "config.socket"),
        ("frr", {"asn": 1, "vty_socket_dir": str(tree["outside"])}, "", "config.vty_socket_dir"),
        ("exabgp", {}, f"unix://{outside}", "endpoint"),
        ("gobgp", {}, f"unix://{outside}", "endpoint"),
        (
            "f5",
            {"username": "u", "ca_file": "/etc/ssl/certs/ca-certificates.crt"},
            "",
            "config.ca_file",
        ),
    ]
    for adapter_type, config, endpoint, field in cases:
        with pytest.raises(AdapterConfigInvalid) as err:
            registry.create(
                AdapterConfig(
                    name="x",
                    adapter_type=adapter_type,
                    endpoint=endpoint or ("https://f5.example.net" if adapter_type == "f5" else ""),
                    auth_token="pw" if adapter_type == "f5" else None,
                    config=config,
                )
            )
        assert (err.value.field, err.value.code) == (field, "path_not_allowed"), adapter_type


@pytest.mark.parametrize("key", ["vtysh", "birdc", "gobgp", "exabgp", "command", "program"])
@pytest.mark.parametrize("adapter_type", ["frr", "bird2", "gobgp", "exabgp", "log", "webhook"])
def test_no_adapter_setting_names_a_program(adapter_type: str, key: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        Registry().create(
            AdapterConfig(name="x", adapter_type=adapter_type, config={key: "/bin/sh"})
        )
    assert (err.value.field, err.value.code) == (f"config.{key}", "setting_not_allowed")
    assert "programs are not adapter settings" in err.value.message


async def test_a_symlink_swapped_in_after_creation_is_refused_at_use(
    tree: dict[str, Path],
) -> None:
    sub = tree["allowed"] / "sub"
    ad = Bird2Adapter.from_config(
        AdapterConfig(
            name="b",
            adapter_type="bird2",
            config={"socket": str(sub / "bird.ctl"), "include_file": str(sub / "rtbh.conf")},
            access=allow(tree["allowed"]),
        )
    )
    sub.rename(tree["allowed"] / "old")
    sub.symlink_to(tree["outside"])  # the directory now leads outside
    ref = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"}))
    [out] = await ad.announce([ref])
    assert not out.ok and not out.retryable and "outside the directories" in (out.error or "")
    assert not (await ad.check()).ok
    assert list(tree["outside"].iterdir()) == []


# ---------------------------------------------------------------- service settings


def test_service_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLUICE_ADAPTER_DIRS", f"{tmp_path}/a:/run/bird")
    monkeypatch.setenv("SLUICE_EGRESS_ALLOW", "loopback, 10.20.0.0/16")
    monkeypatch.setenv("SLUICE_VTYSH", "/opt/frr/bin/vtysh")
    s = Settings(data_dir=tmp_path / "data", policy_dir=tmp_path / "policy")
    access = s.host_access()
    assert access.allowed_dirs == (tmp_path / "a", Path("/run/bird"))
    assert access.program("vtysh") == "/opt/frr/bin/vtysh"
    assert access.egress.refusal("x", ipaddress.ip_address("10.20.1.1")) is None
    assert access.egress.refusal("x", ipaddress.ip_address("10.21.1.1")) is not None
    # the service's own directories are refused even when inside an allowed one
    assert tmp_path / "data" in access.denied_dirs and tmp_path / "policy" in access.denied_dirs
    monkeypatch.setenv("SLUICE_EGRESS_ALLOW", "everything")
    with pytest.raises(ValueError, match="everything"):
        Settings()
    monkeypatch.setenv("SLUICE_EGRESS_ALLOW", "")
    monkeypatch.setenv("SLUICE_ADAPTER_DIRS", "relative/dir")
    with pytest.raises(ValueError, match="absolute"):
        Settings()


def test_defaults_allow_no_internal_egress_and_no_temporary_directory() -> None:
    access = Settings().host_access()
    assert access.egress.allowed == ()
    with pytest.raises(PathRefused):
        access.check_path(Path(os.path.realpath("/tmp")) / "x")


def test_a_ca_file_that_is_no_certificate_is_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(AdapterConfigInvalid, match="no usable CA certificate") as err:
        Registry(access=allow(tmp_path)).create(
            AdapterConfig(
                name="x",
                adapter_type="f5",
                endpoint="https://f5.example.net",
                auth_token="pw",
                config={"username": "u", "ca_file": str(tmp_path / "ca.pem")},
            )
        )
    assert err.value.field == "config.ca_file"
