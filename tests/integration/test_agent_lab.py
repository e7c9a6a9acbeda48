"""``sluice agent`` against a real ``sluice serve``, with a bounded flood in namespaces.

Topology (created here, removed at the end)::

    test process / sluice serve  100.64.X.1 --- 100.64.X.2  host (sluice agent)
    attacker 192.0.2.1 ------------------------- 192.0.2.2  host (watched interface)

The agent registers with a deploy token, sees a UDP flood from source port 53 (a DNS
reflection) in the kernel's counters, opens a ``dns_flood`` incident and resolves it when
the flood stops; it applies an attack profile job once, answers a second delivery from
its record, and after a restart neither registers again nor re-applies anything.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dpkt
import httpx
import pytest
from sqlalchemy import create_engine, update

from labs.netns import Lab, Namespace, Process, wait_for
from orchestrator.store.models import agent_jobs
from tests.integration.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

TOKEN = secrets.token_hex(32)
PORT = 18080
PPS_THRESHOLD = 2000


@dataclass
class Rig:
    lab: Lab
    host: Namespace
    attacker: Namespace
    host_if: str
    svc_addr: str
    data: Path
    http: httpx.Client
    serve: subprocess.Popen[bytes]
    agent: Process | None = None

    def api(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = self.http.request(method, f"/api/v1{path}", **kw)
        assert r.status_code < 300, r.text
        body: dict[str, Any] = r.json()
        return body

    def start_agent(self, n: int) -> Process:
        self.agent = self.lab.spawn(
            self.host,
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "agent",
                "--url",
                f"http://{self.svc_addr}:{PORT}",
                "--interface",
                self.host_if,
                "--ip",
                "192.0.2.2",
                "--name",
                "edge-1",
                "--deploy-token",
                TOKEN,
                "--state-dir",
                str(self.lab.path("agent-state")),
                "--management",
                self.svc_addr,
                "--pps-threshold",
                str(PPS_THRESHOLD),
                "--resolve-after",
                "3",
                "--poll-wait",
                "5",
                "--capture-seconds",
                "3",
                "--capture-packets",
                "5000",
            ],
            name=f"agent-{n}",
        )
        return self.agent

    def agent_log(self) -> str:
        return "\n".join(p.log_tail(200) for p in self.lab.processes if p.name.startswith("agent"))

    def nft_handle(self) -> int:
        out = self.lab.run(self.host, ["nft", "-a", "list", "table", "inet", "sluice"]).stdout
        m = re.search(r"table inet sluice \{ # handle (\d+)", out)
        assert m, out
        return int(m.group(1))


def _policy(tmp: Path) -> Path:
    d = tmp / "policy"
    d.mkdir()
    (d / "settings.yaml").write_text("settings:\n  cooldown_seconds: 0\n")
    (d / "adapters.yaml").write_text(
        "adapters:\n  - name: router\n    adapter_type: fake\n    config:\n"
        f"      state_file: {tmp / 'router.jsonl'}\n"
    )
    return d


@contextmanager
def agent_rig(tmp_path: Path) -> Iterator[Rig]:
    """Namespaces, a running ``sluice serve`` and the link between them (no agent yet)."""
    with Lab() as lab:
        host, attacker = lab.namespace("host"), lab.namespace("attacker")
        link = lab.link(attacker, host, ("192.0.2.1/30", "192.0.2.2/30"), None)
        # the service runs in the test's own namespace, reached over a veth into "host"
        a, b = f"sv{lab.lab_id}sa", f"sv{lab.lab_id}sb"
        net = f"100.64.{int(lab.lab_id[:2], 16)}.{4 * (int(lab.lab_id[2:4], 16) % 64)}"
        base = net.rsplit(".", 1)
        svc_addr, host_addr = f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}"
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)

        def drop_link() -> None:  # gone with the namespace already, unless "host" failed
            subprocess.run(["ip", "link", "del", a], capture_output=True, check=False)

        lab.on_close(drop_link)
        subprocess.run(["ip", "link", "set", b, "netns", host.netns], check=True)
        subprocess.run(["ip", "addr", "add", f"{svc_addr}/30", "dev", a], check=True)
        subprocess.run(["ip", "link", "set", a, "up"], check=True)
        lab.run(host, ["ip", "addr", "add", f"{host_addr}/30", "dev", b])
        lab.run(host, ["ip", "link", "set", b, "up"])
        data = tmp_path / "data"
        log = (tmp_path / "serve.log").open("ab")
        serve = subprocess.Popen(  # our own CLI, fixed arguments
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "serve",
                "--data-dir",
                str(data),
                "--policy-dir",
                str(_policy(tmp_path)),
                "--host",
                svc_addr,
                "--port",
                str(PORT),
                "--log-level",
                "warning",
            ],
            # the fake adapter's file is in the test's directory: allowed explicitly
            env={**os.environ, "SLUICE_ADMIN_TOKEN": TOKEN, "SLUICE_ADAPTER_DIRS": str(tmp_path)},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        http = httpx.Client(
            base_url=f"http://{svc_addr}:{PORT}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

        def ready() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return bool(http.get("/api/v1/health").json().get("ready"))
            except httpx.HTTPError:
                return False

        try:
            wait_for(ready, timeout=60, what="sluice serve to be ready")
            yield Rig(lab, host, attacker, link.b_if, svc_addr, data, http, serve)
        finally:
            http.close()
            serve.terminate()
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
            log.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    require_lab("nft", "hping3")
    with agent_rig(tmp_path) as r:
        yield r


def requeue(rig: Rig, job_id: str) -> None:
    """Make the service hand the job out again, as it does when a delivery's lease ran out."""
    engine = create_engine(f"sqlite:///{rig.data / 'sluice.db'}")
    with engine.begin() as conn:
        conn.execute(
            update(agent_jobs)
            .where(agent_jobs.c.id == job_id)
            .values(
                status="delivered",
                delivered_at=datetime.now(UTC) - timedelta(hours=1),
                finished_at=None,
                result=None,
            )
        )
    engine.dispose()


def test_agent_detects_a_flood_and_applies_jobs_once(rig: Rig) -> None:
    rig.start_agent(1)
    nodes: list[dict[str, Any]] = []

    def online() -> bool:
        nodes[:] = rig.api("GET", "/nodes")["nodes"]
        return bool(nodes) and nodes[0]["status"] == "online"

    wait_for(online, timeout=60, what="the agent to register and heartbeat", diagnose=rig.agent_log)
    node_id = nodes[0]["id"]
    assert nodes[0]["ip"] == "192.0.2.2" and nodes[0]["interface"] == rig.host_if

    # ---- a bounded DNS-reflection-shaped flood: UDP from port 53, capped in count and time
    t0 = time.monotonic()
    flood = subprocess.Popen(  # our own helper, fixed arguments, inside the attacker namespace
        [
            "ip",
            "netns",
            "exec",
            rig.attacker.netns,
            sys.executable,
            "-m",
            "labs.traffic",
            "flood",
            "--dst",
            "192.0.2.2",
            "--dport",
            "5000",
            "--sport",
            "53",
            "--count",
            "600000",
            "--seconds",
            "8",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    incidents: list[dict[str, Any]] = []

    def opened() -> bool:
        incidents[:] = rig.api("GET", "/incidents", params={"status": "open"})["incidents"]
        return bool(incidents)

    try:
        wait_for(opened, timeout=45, interval=0.1, what="an incident", diagnose=rig.agent_log)
        detect_s = time.monotonic() - t0
    finally:
        out, _ = flood.communicate(timeout=60)
    sent = json.loads(out)
    inc = incidents[0]
    print(
        f"\nflood: {sent['pps']:.0f} pps for {sent['seconds']:.1f} s; "
        f"incident after {detect_s:.2f} s"
    )
    assert sent["pps"] > PPS_THRESHOLD * 2, f"the flood was too slow to prove anything: {sent}"
    assert inc["attack_family"] == "dns_flood", inc
    assert inc["node"] == node_id and inc["target_ip"] == "192.0.2.2"
    assert inc["severity"] in ("low", "medium", "high", "critical")
    assert inc["peak_pps"] >= PPS_THRESHOLD

    # ---- the capture of the attack: uploaded for the incident, or spooled when the
    # service has no PCAP store (GET /pcaps answers no such endpoint)
    iid = inc["id"]
    probe = rig.http.get("/api/v1/pcaps")
    if probe.status_code == 404 and probe.json()["error"]["code"] == "not_found":
        spooled = rig.lab.dir / "agent-state" / "pcaps" / f"{iid}.pcap"
        wait_for(spooled.exists, timeout=60, what="the spooled capture", diagnose=rig.agent_log)
        raw = spooled.read_bytes()
    else:
        found: list[dict[str, Any]] = []

        def uploaded() -> bool:
            found[:] = [p for p in rig.api("GET", "/pcaps")["pcaps"] if p.get("incident_id") == iid]
            return bool(found)

        wait_for(uploaded, timeout=60, what="the uploaded capture", diagnose=rig.agent_log)
        raw = rig.http.get(f"/api/v1/pcaps/{found[0]['id']}/download").content
        # the service's analysis of the agent's capture names the reflection and drops it
        report = rig.api("GET", f"/pcaps/{found[0]['id']}/analysis")["analysis"]
        assert report["primary_vector"] == "udp_reflection_dns", report["vectors"]
        assert report["target"] == "192.0.2.2"
        first = report["recommendations"][0]
        assert (first["rule"]["protocol"], first["rule"]["source_port"]) == ("udp", 53), first
        assert first["canonical"] == "flowspec dst 192.0.2.2/32; proto =17; sport =53; then discard"
    flood_pkts = 0
    total = 0
    first_ts = float("inf")
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(raw)):
        total += 1
        first_ts = min(first_ts, float(ts))
        ip = dpkt.ethernet.Ethernet(frame).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
            flood_pkts += ip.data.sport == 53 and ip.data.dport == 5000
    assert 0 < total <= 5000 and flood_pkts > total * 0.9, (total, flood_pkts)
    # the sampled ring gave the capture packets from before the incident was opened
    opened_at = datetime.fromisoformat(inc["opened_at"]).timestamp()
    assert first_ts < opened_at, (first_ts, opened_at)

    def resolved() -> bool:
        return bool(rig.api("GET", f"/incidents/{inc['id']}")["incident"]["status"] == "resolved")

    wait_for(
        resolved, timeout=45, what="the incident to resolve after the flood", diagnose=rig.agent_log
    )

    # ---- a SYN flood (hping3, capped at 40,000 packets and 30 s) is told apart
    syn = subprocess.Popen(  # fixed arguments, inside the attacker namespace
        [
            "timeout",
            "30",
            "ip",
            "netns",
            "exec",
            rig.attacker.netns,
            "hping3",
            "-S",
            "-p",
            "80",
            "-c",
            "40000",
            "-i",
            "u1",
            "-q",
            "192.0.2.2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            opened, timeout=45, interval=0.1, what="a SYN flood incident", diagnose=rig.agent_log
        )
    finally:
        syn.kill()
        syn.wait()
    assert incidents[0]["attack_family"] == "syn_flood", incidents[0]
    assert incidents[0]["id"] != inc["id"]

    # ---- a profile job: applied once
    jobs = rig.api(
        "POST",
        "/attack-profiles/apply",
        json={"profile_id": "game_server", "suite": "nftables", "node_ids": [node_id]},
    )["job_ids"]
    job_id = jobs[0]

    def job_status(n: int) -> bool:
        job = rig.api("GET", f"/jobs/{job_id}")["job"]
        return bool(job["status"] == "succeeded" and job["deliveries"] == n)

    wait_for(lambda: job_status(1), timeout=60, what="the job to succeed", diagnose=rig.agent_log)
    handle = rig.nft_handle()
    table = rig.lab.run(rig.host, ["nft", "list", "table", "inet", "sluice"]).stdout
    assert rig.svc_addr in table  # the service address is protected

    # ---- delivered a second time: answered from the agent's record, not re-applied
    requeue(rig, job_id)
    wait_for(lambda: job_status(2), timeout=60, what="the second delivery", diagnose=rig.agent_log)
    assert rig.nft_handle() == handle
    assert "delivered again" in rig.agent_log()

    # ---- restart: same node, nothing applied again, new jobs still run
    assert rig.agent is not None
    rig.agent.stop()
    rig.start_agent(2)
    requeue(rig, job_id)
    wait_for(
        lambda: job_status(3), timeout=60, what="delivery after restart", diagnose=rig.agent_log
    )
    assert rig.nft_handle() == handle
    assert len(rig.api("GET", "/nodes")["nodes"]) == 1
    removal = rig.api(
        "POST", "/attack-profiles/remove", json={"suite": "nftables", "node_ids": ["all"]}
    )["job_ids"][0]

    def removed() -> bool:
        return bool(rig.api("GET", f"/jobs/{removal}")["job"]["status"] == "succeeded")

    wait_for(removed, timeout=60, what="the removal job", diagnose=rig.agent_log)
    ruleset = rig.lab.run(rig.host, ["nft", "list", "ruleset"]).stdout
    assert "table inet sluice" not in ruleset
    assert "table netdev sluice_obs" in ruleset  # the agent's own observation table stays


def test_sampled_ring_keeps_one_packet_in_n_and_stays_bounded(lab: Lab) -> None:
    """The kernel's BPF sampling hands Python ~1/n of the packets; the ring never grows."""
    a, b = lab.namespace("tx"), lab.namespace("rx")
    link = lab.link(a, b, ("192.0.2.1/30", "192.0.2.2/30"), None)
    script = (
        "import json, subprocess, sys, time\n"
        "from orchestrator.agent.capture import SampledRing\n"
        f"r = SampledRing({link.b_if!r}, size=1500)\n"
        "r.start()\n"
        "r.set_rate(20000)\n"
        "n = r.n\n"
        f"subprocess.run(['ip', 'netns', 'exec', {a.netns!r}, sys.executable, '-m',"
        " 'labs.traffic', 'send', '--dst', '192.0.2.2', '--dport', '5000',"
        " '--count', '21000'], check=True, capture_output=True)\n"
        "time.sleep(0.5)\n"
        "sampled = len(r.snapshot())\n"
        "r.set_rate(0)\n"
        f"subprocess.run(['ip', 'netns', 'exec', {a.netns!r}, sys.executable, '-m',"
        " 'labs.traffic', 'send', '--dst', '192.0.2.2', '--dport', '5000',"
        " '--count', '3000'], check=True, capture_output=True)\n"
        "time.sleep(0.5)\n"
        "print(json.dumps([n, sampled, len(r.snapshot())]))\n"
        "r.stop()\n"
    )
    out = lab.run(b, [sys.executable, "-c", script], timeout=120).stdout
    n, sampled, full = json.loads(out)
    assert n == 21
    assert 700 < sampled < 1300, sampled  # 21,000 / 21 = 1,000 expected (sd ~31)
    assert full == 1500  # unsampled again: 3,000 more packets, the ring keeps its last 1,500
