"""A fake Radware DefenseFlow behind Cyber Controller / APSolute Vision (REST, JSON).

Shapes follow the published Vision/Cyber Controller REST API and DefenseFlow's attack
actions as third-party detectors drive them:

* ``POST /mgmt/system/user/login`` ``{"username", "password"}`` ->
  ``{"status": "ok", "jsessionid": "..."}`` plus a ``JSESSIONID`` cookie; later requests
  carry ``Cookie: JSESSIONID=...`` (the adapter also sends the ``JSESSIONID`` header, as
  Radware's own examples do). A bad login is ``401`` with ``Invalid Username or invalid
  Password``; an unknown or expired session is ``401``.
* ``POST /mgmt/system/user/logout`` ends the session.
* ``POST /mgmt/device/df/config/action/attackstart`` ``{"externalAttackId", "alertInfo",
  "networksDetails": {"networks": [{"ip", "prefix"}]}, "baselinesIpv4"?,
  "baselinesIpv6"?}`` starts (or updates) protection of the networks (login, attack
  start/stop and the baseline fields agree with a public third-party DefenseFlow client).
  A network that no protected object covers is refused with 400 here: DefenseFlow
  protects only the networks of its protected objects, but the exact answer is not
  published, so this rule and its message are an assumption of the fake.
* ``POST /mgmt/device/df/config/action/attackstop`` ``{"externalAttackId"}`` stops it;
  stopping an attack that is not running answers ok.
* ``GET /mgmt/device/df/config/ProtectedObjects`` -> ``{"ProtectedObjects": [{"name"},
  ...]}``. Only the list and each object's ``name`` are confirmed by a public source (a
  third-party Vision script that lists protected objects by name); Radware publishes no
  schema for the rest, so the fake answers nothing else (no networks, no attack state).

Errors are ``{"status": "error", "message": "..."}``. Run ``python -m
labs.vendors.radware --port 8443`` for manual trials (user ``radware``, password
``radware-pw``; one protected object covering 192.0.2.0/24 and 2001:db8::/48).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, Sessions, route

BASELINE_KEYS = frozenset(
    f"baseline{proto}{unit}PerSecond"
    for proto in ("Tcp", "Udp", "Icmp")
    for unit in ("Bytes", "Packets")
)


def rw_error(status: int, message: str) -> HttpError:
    return HttpError(status, {"status": "error", "message": message})


class RadwareServer(FakeVendorServer):
    """DefenseFlow state in memory: users, sessions, protected objects, running attacks."""

    vendor = "radware"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: dict[str, str] | None = None,
        protected_objects: dict[str, list[str]] | None = None,
        session_ttl: float = 900.0,
    ) -> None:
        super().__init__(host, port)
        self.users = users if users is not None else {"radware": "radware-pw"}
        self.sessions = Sessions(ttl=session_ttl)
        objects = protected_objects or {"customer-a": ["192.0.2.0/24", "2001:db8::/48"]}
        self.protected_objects = {
            name: [ipaddress.ip_network(n) for n in nets] for name, nets in objects.items()
        }
        self.attacks: dict[str, dict[str, Any]] = {}  # externalAttackId -> start body
        self.stopped: list[str] = []

    def _auth(self, req: Request) -> str:
        session = req.cookies().get("JSESSIONID") or req.header("jsessionid")
        return self.sessions.require(session, {"status": "error", "message": "Unauthorized"})

    @route("POST", r"/mgmt/system/user/login")
    def login(self, req: Request, params: dict[str, str]) -> Response:
        body = req.json_object()
        user = body.get("username")
        if not isinstance(user, str) or self.users.get(user) != body.get("password"):
            raise rw_error(401, "Invalid Username or invalid Password")
        session = self.sessions.issue(user)
        return Response(
            200,
            {"status": "ok", "jsessionid": session},
            {"Set-Cookie": f"JSESSIONID={session}; Path=/; Secure; HttpOnly"},
        )

    @route("POST", r"/mgmt/system/user/logout")
    def logout(self, req: Request, params: dict[str, str]) -> Response:
        session = req.cookies().get("JSESSIONID") or req.header("jsessionid") or ""
        self.sessions.revoke(session)
        return Response(200, {"status": "ok"})

    def _networks(
        self, body: dict[str, Any]
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        details = body.get("networksDetails")
        nets = details.get("networks") if isinstance(details, dict) else None
        if not isinstance(nets, list) or not nets:
            raise rw_error(400, "networksDetails.networks is required")
        out = []
        for item in nets:
            try:
                out.append(ipaddress.ip_network(f"{item['ip']}/{int(item['prefix'])}"))
            except (KeyError, TypeError, ValueError):
                raise rw_error(400, f"invalid network {item!r}") from None
        return out

    def _covering(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
        for name, nets in self.protected_objects.items():
            for po_net in nets:
                if po_net.version == net.version and net.subnet_of(po_net):  # type: ignore[arg-type]
                    return name
        return None

    @route("POST", r"/mgmt/device/df/config/action/attackstart")
    def attack_start(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        body = req.json_object()
        attack_id = body.get("externalAttackId")
        if not isinstance(attack_id, str) or not attack_id:
            raise rw_error(400, "externalAttackId is required")
        for net in self._networks(body):
            if self._covering(net) is None:
                raise rw_error(400, f"network {net} is not part of any protected object")
        for family in ("baselinesIpv4", "baselinesIpv6"):
            baselines = body.get(family)
            if baselines is None:
                continue
            if not isinstance(baselines, dict) or not set(baselines) <= BASELINE_KEYS:
                raise rw_error(400, f"{family} has unknown fields")
            if not all(isinstance(v, int) and v >= 0 for v in baselines.values()):
                raise rw_error(400, f"{family} values must be non-negative integers")
        self.attacks[attack_id] = body
        return Response(200, {"status": "ok"})

    @route("POST", r"/mgmt/device/df/config/action/attackstop")
    def attack_stop(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        attack_id = req.json_object().get("externalAttackId")
        if not isinstance(attack_id, str) or not attack_id:
            raise rw_error(400, "externalAttackId is required")
        if self.attacks.pop(attack_id, None) is not None:
            self.stopped.append(attack_id)
        return Response(200, {"status": "ok"})

    @route("GET", r"/mgmt/device/df/config/ProtectedObjects")
    def protected_objects_list(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        # only what a public client reads: the list and the names (see the docstring)
        items = [{"name": name} for name in self.protected_objects]
        return Response(200, {"ProtectedObjects": items})


def main(argv: list[str] | None = None) -> None:
    from labs.vendors.server import serve_main

    serve_main(RadwareServer, argv, "login: radware / radware-pw")


if __name__ == "__main__":
    main()
