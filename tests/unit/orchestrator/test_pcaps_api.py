"""The PCAP REST API: uploads (agent and operator), paging, analysis, apply, download."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.pcaps import PcapStore
from orchestrator.pcaps.store import STRIDE
from orchestrator.service import Service
from orchestrator.store.models import audit_log
from policies.guardrails import Guardrails
from tests import pcapgen as g
from tests.unit.orchestrator.conftest import ADMIN, Api, policy, settings_for

T = "203.0.113.10"
PCAP = {"Content-Type": "application/vnd.tcpdump.pcap"}


@dataclass
class Env:
    api: Api
    app: FastAPI
    tmp: Path
    node: dict[str, str]  # id, key
    incident: str

    @property
    def store(self) -> PcapStore:
        store: PcapStore = self.app.state.pcaps
        return store

    def agent_headers(self, node: dict[str, str] | None = None) -> dict[str, str]:
        n = node or self.node
        return {"Authorization": f"Bearer {n['key']}", "X-Node-UUID": n["id"], **PCAP}

    async def upload(
        self,
        body: bytes,
        *,
        incident: str | None = None,
        node: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        headers = {**self.agent_headers(node), **kw.pop("headers", {})}
        params = {"incident_id": incident or self.incident, **kw.pop("params", {})}
        return await self.api.call(
            "POST", "/agent/pcaps", token=None, headers=headers, params=params, content=body, **kw
        )

    def stored_files(self) -> list[str]:
        d = self.tmp / "pcaps"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    async def count(self) -> int:
        return int((await self.api.ok("GET", "/pcaps"))["total"])


async def register(api: Api, name: str, ip: str) -> dict[str, str]:
    body = await api.ok("POST", "/nodes", 201, json={"name": name, "ip": ip})
    return {"id": body["node"]["id"], "key": body["api_key"], "ip": ip}


async def agent_incident(api: Api, node: dict[str, str], family: str = "dns_flood") -> str:
    headers = {"Authorization": f"Bearer {node['key']}", "X-Node-UUID": node["id"]}
    body = await api.ok(
        "POST",
        "/agent/incidents",
        token=None,
        headers=headers,
        json={"attack_family": family, "severity": "high", "peak_pps": 1e5, "peak_bps": 1e9},
    )
    return str(body["incident"]["id"])


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Service] = []

    async def make(pol: Any = None, **settings_kw: Any) -> Env:
        settings_kw.setdefault("admin_token", ADMIN)
        svc = Service(
            settings_for(tmp_path, **settings_kw), policy=pol or policy(cooldown_seconds=0)
        )
        await svc.start()
        made.append(svc)
        app = create_app(svc, run_scheduler=False)
        bootstrap_token(svc, app.state.tokens)
        app.state.runtime.load_state()
        app.state.policy_doc.load()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sluice")
        api = Api(client, svc)
        node = await register(api, "edge-1", T)
        return Env(api, app, tmp_path, node, await agent_incident(api, node))

    yield make
    for svc in made:
        if svc.started:
            await svc.stop()


def capture(tmp: Path, frames: Any, name: str = "c.pcap", fmt: str = "pcap") -> bytes:
    return g.write(tmp / name, frames, fmt=fmt).read_bytes()


# ---------------------------------------------------------------- upload


async def test_agent_uploads_a_capture_attached_to_its_incident(make_env: Any) -> None:
    env: Env = await make_env()
    body = capture(env.tmp, g.dns_reflection(1500))
    r = await env.upload(body, params={"filename": "../../etc/attack dump.pcap"})
    assert r.status_code == 201, r.text
    pcap = r.json()["pcap"]
    assert r.json()["deduplicated"] is False
    assert pcap["incident_id"] == env.incident
    assert pcap["node_id"] == env.node["id"]
    assert pcap["sha256"] == hashlib.sha256(body).hexdigest()
    assert (pcap["size_bytes"], pcap["packet_count"]) == (len(body), 1500)
    assert (pcap["format"], pcap["link_type"]) == ("pcap", 1)
    assert pcap["filename"] == "attack_dump.pcap"  # no path, no space
    assert pcap["first_packet_at"] == datetime.fromtimestamp(1_700_000_000, UTC).isoformat()
    assert pcap["created_by"] == "node:edge-1"
    assert env.stored_files() == [f"{pcap['id']}.pcap"]
    assert (await env.api.ok("GET", f"/pcaps/{pcap['id']}"))["pcap"] == pcap
    # the upload is in the audit chain
    assert (await env.api.ok("GET", "/audit/verify"))["ok"] is True


async def test_a_retried_upload_is_deduplicated(make_env: Any) -> None:
    env: Env = await make_env()
    body = capture(env.tmp, g.dns_reflection(20))
    first = (await env.upload(body)).json()["pcap"]
    again = await env.upload(body, headers={"X-PCAP-SHA256": first["sha256"].upper()})
    assert again.status_code == 200
    assert again.json() == {"ok": True, "pcap": first, "deduplicated": True}
    assert await env.count() == 1
    assert len(env.stored_files()) == 1


async def test_curl_data_binary_without_a_content_type_is_accepted(make_env: Any) -> None:
    """``curl --data-binary @f.pcap`` labels the body as a form; it is still the file."""
    env: Env = await make_env()
    body = capture(env.tmp, g.dns_reflection(5))
    r = await env.upload(body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 201, r.text
    assert r.json()["pcap"]["sha256"] == hashlib.sha256(body).hexdigest()


async def test_operator_upload_of_pcapng_with_a_write_token(make_env: Any) -> None:
    env: Env = await make_env()
    body = capture(env.tmp, g.syn_flood(50), "s.pcapng", fmt="pcapng")
    reader = await env.api.token("read")
    r = await env.api.call(
        "POST", "/pcaps", token=reader, params={"incident_id": env.incident}, content=body
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    body_json = await env.api.ok(
        "POST", "/pcaps", 201, params={"incident_id": env.incident}, content=body, headers=PCAP
    )
    pcap = body_json["pcap"]
    assert (pcap["format"], pcap["node_id"], pcap["packet_count"]) == ("pcapng", None, 50)
    assert pcap["filename"].startswith(f"incident-{env.incident[:8]}-20231114T221320Z")
    assert pcap["filename"].endswith(".pcapng")


@pytest.mark.parametrize(
    ("case", "status", "code", "field"),
    [
        ("text", 422, "not_a_pcap", None),
        ("truncated", 422, "not_a_pcap", None),
        ("empty_body", 422, "not_a_pcap", None),
        ("header_only", 422, "empty_pcap", None),
        ("too_large_declared", 413, "pcap_too_large", None),
        ("too_large_streamed", 413, "pcap_too_large", None),
        ("unknown_incident", 404, "incident_not_found", "incident_id"),
        ("no_incident", 422, "missing_parameter", "incident_id"),
        ("other_nodes_incident", 403, "incident_not_for_node", "incident_id"),
        ("checksum_mismatch", 422, "checksum_mismatch", "X-PCAP-SHA256"),
        ("bad_checksum_header", 422, "invalid_parameter", "X-PCAP-SHA256"),
        ("multipart", 415, "unsupported_media_type", None),
        ("wrong_key", 401, "invalid_token", None),
        ("no_key", 401, "missing_token", None),
    ],
)
async def test_bad_uploads_are_refused_and_store_nothing(
    make_env: Any, case: str, status: int, code: str, field: str | None
) -> None:
    env: Env = await make_env(pcap_max_bytes=64 * 1024)
    good = capture(env.tmp, g.dns_reflection(20))
    big = capture(env.tmp, g.dns_reflection(200), "big.pcap")
    assert len(good) < 64 * 1024 < len(big)
    other = await register(env.api, "edge-2", "203.0.113.99")
    other_incident = await agent_incident(env.api, other)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    headers: dict[str, str] = {}
    kw: dict[str, Any] = {}
    body: Any = good
    if case == "text":
        body = b"this is not a capture\n" * 100
    elif case == "truncated":
        body = good[:-100]
    elif case == "empty_body":
        body = b""
    elif case == "header_only":
        body = good[:24]
    elif case == "too_large_declared":
        body = big
    elif case == "too_large_streamed":
        body = chunks()
    elif case == "unknown_incident":
        kw["incident"] = "00000000-0000-0000-0000-000000000000"
    elif case == "other_nodes_incident":
        kw["incident"] = other_incident
    elif case == "checksum_mismatch":
        headers["X-PCAP-SHA256"] = hashlib.sha256(b"something else").hexdigest()
    elif case == "bad_checksum_header":
        headers["X-PCAP-SHA256"] = "abc"
    elif case == "multipart":
        headers["Content-Type"] = "multipart/form-data; boundary=x"
    elif case == "wrong_key":
        kw["node"] = {**env.node, "key": "0" * 64}
    if case == "no_incident":
        r = await env.api.call(
            "POST", "/agent/pcaps", token=None, headers=env.agent_headers(), content=good
        )
    elif case == "no_key":
        r = await env.api.call(
            "POST", "/agent/pcaps", token=None, params={"incident_id": env.incident}, content=good
        )
    else:
        r = await env.upload(body, headers=headers, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err.get("field") == field
    assert await env.count() == 0
    assert env.stored_files() == []


# ---------------------------------------------------------------- list and packets


async def test_list_is_newest_first_and_pages(make_env: Any) -> None:
    env: Env = await make_env()
    ids = []
    for i in range(5):  # capture i starts i hours later
        body_path = env.tmp / f"{i}.pcap"
        g.write(body_path, g.dns_reflection(3, seed=i), start=1_700_000_000 + 3600 * i)
        body = body_path.read_bytes()
        ids.append((await env.upload(body)).json()["pcap"]["id"])
    page = await env.api.ok("GET", "/pcaps", params={"limit": 2})
    assert [p["id"] for p in page["pcaps"]] == [ids[4], ids[3]]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    rest = await env.api.ok("GET", "/pcaps", params={"limit": 100, "offset": 2})
    assert [p["id"] for p in rest["pcaps"]] == [ids[2], ids[1], ids[0]]
    other = await env.api.ok("GET", "/pcaps", params={"incident_id": "nope"})
    assert other["pcaps"] == [] and other["total"] == 0
    default = await env.api.ok("GET", "/pcaps")
    assert default["limit"] == 50


@pytest.mark.parametrize(
    ("path", "params", "code", "field"),
    [
        ("/pcaps", {"limit": 0}, "invalid_parameter", "limit"),
        ("/pcaps", {"limit": 101}, "invalid_parameter", "limit"),
        ("/pcaps", {"offset": -1}, "invalid_parameter", "offset"),
        ("/pcaps", {"offset": 1}, "offset_out_of_range", "offset"),
        ("/pcaps/{id}/packets", {"limit": 0}, "invalid_parameter", "limit"),
        ("/pcaps/{id}/packets", {"limit": 1001}, "invalid_parameter", "limit"),
        ("/pcaps/{id}/packets", {"offset": -5}, "invalid_parameter", "offset"),
        ("/pcaps/{id}/packets", {"offset": 30}, "offset_out_of_range", "offset"),
        ("/pcaps/{id}/packets", {"limit": "ten"}, "invalid_parameter", "limit"),
    ],
)
async def test_paging_out_of_range(
    make_env: Any, path: str, params: dict[str, Any], code: str, field: str
) -> None:
    env: Env = await make_env()
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(30)))).json()["pcap"]["id"]
    r = await env.api.call("GET", path.format(id=pid), params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] == field


async def test_unknown_capture_is_404_everywhere(make_env: Any) -> None:
    env: Env = await make_env()
    for suffix in ("", "/packets", "/analysis", "/download"):
        r = await env.api.call("GET", f"/pcaps/missing{suffix}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "pcap_not_found", suffix


async def test_packets_are_parsed_and_paged_across_kept_offsets(make_env: Any) -> None:
    env: Env = await make_env()
    frames = [
        g.udp(f"198.51.100.{i % 200 + 1}", T, 53, 1024 + i, b"\x00" * 100) for i in range(2500)
    ]
    frames[1999] = g.syn("192.0.2.1", T, 40000, 443)
    pid = (await env.upload(capture(env.tmp, frames))).json()["pcap"]["id"]
    page = await env.api.ok(
        "GET", f"/pcaps/{pid}/packets", params={"offset": STRIDE * 2 - 3, "limit": 10}
    )
    assert page["total"] == 2500
    pkts = page["packets"]
    assert [p["index"] for p in pkts] == list(range(1997, 2007))
    assert [p["dst_port"] for p in pkts] == [
        1024 + i if i != 1999 else 443 for i in range(1997, 2007)
    ]
    syn = pkts[2]
    assert syn == {
        "index": 1999,
        "timestamp": datetime.fromtimestamp(1_700_000_000 + 1.999, UTC).isoformat(),
        "ts": pytest.approx(1_700_000_001.999),
        "captured_length": 54,
        "ip_version": 4,
        "src_ip": "192.0.2.1",
        "dst_ip": T,
        "src_port": 40000,
        "dst_port": 443,
        "protocol": "tcp",
        "protocol_number": 6,
        "length": 40,
        "tcp_flags": ["syn"],
        "fragment": None,
        "icmp_type": None,
        "icmp_code": None,
    }
    assert pkts[0]["src_port"] == 53 and pkts[0]["protocol"] == "udp" and pkts[0]["length"] == 128
    first = await env.api.ok("GET", f"/pcaps/{pid}/packets")
    assert len(first["packets"]) == 100 and first["packets"][0]["index"] == 0
    last = await env.api.ok("GET", f"/pcaps/{pid}/packets", params={"offset": 2499, "limit": 1000})
    assert [p["index"] for p in last["packets"]] == [2499]


# ---------------------------------------------------------------- analysis


async def test_analysis_is_computed_once_and_kept(make_env: Any) -> None:
    env: Env = await make_env()
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(400)))).json()["pcap"]["id"]
    assert (await env.api.ok("GET", f"/pcaps/{pid}"))["pcap"]["analyzed"] is False
    first = await env.api.ok("GET", f"/pcaps/{pid}/analysis")
    assert first["cached"] is False
    rep = first["analysis"]
    assert rep["attack_family"] == "dns_flood"
    assert rep["target"] == T  # the incident's target
    [rec] = rep["recommendations"]
    assert rec["rule"]["source_port"] == 53 and rec["rule"]["protocol"] == "udp"
    # the file is no longer read: remove it and the report is still served from the row
    (env.tmp / "pcaps" / f"{pid}.pcap").unlink()
    again = await env.api.ok("GET", f"/pcaps/{pid}/analysis")
    assert again["cached"] is True
    assert again["analysis"] == rep
    assert (await env.api.ok("GET", f"/pcaps/{pid}"))["pcap"]["analyzed"] is True


# ---------------------------------------------------------------- apply


async def test_applying_a_recommendation_creates_the_rule(make_env: Any) -> None:
    env: Env = await make_env()
    adapter = await env.api.fake("edge")
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(100)))).json()["pcap"]["id"]
    body = await env.api.ok(
        "POST",
        f"/pcaps/{pid}/recommendations/1/apply",
        201,
        json={"adapter_id": "edge", "ttl": 600},
    )
    rule = body["rule"]
    assert rule["state"] == "active"
    assert rule["intent"] == f"flowspec dst {T}/32; proto =17; sport =53; then discard"
    assert rule["incident_id"] == env.incident
    assert rule["adapter_id"] == adapter
    assert rule["origin"] == "manual" and rule["created_by"] == "admin"
    assert body["recommendation"]["n"] == 1
    # the same again extends the live rule instead of making a second one
    again = await env.api.ok(
        "POST", f"/pcaps/{pid}/recommendations/1/apply", 200, json={"adapter_id": "edge"}
    )
    assert again["deduplicated"] is True and again["rule"]["id"] == rule["id"]
    live = await env.api.ok("GET", "/mitigation/rules")
    assert [r["id"] for r in live["rules"]] == [rule["id"]]


async def test_rate_limit_override_and_dry_run(make_env: Any) -> None:
    env: Env = await make_env()
    await env.api.fake("edge")
    pid = (await env.upload(capture(env.tmp, g.syn_flood(300)))).json()["pcap"]["id"]
    body = await env.api.ok(
        "POST",
        f"/pcaps/{pid}/recommendations/1/apply",
        201,
        json={"adapter_id": "edge", "rate_limit": 250000, "dry_run": True},
    )
    assert body["rule"]["dry_run"] is True
    assert body["rule"]["intent"].endswith("then rate-limit 250000")
    assert "tcp-flags syn&!ack" in body["rule"]["intent"]


async def test_apply_goes_through_guardrails_and_refusals_change_nothing(make_env: Any) -> None:
    env: Env = await make_env(
        policy(cooldown_seconds=0, guardrails=Guardrails(protected_prefixes=("203.0.113.0/28",)))
    )
    await env.api.fake("edge")
    # the attacked address is protected: no rule may touch it
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(100)))).json()["pcap"]["id"]
    r = await env.api.call(
        "POST", f"/pcaps/{pid}/recommendations/1/apply", json={"adapter_id": "edge"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "protected_prefix"
    assert (await env.api.ok("GET", "/mitigation/rules/history"))["total"] == 0


async def test_an_allowlisted_source_is_never_dropped(make_env: Any) -> None:
    env: Env = await make_env()
    await env.api.fake("edge")
    await env.api.ok("POST", "/allowlist", 201, json={"ip_address": "192.0.2.53", "label": "dns"})
    frames = [g.udp(f"192.0.2.{i % 250 + 1}", T, 4444, 27015, b"\x00" * 64) for i in range(300)]
    pid = (await env.upload(capture(env.tmp, frames))).json()["pcap"]["id"]
    recs = (await env.api.ok("GET", f"/pcaps/{pid}/analysis"))["analysis"]["recommendations"]
    src = next(r for r in recs if r["vector"] == "source_prefix")
    assert src["rule"]["source"] == "192.0.2.0/24"
    r = await env.api.call(
        "POST", f"/pcaps/{pid}/recommendations/{src['n']}/apply", json={"adapter_id": "edge"}
    )
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("allowlisted", "source")
    assert (await env.api.ok("GET", "/mitigation/rules/history"))["total"] == 0


async def test_a_recommendation_for_an_allowlisted_target_is_refused(make_env: Any) -> None:
    """The policy never mitigates an allowlisted target (workspace-wide or for the node
    that saw the attack): its capture's recommendations are refused as ``allowlisted``
    and nothing is stored; another node's entry does not apply."""
    env: Env = await make_env()
    await env.api.fake("edge")
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(100)))).json()["pcap"]["id"]
    rec = (await env.api.ok("GET", f"/pcaps/{pid}/analysis"))["analysis"]["recommendations"][0]
    assert rec["rule"]["target_ip"] == T
    with env.api.svc.engine.connect() as conn:
        audited = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    for entry in (
        {"ip_address": T, "scope": "node", "node": env.node["id"]},
        {"ip_address": "203.0.113.0/24", "scope": "workspace"},
    ):
        made = (await env.api.ok("POST", "/allowlist", 201, json=entry))["entry"]
        r = await env.api.call(
            "POST", f"/pcaps/{pid}/recommendations/1/apply", json={"adapter_id": "edge"}
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("allowlisted", "target_ip")
        assert (await env.api.ok("GET", "/mitigation/rules/history"))["total"] == 0
        await env.api.ok("DELETE", f"/allowlist/{made['id']}")
    with env.api.svc.engine.connect() as conn:
        # only the allowlist's own changes were audited, no rule
        actions = (
            conn.execute(select(audit_log.c.action).where(audit_log.c.id > audited)).scalars().all()
        )
    assert not any(a.startswith("rule") for a in actions), actions
    await env.api.ok(
        "POST", "/allowlist", 201, json={"ip_address": T, "scope": "node", "node": "another"}
    )
    body = await env.api.ok(
        "POST", f"/pcaps/{pid}/recommendations/1/apply", 201, json={"adapter_id": "edge"}
    )
    assert body["rule"]["intent"].startswith(f"flowspec dst {T}/32")


@pytest.mark.parametrize(
    ("n", "body", "status", "code", "field"),
    [
        (9, {"adapter_id": "edge"}, 404, "recommendation_not_found", "n"),
        (1, {"adapter_id": "nope"}, 422, "adapter_not_found", "adapter_id"),
        (1, {"adapter_id": "edge", "rate_limit": 1000}, 422, "invalid_parameter", "rate_limit"),
        (1, {"adapter_id": "edge", "ttl": -1}, 422, "invalid_ttl", "ttl"),
        (1, {}, 422, "missing_parameter", "adapter_id"),
        (1, {"adapter_id": "edge", "action": "accept"}, 422, "unknown_parameter", "action"),
    ],
)
async def test_bad_apply_requests(
    make_env: Any, *, n: int, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    env: Env = await make_env()
    await env.api.fake("edge")
    pid = (await env.upload(capture(env.tmp, g.dns_reflection(50)))).json()["pcap"]["id"]
    r = await env.api.call("POST", f"/pcaps/{pid}/recommendations/{n}/apply", json=body)
    assert r.status_code == status, r.text
    assert (r.json()["error"]["code"], r.json()["error"].get("field")) == (code, field)
    assert (await env.api.ok("GET", "/mitigation/rules/history"))["total"] == 0


# ---------------------------------------------------------------- download


async def test_download_is_the_stored_file_with_a_sensible_name(make_env: Any) -> None:
    env: Env = await make_env()
    body = capture(env.tmp, g.dns_reflection(300))
    pcap = (await env.upload(body, params={"filename": "edge-1 flood.pcap"})).json()["pcap"]
    r = await env.api.call("GET", f"/pcaps/{pcap['id']}/download")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.tcpdump.pcap"
    assert r.headers["content-disposition"] == 'attachment; filename="edge-1_flood.pcap"'
    assert r.headers["x-pcap-sha256"] == pcap["sha256"]
    assert int(r.headers["content-length"]) == len(body)
    assert hashlib.sha256(r.content).hexdigest() == pcap["sha256"]
    (env.tmp / "pcaps" / f"{pcap['id']}.pcap").unlink()
    gone = await env.api.call("GET", f"/pcaps/{pcap['id']}/download")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "pcap_file_missing"


async def test_download_streams_in_chunks(make_env: Any) -> None:
    """Driven at the ASGI level: the body leaves in chunks, never as one buffer."""
    env: Env = await make_env()
    frames = list(g.dns_reflection(200))
    path = g.write_repeated(env.tmp / "big.pcap", frames, 12_000)  # ~6.6 MB
    pid = (await env.upload(path.read_bytes())).json()["pcap"]["id"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    sha = hashlib.sha256()
    sizes: list[int] = []
    start: dict[str, Any] = {}

    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays connected until the whole body is sent
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            sha.update(message.get("body", b""))
            sizes.append(len(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/api/v1/pcaps/{pid}/download",
        "raw_path": f"/api/v1/pcaps/{pid}/download".encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {ADMIN}".encode()), (b"host", b"sluice")],
        "client": ("127.0.0.1", 1),
        "server": ("sluice", 80),
    }
    tracemalloc.start()
    try:
        await env.app(scope, receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert start["status"] == 200
    assert sha.hexdigest() == expected
    assert sum(sizes) == path.stat().st_size
    assert len([s for s in sizes if s]) > 10
    assert max(sizes) <= 1024 * 1024
    assert peak < path.stat().st_size // 4, peak


# ---------------------------------------------------------------- limits and retention


async def test_total_size_limit_removes_the_oldest_captures(make_env: Any) -> None:
    env: Env = await make_env(pcap_max_bytes=20_000, pcap_max_total_bytes=50_000)
    bodies = [capture(env.tmp, g.dns_reflection(30, seed=i), f"{i}.pcap") for i in range(4)]
    assert all(15_000 < len(b) < 20_000 for b in bodies)
    ids = [(await env.upload(b)).json()["pcap"]["id"] for b in bodies]
    listed = await env.api.ok("GET", "/pcaps")
    kept = {p["id"] for p in listed["pcaps"]}
    assert kept == set(ids[-2:])  # three of ~17 kB pass 50 kB: the oldest made room each time
    assert sorted(env.stored_files()) == sorted(f"{i}.pcap" for i in kept)


async def test_retention_sweep_removes_old_captures_and_leftovers(make_env: Any) -> None:
    env: Env = await make_env(pcap_retention_days=1)
    now = [datetime.now(UTC)]
    env.store.clock = lambda: now[0]
    old = (await env.upload(capture(env.tmp, g.dns_reflection(5, seed=1), "a.pcap"))).json()["pcap"]
    now[0] += timedelta(hours=20)
    new = (await env.upload(capture(env.tmp, g.dns_reflection(5, seed=2), "b.pcap"))).json()["pcap"]
    leftover = env.tmp / "pcaps" / "0000-interrupted.part"
    leftover.write_bytes(b"partial")
    os.utime(leftover, (now[0].timestamp(), now[0].timestamp()))
    assert env.store.sweep() == 0
    assert leftover.exists()  # too recent to be called a leftover
    now[0] += timedelta(hours=5)  # old is 25 h old, new 5 h
    assert env.store.sweep() == 1
    assert [p["id"] for p in (await env.api.ok("GET", "/pcaps"))["pcaps"]] == [new["id"]]
    assert env.stored_files() == [f"{new['id']}.pcap"]
    assert not leftover.exists()
    r = await env.api.call("GET", f"/pcaps/{old['id']}")
    assert r.status_code == 404
    assert (await env.api.ok("GET", "/audit/verify"))["ok"] is True


def test_settings_refuse_an_upload_limit_above_the_total() -> None:
    with pytest.raises(ValueError, match="pcap_max_bytes"):
        settings_for(Path("/nonexistent"), pcap_max_bytes=10_000, pcap_max_total_bytes=5_000)
