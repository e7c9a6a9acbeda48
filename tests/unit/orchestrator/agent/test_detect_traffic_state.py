"""The detector, the reading of kernel counters, and the agent's durable state (pure)."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.agent.detect import Detector, Thresholds, classify, severity
from orchestrator.agent.state import AgentState
from orchestrator.agent.traffic import Reading, Sample, parse_reading, rates, render_observer

NFT_DOC = {
    "nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {
            "counter": {
                "family": "netdev",
                "name": "c_all",
                "table": "sluice_obs",
                "packets": 1100,
                "bytes": 62800,
            }
        },
        {
            "counter": {
                "family": "netdev",
                "name": "c_dns",
                "table": "sluice_obs",
                "packets": 1000,
                "bytes": 60000,
            }
        },
        {
            "counter": {
                "family": "netdev",
                "name": "c_udp",
                "table": "sluice_obs",
                "packets": 1050,
                "bytes": 61000,
            }
        },
        {
            "set": {
                "name": "src4",
                "elem": [
                    {
                        "elem": {
                            "val": "192.0.2.1",
                            "expires": 119,
                            "counter": {"packets": 1000, "bytes": 60000},
                        }
                    }
                ],
            }
        },
        {
            "set": {
                "name": "sport",
                "elem": [
                    {
                        "elem": {
                            "val": {"concat": ["udp", 53]},
                            "counter": {"packets": 1000, "bytes": 60000},
                        }
                    }
                ],
            }
        },
    ]
}


def sample(at: float, pps: float, **mix: float) -> Sample:
    rates_ = {k: pps * v for k, v in mix.items()}
    rates_["all"] = pps
    return Sample(
        at,
        pps,
        pps * 512,
        rates_,
        [("192.0.2.2", pps)],
        [("192.0.2.1", pps)],
        [("udp/53", pps)],
        [("udp/5000", pps)],
    )


def test_parse_reading_and_rates() -> None:
    cur = parse_reading(NFT_DOC, at=11.0)
    assert cur.counters["all"] == (1100, 62800) and cur.sets["sport"] == {"udp/53": (1000, 60000)}
    prev = Reading(
        10.0,
        {"all": (100, 2800), "dns": (0, 0), "udp": (50, 1000)},
        {"src4": {"192.0.2.1": (0, 0)}},
    )
    s = rates(prev, cur)
    assert s.pps == 1000 and s.bps == 60000 * 8
    assert s.pct("dns") == 100.0 and s.pct("udp") == 100.0
    assert s.top_src == [("192.0.2.1", 1000.0)] and s.top_sport == [("udp/53", 1000.0)]
    # an element that expired and came back counts from zero, never negative
    later = Reading(12.0, cur.counters, {"src4": {"192.0.2.1": (5, 300)}})
    assert rates(cur, later).top_src == [("192.0.2.1", 5.0)]


def test_observer_table_is_refused_for_a_strange_interface() -> None:
    assert 'device "eth0"' in render_observer("eth0")
    try:
        render_observer('eth0" ; drop')
    except Exception as exc:
        assert type(exc).__name__ == "ObserveError"
    else:
        raise AssertionError("accepted a bad interface name")


def test_classification_and_severity() -> None:
    assert classify(sample(0, 1000, tcp=0.99, syn=0.95)) == "syn_flood"
    assert classify(sample(0, 1000, udp=1.0, dns=0.9)) == "dns_flood"
    assert classify(sample(0, 1000, udp=0.95)) == "udp_flood"
    assert classify(sample(0, 1000, icmp=0.9)) == "icmp_flood"
    assert classify(sample(0, 1000, tcp=0.5, udp=0.45)) == "multi_vector"
    assert classify(sample(0, 1000, tcp=0.9, web=0.8, syn=0.1)) == "http_flood"
    assert classify(sample(0, 1000, tcp=0.1)) == "unknown"
    assert [severity(r) for r in (1, 3, 10, 50)] == ["low", "medium", "high", "critical"]


def test_detector_opens_updates_and_resolves_on_sample_time() -> None:
    d = Detector(
        Thresholds(pps=1000, bps=1e12, open_after=2, update_every=5, resolve_after=3), "192.0.2.2"
    )
    assert d.feed(sample(0, 3000, udp=1, dns=1)) is None  # one sample is not an attack yet
    ev = d.feed(sample(1, 3000, udp=1, dns=1))
    assert ev is not None and ev.kind == "open"
    assert ev.body["attack_family"] == "dns_flood" and ev.body["severity"] == "medium"
    assert ev.body["top_source_ports"] == [53] and ev.body["target_ip"] == "192.0.2.2"
    assert [d.feed(sample(t, 30000, udp=1, dns=1)) for t in (2, 3, 4, 5)] == [None] * 4
    upd = d.feed(sample(6, 30000, udp=1, dns=1))
    assert upd is not None and upd.kind == "update" and upd.body["severity"] == "critical"
    assert d.feed(sample(7, 10)) is None and d.feed(sample(8, 10)) is None
    end = d.feed(sample(9, 10))
    assert end is not None and end.kind == "resolve" and not d.active
    assert d.feed(sample(10, 5000, udp=1)) is None  # a new episode needs open_after again


def test_state_survives_reload_and_marks_interrupted_jobs(tmp_path: Path) -> None:
    st = AgentState.load(tmp_path / "s")
    st.node_id, st.node_key = "n1", "k" * 64
    st.start("job-a")
    st.finish("job-a", "succeeded", "applied")
    st.start("job-b")  # crashed while applying
    again = AgentState.load(tmp_path / "s")
    assert again.node_id == "n1" and again.jobs["job-a"]["status"] == "succeeded"
    assert again.jobs["job-b"]["phase"] == "started" and again.unreported() == ["job-a"]
    again.reported("job-a")
    assert AgentState.load(tmp_path / "s").unreported() == []
    assert (tmp_path / "s" / "agent.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "s" / "agent.json").read_text())["node_key"] == "k" * 64
