"""The shared fake vendor server base: real HTTP on loopback, journal, faults, sessions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from labs.vendors.server import (
    FakeVendorServer,
    Fault,
    HttpError,
    Request,
    Response,
    Sessions,
    route,
)


class EchoServer(FakeVendorServer):
    vendor = "echo"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.items: dict[str, Any] = {}
        self.sessions = Sessions(ttl=60)

    @route("POST", r"/login")
    def login(self, req: Request, params: dict[str, str]) -> Response:
        creds = req.basic_auth()
        if creds != ("admin", "pw"):
            raise HttpError(401, {"message": "bad credentials"})
        return Response(200, {"token": self.sessions.issue(creds[0])})

    @route("PUT", r"/items/(?P<name>[a-z0-9]+)")
    def put(self, req: Request, params: dict[str, str]) -> Response:
        self.sessions.require(req.bearer())
        self.items[params["name"]] = req.json_object()
        return Response(201, {"name": params["name"]})

    @route("GET", r"/items/(?P<name>[a-z0-9]+)")
    def get(self, req: Request, params: dict[str, str]) -> Response:
        if params["name"] not in self.items:
            raise HttpError(404, {"message": "no such item"})
        return Response(200, self.items[params["name"]])


@pytest.fixture
def server() -> Any:
    with EchoServer() as srv:
        yield srv


def _login(client: httpx.Client) -> str:
    resp = client.post("/login", auth=("admin", "pw"))
    assert resp.status_code == 200
    token: str = resp.json()["token"]
    return token


def test_routes_state_and_journal(server: EchoServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=server.url) as client:
        token = _login(client)
        resp = client.put(
            "/items/a1?x=1", json={"v": 1}, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 201
        assert client.get("/items/a1").json() == {"v": 1}
        assert client.get("/items/zz").status_code == 404
        assert client.delete("/items/a1").status_code == 405
        assert client.get("/nowhere").status_code == 404
    assert server.items == {"a1": {"v": 1}}
    put = server.journal.find("PUT")[0]
    assert (put.path, put.query, put.body) == ("/items/a1", {"x": ["1"]}, {"v": 1})
    assert put.header("Authorization") == f"Bearer {token}"
    assert server.journal.summary() == [
        ("POST", "/login"),
        ("PUT", "/items/a1"),
        ("GET", "/items/a1"),
        ("GET", "/items/zz"),
        ("DELETE", "/items/a1"),
        ("GET", "/nowhere"),
    ]


def test_auth_helpers(server: EchoServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/login", auth=("admin", "nope")).status_code == 401
        assert client.put("/items/a", json={}).status_code == 401
        token = _login(client)
        server.sessions.expire_all()
        resp = client.put("/items/a", json={}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401
        resp = client.put("/items/a", content=b"[1]", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401  # auth is checked before the body
    assert server.sessions.issued == 1


def test_status_and_malformed_faults_are_consumed_in_order(server: EchoServer) -> None:
    server.faults.add(Fault.answer(503, {"message": "busy"}), times=2, method="GET")
    server.faults.add(Fault.malformed())
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/login", auth=("admin", "pw")).text.startswith('{"ok": tru')
        first, second = client.get("/items/a"), client.get("/items/a")
        assert (first.status_code, first.json()) == (503, {"message": "busy"})
        assert second.status_code == 503
        assert client.get("/items/a").status_code == 404  # faults used up
    assert server.faults.pending() == 0
    assert [r.fault for r in server.journal.all()] == [
        "malformed",
        "status 503",
        "status 503",
        None,
    ]


def test_path_filter_drop_and_delay(server: EchoServer) -> None:
    server.faults.add(Fault.drop(), path=r"/items/.*")
    with httpx.Client(base_url=server.url, timeout=0.3) as client:
        assert client.post("/login", auth=("admin", "pw")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/items/a")
        server.faults.add(Fault.delay(5.0))
        with pytest.raises(httpx.ReadTimeout):
            client.get("/items/a")
        server.faults.add(Fault.delay(0.05, then_status=502))
        assert client.get("/items/a").status_code == 502


def test_stop_interrupts_pending_delays_and_frees_the_port() -> None:
    srv = EchoServer().start()
    port = srv.port
    srv.faults.add(Fault.delay(30.0))
    with httpx.Client(base_url=srv.url, timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/items/a")
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/items/a", timeout=1)
    with pytest.raises(RuntimeError):
        _ = srv.url
