"""A fake OVHcloud API (``/1.0``): signed requests and IP mitigation.

Shapes follow the published OVHcloud API:

* ``GET /1.0/auth/time`` (unsigned) -> the server's Unix time as a bare JSON number.
* Every other call is signed: ``X-Ovh-Application``, ``X-Ovh-Consumer``,
  ``X-Ovh-Timestamp`` and ``X-Ovh-Signature`` = ``"$1$" + sha1_hex(AS + "+" + CK + "+" +
  METHOD + "+" + full URL + "+" + body + "+" + timestamp)``. The fake recomputes it
  (this module's own code, independent of the adapter's) and answers like OVH: unknown
  application key -> 403 ``INVALID_KEY``, unknown consumer key -> 403
  ``INVALID_CREDENTIAL``, bad signature or a timestamp more than ``max_skew`` seconds off
  -> 400 ``INVALID_SIGNATURE``. Errors are ``{"errorCode", "httpCode", "message"}``.
* ``GET /1.0/auth/currentCredential`` -> ``{"credentialId", "applicationId", "status":
  "validated", ...}``.
* ``GET``/``POST /1.0/ip/{block}/mitigation`` (``{"ipOnMitigation"}``), ``GET``/``PUT``
  (``{"permanent"}``)/``DELETE /1.0/ip/{block}/mitigation/{address}``; an entry is
  ``{"ipOnMitigation", "permanent", "auto", "state"}``, ``state`` is ``creationPending``
  until the next read, then ``ok``. The block in the path is URL-encoded
  (``203.0.113.0%2F28``). Permanent mitigation ended on 2025-09-08: the routes still
  answer (terraform-provider-ovh still calls them) but ``permanent`` has no effect, so an
  entry created or updated through them stays ``permanent: false`` and diverts nothing.
  Only OVH's automatic mitigation (``auto: true``, see :meth:`OvhServer.attack`) means
  traffic goes through the scrubbing centres.

Run ``python -m labs.vendors.ovh --port 8081`` for manual trials (application key
``ak-test``, secret ``as-test-secret``, consumer key ``ck-test-consumer``, block
203.0.113.0/28).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any
from urllib.parse import unquote

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

BLOCK = r"/1.0/ip/(?P<block>[^/]+)/mitigation"


def ovh_error(status: int, code: str, message: str) -> HttpError:
    phrase = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
    return HttpError(
        status,
        {
            "errorCode": code,
            "httpCode": f"{status} {phrase.get(status, '')}".strip(),
            "message": message,
        },
    )


class OvhServer(FakeVendorServer):
    vendor = "ovh"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        applications: dict[str, str] | None = None,
        consumers: dict[str, str] | None = None,
        blocks: tuple[str, ...] = ("203.0.113.0/28",),
        clock_offset: int = 0,
        max_skew: int = 60,
    ) -> None:
        super().__init__(host, port)
        self.applications = applications or {"ak-test": "as-test-secret"}
        self.consumers = consumers or {"ck-test-consumer": "ak-test"}
        self.blocks: dict[str, dict[str, dict[str, Any]]] = {b: {} for b in blocks}
        self.clock_offset = clock_offset
        self.max_skew = max_skew

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    # -- auth

    def _verify(self, req: Request) -> None:
        ak, ck = req.header("x-ovh-application"), req.header("x-ovh-consumer")
        ts, sig = req.header("x-ovh-timestamp"), req.header("x-ovh-signature")
        # python-ovh ovh/client.py: the X-Ovh-* headers and the "$1$" SHA-1 signature; a 403
        # with errorCode INVALID_KEY / INVALID_CREDENTIAL is what it maps to InvalidKey /
        # InvalidCredential. A bad signature or clock is a 400 (python-ovh's
        # BadParametersError); its errorCode INVALID_SIGNATURE is the fake's choice.
        if not ak or ak not in self.applications:
            raise ovh_error(403, "INVALID_KEY", "Invalid application key")
        if not ck or self.consumers.get(ck) != ak:
            raise ovh_error(403, "INVALID_CREDENTIAL", "This credential does not exist")
        if not ts or not ts.isdigit() or abs(int(ts) - self.now()) > self.max_skew:
            raise ovh_error(400, "INVALID_SIGNATURE", "Invalid signature")
        query = "&".join(f"{k}={v}" for k, vs in req.query.items() for v in vs)
        url = f"{self.url}{req.path}" + (f"?{query}" if query else "")
        raw = "+".join([self.applications[ak], ck, req.method, url, req.raw.decode(), ts])
        expected = "$1$" + hashlib.sha1(raw.encode()).hexdigest()  # noqa: S324
        if sig != expected:
            raise ovh_error(400, "INVALID_SIGNATURE", "Invalid signature")

    def _block(self, req: Request, block: str) -> dict[str, dict[str, Any]]:
        self._verify(req)
        name = unquote(block)
        if name not in self.blocks:
            raise ovh_error(404, "NOT_FOUND", f"The requested object (ip = {name}) does not exist")
        return self.blocks[name]

    @route("GET", r"/1.0/auth/time")
    def auth_time(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, self.now())

    @route("GET", r"/1.0/auth/currentCredential")
    def credential(self, req: Request, params: dict[str, str]) -> Response:
        self._verify(req)
        ck = req.header("x-ovh-consumer") or ""
        return Response(
            200,
            {
                "credentialId": 4242,
                "applicationId": 77,
                "status": "validated",
                "consumerKey": ck[:4] + "...",
            },
        )

    # -- mitigation

    def _view(self, entry: dict[str, Any]) -> dict[str, Any]:
        return dict(entry)

    @route("GET", BLOCK)
    def list_mitigation(self, req: Request, params: dict[str, str]) -> Response:
        entries = self._block(req, params["block"])
        return Response(200, sorted(entries))

    @route("POST", BLOCK)
    def add_mitigation(self, req: Request, params: dict[str, str]) -> Response:
        entries = self._block(req, params["block"])
        address = req.json_object().get("ipOnMitigation")
        block = ipaddress.ip_network(unquote(params["block"]))
        try:
            inside = ipaddress.ip_address(str(address)) in block
        except ValueError:
            inside = False
        if not inside:
            raise ovh_error(400, "INVALID_ARGUMENT", f"{address} is not an IPv4 address of {block}")
        if str(address) in entries:
            raise ovh_error(409, "ALREADY_EXISTS", f"{address} is already on mitigation")
        # Permanent mitigation EOL 2025-09-08 (ovh/infrastructure-roadmap#282, ovh/docs#8205);
        # terraform-provider-ovh#1132: the `permanent` attribute "has no effect already".
        entry = {
            "ipOnMitigation": str(address),
            "permanent": False,
            "auto": False,
            "state": "creationPending",
        }
        entries[str(address)] = entry
        return Response(200, self._view(entry))

    def _entry(
        self, req: Request, params: dict[str, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        entries = self._block(req, params["block"])
        entry = entries.get(params["address"])
        if entry is None:
            raise ovh_error(
                404,
                "NOT_FOUND",
                f"The requested object (ipOnMitigation = {params['address']}) does not exist",
            )
        return entries, entry

    @route("GET", BLOCK + r"/(?P<address>[^/]+)")
    def get_entry(self, req: Request, params: dict[str, str]) -> Response:
        _, entry = self._entry(req, params)
        view = self._view(entry)
        if entry["state"] == "creationPending":
            entry["state"] = "ok"
        return Response(200, view)

    @route("PUT", BLOCK + r"/(?P<address>[^/]+)")
    def put_entry(self, req: Request, params: dict[str, str]) -> Response:
        self._entry(req, params)  # 404 for an unknown address
        permanent = req.json_object().get("permanent")
        if not isinstance(permanent, bool):
            raise ovh_error(400, "INVALID_ARGUMENT", "permanent must be a boolean")
        return Response(200, None)  # accepted, no effect since 2025-09-08 (see add_mitigation)

    @route("DELETE", BLOCK + r"/(?P<address>[^/]+)")
    def delete_entry(self, req: Request, params: dict[str, str]) -> Response:
        entries, entry = self._entry(req, params)
        if entry["auto"]:
            # OVH's detection holds it, not the customer (kept from the pre-EOL fake; not
            # checked against the live API, whose answer here is unpublished)
            raise ovh_error(400, "INVALID_ARGUMENT", "an automatic mitigation cannot be removed")
        del entries[params["address"]]
        return Response(200, {**entry, "state": "removalPending"})

    # -- OVH's own detection, for tests

    def attack(self, address: str) -> None:
        """OVH detects an attack on ``address``: its automatic mitigation holds it."""
        block = next(
            b for b in self.blocks if ipaddress.ip_address(address) in ipaddress.ip_network(b)
        )
        entry = {"ipOnMitigation": address, "permanent": False, "auto": True, "state": "ok"}
        self.blocks[block][address] = entry

    def calm(self, address: str) -> None:
        """The attack is over: OVH releases ``address``."""
        for entries in self.blocks.values():
            entries.pop(address, None)


def main() -> None:
    serve_main(OvhServer)


if __name__ == "__main__":
    main()
