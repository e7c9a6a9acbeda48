#!/usr/bin/env python3
"""FastNetMon notify script that drives Sluice's incident API.

FastNetMon runs ``notify_script_path`` as ``SCRIPT IP DIRECTION PPS ACTION`` with the
attack's details on stdin; ACTION is ``ban``, ``attack_details`` or ``unban``. This
script turns each call into one ``POST /api/v1/incidents``:

* ``ban`` / ``attack_details``: a signal for IP (its pps, the bandwidth and attack type
  when the details give them) with ``source`` and ``event_id`` set, so every call about
  one attack updates the same incident; the details go along as ``raw_details``;
* ``unban``: ``action: "unban"`` for the same event id: Sluice resolves the incident and
  withdraws its rules. An unban Sluice does not know (or knows as resolved) is fine.

FastNetMon bans one attack per host at a time, so the event id is the host's address.
Outgoing attacks (a protected host sending the flood) are ignored unless
``SLUICE_NOTIFY_OUTGOING=1``.

Settings come from the environment, or from ``KEY=VALUE`` lines in the file named by
``SLUICE_NOTIFY_CONFIG`` (default ``/etc/sluice/fastnetmon-notify.env``); the environment
wins. ``SLUICE_URL`` (default ``http://127.0.0.1:8080``), ``SLUICE_TOKEN`` (a token with
scope ``write``) or ``SLUICE_TOKEN_FILE``, ``SLUICE_SOURCE`` (default ``fastnetmon``),
``SLUICE_TIMEOUT`` seconds (default 5), ``SLUICE_NOTIFY_LOG`` (a file that gets one JSON
line per call: time, action, HTTP status, seconds taken). Only the standard library is
used, so FastNetMon's host needs nothing but Python 3.

Exit status: 0 when Sluice took the call (or had nothing to do), 1 when it refused it, 2
on bad arguments, 3 when Sluice could not be reached.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MAX_DETAILS = 12_000  # bytes of raw_details sent (Sluice keeps at most 16 KiB)
FAMILIES = {"udp_flood", "syn_flood", "icmp_flood", "dns_flood", "http_flood"}
_KEY = re.compile(r"[^a-z0-9]+")
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9 ]{0,60}):\s*(.*)")


def settings() -> dict[str, str]:
    values: dict[str, str] = {}
    path = Path(os.environ.get("SLUICE_NOTIFY_CONFIG", "/etc/sluice/fastnetmon-notify.env"))
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    values.update({k: v for k, v in os.environ.items() if k.startswith("SLUICE_")})
    if "SLUICE_TOKEN" not in values and "SLUICE_TOKEN_FILE" in values:
        values["SLUICE_TOKEN"] = Path(values["SLUICE_TOKEN_FILE"]).read_text().strip()
    return values


def parse_details(text: str) -> dict[str, Any]:
    """FastNetMon's details: a JSON object, or its ``Key: value`` lines (1.2.x) followed by
    sample packets. Keys become ``snake_case``; packets are kept as lines."""
    text = text.strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    packets: list[str] = []
    for line in text.splitlines():
        m = _FIELD.match(line.strip())
        if m and not packets:
            out[_KEY.sub("_", m.group(1).lower()).strip("_")] = m.group(2).strip()
        elif line.strip():
            packets.append(line.strip())
    if packets:
        out["packets"] = packets[:50]
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", value)
        if m:
            return float(m.group(1))
    return None


def signal(ip: str, pps: str, details: dict[str, Any], source: str) -> dict[str, Any]:
    body: dict[str, Any] = {"target_ip": ip, "source": source, "event_id": ip, "severity": "high"}
    rate = _number(pps)
    if rate is not None:
        body["pps"] = rate
    if "in_bps" in details:  # JSON details: bytes per second, despite the name
        bytes_per_s = _number(details["in_bps"])
        if bytes_per_s is not None:
            body["bps"] = bytes_per_s * 8
    elif "total_incoming_traffic" in details:  # text details: "123 mbps"
        mbits = _number(details["total_incoming_traffic"])
        if mbits is not None:
            body["bps"] = mbits * 1_000_000
    family = str(details.get("attack_type") or "").lower()
    body["attack_family"] = family if family in FAMILIES else "unknown"
    if details:
        raw = dict(details)
        while len(json.dumps(raw).encode()) > MAX_DETAILS and raw.get("packets"):
            raw["packets"] = raw["packets"][: len(raw["packets"]) // 2]
        if len(json.dumps(raw).encode()) <= MAX_DETAILS:
            body["raw_details"] = raw
    return body


def post(cfg: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = cfg.get("SLUICE_URL", "http://127.0.0.1:8080").rstrip("/") + "/api/v1/incidents"
    req = urllib.request.Request(  # noqa: S310  # the operator's own Sluice URL
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {cfg.get('SLUICE_TOKEN', '')}",
            "Content-Type": "application/json",
        },
    )
    timeout = float(cfg.get("SLUICE_TIMEOUT", "5"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read() or b"{}")
        except ValueError:
            return int(exc.code), {}


def main(argv: list[str]) -> int:
    started = time.time()
    if len(argv) != 5 or argv[4] not in ("ban", "unban", "attack_details"):
        sys.stderr.write("usage: sluice_notify.py IP DIRECTION PPS ban|unban|attack_details\n")
        return 2
    ip, direction, pps, action = argv[1:]
    details = parse_details(sys.stdin.read() if not sys.stdin.isatty() else "")
    cfg = settings()
    source = cfg.get("SLUICE_SOURCE", "fastnetmon")
    if direction == "outgoing" and cfg.get("SLUICE_NOTIFY_OUTGOING") != "1":
        return 0
    if action == "unban":
        body: dict[str, Any] = {"action": "unban", "source": source, "event_id": ip}
    else:
        body = signal(ip, pps, details, source)
    status, answer = 0, {}
    for attempt in range(3):  # a restarting Sluice: a few quick tries, then give up
        try:
            status, answer = post(cfg, body)
            break
        except (OSError, urllib.error.URLError) as exc:
            if attempt == 2:
                sys.stderr.write(f"sluice_notify: cannot reach Sluice: {exc}\n")
                status = 0
            else:
                time.sleep(0.2 * (attempt + 1))
    code = (answer.get("error") or {}).get("code") if isinstance(answer, dict) else None
    log = cfg.get("SLUICE_NOTIFY_LOG")
    if log:
        with open(log, "a") as fh:  # noqa: PTH123
            fh.write(
                json.dumps(
                    {
                        "at": started,
                        "action": action,
                        "ip": ip,
                        "status": status,
                        "code": code,
                        "seconds": round(time.time() - started, 4),
                        "decision": (answer.get("decision") or {}).get("status"),
                    }
                )
                + "\n"
            )
    if status == 0:
        return 3
    if 200 <= status < 300:
        return 0
    if action == "unban" and code in ("event_not_found", "incident_already_resolved"):
        return 0  # nothing left to end
    sys.stderr.write(f"sluice_notify: {action} {ip}: HTTP {status} {code}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
