"""A real FastNetMon detects a bounded flood; the shipped notify script drives Sluice.

Namespaces (all created here, removed at the end whatever happens)::

    atk --veth-- vic        hping3 in atk floods 198.51.100.2 (count- and rate-capped)
                 |          vic mirrors every packet it receives (tc u32 + mirred) to ...
                 +--veth--  fnm: FastNetMon (AF_PACKET on the mirror) + `sluice serve`
    gobgpd (speaker) --BGP-- BIRD (receiver)          the lab topology of labs.topology

FastNetMon calls integrations/fastnetmon/sluice_notify.py, which posts to the Sluice
service running in ``fnm`` (its loopback is the namespace's own). The policy has the
example policy's hold-down; its only tier blackholes the host through gobgpd. The
blackhole must reach BIRD, and FastNetMon's unban must remove it from BIRD within 5 s.

Measured and printed: detection (the ban call) to route in BIRD's RIB, and what of it
Sluice added (hold-down excluded: rule due -> route in RIB); unban call to route gone.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from labs.gobgp import GoBgpSpeaker
from labs.netns import Lab, wait_for
from labs.topology import Topology, running, spare_next_hop
from tests.integration.conftest import BIRD_BINARIES, require_lab

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NOTIFY = ROOT / "integrations" / "fastnetmon" / "sluice_notify.py"
EXAMPLE = ROOT / "policies" / "examples" / "default"
TOKEN = "f" * 64
VICTIM = "198.51.100.2"
PORT = 8080
FLOOD_PACKETS = 20_000  # at most; hping3 stops there (about 5 s at 250 us spacing)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_lab("gobgpd", "gobgp", "fastnetmon", "hping3", "tc", *BIRD_BINARIES)
    with running(GoBgpSpeaker(), receivers=("bird",)) as t:
        yield t


def fastnetmon_conf(lab: Lab, iface: str, env: dict[str, str]) -> Path:
    nets = lab.path("fnm", "networks_list")
    # only the victim: traffic between two protected hosts is not "incoming"
    nets.write_text(f"{VICTIM}/32\n")
    white = lab.path("fnm", "networks_whitelist")
    white.write_text("")
    # FastNetMon passes its environment on to the script; a wrapper pins it anyway
    wrapper = lab.path("fnm", "notify.sh")
    exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    wrapper.write_text(f'#!/bin/sh\n{exports}exec {sys.executable} {NOTIFY} "$@"\n')
    wrapper.chmod(0o755)
    conf = lab.path("fnm", "fastnetmon.conf")
    conf.write_text(
        "\n".join(
            [
                "disable_usage_report = on",
                "enable_ban = on",
                "enable_ban_ipv6 = off",
                "process_incoming_traffic = on",
                "process_outgoing_traffic = off",
                "ban_details_records_count = 10",
                "ban_time = 5",
                "unban_only_if_attack_finished = on",
                f"networks_list_path = {nets}",
                f"white_list_path = {white}",
                "check_period = 1",
                "enable_connection_tracking = off",
                "ban_for_pps = on",
                "ban_for_bandwidth = off",
                "ban_for_flows = off",
                "threshold_pps = 1000",
                "threshold_mbps = 10000",
                "threshold_flows = 100000",
                "mirror_afpacket = on",
                "pcap = off",
                "netflow = off",
                "sflow = off",
                f"interfaces = {iface}",
                "average_calculation_time = 2",
                "speed_calculation_delay = 1",
                f"notify_script_path = {wrapper}",
                "collect_attack_pcap_dumps = off",
                "redis_enabled = off",
                "mongodb_enabled = off",
                "exabgp = off",
                "gobgp = off",
                "influxdb = off",
                "graphite = off",
                "monitor_local_ip_addresses = off",
                "enable_api = off",
                "prometheus = off",
                f"pid_path = {lab.path('fnm', 'fastnetmon.pid')}",
                "",
            ]
        )
    )
    return conf


def policy_dir(tmp: Path, topo: Topology) -> tuple[Path, int]:
    """The example policy's settings and hold-down; one tier: blackhole via gobgpd."""
    example = yaml.safe_load((EXAMPLE / "escalation.yaml").read_text())["escalation"]
    hold = int(example["hold_down_seconds"])
    assert hold > 0, "the example policy's hold-down is the point of this test"
    link = topo.receivers["bird"].link
    pdir = tmp / "policy"
    pdir.mkdir()
    endpoint = topo.speaker.adapter_config("edge")["endpoint"]
    settings = yaml.safe_load((EXAMPLE / "settings.yaml").read_text())
    settings["settings"]["cooldown_seconds"] = 0
    settings["guardrails"]["protected_prefixes"] = ["192.0.2.0/24"]
    (pdir / "settings.yaml").write_text(yaml.safe_dump(settings))
    (pdir / "adapters.yaml").write_text(
        yaml.safe_dump(
            {"adapters": [{"name": "edge", "adapter_type": "gobgp", "endpoint": endpoint}]}
        )
    )
    (pdir / "escalation.yaml").write_text(
        yaml.safe_dump(
            {
                "escalation": {
                    "hold_down_seconds": hold,
                    "episode_timeout_seconds": 300,
                    "tiers": [
                        {
                            "name": "blackhole",
                            "pps": 1000,
                            "ttl": 600,
                            "intents": [
                                {
                                    "type": "blackhole",
                                    "communities": ["65535:666"],
                                    "next_hop": spare_next_hop(link, 4),
                                }
                            ],
                            "adapters": ["edge"],
                        }
                    ],
                }
            }
        )
    )
    return pdir, hold


def events(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    return [
        {
            **dict(r),
            "at": datetime.fromisoformat(r["at"]).timestamp()
            if "+" in r["at"]
            else datetime.fromisoformat(r["at"] + "+00:00").timestamp(),
            "detail": json.loads(r["detail"]) if r["detail"] else None,
        }
        for r in rows
    ]


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_fastnetmon_flood_to_blackhole_in_bird_and_unban(topo: Topology, tmp_path: Path) -> None:
    lab = topo.lab
    bird = topo.receivers["bird"]
    blackhole = f"{VICTIM}/32"
    atk, vic, fnm = lab.namespace("atk"), lab.namespace("vic"), lab.namespace("fnm")
    flood_link = lab.link(atk, vic, v4=("198.51.100.1/24", f"{VICTIM}/24"), v6=None)
    mirror = lab.link(vic, fnm, v4=None, v6=None)
    lab.run(vic, ["tc", "qdisc", "add", "dev", flood_link.b_if, "clsact"])
    lab.run(
        vic,
        [
            "tc", "filter", "add", "dev", flood_link.b_if, "ingress", "protocol", "all",
            "u32", "match", "u32", "0", "0",
            "action", "mirred", "egress", "mirror", "dev", mirror.a_if,
        ],
    )  # fmt: skip

    pdir, hold = policy_dir(tmp_path, topo)
    data = tmp_path / "data"
    notify_log = tmp_path / "notify.jsonl"
    sluice = lab.spawn(
        fnm,
        [
            sys.executable, "-m", "orchestrator.cli", "serve", "--data-dir", str(data),
            "--policy-dir", str(pdir), "--host", "127.0.0.1", "--port", str(PORT),
            "--log-level", "warning",
        ],
        name="sluice",
        env={
            "SLUICE_ADMIN_TOKEN": TOKEN,
            "PYTHONPATH": str(ROOT),
            # the lab's gobgpd socket lives in its temporary directory: allowed on purpose
            "SLUICE_ADAPTER_DIRS": ":".join(str(d) for d in topo.access.allowed_dirs),
        },
        cwd=ROOT,
    )  # fmt: skip
    db = data / "sluice.db"

    def ready() -> bool:
        if not sluice.alive():
            raise AssertionError(f"sluice exited:\n{sluice.log_tail(40)}")
        probe = lab.run(
            fnm,
            [
                sys.executable, "-c",
                f"import urllib.request;urllib.request.urlopen('http://127.0.0.1:{PORT}/api/v1/health',timeout=1)",
            ],
            check=False,
        )  # fmt: skip
        return probe.returncode == 0

    wait_for(ready, timeout=60, what="sluice serving in the fnm namespace", interval=0.3)

    env = {
        "SLUICE_URL": f"http://127.0.0.1:{PORT}",
        "SLUICE_TOKEN": TOKEN,
        "SLUICE_NOTIFY_LOG": str(notify_log),
        "SLUICE_NOTIFY_CONFIG": "/nonexistent",
    }
    conf = fastnetmon_conf(lab, mirror.b_if, env)
    fnm_log = lab.path("logs", "fastnetmon-own.log")
    detector = lab.spawn(
        fnm,
        ["fastnetmon", "--configuration_file", str(conf), "--log_file", str(fnm_log),
         "--disable_pid_logic"],
        name="fastnetmon",
    )  # fmt: skip

    def capturing() -> bool:
        if not detector.alive():
            raise AssertionError(f"fastnetmon exited:\n{detector.log_tail(40)}")
        return fnm_log.exists() and "AF_PACKET" in fnm_log.read_text()

    wait_for(capturing, timeout=60, what="FastNetMon capturing", interval=0.3)
    assert blackhole not in bird.prefixes(4)

    # the flood: UDP to port 53 every 250 us, at most FLOOD_PACKETS packets
    flood = lab.spawn(
        atk,
        ["hping3", "--udp", "-p", "53", "-i", "u250", "-c", str(FLOOD_PACKETS), "-q", VICTIM],
        name="hping3",
    )
    try:
        wait_for(
            lambda: any(c["action"] == "ban" for c in calls(notify_log)),
            timeout=30,
            what="FastNetMon's ban call",
            diagnose=lambda: fnm_log.read_text()[-2000:] if fnm_log.exists() else "",
        )
        wait_for(
            lambda: blackhole in bird.prefixes(4),
            timeout=hold + 15,
            what="the blackhole in BIRD",
            interval=0.02,
            diagnose=lambda: sluice.log_tail(40) + "\n" + notify_log.read_text(),
        )
        t_rib = time.time()
    finally:
        flood.stop()
    route = bird.unicast(4)[blackhole]
    assert "65535:666" in route.communities

    ban = next(c for c in calls(notify_log) if c["action"] == "ban")
    assert ban["status"] == 200 and ban["decision"] == "held", ban
    # the route can reach BIRD before the dispatcher has written the outcome back
    wait_for(
        lambda: any(e["kind"] == "rule.active" for e in events(db)),
        timeout=10,
        what="the rule recorded active",
    )
    log1 = events(db)
    opened = next(e for e in log1 if e["kind"] == "incident.opened")
    created = next(e for e in log1 if e["kind"] == "rule.created")
    active = next(e for e in log1 if e["kind"] == "rule.active")
    assert created["incident_id"] == opened["incident_id"] == active["incident_id"]
    assert opened["detail"]["source"] == "fastnetmon"
    assert opened["detail"]["event_id"] == VICTIM
    due = opened["at"] + hold  # the hold-down is policy, not Sluice's latency
    assert created["at"] >= due - 0.5

    # unban: FastNetMon calls it once the flood stopped and ban_time passed
    wait_for(
        lambda: any(c["action"] == "unban" for c in calls(notify_log)),
        timeout=90,
        what="FastNetMon's unban call",
        interval=0.1,
        diagnose=lambda: fnm_log.read_text()[-2000:] if fnm_log.exists() else "",
    )
    unban = next(c for c in calls(notify_log) if c["action"] == "unban")
    assert unban["status"] == 200, unban
    wait_for(
        lambda: blackhole not in bird.prefixes(4),
        timeout=5,
        what="the blackhole gone from BIRD within 5 s of the unban",
        interval=0.02,
    )
    t_gone = time.time()
    wait_for(
        lambda: any(e["kind"] == "rule.withdrawn" for e in events(db)),
        timeout=10,
        what="the rule recorded withdrawn",
    )
    log2 = events(db)
    kinds = [e["kind"] for e in log2 if e["incident_id"] == opened["incident_id"]]
    assert kinds[:1] == ["incident.opened"]
    assert kinds[-3:] == ["incident.resolved", "rule.withdrawing", "rule.withdrawn"], kinds

    detection_to_rib = t_rib - ban["at"]
    print(
        "\nFastNetMon -> Sluice -> gobgpd -> BIRD:"
        f"\n  ban call -> route in BIRD RIB: {detection_to_rib * 1000:.0f} ms"
        f" (hold-down {hold} s included)"
        f"\n  added by Sluice: rule due (hold-down end) -> rule active: "
        f"{(active['at'] - due) * 1000:.0f} ms; -> route in BIRD: {(t_rib - due) * 1000:.0f} ms"
        f" (BIRD polled every 20 ms)"
        f"\n    (due -> rule created {(created['at'] - due) * 1000:.0f} ms, created -> active "
        f"{(active['at'] - created['at']) * 1000:.0f} ms)"
        f"\n  ban HTTP call: {ban['seconds'] * 1000:.0f} ms"
        f"\n  unban call -> route gone from BIRD: {(t_gone - unban['at']) * 1000:.0f} ms"
        f" (unban HTTP call {unban['seconds'] * 1000:.0f} ms)"
    )
    inc_raw = _raw_details(db, opened["incident_id"])
    print(f"  raw_details kept: {sorted(inc_raw)[:12]}")


def _raw_details(db: Path, incident_id: str) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT raw_details FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
    return dict(json.loads(row[0])) if row and row[0] else {}
