"""Failover of the gobgp driver between two `sluice serve` instances on one PostgreSQL.

    sudo .venv/bin/python -m tests.bench.bench_failover [--rules 600]

The scenario of tests/integration/test_cluster_failover_lab.py: gobgpd peered with a BIRD
receiver in namespaces, two real service processes on a throwaway PostgreSQL
(labs/postgres.py), rules created through both; once a third of the storm's first part
was answered, the instance driving gobgpd is killed with SIGKILL and the rest of the rules
are created through the survivor, then every fifth rule is withdrawn. Prints the times
from the kill to the new lease holder, to the new driver's first successful announce (a
rule created right after the kill reported active), and to BIRD's RIB equal to the
store's active rules, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from labs.postgres import ThrowawayPostgres
from tests.integration.test_cluster_failover_lab import failover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=600)
    args = ap.parse_args()
    with ThrowawayPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        got = failover(Path(tmp), pg.create_database("failover"), args.rules)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"failover (gobgp -> BIRD, 2 instances, {got.rules} rules, {got.withdrawn} withdrawn): "
        f"new lease holder {got.to_new_holder:.2f} s after kill -9, first announce by the "
        f"new driver {got.to_first_announce:.2f} s, BIRD's RIB == store "
        f"{got.to_rib_equal:.2f} s; lost {len(got.lost)}, extra {len(got.extra)}, "
        f"duplicated {len(got.duplicated) + len(got.twice)} (load average {load})"
    )


if __name__ == "__main__":
    main()
