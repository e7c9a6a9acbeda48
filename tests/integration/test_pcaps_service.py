"""PCAPs against the real service (``sluice serve``) over loopback HTTP.

A node uploads a 40 MB DNS-reflection capture, streamed from its file without a
Content-Length; the service parses, analyses and serves it back streamed, and the
recommended rule reaches the (fake) router through the normal rule path. The service's
peak memory grows by far less than the capture: it never holds the file whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import pcapgen as g
from tests.integration.test_crash import Server

T = "203.0.113.10"


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Server]:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "settings.yaml").write_text("settings:\n  cooldown_seconds: 0\n")
    (policy_dir / "adapters.yaml").write_text(
        "adapters:\n  - name: router\n    adapter_type: fake\n    config:\n"
        f"      state_file: {tmp_path / 'router.jsonl'}\n"
    )
    srv = Server(tmp_path, policy_dir)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_agent_upload_analysis_apply_and_download_over_http(
    service: Server, tmp_path: Path
) -> None:
    capture = g.write_repeated(tmp_path / "dns.pcap", list(g.dns_reflection(2000, T)), 72_000)
    size = capture.stat().st_size
    assert size > 40_000_000
    digest = hashlib.sha256(capture.read_bytes()).hexdigest()

    r = service.api("POST", "/nodes", json={"name": "edge-1", "ip": T})
    assert r.status_code == 201, r.text
    node = {"X-Node-UUID": r.json()["node"]["id"], "Authorization": f"Bearer {r.json()['api_key']}"}
    agent = httpx.Client(base_url=service.url, headers=node, timeout=120)
    r = agent.post(
        "/api/v1/agent/incidents",
        json={"attack_family": "dns_flood", "severity": "high", "peak_pps": 5e4},
    )
    assert r.status_code == 200, r.text
    incident = r.json()["incident"]["id"]
    assert service.proc is not None
    before = peak_rss(service.proc.pid)

    def body() -> Iterator[bytes]:  # a generator: chunked transfer, no Content-Length
        with capture.open("rb") as f:
            while chunk := f.read(256 * 1024):
                yield chunk

    r = agent.post(
        "/api/v1/agent/pcaps",
        params={"incident_id": incident, "filename": "edge-1.pcap"},
        headers={"Content-Type": "application/vnd.tcpdump.pcap", "X-PCAP-SHA256": digest},
        content=body(),
    )
    assert r.status_code == 201, r.text
    pcap = r.json()["pcap"]
    assert (pcap["sha256"], pcap["size_bytes"], pcap["packet_count"]) == (digest, size, 72_000)

    listed = service.api("GET", "/pcaps").json()
    assert [p["id"] for p in listed["pcaps"]] == [pcap["id"]]
    pkts = service.api("GET", f"/pcaps/{pcap['id']}/packets", params={"offset": 71_999}).json()
    assert pkts["packets"][0]["index"] == 71_999 and pkts["packets"][0]["src_port"] == 53

    report = service.api("GET", f"/pcaps/{pcap['id']}/analysis", timeout=120).json()["analysis"]
    assert report["attack_family"] == "dns_flood"
    [rec] = report["recommendations"]
    assert rec["canonical"] == f"flowspec dst {T}/32; proto =17; sport =53; then discard"

    r = service.api(
        "POST", f"/pcaps/{pcap['id']}/recommendations/1/apply", json={"adapter_id": "router"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["rule"]["state"] == "active"
    calls = [json.loads(line) for line in (tmp_path / "router.jsonl").read_text().splitlines()]
    assert [(c["op"], c["text"]) for c in calls] == [("announce", rec["canonical"])]

    sha = hashlib.sha256()
    received = 0
    with service.client.stream("GET", f"/api/v1/pcaps/{pcap['id']}/download") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/vnd.tcpdump.pcap"
        assert resp.headers["content-disposition"] == 'attachment; filename="edge-1.pcap"'
        for chunk in resp.iter_bytes():
            sha.update(chunk)
            received += len(chunk)
    assert (sha.hexdigest(), received) == (digest, size)

    grown = peak_rss(service.proc.pid) - before
    assert grown < size // 4, f"peak RSS grew by {grown} bytes for a {size}-byte capture"
    agent.close()
