"""``kill -9`` of the real service in the middle of bulk intake, with real gobgpd and BIRD.

``sluice serve`` drives gobgpd (network namespaces), which feeds a BIRD receiver. Bulk
requests of distinct-target signals (``POST /incidents/bulk``, each signal crossing the
policy's blackhole tier) go in on several connections; once the store holds the rules of
``KILL_AT`` whole batches (progress counted in the store, not timed), the service is
killed with SIGKILL while the next batches are in flight. Then, before and after a
restart:

- every signal of a batch is stored wholly (its incident, its one decision naming its one
  rule, that rule) or not at all, and a batch is never split (one transaction per request):
  the store is also read while the storm is written, one snapshot at a time as fast as it
  can be read, and no committed state may hold part of a batch (a split batch would
  otherwise escape whenever the kill falls between two batches rather than inside one);
  every batch answered before the kill is stored, with the rule ids it answered, and
  its rules are in the store as soon as its answer is read (not only after the kill);
- after the restart, every active rule's route is in BIRD's RIB and no storm route is there
  without a live rule in the store (a rule committed but not sent before the kill is sent
  now); the audit chain verifies.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from labs.gobgp import GoBgpSpeaker
from labs.netns import wait_for
from labs.topology import Receiver, running
from tests.integration.conftest import BIRD_BINARIES, require_lab
from tests.integration.test_crash import Server

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

STORM = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
BULK = 500  # signals per request
BATCHES = 8
KILL_AT = 3  # kill once the store holds this many whole batches
CONNECTIONS = 4
NEXT_HOP = "192.0.2.3"  # on the speaker's link to BIRD


def _net(target: str) -> str:
    return ipaddress.ip_network(target).with_prefixlen


def _policy(pdir: Path, endpoint: str) -> None:
    pdir.mkdir()
    (pdir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n  default_ttl: 0\n"
        "guardrails:\n  max_new_rules_per_minute: 1000000\n  max_active_rules: 1000000\n"
        # an hour without signals before an incident (and its rule) ends: however slow the
        # machine, nothing is withdrawn while the test compares BIRD with the store
        "escalation:\n  hold_down_seconds: 0\n  episode_timeout_seconds: 3600\n  tiers:\n"
        f"    - {{name: rtbh, bps: 2G, intents: [{{type: blackhole, next_hop: {NEXT_HOP}}}],"
        " adapters: [edge]}\n"
    )
    (pdir / "adapters.yaml").write_text(
        f"adapters:\n  - name: edge\n    adapter_type: gobgp\n    endpoint: {endpoint}\n"
    )


def _body(hosts: list[str]) -> bytes:
    return json.dumps(
        {
            "signals": [
                {
                    "target_ip": h,
                    "bps": "3G",
                    "pps": 400_000,
                    "attack_family": "udp_flood",
                    "severity": "high",
                }
                for h in hosts
            ]
        }
    ).encode()


def _read(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A read of the service's SQLite store (WAL: safe while it writes, or after a kill)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@dataclass
class Stored:
    """The storm's signals as the store holds them: target -> the rule made for it."""

    rules: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def stored(db: Path, batches: list[list[str]]) -> Stored:
    """Check that each signal is stored wholly or not at all; its target -> rule id."""
    incidents = _read(db, "SELECT id, target FROM incidents")
    decisions = _read(db, "SELECT incident_id, rules FROM decisions")
    rule_rows = _read(db, "SELECT id, target, incident_id FROM rules")
    out = Stored()
    by_target: dict[str, list[str]] = {}
    for iid, target in incidents:
        by_target.setdefault(_net(str(target)), []).append(str(iid))
    decided: dict[str, list[list[int]]] = {}
    for iid, named in decisions:
        decided.setdefault(str(iid), []).append([int(r["rule_id"]) for r in json.loads(named)])
    rules_of: dict[str, list[tuple[int, str]]] = {}
    orphans = 0
    for rid, target, iid in rule_rows:
        if iid is None:
            orphans += 1
        else:
            rules_of.setdefault(str(iid), []).append((int(rid), _net(str(target))))
    if orphans:
        out.problems.append(f"{orphans} rules without an incident")
    for k, hosts in enumerate(batches):
        whole = 0
        for host in hosts:
            net = _net(host)
            iids = by_target.get(net, [])
            if not iids:
                continue
            if len(iids) > 1:
                out.problems.append(f"{host}: {len(iids)} incidents")
                continue
            (iid,) = iids
            made = rules_of.get(iid, [])
            if decided.get(iid, []) != [[rid for rid, _ in made]] or len(made) != 1:
                out.problems.append(
                    f"{host}: incident without exactly one decision naming its one rule "
                    f"(decisions {decided.get(iid)}, rules {made})"
                )
                continue
            ((rid, target),) = made
            if target != net:
                out.problems.append(f"{host}: its rule is for {target}")
                continue
            out.rules[net] = rid
            whole += 1
        if whole not in (0, len(hosts)):
            out.problems.append(f"batch {k}: {whole} of its {len(hosts)} signals stored")
    return out


class Snapshots:
    """Counts of incidents, decisions and rules read in one statement (one snapshot of the
    WAL store) while the storm is written: with one transaction per bulk request, every
    committed state holds as many of each, a whole number of batches. A state that does
    not is a batch committed in parts (kept in :attr:`split`)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn: sqlite3.Connection | None = None
        self.polls = 0
        self.seen: set[tuple[int, int, int]] = set()
        self.split: list[tuple[int, int, int]] = []

    def poll(self) -> int:
        """Read one snapshot; the number of rules in it."""
        if self.conn is None:
            if not self.db.exists():  # the service creates it at start
                return 0
            self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM incidents), (SELECT count(*) FROM decisions),"
            " (SELECT count(*) FROM rules)"
        ).fetchone()
        counts = (int(row[0]), int(row[1]), int(row[2]))
        self.polls += 1
        if counts not in self.seen:
            self.seen.add(counts)
            if len(set(counts)) != 1 or counts[0] % BULK:
                self.split.append(counts)
        return counts[2]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _rib(bird: Receiver) -> set[str]:
    return {p for p in bird.prefixes(4) if ipaddress.IPv4Network(p).subnet_of(STORM)}


def test_kill9_mid_bulk_batch_nothing_half_stored_rib_equals_store(tmp_path: Path) -> None:
    require_lab("gobgpd", "gobgp", *BIRD_BINARIES)
    hosts = [str(h) for h in list(STORM.hosts())[: BULK * BATCHES]]
    batches = [hosts[k : k + BULK] for k in range(0, len(hosts), BULK)]
    bodies = [_body(b) for b in batches]
    db = tmp_path / "data" / "sluice.db"
    with running(GoBgpSpeaker(), receivers=("bird",)) as topo:
        bird = topo.receivers["bird"]
        _policy(tmp_path / "policy", str(topo.speaker.adapter_config("edge")["endpoint"]))
        srv = Server(tmp_path, tmp_path / "policy", topo.access.allowed_dirs)
        try:
            srv.start()
            answers: dict[int, dict[str, Any]] = {}
            lost: list[int] = []  # batches sent but not answered (the kill), or not sent
            early: list[str] = []  # answers read before what they tell was committed
            killed = threading.Event()
            mutex = threading.Lock()

            def send(k: int) -> None:
                if killed.is_set():
                    with mutex:
                        lost.append(k)
                    return
                try:
                    r = srv.api(
                        "POST",
                        "/incidents/bulk",
                        content=bodies[k],
                        headers={"Content-Type": "application/json"},
                        timeout=120,
                    )
                except httpx.HTTPError:
                    with mutex:
                        lost.append(k)
                    return
                assert r.status_code == 200, r.text[:500]
                answer = r.json()
                # an answer tells what is committed: its rules are in the store as soon
                # as it is read (a commit after the answer fails here, kill or no kill)
                told = [rid for res in answer["results"] for rid in res.get("rule_ids", [])]
                held = _read(
                    db,
                    "SELECT count(*) FROM rules WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(told),),
                )
                with mutex:
                    answers[k] = answer
                    if int(held[0][0]) != len(told):
                        early.append(f"batch {k}: {held[0][0]} of its {len(told)} rules stored")

            watch = Snapshots(db)

            def whole_batches() -> int:
                return watch.poll() // BULK

            with ThreadPoolExecutor(CONNECTIONS) as pool:
                futures = [pool.submit(send, k) for k in range(len(batches))]
                try:
                    wait_for(
                        lambda: whole_batches() >= KILL_AT or all(f.done() for f in futures),
                        timeout=180,
                        interval=0,  # every committed state the store goes through, if it can
                        what=f"the rules of {KILL_AT} bulk batches in the store",
                    )
                finally:
                    srv.kill9()
                    killed.set()
                for f in futures:
                    f.result(timeout=180)
            assert lost, "every batch was answered before the kill: it came too late"
            print(
                f"kill -9 with {whole_batches()} of {len(batches)} batches stored, "
                f"{len(answers)} answered, {len(lost)} not answered; "
                f"{watch.polls} snapshots read during the storm, {len(watch.seen)} distinct"
            )
            watch.close()
            assert not early, f"answered before committed: {early}"
            # whichever part of a batch would commit first (incidents, rules or
            # decisions), a split batch shows as a committed state the poll can read
            assert not watch.split, f"the store committed part of a batch: {watch.split[:5]}"

            # right after the kill, then after the restart: nothing half-stored
            for when in ("after the kill", "after the restart"):
                got = stored(db, batches)
                assert not got.problems, (when, got.problems[:10], len(got.problems))
                assert len(got.rules) >= KILL_AT * BULK, when
                for k, answer in answers.items():  # every answered signal is stored as told
                    assert answer["accepted"] == BULK and answer["failed"] == 0, answer
                    for host, res in zip(batches[k], answer["results"], strict=True):
                        assert res["ok"] and res["rule_ids"] == [got.rules[_net(host)]], res
                if when == "after the kill":
                    srv.start()

            # the restarted service sends what was committed but not sent, and BIRD's RIB
            # is the store's active rules: nothing missing, nothing left over
            want = set(got.rules)

            def live() -> Counter[str]:
                return Counter(r["state"] for r in srv.live_rules())

            wait_for(
                lambda: live() == Counter(active=len(want)) and _rib(bird) == want,
                timeout=120,
                interval=0.5,
                what="every stored rule active and BIRD's RIB equal to the store",
                diagnose=lambda: (
                    f"store {dict(live())}, {len(want)} stored; BIRD {len(_rib(bird))}, "
                    f"missing {len(want - _rib(bird))}, extra {len(_rib(bird) - want)}"
                ),
            )
            assert {_net(r["target_ip"]) for r in srv.live_rules()} == want
            verify = srv.api("GET", "/audit/verify").json()
            assert verify["valid"] is True, verify
        finally:
            srv.stop()
