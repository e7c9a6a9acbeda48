"""The bridge's ack bookkeeping and transports, with ExaBGP's side played by the test.

ExaBGP itself is exercised in tests/integration/test_exabgp_lab.py; here the test writes
what ExaBGP 4.2 writes (``done``/``error`` acks, ``neighbor X up``, ``show`` output),
including its one ordering quirk: a command it does not recognise is answered at once,
ahead of acks still due for scheduled commands.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from adapters.base import AdapterConfig, RuleRef
from adapters.exabgp import ExaBgpAdapter
from adapters.exabgp.bridge import Bridge, http_address, http_handler, in_order, serve_unix
from adapters.exabgp.httpserver import serve_http
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import allow


class ScriptedExaBgp:
    """Receives the bridge's writes; answers scheduled commands later, unknown ones at once."""

    def __init__(self, refuse: tuple[str, ...] = ("bogus",), silent: bool = False) -> None:
        self.bridge: Bridge | None = None
        self.lines: list[str] = []
        self.refuse = refuse
        self.silent = silent
        self.queue_at_write: list[int] = []
        self._due: list[str] = []

    def write(self, data: bytes) -> None:
        assert self.bridge is not None
        for line in data.decode().splitlines():
            self.lines.append(line)
            self.queue_at_write.append(len(self.bridge.pending))
            if self.silent:
                continue
            if not in_order(line):
                self.bridge.feed("error\n")  # ExaBGP: "command not understood", at once
            elif any(word in line for word in self.refuse):
                self._due.append("error")
            else:
                if line.startswith("show adj-rib"):  # ExaBGP's layout, from what it accepted
                    for held in sorted(self.bridge.routes.values()):
                        prefix = held.split(" route ", 1)[1].split()[0]
                        self._due.append(
                            f"neighbor 192.0.2.2 local-ip 192.0.2.1 local-as 65001 peer-as 65010 "
                            f"router-id 192.0.2.1 family-allowed in-open ipv4 unicast {prefix} "
                            "next-hop self community blackhole"
                        )
                if line == "show neighbor summary":  # ExaBGP 4.2's layout; established only
                    self._due.append("Peer            AS        up/down state       |     #sent")
                    self._due.append("192.0.2.2       65010     0:01:02 established          4")
                self._due.append("done")

    async def drain(self) -> None:
        await asyncio.sleep(0)
        assert self.bridge is not None
        due, self._due = self._due, []
        for line in due:
            self.bridge.feed(line + "\n")


def make_bridge(tmp: Path | None = None, owner: str = "1:1", **kw: Any) -> tuple[Bridge, Any]:
    exa = ScriptedExaBgp(**kw)
    bridge = Bridge(exa, ack_timeout=0.2, state_file=tmp, owner=owner)
    exa.bridge = bridge
    return bridge, exa


A = "announce route 192.0.2.1/32 next-hop self community [ 65535:666 ]"
B = "announce route 192.0.2.2/32 next-hop self community [ 65535:666 ]"


async def test_acks_go_to_their_commands_and_routes_are_tracked() -> None:
    bridge, _ = make_bridge()
    results = await bridge.submit([A, B, "announce route 192.0.2.3/32 next-hop bogus"])
    assert [r["ack"] for r in results] == ["done", "done", "error"]
    assert sorted(bridge.routes.values()) == [A, B]
    await bridge.submit([A.replace("announce", "withdraw")])
    assert list(bridge.routes.values()) == [B]


async def test_unrecognised_command_is_written_alone() -> None:
    bridge, exa = make_bridge()
    results = await bridge.submit([A, "bogus command", B])
    assert [r["ack"] for r in results] == ["done", "error", "done"]
    # nothing but itself was awaiting an ack when the unknown command went out
    assert exa.queue_at_write[exa.lines.index("bogus command")] == 1
    assert exa.queue_at_write[exa.lines.index(A)] == 1


async def test_neighbor_changes_and_show_output() -> None:
    bridge, _ = make_bridge()
    bridge.feed("neighbor 192.0.2.2 up\n")
    bridge.feed("neighbor 192.0.2.6 down\n")
    assert bridge.neighbors == {"192.0.2.2": "up", "192.0.2.6": "down"}
    await bridge.submit([A])
    reply = await bridge.handle({"op": "adj-rib-out"})
    assert len(reply["lines"]) == 1
    assert " ipv4 unicast 192.0.2.1/32 next-hop self" in reply["lines"][0]
    assert bridge.neighbors["192.0.2.2"] == "up"


async def test_refresh_learns_sessions_already_up() -> None:
    bridge, _ = make_bridge()
    bridge.feed("neighbor 192.0.2.6 down\n")
    await bridge.refresh_neighbors()
    assert bridge.neighbors == {"192.0.2.2": "up", "192.0.2.6": "down"}


async def test_missing_ack_is_a_timeout_and_later_acks_still_line_up() -> None:
    bridge, exa = make_bridge(silent=True)
    (first,) = await bridge.submit([A])
    assert first["ack"] == "timeout"
    exa.silent = False
    bridge.feed("done\n")  # the late ack for A
    (second,) = await bridge.submit([B])
    assert second["ack"] == "done"
    assert set(bridge.routes.values()) == {A, B}


async def test_shutdown_fails_pending_and_later_commands() -> None:
    bridge, _ = make_bridge(silent=True)
    task = asyncio.create_task(bridge.submit([A]))
    await asyncio.sleep(0.01)
    bridge.closed()
    assert (await task)[0]["ack"] == "shutdown"
    assert (await bridge.submit([B]))[0]["ack"] == "shutdown"


async def test_state_file_resumes_only_for_the_same_exabgp(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    bridge, _ = make_bridge(state, owner="100:5")
    await bridge.submit([A])
    again, _ = make_bridge(state, owner="100:5")
    assert again.load()
    assert list(again.routes.values()) == [A]
    other, _ = make_bridge(state, owner="100:9")  # ExaBGP restarted (pid reused)
    assert not other.load()
    assert other.routes == {}


def test_http_address_defaults() -> None:
    assert http_address("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert http_address(":8080") == ("127.0.0.1", 8080)
    assert http_address("192.0.2.1") == ("192.0.2.1", 5000)
    assert http_address("[::1]:5001") == ("::1", 5001)
    assert http_address("::1") == ("::1", 5000)


async def test_bad_requests() -> None:
    bridge, _ = make_bridge()
    assert not (await bridge.handle({"commands": "x"}))["ok"]
    assert not (await bridge.handle({"commands": ["two\nlines"]}))["ok"]
    assert not (await bridge.handle({"op": "dance"}))["ok"]


# ---------------------------------------------------------------- transports + adapter


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Bridge, str, str]]:
    bridge, _ = make_bridge(refuse=("192.0.2.66",))
    sock = tmp_path / "bridge.sock"
    unix = await serve_unix(bridge, sock)
    http = await serve_http(http_handler(bridge, "s3cret"), "127.0.0.1", 0)
    port = http.sockets[0].getsockname()[1]
    try:
        yield bridge, f"unix://{sock}", f"http://127.0.0.1:{port}"
    finally:
        unix.close()
        http.close()


async def test_http_needs_the_token(served: tuple[Bridge, str, str]) -> None:
    _, _, url = served
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/status")).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        status = (await client.get(f"{url}/status", headers=auth)).json()
        assert status["ok"]
        form = await client.post(url + "/", data={"command": A}, headers=auth)
        assert form.text == "done\n"
        routes = (await client.get(f"{url}/routes", headers=auth)).json()
        assert routes["routes"] == [A]
        missing = await client.post(url + "/", data={}, headers=auth)
        assert missing.status_code == 400


def adapter(endpoint: str, token: str | None = None, **config: Any) -> ExaBgpAdapter:
    return ExaBgpAdapter.from_config(
        AdapterConfig(
            name="exa",
            adapter_type="exabgp",
            endpoint=endpoint,
            auth_token=SecretStr(token) if token else None,
            config=config,
            # the bridge's socket is in a temporary directory and its HTTP side on loopback
            access=allow(Path(tempfile.gettempdir()), loopback=True),
        )
    )


def refs(*prefixes: str) -> list[RuleRef]:
    return [
        RuleRef(n, build_intent({"kind": "blackhole", "prefix": p}))
        for n, p in enumerate(prefixes, 1)
    ]


def _endpoint(transport: str, unix: str, http: str) -> str:
    """``ip:port`` is the reference's form for the HTTP listener."""
    return {"unix": unix, "http": http, "ip:port": http.removeprefix("http://")}[transport]


@pytest.mark.parametrize("transport", ["unix", "http", "ip:port"])
async def test_adapter_outcomes_and_read_back(
    served: tuple[Bridge, str, str], transport: str
) -> None:
    _, unix, http = served
    endpoint = _endpoint(transport, unix, http)
    exa = adapter(endpoint) if transport == "unix" else adapter(endpoint, "s3cret")
    try:
        rules = refs("192.0.2.1", "192.0.2.66", "192.0.2.3")
        outcomes = await exa.announce(rules)
        # the three shared one command; ExaBGP refused it, so each was re-sent alone
        assert [o.ok for o in outcomes] == [True, False, True]
        assert outcomes[1].retryable is False
        assert "192.0.2.66/32" in (outcomes[1].error or "")
        assert await exa.active() == frozenset({rules[0].key, rules[2].key})
        fresh = adapter(endpoint) if transport == "unix" else adapter(endpoint, "s3cret")
        assert await fresh.active() == frozenset(
            {rules[0].key, rules[2].key}
        )  # parsed back, no memory
        await fresh.close()
        assert all(o.ok for o in await exa.withdraw(rules[::2]))
        assert await exa.active() == frozenset()
    finally:
        await exa.close()


async def test_adapter_wrong_token_is_refused(served: tuple[Bridge, str, str]) -> None:
    _, _, http = served
    exa = adapter(http, "wrong")
    (outcome,) = await exa.announce(refs("192.0.2.1"))
    assert not outcome.ok
    assert not outcome.retryable
    assert "401" in (outcome.error or "")
    assert "wrong" not in (outcome.error or "")
    await exa.close()


async def test_adapter_unreachable_bridge_is_retryable(tmp_path: Path) -> None:
    exa = adapter(f"unix://{tmp_path}/none.sock")
    (outcome,) = await exa.announce(refs("192.0.2.1"))
    assert not outcome.ok
    assert outcome.retryable
    assert "cannot reach the ExaBGP bridge" in (outcome.error or "")
    health = await exa.check()
    assert not health.ok
    await exa.close()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("192.0.2.1:5001", "http://192.0.2.1:5001"),
        ("192.0.2.1", "http://192.0.2.1:5000"),
        ("[2001:db8::1]:5001", "http://[2001:db8::1]:5001"),
        ("[2001:db8::1]", "http://[2001:db8::1]:5000"),
        ("2001:db8::1", "http://[2001:db8::1]:5000"),
        ("bridge.example:8080", "http://bridge.example:8080"),
        ("http://192.0.2.1:5000/", "http://192.0.2.1:5000"),
    ],
)
def test_ip_port_endpoints_mean_the_http_listener(endpoint: str, url: str) -> None:
    assert adapter(endpoint).settings.endpoint == url


@pytest.mark.parametrize(
    ("endpoint", "config", "field"),
    [
        ("", {}, "endpoint"),
        ("tcp://x:1", {}, "endpoint"),
        ("192.0.2.1:70000", {}, "endpoint"),
        ("bridge.example", {}, "endpoint"),
        ("[not-v6]:5000", {}, "endpoint"),
        ("unix://relative", {}, "endpoint"),
        ("http://127.0.0.1:5000", {"next_hop_v4": "2001:db8::1"}, "config.next_hop_v4"),
        ("http://127.0.0.1:5000", {"communities": ["1:99999"]}, "config.communities.0"),
        ("http://127.0.0.1:5000", {"group": 0}, "config.group"),
    ],
)
def test_bad_settings_name_the_field(endpoint: str, config: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        adapter(endpoint, **config)
    assert err.value.field == field


def test_token_only_with_http_and_never_shown() -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        adapter(f"unix://{tempfile.gettempdir()}/x.sock", "tok")
    assert err.value.field == "auth_token"
    exa = adapter("http://127.0.0.1:5000", "tok-value")
    assert "tok-value" not in repr(exa)
    assert "tok-value" not in repr(exa.settings)
    assert "tok-value" not in json.dumps(exa.settings.model_dump(mode="json"))


async def test_neighbors_long_poll_answers_when_a_session_changes() -> None:
    bridge, _ = make_bridge()
    bridge.feed("neighbor 192.0.2.2 up\n")
    first = await bridge.handle({"op": "neighbors", "after": -1, "wait": 5})
    assert first["neighbors"] == {"192.0.2.2": "up"}
    waiting = asyncio.create_task(
        bridge.handle({"op": "neighbors", "after": first["version"], "wait": 30})
    )
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing changed: the poll waits
    bridge.feed("neighbor 192.0.2.2 up\n")  # a repeat is no change
    await asyncio.sleep(0)
    assert not waiting.done()
    bridge.feed("neighbor 192.0.2.2 down\n")
    reply = await asyncio.wait_for(waiting, 5)
    assert reply["neighbors"] == {"192.0.2.2": "down"}
    assert reply["version"] == first["version"] + 1
    idle = await bridge.handle({"op": "neighbors", "after": reply["version"], "wait": 0})
    assert idle["version"] == reply["version"]  # wait 0: answers at once, unchanged
    bad = await bridge.handle({"op": "neighbors", "after": "x"})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_parameter"
