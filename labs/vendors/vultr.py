"""A fake Vultr API v2: bearer API key, account, instances and their firewall group.

Shapes follow the published API: ``Authorization: Bearer <key>`` (bad key -> 401
``{"error": "Invalid API token.", "status": 401}``); errors are ``{"error", "status"}``.

* ``GET /v2/account`` -> ``{"account": {"name", "email", "acls", "balance", ...}}``.
* ``GET /v2/instances/{id}`` -> ``{"instance": {"id", "main_ip", "firewall_group_id",
  ...}}``.
* ``PATCH /v2/instances/{id}`` ``{"firewall_group_id": "<group>"|"0"}`` -> 202 with the
  instance (``"0"`` detaches the group, which then reads back as ``""``); an unknown
  group or an empty string -> 400.

Run ``python -m labs.vendors.vultr --port 8084`` for manual trials (key
``vultr-test-key``).
"""

from __future__ import annotations

from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

NORMAL_GROUP = "11111111-aaaa-4bbb-8ccc-000000000001"
LOCKDOWN_GROUP = "22222222-aaaa-4bbb-8ccc-000000000002"
INSTANCES = {
    "cb676a46-66fd-4dfb-b839-443f2e6c0b60": "203.0.113.20",
    "cb676a46-66fd-4dfb-b839-443f2e6c0b61": "203.0.113.21",
}


def vultr_error(status: int, message: str) -> HttpError:
    return HttpError(status, {"error": message, "status": status})


class VultrServer(FakeVendorServer):
    vendor = "vultr"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: tuple[str, ...] = ("vultr-test-key",),
    ) -> None:
        super().__init__(host, port)
        self.keys = set(keys)
        self.groups = {NORMAL_GROUP, LOCKDOWN_GROUP}
        self.instances: dict[str, dict[str, Any]] = {
            iid: {"id": iid, "main_ip": ip, "label": f"web-{n}", "firewall_group_id": NORMAL_GROUP}
            for n, (iid, ip) in enumerate(INSTANCES.items())
        }

    def _auth(self, req: Request) -> None:
        if req.bearer() not in self.keys:  # Vultr API v2 reference, Authentication (401)
            raise vultr_error(401, "Invalid API token.")

    def _instance(self, iid: str) -> dict[str, Any]:
        if iid not in self.instances:  # API reference, Get/Update Instance: 404
            raise vultr_error(404, "Invalid instance-id.")
        return self.instances[iid]

    @route("GET", r"/v2/account")
    def account(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(
            200,
            {
                "account": {
                    "name": "Example NOC",
                    "email": "noc@example.net",
                    "acls": ["manage_servers", "firewall"],
                    "balance": 0,
                }
            },
        )

    @route("GET", r"/v2/instances/(?P<iid>[^/]+)")
    def get_instance(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(200, {"instance": dict(self._instance(params["iid"]))})

    @route("PATCH", r"/v2/instances/(?P<iid>[^/]+)")
    def patch_instance(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        inst = self._instance(params["iid"])
        body = req.json_object()
        if "firewall_group_id" in body:
            group = body["firewall_group_id"]
            if group == "0":
                # vultr-cli cmd/instance/instance.go, update-firewall-group: "0 Value will
                # unset the firewall-group"; the instance then reports "".
                inst["firewall_group_id"] = ""
                return Response(202, {"instance": dict(inst)})
            if group == "":
                # govultr's InstanceUpdateReq has firewall_group_id `omitempty`: no
                # official client sends "", and Vultr documents no meaning for it. The
                # fake refuses it rather than guess that it detaches.
                raise vultr_error(400, "Invalid firewall group: use 0 to unset it.")
            if group not in self.groups:  # API reference, Update Instance: 400 bad request
                raise vultr_error(400, "Invalid firewall group.")
            inst["firewall_group_id"] = group
        return Response(202, {"instance": dict(inst)})


def main() -> None:
    serve_main(VultrServer)


if __name__ == "__main__":
    main()
