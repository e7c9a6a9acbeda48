"""Where the gobgp adapter's gRPC channel may go: the service's speaker endpoint list.

The connection tests run a plain TCP listener on loopback that counts the connections it
accepts: the question is where gRPC connects, not what it says once connected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.access import HostAccess
from adapters.base import AdapterConfig, Registry, RuleRef
from adapters.egress import Address
from adapters.gobgp import GoBgpAdapter
from adapters.speakers import (
    DEFAULT_SPEAKERS,
    EndpointRefused,
    SpeakerEndpoints,
    Unresolved,
    grpc_target,
    parse_entry,
)
from orchestrator.settings import Settings
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import loopback_name

# ---------------------------------------------------------------- the list


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ("loopback", ["127.0.0.0/8", "::1"]),
        ("loopback:50051", ["127.0.0.0/8:50051", "[::1]:50051"]),
        ("10.0.0.5", ["10.0.0.5"]),
        ("10.0.0.5:50051", ["10.0.0.5:50051"]),
        (" 10.1.0.0/24:179 ", ["10.1.0.0/24:179"]),
        ("[fd00::5]:50051", ["[fd00::5]:50051"]),
        ("[FD00:10::/64]", ["fd00:10::/64"]),
        ("fd00:10::/64", ["fd00:10::/64"]),
        ("0.0.0.0/0", ["0.0.0.0/0"]),
    ],
)
def test_entries_parse(entry: str, shown: list[str]) -> None:
    assert [str(a) for a in parse_entry(entry)] == shown


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("gobgp.example.net:50051", "neither an IP network nor 'loopback'"),
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.1:0", "is not a port"),
        ("10.0.0.1:70000", "is not a port"),
        ("10.0.0.1:x", "is not a port"),
        ("[::1", "write an IPv6 entry as [network]:port"),
        ("[::1]50051", "write an IPv6 entry as [network]:port"),
        ("", "neither an IP network"),
    ],
)
def test_bad_entries_say_which_and_why(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=repr(entry).replace("[", r"\[")) as err:
        parse_entry(entry)
    assert says in str(err.value)


def test_the_default_is_gobgpds_port_on_loopback() -> None:
    d = DEFAULT_SPEAKERS
    assert d.describe() == "127.0.0.0/8:50051, [::1]:50051"
    assert d.check_host("127.0.0.1", 50051) is None
    assert d.check_host("127.0.1.1", 50051) is None
    assert d.check_host("::1", 50051) is None
    assert d.check_host("::ffff:127.0.0.1", 50051) is None  # checked as the IPv4 it carries
    assert d.check_host("localhost", 50051) is None
    assert d.check_host("gobgp.example.net", 50051) is None  # a name: checked when resolved
    for host, port in [("127.0.0.1", 6379), ("127.0.0.1", 8080), ("::1", 22)]:
        why = d.check_host(host, port)
        assert why is not None and "is not a speaker endpoint the service allows" in why
        assert "SLUICE_SPEAKER_ENDPOINTS" in why
    assert "localhost:5432 resolves to 127.0.0.1" in (d.check_host("localhost", 5432) or "")
    for host in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "::ffff:10.0.0.1"]:
        assert d.check_host(host, 50051) is not None, host


def test_refused_by_address_by_port_and_never() -> None:
    s = SpeakerEndpoints.from_entries(["10.0.0.0/24:50051", "[fd00::/64]:50051", "192.0.2.9"])
    assert s.check_host("10.0.0.7", 50051) is None
    assert s.check_host("fd00::7", 50051) is None
    assert s.check_host("192.0.2.9", 12345) is None  # no port in the entry: any port
    assert "10.0.1.7:50051 is not a speaker endpoint" in (s.check_host("10.0.1.7", 50051) or "")
    assert "10.0.0.7:22 is not" in (s.check_host("10.0.0.7", 22) or "")
    assert "[fd00::7]:22 is not" in (s.check_host("fd00::7", 22) or "")
    assert "127.0.0.1:50051 is not" in (s.check_host("127.0.0.1", 50051) or "")  # not listed
    everything = SpeakerEndpoints.from_entries(["0.0.0.0/0", "::/0"])
    for host in ["0.0.0.0", "::", "0.1.2.3", "::ffff:0.0.0.0", "224.0.0.1", "ff02::1"]:
        why = everything.check_host(host, 50051)
        assert why is not None and "never a speaker endpoint" in why, host
    assert everything.check_host("10.0.0.1", 50051) is None


def test_metadata_address_only_when_named_exactly() -> None:
    wide = SpeakerEndpoints.from_entries(["169.254.0.0/16", "0.0.0.0/0", "fd00::/8"])
    assert "metadata" in (wide.check_host("169.254.169.254", 80) or "")
    assert "metadata" in (wide.check_host("fd00:ec2::254", 80) or "")
    assert wide.check_host("169.254.1.1", 80) is None
    named = SpeakerEndpoints.from_entries(["169.254.169.254:80"])
    assert named.check_host("169.254.169.254", 80) is None
    assert named.check_host("169.254.169.254", 81) is not None


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(data_dir=tmp_path).host_access().speakers == DEFAULT_SPEAKERS
    monkeypatch.setenv("SLUICE_SPEAKER_ENDPOINTS", "10.0.0.0/24:50051, [fd00::1]:50051")
    speakers = Settings(data_dir=tmp_path).host_access().speakers
    assert speakers.describe() == "10.0.0.0/24:50051, [fd00::1]:50051"
    monkeypatch.setenv("SLUICE_SPEAKER_ENDPOINTS", "")
    none = Settings(data_dir=tmp_path).host_access().speakers
    assert none.describe() == "none: unix sockets only"
    assert none.check_host("127.0.0.1", 50051) is not None
    monkeypatch.setenv("SLUICE_SPEAKER_ENDPOINTS", "loopback:50051,10.0.0.1/8")
    with pytest.raises(ValidationError, match=r"'10\.0\.0\.1/8'"):
        Settings(data_dir=tmp_path)


def test_grpc_target_names_the_checked_addresses() -> None:
    v4 = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.1")]
    v6 = [ipaddress.ip_address("::1")]
    assert grpc_target(v4, 50051) == "ipv4:127.0.0.1:50051,10.0.0.1:50051"
    assert grpc_target([*v6, *v4], 1) == "ipv6:[::1]:1,[::ffff:127.0.0.1]:1,[::ffff:10.0.0.1]:1"


# ---------------------------------------------------------------- resolving


@dataclass
class Names:
    """A resolver the test can point a name elsewhere with, counting the questions."""

    table: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


async def test_every_address_of_a_name_is_checked() -> None:
    names = Names({"one.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"]})
    s = SpeakerEndpoints.from_entries(["loopback:50051"], resolver=names)
    assert [str(a) for a in await s.resolve("one.test", 50051)] == ["127.0.0.1"]
    with pytest.raises(EndpointRefused, match=r"mixed.test:50051 resolves to 10.0.0.1, which"):
        await s.resolve("mixed.test", 50051)
    with pytest.raises(Unresolved, match=r"cannot resolve gone\.test"):
        await s.resolve("gone.test", 50051)
    assert names.asked == ["one.test", "mixed.test", "gone.test"]
    assert [str(a) for a in await s.resolve("::1", 50051)] == ["::1"]  # literal: not asked
    assert names.asked == ["one.test", "mixed.test", "gone.test"]


async def test_a_name_resolving_to_a_refused_address_is_refused_by_the_system_resolver() -> None:
    name, address = loopback_name()
    s = SpeakerEndpoints.from_entries(["10.0.0.0/8:50051"])
    with pytest.raises(EndpointRefused, match=rf"{name}:50051 resolves to {address}, which"):
        await s.resolve(name, 50051)


# ---------------------------------------------------------------- the adapter


@dataclass
class Listener:
    host: str
    port: int
    accepted: int = 0


@pytest.fixture
async def listen() -> AsyncIterator[Callable[[str], Awaitable[Listener]]]:
    servers: list[asyncio.Server] = []

    async def start(host: str) -> Listener:
        box = Listener(host, 0)

        def accepted(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            box.accepted += 1
            writer.close()

        server = await asyncio.start_server(accepted, host, 0)
        servers.append(server)
        box.port = server.sockets[0].getsockname()[1]
        return box

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def until(cond: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        await asyncio.sleep(0.02)


def gobgp(endpoint: str, speakers: SpeakerEndpoints) -> GoBgpAdapter:
    registry = Registry(access=HostAccess(speakers=speakers))
    config = AdapterConfig(
        name="gb", adapter_type="gobgp", endpoint=endpoint, config={"timeout": 3}
    )
    adapter = registry.create(config)
    assert isinstance(adapter, GoBgpAdapter)
    return adapter


REF = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "192.0.2.1/32"}))


def test_a_refused_literal_fails_creation_naming_the_field() -> None:
    for endpoint, says in [
        ("10.0.0.1:50051", "10.0.0.1:50051 is not a speaker endpoint"),
        ("127.0.0.1:6379", "127.0.0.1:6379 is not a speaker endpoint"),
        ("[::1]:22", "[::1]:22 is not a speaker endpoint"),
        ("0.0.0.0:50051", "never a speaker endpoint"),
        ("localhost:8080", "localhost:8080 resolves to 127.0.0.1"),
    ]:
        with pytest.raises(AdapterConfigInvalid) as err:
            gobgp(endpoint, DEFAULT_SPEAKERS)
        assert (err.value.field, err.value.code) == ("endpoint", "endpoint_not_allowed")
        assert f"endpoint: {endpoint.split(':')[0]}" in err.value.message  # the field first
        assert says in err.value.message, endpoint
        if "never" not in says:
            assert "SLUICE_SPEAKER_ENDPOINTS" in err.value.message
    assert gobgp("127.0.0.1:50051", DEFAULT_SPEAKERS).settings.endpoint == "127.0.0.1:50051"
    assert gobgp("gobgp.example.net:50051", DEFAULT_SPEAKERS)  # a name: checked when resolved


async def test_the_channel_goes_to_the_checked_address(
    listen: Callable[[str], Awaitable[Listener]],
) -> None:
    box = await listen("127.0.0.1")
    names = Names({"speaker.test": ["127.0.0.1"]})  # a name only this resolver knows
    adapter = gobgp(
        f"speaker.test:{box.port}",
        SpeakerEndpoints.from_entries([f"127.0.0.1:{box.port}"], resolver=names),
    )
    try:
        health = await adapter.check()
    finally:
        await adapter.close()
    assert not health.ok  # a plain TCP listener is no gobgpd
    await until(lambda: box.accepted > 0, "gRPC connected to 127.0.0.1, the checked address")
    assert names.asked == ["speaker.test"]


async def test_a_name_pointed_elsewhere_is_checked_again_on_the_next_channel(
    listen: Callable[[str], Awaitable[Listener]],
) -> None:
    box = await listen("127.0.0.1")
    names = Names({"speaker.test": ["127.0.0.1"]})
    adapter = gobgp(
        f"speaker.test:{box.port}",
        SpeakerEndpoints.from_entries([f"127.0.0.1:{box.port}"], resolver=names),
    )
    try:
        (first,) = await adapter.announce([REF])
        assert not first.ok and first.retryable  # reached, and UNAVAILABLE: a new channel
        await until(lambda: box.accepted > 0, "the first connection")
        names.table["speaker.test"] = ["10.0.0.1"]  # the name now leads elsewhere
        (second,) = await adapter.announce([REF])
        health = await adapter.check()
    finally:
        await adapter.close()
    assert not second.ok and not second.retryable
    assert second.error is not None
    assert f"speaker.test:{box.port} resolves to 10.0.0.1, which is not a speaker" in second.error
    assert health.detail == second.error and health.latency_ms is None
    assert names.asked == ["speaker.test"] * 3  # the first channel, then once per attempt


async def test_a_name_resolving_to_a_refused_address_reaches_nothing(
    listen: Callable[[str], Awaitable[Listener]],
) -> None:
    name, address = loopback_name()  # the system resolver's answer, e.g. 127.0.1.1
    box = await listen(address)
    refusing = SpeakerEndpoints.from_entries([f"10.0.0.0/8:{box.port}", "loopback:50051"])
    adapter = gobgp(f"{name}:{box.port}", refusing)
    try:
        outcomes = await adapter.announce([REF, RuleRef(2, REF.intent)])
        health = await adapter.check()
        states = adapter.session_states()
        with pytest.raises(Exception, match="is not a speaker endpoint") as err:
            await states
        assert getattr(err.value, "code", None) == "endpoint_not_allowed"
        assert adapter._channel is None  # no channel was ever made: nothing can connect
    finally:
        await adapter.close()
    for outcome in outcomes:
        assert not outcome.ok and not outcome.retryable
        assert f"{name}:{box.port} resolves to {address}, which is not" in (outcome.error or "")
    assert not health.ok and "is not a speaker endpoint" in health.detail
    assert box.accepted == 0
    # the same adapter under a list that holds the address does connect: the listener
    # would have seen a connection above
    allowing = gobgp(f"{name}:{box.port}", SpeakerEndpoints.from_entries([f"{address}:{box.port}"]))
    try:
        await allowing.check()
    finally:
        await allowing.close()
    await until(lambda: box.accepted > 0, f"a connection to {address} when it is allowed")
    assert box.accepted >= 1


async def test_an_unresolvable_name_is_retryable() -> None:
    adapter = gobgp("no-such-host.invalid:50051", DEFAULT_SPEAKERS)
    try:
        (outcome,) = await adapter.announce([REF])
    finally:
        await adapter.close()
    assert not outcome.ok and outcome.retryable
    assert "cannot resolve no-such-host.invalid" in (outcome.error or "")


async def test_a_proxy_from_the_environment_is_not_used(
    listen: Callable[[str], Awaitable[Listener]], monkeypatch: pytest.MonkeyPatch
) -> None:
    speaker = await listen("127.0.0.1")
    proxy = await listen("127.0.0.1")
    for var in ("grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("no_grpc_proxy", raising=False)
    adapter = gobgp(
        f"speaker.test:{speaker.port}",
        SpeakerEndpoints.from_entries(
            [f"127.0.0.1:{speaker.port}"], resolver=Names({"speaker.test": ["127.0.0.1"]})
        ),
    )
    try:
        await adapter.check()
    finally:
        await adapter.close()
    await until(lambda: speaker.accepted > 0, "a direct connection to the checked address")
    assert proxy.accepted == 0


async def test_a_name_with_both_families_reaches_a_speaker_on_either(
    listen: Callable[[str], Awaitable[Listener]],
) -> None:
    box = await listen("127.0.0.1")  # IPv4 only; the name gives ::1 first
    names = Names({"speaker.test": ["::1", "127.0.0.1"]})
    adapter = gobgp(
        f"speaker.test:{box.port}",
        SpeakerEndpoints.from_entries([f"loopback:{box.port}"], resolver=names),
    )
    try:
        await adapter.check()
    finally:
        await adapter.close()
    await until(lambda: box.accepted > 0, "a connection to 127.0.0.1 after ::1 refused it")


@pytest.mark.parametrize(
    "endpoint",
    [
        "unix-abstract:gobgp",
        "ipv4:10.0.0.1:50051",
        "ipv6:[fd00::1]:50051",
        "dns:///10.0.0.1:50051",
        "dns://8.8.8.8/gobgp.example.net:50051",
        "xds:///gobgp",
        "vsock:3:50051",
    ],
)
def test_other_grpc_target_schemes_are_not_endpoints(endpoint: str) -> None:
    """gRPC reads these as its own schemes: none may be handed to it from a setting."""
    with pytest.raises(AdapterConfigInvalid) as err:
        gobgp(endpoint, SpeakerEndpoints.from_entries(["0.0.0.0/0", "::/0"]))
    assert err.value.field == "endpoint"
