"""Issue 10, item 1: adapter settings cannot run programs, reach files or internal services.

Regression tests over the REST API of a real service: each failed before the adapter
settings were put under the service's HostAccess and egress policy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from orchestrator.store.models import audit_log
from tests.hostaccess import loopback_name
from tests.unit.orchestrator.conftest import Api

INTERNAL_BODY = "internal-service-secret-7f3a"


class _Internal(BaseHTTPRequestHandler):
    """A service that must stay unreachable: answers everything with a secret body."""

    hits: list[str]

    def _answer(self) -> None:
        self.hits.append(f"{self.command} {self.path}")
        body = f'{{"message": "{INTERNAL_BODY}"}}'.encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815  # http.server names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # stdlib's name
        return


@pytest.fixture
def internal() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Internal,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def error(r: httpx.Response) -> tuple[int, str, str | None]:
    body = r.json()
    assert body["ok"] is False, r.text
    return r.status_code, body["error"]["code"], body["error"].get("field")


def f5(endpoint: str) -> dict[str, Any]:
    return {
        "adapter_type": "f5",
        "name": "edge-f5",
        "endpoint": endpoint,
        "auth_token": "pw",
        "config": {"username": "admin", "retries": 0, "timeout": 2},
    }


async def adapters_of(api: Api) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await api.ok("GET", "/mitigation/adapters"))["adapters"]
    return listed


async def test_a_write_token_cannot_create_change_or_delete_adapters(make_api: Any) -> None:
    api: Api = await make_api()
    writer = await api.token("write")
    body = {"adapter_type": "fake", "name": "w", "config": {}}
    assert error(await api.call("POST", "/mitigation/adapters", token=writer, json=body)) == (
        403,
        "insufficient_scope",
        None,
    )
    assert await adapters_of(api) == []
    aid = await api.fake("edge")
    r = await api.call("POST", "/mitigation/adapters", token=writer, json={**body, "id": aid})
    assert error(r)[:2] == (403, "insufficient_scope")
    r = await api.call("DELETE", f"/mitigation/adapters/{aid}", token=writer)
    assert error(r)[:2] == (403, "insufficient_scope")
    scrub = {"type": "cloudflare_magic_transit", "name": "cf", "config": {}}
    assert error(await api.call("POST", "/scrubbing", token=writer, json=scrub))[:2] == (
        403,
        "insufficient_scope",
    )
    assert error(await api.call("DELETE", f"/scrubbing/{aid}", token=writer))[0] == 403
    assert [a["name"] for a in await adapters_of(api)] == ["edge"]
    # a write token still writes rules, and tests adapters
    r = await api.call("POST", f"/mitigation/adapters/{aid}/test", token=writer)
    assert r.status_code == 200, r.text


async def test_an_frr_adapter_cannot_name_the_program_it_runs(make_api: Any) -> None:
    api: Api = await make_api()
    body = {"adapter_type": "frr", "name": "rs1", "config": {"asn": 65001, "vtysh": "/bin/sh"}}
    r = await api.call("POST", "/mitigation/adapters", json=body)
    assert error(r) == (422, "setting_not_allowed", "config.vtysh")
    assert "SLUICE_VTYSH" in r.json()["error"]["message"]
    assert await adapters_of(api) == []


async def test_files_named_in_settings_stay_inside_the_allowed_directories(
    make_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    allowed = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (allowed / "escape").symlink_to(outside)
    api: Api = await make_api(adapter_dirs=(allowed,))
    for path in (
        outside / "state.jsonl",
        allowed / "escape" / "state.jsonl",  # a symlink out of the directory
        Path(f"{allowed}/../{outside.name}/state.jsonl"),
        Path("state.jsonl"),
    ):
        body = {"adapter_type": "fake", "name": "f", "config": {"state_file": str(path)}}
        r = await api.call("POST", "/mitigation/adapters", json=body)
        assert error(r) == (422, "path_not_allowed", "config.state_file"), path
    body = {"adapter_type": "log", "name": "l", "config": {"path": str(outside / "x.log")}}
    r = await api.call("POST", "/mitigation/adapters", json=body)
    assert error(r) == (422, "path_not_allowed", "config.path")
    assert list(outside.iterdir()) == [] and await adapters_of(api) == []
    # inside: accepted and used
    aid = await api.fake("f", state_file=str(allowed / "state.jsonl"))
    assert aid > 0


async def test_test_adapter_does_not_reach_a_loopback_service(
    make_api: Any, internal: tuple[int, list[str]]
) -> None:
    port, hits = internal
    api: Api = await make_api()
    # a literal loopback endpoint is refused when the adapter is created
    r = await api.call("POST", "/mitigation/adapters", json=f5(f"http://127.0.0.1:{port}"))
    assert error(r) == (422, "invalid_adapter_config", "endpoint")
    assert "loopback" in r.json()["error"]["message"]
    assert INTERNAL_BODY not in r.text
    # a name only the resolver turns into loopback is refused where it connects
    name, address = loopback_name()
    created = await api.ok("POST", "/mitigation/adapters", 201, json=f5(f"http://{name}:{port}"))
    aid = created["adapter"]["id"]
    test = (await api.ok("POST", f"/mitigation/adapters/{aid}/test"))["test"]
    assert test["ok"] is False
    assert f"{name} resolves to {address}, loopback" in test["detail"]
    assert INTERNAL_BODY not in str(test)
    assert hits == []  # nothing reached the service


async def test_loopback_is_reachable_only_when_the_service_allows_it(
    make_api: Any, internal: tuple[int, list[str]]
) -> None:
    port, hits = internal
    api: Api = await make_api(egress_allow=("127.0.0.1",))
    created = await api.ok("POST", "/mitigation/adapters", 201, json=f5(f"http://127.0.0.1:{port}"))
    test = (await api.ok("POST", f"/mitigation/adapters/{created['adapter']['id']}/test"))["test"]
    assert test["ok"] is False and hits  # allowed by configuration: the request went out


def audit_count(api: Api) -> int:
    with api.svc.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


async def test_a_gobgp_endpoint_outside_the_speaker_endpoints_is_refused(
    make_api: Any, tmp_path_factory: pytest.TempPathFactory, internal: tuple[int, list[str]]
) -> None:
    sockets = tmp_path_factory.mktemp("run-gobgp")
    port, hits = internal  # a loopback service: its port is not gobgpd's
    api: Api = await make_api(adapter_dirs=(sockets,))
    for endpoint, says in [
        ("10.0.0.1:50051", "10.0.0.1:50051 is not a speaker endpoint the service allows"),
        (f"127.0.0.1:{port}", f"127.0.0.1:{port} is not a speaker endpoint"),
        (f"localhost:{port}", f"localhost:{port} resolves to 127.0.0.1, which is not"),
        ("[::1]:22", "[::1]:22 is not a speaker endpoint"),
        ("0.0.0.0:50051", "never a speaker endpoint"),
        ("169.254.169.254:80", "cloud metadata address"),
    ]:
        body = {"adapter_type": "gobgp", "name": "rs", "endpoint": endpoint}
        r = await api.call("POST", "/mitigation/adapters", json=body)
        assert error(r) == (422, "endpoint_not_allowed", "endpoint"), endpoint
        assert says in r.json()["error"]["message"]
    assert await adapters_of(api) == []
    # an existing adapter pointed at a refused endpoint stays as it was
    body = {"adapter_type": "gobgp", "name": "rs", "endpoint": f"unix://{sockets}/gobgp.sock"}
    aid = (await api.ok("POST", "/mitigation/adapters", 201, json=body))["adapter"]["id"]
    before, audited = await adapters_of(api), audit_count(api)
    r = await api.call(
        "POST", "/mitigation/adapters", json={**body, "id": aid, "endpoint": f"127.0.0.1:{port}"}
    )
    assert error(r) == (422, "endpoint_not_allowed", "endpoint")
    assert "SLUICE_SPEAKER_ENDPOINTS" in r.json()["error"]["message"]
    assert await adapters_of(api) == before and audit_count(api) == audited
    assert before[0]["endpoint"] == f"unix://{sockets}/gobgp.sock"
    assert hits == []


async def test_the_service_settings_open_speaker_endpoints(
    make_api: Any, internal: tuple[int, list[str]]
) -> None:
    port, _hits = internal
    api: Api = await make_api(speaker_endpoints=(f"127.0.0.1:{port}",))
    body = {"adapter_type": "gobgp", "name": "rs", "endpoint": f"127.0.0.1:{port}"}
    created = await api.ok("POST", "/mitigation/adapters", 201, json=body)
    assert created["adapter"]["endpoint"] == f"127.0.0.1:{port}"
    r = await api.call(
        "POST", "/mitigation/adapters", json={**body, "name": "rs2", "endpoint": "127.0.0.1:50051"}
    )
    assert error(r) == (422, "endpoint_not_allowed", "endpoint")  # not in this service's list
