"""PCAP benchmark: upload walk and analysis time for a large capture (issue 11).

    .venv/bin/python -m tests.bench.bench_pcap [--mb 100] [--kind syn|dns|mixed|all]

Generates a capture of ``--mb`` megabytes in a temporary directory (frames built with
dpkt, repeated), then reports for each kind:
1. the upload walk (:func:`orchestrator.pcaps.store.scan`: every record checked, offsets
   kept), packets per second;
2. the analysis (one streaming pass plus the report), packets and megabytes per second,
   and the process's peak RSS growth during it;
3. one page of 1000 parsed packets at the end of the capture (seek to a kept offset).
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import tempfile
import time
from pathlib import Path

from orchestrator.pcaps.analysis import analyze, summarize
from orchestrator.pcaps.reader import decode, open_capture
from orchestrator.pcaps.store import STRIDE, scan
from tests import pcapgen as g

T = "203.0.113.10"


def frames_for(kind: str) -> list[bytes]:
    rng = random.Random(11)
    if kind == "syn":
        return list(g.syn_flood(20_000, T))
    if kind == "dns":
        return list(g.dns_reflection(5_000, T, reflectors=2_000))
    return list(
        itertools.chain(
            g.syn_flood(8_000, T),
            g.dns_reflection(4_000, T, reflectors=500),
            (g.icmp_echo(g.source(rng, "10.0.0.0/8"), T) for _ in range(4_000)),
            (g.fragment(g.source(rng, "10.0.0.0/8"), T, 185, False) for _ in range(2_000)),
            (g.gre(g.source(rng, "10.0.0.0/8"), T) for _ in range(2_000)),
        )
    )


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(kind: str, mb: int, tmp: Path) -> None:
    frames = frames_for(kind)
    rng = random.Random(3)
    rng.shuffle(frames)
    avg = sum(len(f) + 16 for f in frames) / len(frames)
    count = int(mb * 1_000_000 / avg)
    path = g.write_repeated(tmp / f"{kind}.pcap", frames, count)
    size = path.stat().st_size
    t0 = time.perf_counter()
    result = scan(path)
    t1 = time.perf_counter()
    rss0 = rss_mb()
    report = summarize(analyze(path), target_hint=T)
    t2 = time.perf_counter()
    rss1 = rss_mb()
    offset = (result.packets - 1000) // STRIDE * STRIDE
    with open_capture(path) as cap:
        page = [
            decode(cap.link_type, r).to_api(0)
            for r in itertools.islice(cap.records(result.checkpoints[offset // STRIDE]), 1000)
        ]
    t3 = time.perf_counter()
    print(
        f"{kind:6} {size / 1e6:6.1f} MB {result.packets:>9,} pkts | "
        f"scan {t1 - t0:6.2f} s ({result.packets / (t1 - t0):>9,.0f} pkt/s) | "
        f"analysis {t2 - t1:6.2f} s ({result.packets / (t2 - t1):>9,.0f} pkt/s, "
        f"{size / 1e6 / (t2 - t1):5.1f} MB/s, peak RSS +{rss1 - rss0:.0f} MB) | "
        f"last page of {len(page)} {1000 * (t3 - t2):.0f} ms | "
        f"{report['primary_vector']} -> {report['recommendations'][0]['canonical']}"
    )
    path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--kind", choices=["syn", "dns", "mixed", "all"], default="all")
    args = ap.parse_args()
    kinds = ["dns", "mixed", "syn"] if args.kind == "all" else [args.kind]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            run(kind, args.mb, Path(tmp))


if __name__ == "__main__":
    main()
