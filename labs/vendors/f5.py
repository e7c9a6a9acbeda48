"""A fake F5 BIG-IP iControl REST API (the parts the F5 adapter uses).

Shapes follow the published iControl REST API:

* ``POST /mgmt/shared/authn/login`` ``{"username", "password", "loginProviderName"}`` ->
  ``{"token": {"token": ..., "timeout": 1200, ...}}``; later requests carry the token in
  ``X-F5-Auth-Token``. ``PATCH /mgmt/shared/authz/tokens/<token>`` ``{"timeout": N}``
  changes its lifetime, ``DELETE`` the same path revokes it.
* ``GET /mgmt/tm/sys/version`` -> ``tm:sys:version:versionstats`` with nested entries.
* ``/mgmt/tm/net/route``: collection ``GET``, ``POST`` creates (409 when the name
  exists), ``GET``/``DELETE /mgmt/tm/net/route/~Common~<name>`` (404 when absent).
* ``/mgmt/tm/security/firewall/address-list/~Common~<name>``: ``GET`` and ``PATCH``
  (``addresses`` replaces the entries, each ``{"name": prefix, "description": ...}``).
  A list must keep at least one member (an address, address list, geo location or FQDN);
  the lists start with the placeholder entry ``100::/128`` an operator creates them with.

Errors use the iControl body ``{"code": N, "message": "...", "errorStack": [],
"apiError": N}``. Run ``python -m labs.vendors.f5 --port 8443`` for manual trials
(user ``admin``, password ``admin-pw``).
"""

from __future__ import annotations

import time
from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, Sessions, route

# the entry the operator creates an address list with (see adapters.f5.render.PLACEHOLDER;
# written out here so the fake does not import the adapter it checks)
PLACEHOLDER = {
    "name": "100::/128",
    "description": "placeholder: an AFM address list may not be empty",
}

OBJ = r"~(?P<partition>[A-Za-z0-9_.-]+)~(?P<name>[A-Za-z0-9_.:-]+)"


def f5_error(status: int, message: str) -> HttpError:
    return HttpError(status, {"code": status, "message": message, "errorStack": [], "apiError": 3})


class F5Server(FakeVendorServer):
    """BIG-IP state in memory: users, tokens, routes and AFM address lists."""

    vendor = "f5"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: dict[str, str] | None = None,
        token_timeout: float = 1200.0,
        address_lists: tuple[str, ...] = ("sluice_blocked_sources",),
        version: str = "17.1.1",
    ) -> None:
        super().__init__(host, port)
        self.users = users if users is not None else {"admin": "admin-pw"}
        self.sessions = Sessions(ttl=token_timeout)
        self.routes: dict[str, dict[str, Any]] = {}  # full path "/Common/name" -> object
        # created as the operator would: F5 refuses an address list without members
        self.address_lists: dict[str, dict[str, Any]] = {
            f"/Common/{n}": {
                "name": n,
                "partition": "Common",
                "fullPath": f"/Common/{n}",
                "addresses": [dict(PLACEHOLDER)],
            }
            for n in address_lists
        }
        self.version = version

    # -- auth

    def _auth(self, req: Request) -> str:
        token = req.header("x-f5-auth-token")
        if token is None:
            raise f5_error(401, "Authorization failed: no user authentication header or token")
        user = self.sessions.user(token)
        if user is None:
            raise f5_error(401, "X-F5-Auth-Token does not exist.")
        return user

    @route("POST", r"/mgmt/shared/authn/login")
    def login(self, req: Request, params: dict[str, str]) -> Response:
        body = req.json_object()
        user, password = body.get("username"), body.get("password")
        if not isinstance(user, str) or self.users.get(user) != password:
            raise f5_error(401, "Authentication failed.")
        token = self.sessions.issue(user)
        return Response(
            200,
            {
                "username": user,
                "loginProviderName": body.get("loginProviderName", "tmos"),
                "token": self._token_body(token, user, self.sessions.ttl),
            },
        )

    def _token_body(self, token: str, user: str, timeout: float) -> dict[str, Any]:
        now = int(time.time() * 1_000_000)
        return {
            "token": token,
            "name": token,
            "userName": user,
            "timeout": int(timeout),
            "startTime": now,
            "expirationMicros": now + int(timeout * 1_000_000),
            "kind": "shared:authz:tokens:authtokenitemstate",
        }

    @route("PATCH", r"/mgmt/shared/authz/tokens/(?P<token>[^/]+)")
    def patch_token(self, req: Request, params: dict[str, str]) -> Response:
        user = self._auth(req)
        timeout = req.json_object().get("timeout")
        if not isinstance(timeout, int) or not 0 < timeout <= 36000:
            raise f5_error(400, "timeout must be between 1 and 36000 seconds")
        if not self.sessions.set_ttl(params["token"], float(timeout)):
            raise f5_error(404, "token not found")
        return Response(200, self._token_body(params["token"], user, timeout))

    @route("DELETE", r"/mgmt/shared/authz/tokens/(?P<token>[^/]+)")
    def delete_token(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        if not self.sessions.revoke(params["token"]):
            raise f5_error(404, "token not found")
        return Response(200, {"token": params["token"]})

    # -- device

    @route("GET", r"/mgmt/tm/sys/version")
    def sys_version(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        entries = {
            "Build": {"description": "0.0.4"},
            "Date": {"description": "Thu Oct  5 2023"},
            "Edition": {"description": "Final"},
            "Product": {"description": "BIG-IP"},
            "Title": {"description": "main package"},
            "Version": {"description": self.version},
        }
        link = "https://localhost/mgmt/tm/sys/version/0"
        return Response(
            200,
            {
                "kind": "tm:sys:version:versionstats",
                "selfLink": "https://localhost/mgmt/tm/sys/version?ver=" + self.version,
                "entries": {link: {"nestedStats": {"entries": entries}}},
            },
        )

    # -- routes

    @route("GET", r"/mgmt/tm/net/route")
    def list_routes(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(
            200,
            {
                "kind": "tm:net:route:routecollectionstate",
                "selfLink": "https://localhost/mgmt/tm/net/route",
                "items": list(self.routes.values()),
            },
        )

    @route("POST", r"/mgmt/tm/net/route")
    def create_route(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        body = req.json_object()
        name, partition = body.get("name"), body.get("partition", "Common")
        if not isinstance(name, str) or not name:
            raise f5_error(400, "name is required")
        # f5-common-python f5/bigip/tm/net/route.py, Route: name and network are required
        # at creation, and exactly one of blackhole, gw, tmInterface, pool
        if "network" not in body:
            raise f5_error(400, f'01070734:3: Configuration error: route "{name}" needs a network')
        gateways = [k for k in ("gw", "tmInterface", "pool", "blackhole") if body.get(k)]
        if len(gateways) != 1:
            raise f5_error(
                400, "01070734:3: a route needs exactly one of gw, tmInterface, pool, blackhole"
            )
        path = f"/{partition}/{name}"
        if path in self.routes:
            raise f5_error(
                409,
                f"01020066:3: The requested route ({path}) already exists in partition "
                f"{partition}.",
            )
        obj: dict[str, Any] = {
            "kind": "tm:net:route:routestate",
            "name": name,
            "partition": partition,
            "fullPath": path,
            "network": body["network"],
            "mtu": 0,
            **{k: body[k] for k in ("blackhole", "gw", "description") if k in body},
        }
        self.routes[path] = obj
        return Response(200, obj)

    @route("GET", r"/mgmt/tm/net/route/" + OBJ)
    def get_route(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(200, self._route(params))

    @route("DELETE", r"/mgmt/tm/net/route/" + OBJ)
    def delete_route(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        self._route(params)
        del self.routes[f"/{params['partition']}/{params['name']}"]
        return Response(200)

    def _route(self, params: dict[str, str]) -> dict[str, Any]:
        path = f"/{params['partition']}/{params['name']}"
        if path not in self.routes:
            raise f5_error(404, f"01020036:3: The requested route ({path}) was not found.")
        return self.routes[path]

    # -- AFM address lists

    def _list(self, params: dict[str, str]) -> dict[str, Any]:
        path = f"/{params['partition']}/{params['name']}"
        if path not in self.address_lists:
            raise f5_error(404, f"01020036:3: The requested Address List ({path}) was not found.")
        return self.address_lists[path]

    @route("GET", r"/mgmt/tm/security/firewall/address-list/" + OBJ)
    def get_address_list(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        obj = self._list(params)
        return Response(200, {"kind": "tm:security:firewall:address-list:address-liststate", **obj})

    @route("PATCH", r"/mgmt/tm/security/firewall/address-list/" + OBJ)
    def patch_address_list(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        obj = self._list(params)
        body = req.json_object()
        addresses = body.get("addresses")
        if not isinstance(addresses, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) for a in addresses
        ):
            raise f5_error(400, "addresses must be a list of {name, description}")
        if not addresses and not any(obj.get(k) for k in ("addressLists", "geo", "fqdns")):
            # F5's SDK (f5-common-python f5/bigip/tm/security/firewall.py, Address_List,
            # minimum_additional_parameters) requires one of addresses, addressLists,
            # geo or fqdns: a list left with no member at all is refused.
            raise f5_error(
                400,
                f"address list {obj['fullPath']} must have at least one address, "
                "address list, geo location or FQDN",
            )
        if addresses:
            obj["addresses"] = [dict(a) for a in addresses]
        else:
            obj.pop("addresses", None)
        return Response(200, {"kind": "tm:security:firewall:address-list:address-liststate", **obj})


def main(argv: list[str] | None = None) -> None:
    from labs.vendors.server import serve_main

    serve_main(F5Server, argv, "login: admin / admin-pw")


if __name__ == "__main__":
    main()
