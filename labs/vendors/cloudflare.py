"""A fake Cloudflare API v4 (the parts the Cloudflare adapter and integrations use).

Shapes follow Cloudflare's published API: every answer is the envelope ``{"success",
"errors": [{"code", "message"}], "messages", "result"}``; requests authenticate with an
API token in ``Authorization: Bearer`` (missing header -> 400 code 6003, unknown token ->
403 code 10000 "Authentication error").

* ``GET /user/tokens/verify`` (user-owned tokens) and ``GET /accounts/{a}/tokens/verify``
  (account-owned tokens) -> ``{"id", "status": "active"}``; each endpoint knows only its
  own kind of token.
* BGP prefixes of a BYOIP prefix: ``GET /accounts/{a}/addressing/prefixes/{p}/bgp/prefixes``
  -> ``[{"id", "cidr", "on_demand": {"advertised", "advertised_modified_at",
  "on_demand_enabled", "on_demand_locked"}, ...}]``; ``GET``/``PATCH .../bgp/prefixes/{b}``
  ``{"on_demand": {"advertised"}}`` -> the BGP prefix. Each BYOIP prefix has one BGP prefix
  for its whole CIDR, id ``<p>-bgp``.
* The deprecated ``GET``/``PATCH /accounts/{a}/addressing/prefixes/{p}/bgp/status``
  ``{"advertised"}`` -> ``{"advertised", "advertised_modified_at"}`` still answers, as it
  does at Cloudflare, on the same state.
* ``GET``/``PATCH /zones/{z}/settings/security_level`` ``{"value"}`` -> the setting
  ``{"id": "security_level", "value", "editable", "modified_on"}``.
* ``/accounts/{a}/rules/lists/{l}/items``: ``GET`` (cursor pagination with ``per_page`` and
  ``cursor``; ``result_info.cursors.after``), ``POST [{"ip", "comment"}]`` (an existing
  value gets the new comment) and ``DELETE {"items": [{"id"}]}``, both asynchronous:
  they answer ``{"operation_id"}`` and ``GET /accounts/{a}/rules/lists/bulk_operations/
  {op}`` reports ``pending`` ``pending_polls`` times, then ``completed``.

Run ``python -m labs.vendors.cloudflare --port 8080`` for manual trials (token
``cf-test-token``, account ``acc1``, prefix ``pfx1`` = 203.0.113.0/24, zone ``zone1``,
list ``list1``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

ACC = r"/accounts/(?P<account>[^/]+)"
LEVELS = ("off", "essentially_off", "low", "medium", "high", "under_attack")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(result: Any, **extra: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result, **extra}


def cf_error(status: int, code: int, message: str) -> HttpError:
    return HttpError(
        status,
        {
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
            "result": None,
        },
    )


class CloudflareServer(FakeVendorServer):
    vendor = "cloudflare"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: tuple[str, ...] = ("cf-test-token",),
        user_tokens: tuple[str, ...] = (),
        account: str = "acc1",
        prefixes: dict[str, str] | None = None,
        zones: tuple[str, ...] = ("zone1",),
        lists: tuple[str, ...] = ("list1",),
        pending_polls: int = 1,
    ) -> None:
        super().__init__(host, port)
        self.tokens = set(tokens)  # account-owned tokens of ``account``
        self.user_tokens = set(user_tokens)  # user-owned tokens
        self.account = account
        self.prefixes = {
            pid: {
                "cidr": cidr,
                "advertised": False,
                "advertised_modified_at": None,
                "on_demand_enabled": True,
                "on_demand_locked": False,
            }
            for pid, cidr in (prefixes or {"pfx1": "203.0.113.0/24"}).items()
        }
        self.zones = {z: {"value": "medium", "modified_on": None} for z in zones}
        self.lists: dict[str, list[dict[str, Any]]] = {name: [] for name in lists}
        self.operations: dict[str, dict[str, Any]] = {}
        self.pending_polls = pending_polls

    # -- auth and lookups

    def _auth(self, req: Request) -> str:
        # Cloudflare API, Getting started > Troubleshooting: 6003 "Invalid request headers"
        # without credentials, 10000 "Authentication error" for a bad or foreign token
        if not (req.header("authorization") or "").strip():
            raise cf_error(400, 6003, "Invalid request headers")
        token = req.bearer()
        if token is None or token not in self.tokens | self.user_tokens:
            raise cf_error(403, 10000, "Authentication error")
        return token

    def _account(self, req: Request, account: str) -> None:
        self._auth(req)
        if account != self.account:
            raise cf_error(403, 10000, "Authentication error")

    def _prefix(self, pid: str) -> dict[str, Any]:
        if pid not in self.prefixes:
            raise cf_error(404, 1002, "Prefix not found")
        return self.prefixes[pid]

    def _list(self, lid: str) -> list[dict[str, Any]]:
        if lid not in self.lists:
            raise cf_error(404, 10001, "list not found")
        return self.lists[lid]

    # -- tokens

    # Cloudflare API reference: user tokens verify at GET /user/tokens/verify, account-owned
    # tokens at GET /accounts/{account_id}/tokens/verify (cloudflare-python
    # resources/user/tokens/tokens.py and resources/accounts/tokens/tokens.py, verify()).
    # Each endpoint knows only its own kind; the other kind is an invalid token there.

    @route("GET", r"/user/tokens/verify")
    def verify(self, req: Request, params: dict[str, str]) -> Response:
        if self._auth(req) not in self.user_tokens:
            raise cf_error(401, 1000, "Invalid API Token")
        return Response(200, envelope({"id": "tok-user", "status": "active"}))

    @route("GET", ACC + r"/tokens/verify")
    def verify_account(self, req: Request, params: dict[str, str]) -> Response:
        if self._auth(req) not in self.tokens or params["account"] != self.account:
            raise cf_error(401, 1000, "Invalid API Token")
        return Response(200, envelope({"id": "tok-account", "status": "active"}))

    # -- Magic Transit on-demand advertisement through BGP prefixes (cloudflare-python
    # resources/addressing/prefixes/bgp_prefixes.py; types/.../bgp_prefix.py)

    def _bgp_view(self, pid: str) -> dict[str, Any]:
        p = self.prefixes[pid]
        return {
            "id": f"{pid}-bgp",
            "cidr": p["cidr"],
            "on_demand": {
                "advertised": p["advertised"],
                "advertised_modified_at": p["advertised_modified_at"],
                "on_demand_enabled": p["on_demand_enabled"],
                "on_demand_locked": p["on_demand_locked"],
            },
        }

    def _bgp(self, req: Request, params: dict[str, str]) -> str:
        self._account(req, params["account"])
        pid = params["pid"]
        self._prefix(pid)
        if params.get("bid") not in (None, f"{pid}-bgp"):
            raise cf_error(404, 1002, "BGP prefix not found")
        return pid

    @route("GET", ACC + r"/addressing/prefixes/(?P<pid>[^/]+)/bgp/prefixes")
    def list_bgp(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, envelope([self._bgp_view(self._bgp(req, params))]))

    @route("GET", ACC + r"/addressing/prefixes/(?P<pid>[^/]+)/bgp/prefixes/(?P<bid>[^/]+)")
    def get_bgp(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, envelope(self._bgp_view(self._bgp(req, params))))

    @route("PATCH", ACC + r"/addressing/prefixes/(?P<pid>[^/]+)/bgp/prefixes/(?P<bid>[^/]+)")
    def edit_bgp(self, req: Request, params: dict[str, str]) -> Response:
        pid = self._bgp(req, params)
        p = self.prefixes[pid]
        on_demand = req.json_object().get("on_demand")
        wanted = on_demand.get("advertised") if isinstance(on_demand, dict) else None
        if not isinstance(wanted, bool):
            raise cf_error(400, 1001, "on_demand.advertised must be a boolean")
        # bgp_prefix.py: advertisement may change only while on_demand_enabled, and
        # "on_demand_locked: ... locked, meaning it cannot be changed"
        if not p["on_demand_enabled"] or p["on_demand_locked"]:
            raise cf_error(400, 1003, "on-demand advertisement is not enabled or is locked")
        if p["advertised"] != wanted:
            p["advertised"] = wanted
            p["advertised_modified_at"] = _now()
        return Response(200, envelope(self._bgp_view(pid)))

    # -- the deprecated whole-prefix endpoint: cloudflare-python marks advertisement_status
    # edit/get @deprecated ("Prefer the BGP Prefixes endpoints"); Cloudflare still serves it

    @route("GET", ACC + r"/addressing/prefixes/(?P<pid>[^/]+)/bgp/status")
    def get_status(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        p = self._prefix(params["pid"])
        return Response(200, envelope({k: p[k] for k in ("advertised", "advertised_modified_at")}))

    @route("PATCH", ACC + r"/addressing/prefixes/(?P<pid>[^/]+)/bgp/status")
    def set_status(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        p = self._prefix(params["pid"])
        body = req.json_object()
        if not isinstance(body.get("advertised"), bool):
            raise cf_error(400, 1001, "advertised must be a boolean")
        if p["advertised"] != body["advertised"]:
            p["advertised"] = body["advertised"]
            p["advertised_modified_at"] = _now()
        return Response(200, envelope({k: p[k] for k in ("advertised", "advertised_modified_at")}))

    # -- zone security level (Under Attack Mode)

    def _zone(self, req: Request, zone: str) -> dict[str, Any]:
        self._auth(req)
        if zone not in self.zones:
            raise cf_error(404, 1001, "Invalid zone identifier")
        return self.zones[zone]

    def _setting(self, z: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "security_level",
            "value": z["value"],
            "editable": True,
            "modified_on": z["modified_on"],
        }

    @route("GET", r"/zones/(?P<zone>[^/]+)/settings/security_level")
    def get_level(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, envelope(self._setting(self._zone(req, params["zone"]))))

    @route("PATCH", r"/zones/(?P<zone>[^/]+)/settings/security_level")
    def set_level(self, req: Request, params: dict[str, str]) -> Response:
        z = self._zone(req, params["zone"])
        value = req.json_object().get("value")
        # API reference, Zone settings > security_level: value is one of LEVELS
        if value not in LEVELS:
            raise cf_error(400, 1007, f"Invalid value for zone setting security_level: {value}")
        z["value"], z["modified_on"] = value, _now()
        return Response(200, envelope(self._setting(z)))

    # -- IP lists

    @route("GET", ACC + r"/rules/lists/(?P<lid>[^/]+)/items")
    def get_items(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        items = self._list(params["lid"])
        per_page = int((req.query.get("per_page") or ["25"])[0])
        start = int((req.query.get("cursor") or ["0"])[0] or 0)
        page = items[start : start + per_page]
        after = str(start + per_page) if start + per_page < len(items) else None
        cursors = {"after": after} if after else {}
        return Response(200, envelope(page, result_info={"cursors": cursors}))

    @route("POST", ACC + r"/rules/lists/(?P<lid>[^/]+)/items")
    def add_items(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        items = self._list(params["lid"])
        if not isinstance(req.body, list):
            raise cf_error(400, 10021, "request body must be an array of items")
        for new in req.body:
            ip = new.get("ip") if isinstance(new, dict) else None
            try:
                net = ipaddress.ip_network(str(ip), strict=True)
            except ValueError:
                raise cf_error(400, 10021, f"{ip} is not a valid IP address or range") from None
            # Cloudflare docs, Lists > IP lists: IPv6 entries are ranges of at most /64
            if net.version == 6 and net.prefixlen > 64:
                raise cf_error(400, 10021, f"{ip}: IPv6 list items must be /64 or shorter")
            found = next((it for it in items if ipaddress.ip_network(it["ip"]) == net), None)
            if found is None:
                items.append(
                    {
                        "id": secrets.token_hex(16),
                        "ip": ip,
                        "comment": new.get("comment", ""),
                        "created_on": _now(),
                        "modified_on": _now(),
                    }
                )
            else:
                found["comment"], found["modified_on"] = new.get("comment", ""), _now()
        return Response(200, envelope({"operation_id": self._operation()}))

    @route("DELETE", ACC + r"/rules/lists/(?P<lid>[^/]+)/items")
    def del_items(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        items = self._list(params["lid"])
        ids = {i.get("id") for i in req.json_object().get("items", []) if isinstance(i, dict)}
        items[:] = [it for it in items if it["id"] not in ids]
        return Response(200, envelope({"operation_id": self._operation()}))

    def _operation(self) -> str:
        op = secrets.token_hex(16)
        self.operations[op] = {"id": op, "polls": 0}
        return op

    @route("GET", ACC + r"/rules/lists/bulk_operations/(?P<op>[^/]+)")
    def get_operation(self, req: Request, params: dict[str, str]) -> Response:
        self._account(req, params["account"])
        op = self.operations.get(params["op"])
        if op is None:
            raise cf_error(404, 10003, "operation not found")
        op["polls"] += 1
        status = "pending" if op["polls"] <= self.pending_polls else "completed"
        return Response(200, envelope({"id": op["id"], "status": status}))


def main() -> None:
    serve_main(CloudflareServer)


if __name__ == "__main__":
    main()
