"""A fake Linode API v4: bearer token, profile, Cloud Firewalls and their status.

Shapes follow the published API: ``Authorization: Bearer <token>`` (bad token -> 401
``{"errors": [{"reason": "Invalid Token"}]}``); errors are ``{"errors": [{"reason",
"field"?}]}``.

* ``GET /v4/profile`` -> ``{"username", "email", ...}``.
* ``GET /v4/networking/firewalls/{id}`` -> ``{"id", "label", "status", "rules":
  {"inbound", "inbound_policy", "outbound", "outbound_policy"}, ...}``.
* ``PUT /v4/networking/firewalls/{id}`` ``{"status": "enabled"|"disabled"}`` (and/or
  ``label``, ``tags``) -> the firewall. Enabling a firewall is refused while one of its Linodes has
  another enabled firewall.
* ``GET /v4/networking/firewalls/{id}/devices`` -> ``{"data": [{"id", "entity": {"id",
  "type": "linode", "label"}}], "page", "pages", "results"}``.

Run ``python -m labs.vendors.linode --port 8085`` for manual trials (token
``linode-test-token``; Linodes 101 and 102 attached to the normal firewall 7000, enabled,
and to the lockdown firewall 7001, disabled).
"""

from __future__ import annotations

from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main


def linode_error(status: int, reason: str, field: str | None = None) -> HttpError:
    err: dict[str, Any] = {"reason": reason}
    if field:
        err["field"] = field
    return HttpError(status, {"errors": [err]})


class LinodeServer(FakeVendorServer):
    vendor = "linode"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: tuple[str, ...] = ("linode-test-token",),
    ) -> None:
        super().__init__(host, port)
        self.tokens = set(tokens)
        self.devices: dict[int, list[int]] = {7000: [101, 102], 7001: [101, 102]}
        self.firewalls: dict[int, dict[str, Any]] = {
            7000: {
                "id": 7000,
                "label": "normal",
                "status": "enabled",
                "tags": ["web"],
                "rules": {
                    "inbound": [
                        {"action": "ACCEPT", "protocol": "TCP", "ports": "22,80,443"},
                    ],
                    "inbound_policy": "DROP",
                    "outbound": [],
                    "outbound_policy": "ACCEPT",
                },
            },
            7001: {
                "id": 7001,
                "label": "lockdown",
                "status": "disabled",
                "tags": [],
                "rules": {
                    "inbound": [
                        {"action": "ACCEPT", "protocol": "TCP", "ports": "22,443", "label": "keep"}
                    ],
                    "inbound_policy": "DROP",
                    "outbound": [],
                    "outbound_policy": "ACCEPT",
                },
            },
        }

    def _auth(self, req: Request) -> None:
        if req.bearer() not in self.tokens:  # Linode API reference, Errors: 401 Invalid Token
            raise linode_error(401, "Invalid Token")

    def _fw(self, fid: str) -> dict[str, Any]:
        fw = self.firewalls.get(int(fid)) if fid.isdigit() else None
        if fw is None:
            raise linode_error(404, "Not found")
        return fw

    @route("GET", r"/v4/profile")
    def profile(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(200, {"username": "noc", "email": "noc@example.net"})

    @route("GET", r"/v4/networking/firewalls/(?P<fid>[^/]+)")
    def get_firewall(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(200, dict(self._fw(params["fid"])))

    @route("PUT", r"/v4/networking/firewalls/(?P<fid>[^/]+)")
    def put_firewall(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._fw(params["fid"])
        body = req.json_object()
        if "status" in body:
            # "Update a firewall": status is enabled or disabled (deleted is not settable)
            if body["status"] not in ("enabled", "disabled"):
                raise linode_error(400, "Must be one of enabled, disabled", "status")
            if body["status"] == "enabled":
                self._one_enabled(fw["id"])
            fw["status"] = body["status"]
        if "label" in body:
            fw["label"] = str(body["label"])
        if "tags" in body:  # linodego FirewallUpdateOptions: label, status, tags
            tags = body["tags"]
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise linode_error(400, "Must be a list of strings", "tags")
            fw["tags"] = list(tags)
        return Response(200, dict(fw))

    def _one_enabled(self, fid: int) -> None:
        # Linode API "Create a firewall" (techdocs.akamai.com/linode-api/reference/
        # post-firewalls): "A service can have one assigned firewall enabled at a time";
        # linode-api-docs openapi.yaml: "A Linode instance can have one active, assigned
        # Firewall at a time. Additional disabled Firewalls can still be added".
        for linode in self.devices.get(fid, []):
            for other, attached in self.devices.items():
                clash = other != fid and linode in attached
                if clash and self.firewalls[other]["status"] == "enabled":
                    raise linode_error(
                        400,
                        f"Linode {linode} already has an enabled firewall ({other}); "
                        "a Linode can have only one enabled firewall",
                        "status",
                    )

    @route("GET", r"/v4/networking/firewalls/(?P<fid>[^/]+)/devices")
    def get_devices(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._fw(params["fid"])
        data = [
            {"id": n, "entity": {"id": linode, "type": "linode", "label": f"linode{linode}"}}
            for n, linode in enumerate(self.devices.get(fw["id"], []), start=1)
        ]
        return Response(200, {"data": data, "page": 1, "pages": 1, "results": len(data)})


def main() -> None:
    serve_main(LinodeServer)


if __name__ == "__main__":
    main()
