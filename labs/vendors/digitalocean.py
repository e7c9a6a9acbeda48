"""A fake DigitalOcean API v2: bearer tokens, account, Cloud Firewall droplet membership.

Shapes follow the published API: ``Authorization: Bearer <token>`` (bad token -> 401
``{"id": "Unauthorized", "message": "Unable to authenticate you"}``); errors are
``{"id", "message"}``.

* ``GET /v2/account`` -> ``{"account": {"uuid", "email", "status": "active", ...}}``.
* ``GET /v2/firewalls/{id}`` -> ``{"firewall": {"id", "name", "status", "droplet_ids",
  "inbound_rules", "outbound_rules", ...}}``.
* ``POST``/``DELETE /v2/firewalls/{id}/droplets`` ``{"droplet_ids": [...]}`` -> 204
  (adding a member twice or removing a non-member is a no-op; unknown droplets -> 404).

Run ``python -m labs.vendors.digitalocean --port 8083`` for manual trials (token
``do-test-token``, firewalls ``fw-normal`` and ``fw-lockdown`` as UUIDs below).
"""

from __future__ import annotations

from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

NORMAL = "aaaaaaaa-0000-4000-8000-000000000001"
LOCKDOWN = "bbbbbbbb-0000-4000-8000-000000000002"


def do_error(status: int, ident: str, message: str) -> HttpError:
    return HttpError(status, {"id": ident, "message": message})


class DigitalOceanServer(FakeVendorServer):
    vendor = "digitalocean"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: tuple[str, ...] = ("do-test-token",),
        droplets: tuple[int, ...] = (1001, 1002),
    ) -> None:
        super().__init__(host, port)
        self.tokens = set(tokens)
        self.droplets = set(droplets)
        self.firewalls: dict[str, dict[str, Any]] = {
            NORMAL: {
                "id": NORMAL,
                "name": "normal",
                "status": "succeeded",
                "droplet_ids": sorted(droplets),
            },
            LOCKDOWN: {
                "id": LOCKDOWN,
                "name": "lockdown",
                "status": "succeeded",
                "droplet_ids": [],
            },
        }

    def _auth(self, req: Request) -> None:
        if req.bearer() not in self.tokens:
            raise do_error(401, "Unauthorized", "Unable to authenticate you")

    def _fw(self, fid: str) -> dict[str, Any]:
        if fid not in self.firewalls:
            raise do_error(404, "not_found", "The resource you were accessing could not be found.")
        return self.firewalls[fid]

    @route("GET", r"/v2/account")
    def account(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(
            200, {"account": {"uuid": "acct-1", "email": "noc@example.net", "status": "active"}}
        )

    @route("GET", r"/v2/firewalls/(?P<fid>[^/]+)")
    def get_firewall(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._fw(params["fid"])
        return Response(200, {"firewall": {**fw, "inbound_rules": [], "outbound_rules": []}})

    def _ids(self, req: Request) -> list[int]:
        ids = req.json_object().get("droplet_ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise do_error(422, "unprocessable_entity", "droplet_ids must be a list of integers")
        unknown = [i for i in ids if i not in self.droplets]
        if unknown:
            raise do_error(404, "not_found", f"droplet {unknown[0]} not found")
        return ids

    @route("POST", r"/v2/firewalls/(?P<fid>[^/]+)/droplets")
    def add_droplets(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._fw(params["fid"])
        fw["droplet_ids"] = sorted(set(fw["droplet_ids"]) | set(self._ids(req)))
        return Response(204)

    @route("DELETE", r"/v2/firewalls/(?P<fid>[^/]+)/droplets")
    def remove_droplets(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._fw(params["fid"])
        fw["droplet_ids"] = sorted(set(fw["droplet_ids"]) - set(self._ids(req)))
        return Response(204)


def main() -> None:
    serve_main(DigitalOceanServer)


if __name__ == "__main__":
    main()
