"""``hey`` against the running service: one signal repeated on ``/incidents`` vs ``/health``.

    .venv/bin/python -m tests.bench.bench_hey [--connections 50] [--seconds 5] [--rounds 2]

The measurement prefixd publishes (``hey``, 50 connections, one event repeated), made the
same way here: starts ``sluice serve`` (SQLite, a fake adapter, a policy whose tier the
event crosses, the rate limit raised through ``SLUICE_RATE_LIMIT_PER_MINUTE``), then runs
``hey`` (Debian package ``hey``) alternately against ``GET /api/v1/health`` and
``POST /api/v1/incidents`` with one attack signal, ``--rounds`` times each, in one run.
The first signal opens an incident and announces its rule; every repeat updates that
incident, is evaluated and stores its decision. Prints each round, then the median
requests/s of each and the ratio (issue 14's target: incidents at >= 75 % of health).
Every answer must be a 200, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.bench_intake import POLICY
from tests.integration.test_crash import TOKEN, Server

SIGNAL = {
    "target_ip": "198.18.7.7",
    "bps": "3G",
    "pps": 400_000,
    "attack_family": "udp_flood",
    "severity": "high",
    "top_source_ports": [123],
    "udp_pct": 97,
    "source": "bench",
    "event_id": "hey-1",
}
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")


def hey(args: list[str]) -> tuple[float, dict[int, int], str]:
    """Run hey; (requests/s, responses per status, its output)."""
    out = subprocess.run(  # a fixed program with our own arguments
        ["hey", *args], capture_output=True, text=True, check=True
    ).stdout
    rate = _RATE.search(out)
    if rate is None:
        raise RuntimeError(f"no rate in hey's output:\n{out}")
    return float(rate.group(1)), {int(s): int(n) for s, n in _STATUS.findall(out)}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=5, help="per round and endpoint")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed (Debian package hey; `make debs`)")
    os.environ["SLUICE_RATE_LIMIT_PER_MINUTE"] = "100000000"
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp) / "policy"
        pdir.mkdir()
        (pdir / "policy.yaml").write_text(POLICY)
        body = Path(tmp) / "signal.json"
        body.write_text(json.dumps(SIGNAL))
        srv = Server(Path(tmp), pdir)
        srv.ready_timeout = 180  # a loaded machine starts Python slowly
        srv.start()
        try:
            r = srv.api("POST", "/incidents", json=SIGNAL)  # the incident and its rule
            assert r.status_code == 200 and r.json()["decision"]["rules"], r.text
            common = ["-c", str(args.connections), "-z", f"{args.seconds}s"]
            health = [*common, f"{srv.url}/api/v1/health"]
            incidents = [
                *common,
                "-m",
                "POST",
                "-T",
                "application/json",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "-D",
                str(body),
                f"{srv.url}/api/v1/incidents",
            ]
            rates: dict[str, list[float]] = {"health": [], "incidents": []}
            bad: list[str] = []
            for n in range(1, args.rounds + 1):
                for name, cmd in (("health", health), ("incidents", incidents)):
                    rate, statuses, _out = hey(cmd)
                    rates[name].append(rate)
                    print(f"round {n}: {name:9s} {rate:8,.0f} requests/s  statuses {statuses}")
                    if set(statuses) != {200}:
                        bad.append(f"{name} round {n}: {statuses}")
            inc = srv.api("GET", "/incidents", params={"limit": 1}).json()["incidents"][0]
        finally:
            srv.stop()
    h, i = statistics.median(rates["health"]), statistics.median(rates["incidents"])
    after = os.getloadavg()
    print(
        f"median: /health {h:,.0f}/s, /incidents {i:,.0f}/s = {i / h:.0%} of health "
        f"(target >= 75 %); {args.connections} connections, {args.seconds} s x {args.rounds}"
    )
    print(f"the incident took {inc['signals']:,} signals; load average {load[0]:.2f} -> "
          f"{after[0]:.2f} ({os.cpu_count()} CPUs, hey on the same machine)")  # fmt: skip
    ok = not bad and i >= 0.75 * h
    print(f"RESULT: {'PASS' if ok else 'FAIL'}" + (f" (non-200 answers: {bad})" if bad else ""))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
