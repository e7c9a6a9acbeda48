"""A fake Hetzner Robot webservice: basic auth, server firewalls and firewall templates.

Shapes follow the published Robot webservice: HTTP basic auth (wrong credentials -> 401
``{"error": {"status": 401, "code": "UNAUTHORIZED", "message": "Unauthorized"}}``),
form-encoded ``POST`` bodies, errors ``{"error": {"status", "code", "message"}}``.

* ``GET /firewall/template`` -> ``[{"firewall_template": {"id", "name", ...}}]``;
  ``GET /firewall/template/{id}`` -> ``{"firewall_template": {..., "rules": {"input"}}}``.
* ``GET /firewall/{server-number}`` -> ``{"firewall": {"server_ip", "server_number",
  "status", "filter_ipv6", "whitelist_hos", "port", "rules": {"input", "output"}}}``.
* ``POST /firewall/{server-number}`` with ``template_id=<id>`` copies the template's
  settings and rules to the server; the status is ``in process`` until the next read,
  and a second POST while it is ``in process`` answers 409 ``FIREWALL_IN_PROCESS``.

Run ``python -m labs.vendors.hetzner --port 8082`` for manual trials (user
``robot-user``, password ``robot-pw``, server 321, templates 1001 normal / 1002 attack).
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main


def robot_error(status: int, code: str, message: str) -> HttpError:
    return HttpError(status, {"error": {"status": status, "code": code, "message": message}})


NORMAL_RULES = [{"ip_version": "ipv4", "name": "allow all", "action": "accept"}]
ATTACK_RULES = [
    {"ip_version": "ipv4", "name": "ssh", "protocol": "tcp", "dst_port": "22", "action": "accept"},
    {
        "ip_version": "ipv4",
        "name": "https",
        "protocol": "tcp",
        "dst_port": "443",
        "action": "accept",
    },
    {"ip_version": "ipv4", "name": "drop rest", "action": "discard"},
]


class HetznerServer(FakeVendorServer):
    vendor = "hetzner"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: dict[str, str] | None = None,
        servers: dict[int, str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.users = users or {"robot-user": "robot-pw"}
        self.templates: dict[str, dict[str, Any]] = {
            "1001": self._template("1001", "normal", NORMAL_RULES),
            "1002": self._template("1002", "attack", ATTACK_RULES),
        }
        self.firewalls: dict[int, dict[str, Any]] = {
            num: {
                "server_ip": ip,
                "server_number": num,
                "status": "active",
                "filter_ipv6": False,
                "whitelist_hos": True,
                "port": "main",
                "rules": {"input": copy.deepcopy(NORMAL_RULES), "output": []},
            }
            for num, ip in (servers or {321: "203.0.113.10", 322: "203.0.113.11"}).items()
        }

    @staticmethod
    def _template(tid: str, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": int(tid),
            "name": name,
            "filter_ipv6": False,
            "whitelist_hos": True,
            "is_default": False,
            "rules": {"input": copy.deepcopy(rules), "output": []},
        }

    def _auth(self, req: Request) -> None:
        creds = req.basic_auth()
        if creds is None or self.users.get(creds[0]) != creds[1]:
            raise robot_error(401, "UNAUTHORIZED", "Unauthorized")

    @route("GET", r"/firewall/template")
    def list_templates(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        return Response(
            200,
            [
                {"firewall_template": {k: v for k, v in t.items() if k != "rules"}}
                for t in self.templates.values()
            ],
        )

    @route("GET", r"/firewall/template/(?P<tid>[^/]+)")
    def get_template(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        t = self.templates.get(params["tid"])
        if t is None:
            raise robot_error(404, "NOT_FOUND", "Firewall template not found")
        return Response(200, {"firewall_template": copy.deepcopy(t)})

    def _firewall(self, num: str) -> dict[str, Any]:
        fw = self.firewalls.get(int(num)) if num.isdigit() else None
        if fw is None:
            raise robot_error(404, "SERVER_NOT_FOUND", "Server not found")
        return fw

    @route("GET", r"/firewall/(?P<num>[0-9]+)")
    def get_firewall(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._firewall(params["num"])
        view = copy.deepcopy(fw)
        if fw["status"] == "in process":
            fw["status"] = "active"
        return Response(200, {"firewall": view})

    @route("POST", r"/firewall/(?P<num>[0-9]+)")
    def set_firewall(self, req: Request, params: dict[str, str]) -> Response:
        self._auth(req)
        fw = self._firewall(params["num"])
        if (req.header("content-type") or "").split(";")[0] != "application/x-www-form-urlencoded":
            raise robot_error(400, "INVALID_INPUT", "form-encoded body expected")
        form = parse_qs(req.raw.decode())
        if fw["status"] == "in process":
            raise robot_error(
                409,
                "FIREWALL_IN_PROCESS",
                "The firewall cannot be updated because a configuration is already in process",
            )
        tid = (form.get("template_id") or [""])[0]
        t = self.templates.get(tid)
        if t is None:
            raise robot_error(400, "INVALID_INPUT", f"invalid input: template_id {tid!r}")
        fw.update(
            status="in process",
            filter_ipv6=t["filter_ipv6"],
            whitelist_hos=t["whitelist_hos"],
            rules=copy.deepcopy(t["rules"]),
        )
        return Response(200, {"firewall": copy.deepcopy(fw)})

    def applied(self, num: int) -> str | None:
        """Which template's rules the server's firewall holds now (for tests)."""
        for tid, t in self.templates.items():
            if self.firewalls[num]["rules"]["input"] == t["rules"]["input"]:
                return tid
        return None


def main() -> None:
    serve_main(HetznerServer)


if __name__ == "__main__":
    main()
