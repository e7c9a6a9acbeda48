"""One harness per registered adapter type: make the adapter, observe its backend, break it.

A harness knows how to build the adapter against a real backend (a BGP speaker in a lab
topology with a BIRD receiver, a fake vendor server on loopback, the fake's state file,
the log file), which rules to send it, how to see those rules in the backend itself (the
receiver's RIB, the fake vendor's state, the fake's memory rebuilt from its file, the log
lines), and how to take the backend down and bring it back. ``HARNESSES`` maps adapter
type -> builder; an adapter type registered in pyproject without an entry here fails the
contract suite.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base import Adapter, AdapterConfig, Registry, RuleRef
from adapters.f5.render import route_name
from adapters.fake import FakeAdapter
from labs.exabgp import ExaBgpSpeaker
from labs.gobgp import GoBgpSpeaker
from labs.netns import wait_for
from labs.peers import Speaker
from labs.topology import BirdSpeaker, FrrSpeaker, Topology, running
from labs.vendors.cloudflare import CloudflareServer
from labs.vendors.f5 import F5Server
from labs.vendors.ovh import OvhServer
from labs.vendors.radware import RadwareServer
from labs.vendors.server import FakeVendorServer, Fault
from labs.vendors.webhook_receiver import WebhookReceiver
from policies.intents import build_intent
from tests.hostaccess import allow
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_scrubbing_cases import CASES, Case

# The harnesses' daemons, sockets and files live in temporary directories and their vendor
# fakes on loopback: the service's defaults allow neither, so the suite allows them here.
ACCESS = allow(Path(tempfile.gettempdir()), loopback=True)

FAST: dict[str, Any] = {"timeout": 1.0, "retries": 1, "backoff": 0.01}


@dataclass
class Harness:
    """An adapter type wired to a live backend for the contract suite."""

    adapter_type: str
    config: Callable[[], AdapterConfig]  # a good config for the live backend
    rules: list[dict[str, Any]]  # intents the adapter must carry (two or more)
    holds: Callable[[RuleRef], bool]  # whether the backend itself holds the rule now
    down: Callable[[], AbstractContextManager[None]]  # backend unreachable inside
    bad: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # update -> field
    wrong_credentials: AdapterConfig | None = None
    secrets: tuple[str, ...] = ()
    readback: bool = True
    announces: bool = True  # False: the integration refuses announce by design (OVH)
    settle: float = 0.0  # seconds the backend may take to show a change (BGP propagation)
    # what read-back from a fresh instance must show, when it differs from ``rules``
    readback_rules: list[dict[str, Any]] | None = None
    speaker: Topology | None = None
    made: list[Adapter] = field(default_factory=list)

    def make(self, config: AdapterConfig | None = None) -> Adapter:
        adapter = Registry(access=ACCESS).create(config or self.config())
        self.made.append(adapter)
        return adapter

    def refs(self, first_id: int = 1, rules: list[dict[str, Any]] | None = None) -> list[RuleRef]:
        chosen = self.rules if rules is None else rules
        return [RuleRef(first_id + i, build_intent(r)) for i, r in enumerate(chosen)]

    def wait_held(self, ref: RuleRef, held: bool = True) -> None:
        if self.settle <= 0:
            assert self.holds(ref) == held, f"backend {'lacks' if held else 'holds'} {ref.key}"
            return
        wait_for(
            lambda: self.holds(ref) == held,
            timeout=self.settle,
            what=f"{ref.key} {'in' if held else 'gone from'} the {self.adapter_type} backend",
        )


def cfg(adapter_type: str, **kw: Any) -> AdapterConfig:
    return AdapterConfig(name=f"contract-{adapter_type}", adapter_type=adapter_type, **kw)


# ---------------------------------------------------------------- in-process backends


@contextmanager
def fake_harness(tmp: Path) -> Iterator[Harness]:
    state = tmp / "fake.jsonl"
    down = {"on": False}
    h: Harness

    def config() -> AdapterConfig:
        return cfg("fake", config={"state_file": str(state)})

    def holds(ref: RuleRef) -> bool:  # the fake's memory, rebuilt from what it recorded
        observer = Registry(access=ACCESS).create(config())
        assert isinstance(observer, FakeAdapter)
        return ref.key in observer.held

    @contextmanager
    def broken() -> Iterator[None]:
        down["on"] = True
        for a in h.made:
            assert isinstance(a, FakeAdapter)
            a.fail_announce = a.fail_withdraw = "fake backend down"
            a.fail_retryable, a.healthy = True, False
        try:
            yield
        finally:
            down["on"] = False
            for a in h.made:
                assert isinstance(a, FakeAdapter)
                a.fail_announce = a.fail_withdraw = None
                a.healthy = True

    h = Harness(
        "fake",
        config,
        [
            {"kind": "blackhole", "prefix": "192.0.2.1/32"},
            {"kind": "flowspec", "destination": "192.0.2.2/32", "protocol": "udp"},
        ],
        holds,
        broken,
        bad=[({"config": {"latency_ms": "slow"}}, "config.latency_ms")],
    )
    yield h


@contextmanager
def log_harness(tmp: Path) -> Iterator[Harness]:
    where = tmp / "log"
    where.mkdir()
    path = where / "sluice.jsonl"

    def holds(ref: RuleRef) -> bool:  # the last line for the rule's key says announce
        import json

        if not path.exists():
            return False
        last = None
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["key"] == ref.key:
                last = rec["op"]
        return last == "announce"

    @contextmanager
    def broken() -> Iterator[None]:  # the log's directory is gone (disk unmounted)
        shutil.rmtree(where)
        try:
            yield
        finally:
            where.mkdir()

    yield Harness(
        "log",
        lambda: cfg("log", config={"path": str(path)}),
        [
            {"kind": "blackhole", "prefix": "192.0.2.1/32"},
            {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
        ],
        holds,
        broken,
        bad=[({"config": {"path": str(tmp / "missing" / "x.log")}}, "config.path")],
        readback=False,
    )


# ---------------------------------------------------------------- BGP speakers


SPEAKERS: dict[str, tuple[Callable[[], Speaker], tuple[str, ...]]] = {
    "gobgp": (GoBgpSpeaker, ("gobgpd", "gobgp")),
    "exabgp": (ExaBgpSpeaker, ("exabgp",)),
    "bird2": (BirdSpeaker, ()),
    "frr": (FrrSpeaker, ()),
}

BGP_RULES = [
    {"kind": "blackhole", "prefix": "203.0.113.1/32", "communities": ["blackhole"]},
    {"kind": "blackhole", "prefix": "203.0.113.2/32", "communities": ["blackhole"]},
]


@contextmanager
def speaker_harness(adapter_type: str) -> Iterator[Harness]:
    make_speaker, binaries = SPEAKERS[adapter_type]
    require_lab(*binaries, *RECEIVER_BINARIES)
    with running(make_speaker(), receivers=("bird",)) as topo:
        topo.wait_established(60)
        receiver = topo.receivers["bird"]
        node: Any = topo.speaker

        def holds(ref: RuleRef) -> bool:  # in the receiver's RIB, learned over BGP
            return str(ref.intent.target) in receiver.prefixes(ref.intent.target.version)

        @contextmanager
        def broken() -> Iterator[None]:  # the speaker daemon is stopped
            node.stop()
            try:
                yield
            finally:
                node.start()
                topo.wait_established(60)

        kwargs = node.adapter_config(f"contract-{adapter_type}")
        bad_field = "endpoint" if adapter_type in ("gobgp", "exabgp") else "config.asn"
        bad_value: dict[str, Any] = (
            {"endpoint": "ftp://[nope"}
            if bad_field == "endpoint"
            else {"config": {**kwargs["config"], "asn": -1}}
        )
        if adapter_type == "bird2":
            bad_value, bad_field = {"config": {**kwargs["config"], "socket": 7}}, "config.socket"
        yield Harness(
            adapter_type,
            lambda: AdapterConfig(**kwargs),
            BGP_RULES,
            holds,
            broken,
            bad=[(bad_value, bad_field)],
            settle=30.0,
            speaker=topo,
        )


# ---------------------------------------------------------------- HTTP vendors


@contextmanager
def vendor_down(srv: FakeVendorServer) -> Iterator[None]:
    """Every request is dropped without an answer (the vendor is unreachable)."""
    srv.faults.add(Fault.drop(), times=1_000_000)
    try:
        yield
    finally:
        srv.faults.clear()


def scrubbing_harness(case: Case) -> Callable[[Path], AbstractContextManager[Harness]]:
    @contextmanager
    def build(_tmp: Path) -> Iterator[Harness]:
        with case.server() as srv:
            good = case.config(srv, True)
            # A provider holds units (target prefixes), not Sluice's intents: a fresh
            # instance reads back the target's own prefix, and an intent narrower than
            # its target is seen again only once reconciliation re-announces it (see
            # adapters/scrubbing/common.py). The fresh-instance read-back is therefore
            # checked with the target prefix itself.
            targets = good.config.get("targets") or good.config.get("prefixes") or []
            covering = [str(t["prefix"]) for t in targets if _inside(case.prefix, t["prefix"])]
            yield Harness(
                case.adapter_type,
                lambda: good,
                [{"kind": "scrubbing", "prefix": case.prefix}],
                lambda _ref: bool(case.diverting(srv)),
                lambda: vendor_down(srv),
                bad=[
                    ({"endpoint": "ftp://example.net"}, "endpoint"),
                    ({"auth_token": None}, "auth_token"),
                ],
                wrong_credentials=case.config(srv, False),
                secrets=case.secrets,
                readback_rules=[{"kind": "scrubbing", "prefix": p} for p in covering[:1]],
            )

    return build


def _inside(prefix: str, target: str) -> bool:
    import ipaddress

    net, outer = ipaddress.ip_network(prefix), ipaddress.ip_network(target)
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


RADWARE_PW = "radware-pw"  # the fake device's user


@contextmanager
def radware_harness(_tmp: Path) -> Iterator[Harness]:
    with RadwareServer() as srv:

        def config(password: str = RADWARE_PW) -> AdapterConfig:
            return cfg(
                "radware",
                endpoint=srv.url,
                auth_token=password,
                config={"username": "radware", **FAST},
            )

        yield Harness(
            "radware",
            config,
            [
                {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
                {"kind": "scrubbing", "prefix": "2001:db8::/64"},
            ],
            lambda ref: f"sluice-{ref.key}" in srv.attacks,
            lambda: vendor_down(srv),
            bad=[({"endpoint": "ftp://example.net"}, "endpoint")],
            wrong_credentials=config("wrong-radware-pw"),
            secrets=(RADWARE_PW, "wrong-radware-pw"),
            readback=False,  # DefensePro's public API lists no attacks to read back
        )


F5_PW = "admin-pw"  # the fake device's user
F5_LIST = "sluice_blocked_sources"


@contextmanager
def f5_harness(_tmp: Path) -> Iterator[Harness]:
    with F5Server() as srv:

        def config(password: str = F5_PW) -> AdapterConfig:
            return cfg(
                "f5",
                endpoint=srv.url,
                auth_token=password,
                config={"username": "admin", "afm_address_list": F5_LIST, **FAST},
            )

        def holds(ref: RuleRef) -> bool:
            if ref.intent.kind == "blackhole":
                return f"/Common/{route_name(ref.key)}" in srv.routes
            names = [a["name"] for a in srv.address_lists[f"/Common/{F5_LIST}"]["addresses"]]
            return str(ref.intent.source) in names  # type: ignore[union-attr]

        yield Harness(
            "f5",
            config,
            [
                {"kind": "blackhole", "prefix": "192.0.2.7/32"},
                {"kind": "flowspec", "destination": "192.0.2.1/32", "source": "198.51.100.0/24"},
            ],
            holds,
            lambda: vendor_down(srv),
            bad=[({"endpoint": "ftp://example.net"}, "endpoint")],
            wrong_credentials=config("wrong-f5-pw"),
            secrets=(F5_PW, "wrong-f5-pw"),
        )


CF_TOKEN = "cf-test-token"


@contextmanager
def cloudflare_harness(_tmp: Path) -> Iterator[Harness]:
    with CloudflareServer() as srv:

        def config(token: str = CF_TOKEN) -> AdapterConfig:
            return cfg(
                "cloudflare",
                endpoint=srv.url,
                auth_token=token,
                config={
                    "account_id": "acc1",
                    "prefixes": [{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
                    "block_list_id": "list1",
                    "zones": [{"zone_id": "zone1"}],
                    "list_poll_interval": 0.01,
                    **FAST,
                },
            )

        def holds(ref: RuleRef) -> bool:
            if ref.intent.kind == "scrubbing":
                return bool(srv.prefixes["pfx1"]["advertised"])
            source = str(ref.intent.source).removesuffix("/32")  # type: ignore[union-attr]
            return any(source in str(item.get("ip", "")) for item in srv.lists["list1"])

        yield Harness(
            "cloudflare",
            config,
            [
                {"kind": "scrubbing", "prefix": "203.0.113.0/24"},
                {"kind": "flowspec", "destination": "203.0.113.10/32", "source": "198.51.100.7/32"},
            ],
            holds,
            lambda: vendor_down(srv),
            bad=[({"endpoint": "ftp://example.net"}, "endpoint")],
            wrong_credentials=config("bad-cf-token"),
            secrets=(CF_TOKEN, "bad-cf-token"),
        )


WEBHOOK_SECRET = "whsec_Y29udHJhY3QtdGVzdC1zZWNyZXQtMTIzNDU2Nzg5MA=="
WRONG_WEBHOOK_SECRET = "whsec_d3Jvbmctc2VjcmV0LWZvci10aGUtY29udHJhY3Qtc3VpdGU="


@contextmanager
def webhook_harness(_tmp: Path) -> Iterator[Harness]:
    with WebhookReceiver(secret=WEBHOOK_SECRET) as rx:

        def config(secret: str = WEBHOOK_SECRET) -> AdapterConfig:
            return cfg(
                "webhook",
                endpoint=rx.hook_url,
                auth_token=secret,
                config={"allowed_targets": ["127.0.0.1"], **FAST},
            )

        def holds(ref: RuleRef) -> bool:  # the receiver's last event for the rule
            last = [t for t, rid in rx.events() if rid == ref.rule_id]
            return bool(last) and last[-1].startswith("rule.announce")

        yield Harness(
            "webhook",
            config,
            [
                {"kind": "blackhole", "prefix": "192.0.2.1/32"},
                {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
            ],
            holds,
            lambda: vendor_down(rx),
            bad=[({"endpoint": "ftp://example.net"}, "endpoint")],
            wrong_credentials=config(WRONG_WEBHOOK_SECRET),
            secrets=(WEBHOOK_SECRET, WRONG_WEBHOOK_SECRET),
            readback=False,
        )


@contextmanager
def ovh_harness(_tmp: Path) -> Iterator[Harness]:
    with OvhServer(clock_offset=3600) as srv:

        def config(consumer_key: str = "ck-test-consumer") -> AdapterConfig:
            return cfg(
                "ovh_mitigation",
                endpoint=srv.url + "/1.0",
                auth_token="as-test-secret",
                config={
                    "application_key": "ak-test",
                    "consumer_key": consumer_key,
                    "targets": [{"prefix": "203.0.113.0/28"}],
                    "timeout": 0.5,
                    "retries": 0,
                },
            )

        yield Harness(
            "ovh_mitigation",
            config,
            [{"kind": "scrubbing", "prefix": "203.0.113.0/28"}],
            lambda _ref: any(srv.blocks["203.0.113.0/28"].values()),
            lambda: vendor_down(srv),
            bad=[({"endpoint": "ftp://example.net"}, "endpoint")],
            wrong_credentials=config("ck-wrong-consumer"),
            secrets=("as-test-secret", "ck-test-consumer", "ck-wrong-consumer"),
            announces=False,
        )


def _speaker(adapter_type: str) -> Callable[[Path], AbstractContextManager[Harness]]:
    return lambda _tmp: speaker_harness(adapter_type)


HARNESSES: dict[str, Callable[[Path], AbstractContextManager[Harness]]] = {
    "fake": fake_harness,
    "log": log_harness,
    **{t: _speaker(t) for t in SPEAKERS},
    "radware": radware_harness,
    "f5": f5_harness,
    "cloudflare": cloudflare_harness,
    "webhook": webhook_harness,
    "ovh_mitigation": ovh_harness,
    **{c.adapter_type: scrubbing_harness(c) for c in CASES},
}


@contextmanager
def open_harness(adapter_type: str, tmp: Path) -> Iterator[Harness]:
    builder = HARNESSES.get(adapter_type)
    if builder is None:
        raise AssertionError(
            f"adapter type {adapter_type!r} is registered but has no contract harness "
            "(add one to tests/contract/harnesses.py)"
        )
    with ExitStack() as stack:
        yield stack.enter_context(builder(tmp))
