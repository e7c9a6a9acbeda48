"""A fake DigitalOcean API v2: bearer tokens, account, Cloud Firewall droplet membership.

Shapes follow the published API: ``Authorization: Bearer <token>`` (bad token -> 401
``{"id": "Unauthorized", "message": "Unable to authenticate you"}``); errors are
``{"id", "message"}``.

* ``GET /v2/account`` -> ``{"account": {"uuid", "email", "status": "active", ...}}``.
* ``GET /v2/firewalls/{id}`` -> ``{"firewall": {"id", "name", "status", "droplet_ids",
  "inbound_rules", "outbound_rules", ...}}``.
* ``POST``/``DELETE /v2/firewalls/{id}/droplets`` ``{"droplet_ids": [...]}`` -> 204
  (adding a member twice or removing a non-member is a no-op; unknown droplets -> 404).
  A firewall also reaches every droplet carrying one of its ``tags``; such droplets are
  not listed in its ``droplet_ids``, and removing them by id changes nothing.
* ``GET /v2/droplets/{id}`` -> ``{"droplet": {"id", "name", "tags", ...}}``.
* ``POST /v2/tags`` ``{"name"}`` -> 201 ``{"tag": {"name", ...}}`` (an existing name is
  answered the same way); ``POST``/``DELETE /v2/tags/{name}/resources`` ``{"resources":
  [{"resource_id", "resource_type": "droplet"}]}`` -> 204; an unknown tag -> 404.

Run ``python -m labs.vendors.digitalocean --port 8083`` for manual trials (token
``do-test-token``, firewalls ``fw-normal`` and ``fw-lockdown`` as UUIDs below).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

TAG_NAME = re.compile(r"[A-Za-z0-9:_-]{1,255}")
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
        self.droplet_tags: dict[int, list[str]] = {d: [] for d in droplets}
        self.tags: set[str] = set()
        self.firewalls: dict[str, dict[str, Any]] = {
            NORMAL: {
                "id": NORMAL,
                "name": "normal",
                "status": "succeeded",
                "droplet_ids": sorted(droplets),
                "tags": [],
            },
            LOCKDOWN: {
                "id": LOCKDOWN,
                "name": "lockdown",
                "status": "succeeded",
                "droplet_ids": [],
                "tags": [],
            },
        }

    def _auth(self, req: Request) -> None:
        if req.bearer() not in self.tokens:  # DigitalOcean API reference, Authentication (401)
            raise do_error(401, "Unauthorized", "Unable to authenticate you")

    def _fw(self, fid: str) -> dict[str, Any]:
        if fid not in self.firewalls:  # API reference, Retrieve an Existing Firewall: 404
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
        # API reference, Add/Remove Droplets to/from a Firewall: droplet_ids, array of integers
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

    def reached(self, fid: str) -> list[int]:
        """Droplets the firewall applies to: by id, or through one of its tags."""
        fw = self.firewalls[fid]
        tagged = {d for d, tags in self.droplet_tags.items() if set(tags) & set(fw["tags"])}
        return sorted(set(fw["droplet_ids"]) | tagged)

    @route("GET", r"/v2/droplets/(?P<did>[^/]+)")
    def get_droplet(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        did = int(params["did"]) if params["did"].isdigit() else -1
        if did not in self.droplets:
            raise do_error(404, "not_found", "The resource you were accessing could not be found.")
        droplet = {"id": did, "name": f"web-{did}", "tags": list(self.droplet_tags[did])}
        return Response(200, {"droplet": droplet})

    @route("POST", r"/v2/tags")
    def create_tag(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        name = req.json_object().get("name")
        # DigitalOcean API "Create a New Tag": "Tags may contain letters, numbers, colons,
        # dashes, and underscores. There is a limit of 255 characters per tag."
        if not isinstance(name, str) or not TAG_NAME.fullmatch(name):
            raise do_error(422, "unprocessable_entity", "name is invalid")
        self.tags.add(name)
        return Response(201, {"tag": {"name": name, "resources": {"count": 0}}})

    def _resources(self, req: Request, tag: str) -> list[int]:
        # "Tag names must exist in order to be referenced in a request" (API reference,
        # Add Tags to a Firewall); tagging a resource with a missing tag answers 404 "The
        # resource you were accessing could not be found." (digitalocean/doctl#107)
        if tag not in self.tags:
            raise do_error(404, "not_found", "The resource you were accessing could not be found.")
        items = req.json_object().get("resources")
        if not isinstance(items, list) or not items:
            raise do_error(422, "unprocessable_entity", "resources must be a non-empty list")
        out = []
        for item in items:
            rid = item.get("resource_id") if isinstance(item, dict) else None
            if item.get("resource_type") != "droplet" or not str(rid).isdigit():
                raise do_error(422, "unprocessable_entity", "resource_id/resource_type invalid")
            if int(str(rid)) not in self.droplets:
                raise do_error(404, "not_found", f"droplet {rid} not found")
            out.append(int(str(rid)))
        return out

    @route("POST", r"/v2/tags/(?P<tag>[^/]+)/resources")
    def tag_resources(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        tag = unquote(params["tag"])
        for did in self._resources(req, tag):
            if tag not in self.droplet_tags[did]:
                self.droplet_tags[did] = sorted([*self.droplet_tags[did], tag])  # a set
        return Response(204)

    @route("DELETE", r"/v2/tags/(?P<tag>[^/]+)/resources")
    def untag_resources(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        tag = unquote(params["tag"])
        for did in self._resources(req, tag):
            if tag in self.droplet_tags[did]:
                self.droplet_tags[did].remove(tag)
        return Response(204)


def main() -> None:
    serve_main(DigitalOceanServer)


if __name__ == "__main__":
    main()
