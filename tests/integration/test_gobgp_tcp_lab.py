"""The gobgp adapter against a real gobgpd whose API listens on a loopback TCP port.

The lab topologies reach gobgpd on a unix socket; here gobgpd (no BGP listener, no
neighbours: only its API, on 127.0.0.1) is reached on ``host:port``, under the service's
speaker endpoint list (adapters.speakers): refused by default (the port is not 50051),
allowed by ``speaker_endpoints``, reached at the address the adapter checked, and no
longer reached once the name points somewhere the list refuses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from adapters.access import HostAccess
from adapters.base import AdapterConfig, Registry, RuleRef
from adapters.egress import Address
from adapters.gobgp import GoBgpAdapter
from adapters.speakers import SpeakerEndpoints
from labs.netns import LabError, wait_for
from orchestrator.settings import Settings
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.integration.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

CONFIG = """[global.config]
  as = 65000
  router-id = "192.0.2.250"
  port = -1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LoopbackGobgpd:
    """gobgpd with its gRPC API on 127.0.0.1:``port`` and nothing else listening."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "gobgpd.toml"
        self.conf.write_text(CONFIG)
        self.log = workdir / "gobgpd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gobgp", "--target", f"127.0.0.1:{self.port}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def start(self) -> None:
        argv = ["gobgpd", "-f", str(self.conf), "-t", "toml", "--pprof-disable"]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*argv, "--api-hosts", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise LabError(f"gobgpd exited:\n{self.log.read_text()[-2000:]}")
            return self.cli("global").returncode == 0

        wait_for(ready, timeout=20, what=f"gobgpd API on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def prefixes(self) -> set[str]:
        res = self.cli("global", "rib", "-a", "ipv4", "-j")
        assert res.returncode == 0, res.stderr
        return set(json.loads(res.stdout or "{}"))


@pytest.fixture
def gobgpd(tmp_path: Path) -> Iterator[LoopbackGobgpd]:
    require_lab("gobgpd", "gobgp")
    node = LoopbackGobgpd(tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Names:
    """A resolver whose answer the test changes (the system's cannot be, here)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


def adapter(access: HostAccess, endpoint: str) -> GoBgpAdapter:
    made = Registry(access=access).create(
        AdapterConfig(name="tcp", adapter_type="gobgp", endpoint=endpoint, config={"timeout": 5})
    )
    assert isinstance(made, GoBgpAdapter)
    return made


def ref(n: int) -> RuleRef:
    return RuleRef(n, build_intent({"kind": "blackhole", "prefix": f"203.0.113.{n}/32"}))


async def test_a_tcp_speaker_endpoint_is_refused_by_default_and_reached_when_allowed(
    gobgpd: LoopbackGobgpd, tmp_path: Path
) -> None:
    endpoint = f"127.0.0.1:{gobgpd.port}"
    with pytest.raises(AdapterConfigInvalid) as err:
        adapter(Settings(data_dir=tmp_path).host_access(), endpoint)
    assert (err.value.code, err.value.field) == ("endpoint_not_allowed", "endpoint")
    assert f"{endpoint} is not a speaker endpoint" in err.value.message

    allowed = Settings(data_dir=tmp_path, speaker_endpoints=(f"loopback:{gobgpd.port}",))
    a = adapter(allowed.host_access(), f"localhost:{gobgpd.port}")  # the system resolver
    try:
        health = await a.check()
        assert health.latency_ms is not None, health.detail  # gobgpd answered
        assert "no neighbours configured" in health.detail
        (out,) = await a.announce([ref(1)])
        assert out.ok, out.error
        assert await asyncio.to_thread(gobgpd.prefixes) == {"203.0.113.1/32"}
        assert ref(1).key in (await a.active() or set())
        (out,) = await a.withdraw([ref(1)])
        assert out.ok, out.error
        assert await asyncio.to_thread(gobgpd.prefixes) == set()
    finally:
        await a.close()


async def test_a_name_pointed_elsewhere_no_longer_reaches_the_speaker(
    gobgpd: LoopbackGobgpd,
) -> None:
    names = Names({"speaker.test": ["::1", "127.0.0.1"]})  # gobgpd listens on IPv4 only
    speakers = SpeakerEndpoints.from_entries([f"loopback:{gobgpd.port}"], resolver=names)
    a = adapter(HostAccess(speakers=speakers), f"speaker.test:{gobgpd.port}")
    try:
        (out,) = await a.announce([ref(2)])  # only our resolver knows the name
        assert out.ok, out.error
        assert await asyncio.to_thread(gobgpd.prefixes) == {"203.0.113.2/32"}
        await asyncio.to_thread(gobgpd.stop)
        (out,) = await a.announce([ref(3)])
        assert not out.ok and out.retryable  # UNAVAILABLE: the next channel resolves again
        names.table["speaker.test"] = ["10.0.0.1"]
        await asyncio.to_thread(gobgpd.start)
        (out,) = await a.announce([ref(3)])
        assert not out.ok and not out.retryable
        assert "speaker.test" in (out.error or "") and "10.0.0.1" in (out.error or "")
        assert "is not a speaker endpoint" in (out.error or "")
        health = await a.check()
        assert not health.ok and health.latency_ms is None
        assert await asyncio.to_thread(gobgpd.prefixes) == set()  # restarted, and left alone
        names.table["speaker.test"] = ["127.0.0.1"]  # pointed back: reached again
        (out,) = await a.announce([ref(3)])
        assert out.ok, out.error
        assert await asyncio.to_thread(gobgpd.prefixes) == {"203.0.113.3/32"}
    finally:
        await a.close()
