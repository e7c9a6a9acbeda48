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
from typing import Any, Generic, TypeVar

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


@dataclass(frozen=True)
class SpeakerKind:
    """A BGP speaker adapter type: its lab daemon, binaries, and one config it must refuse."""

    adapter_type: str
    make: Callable[[], Speaker]
    binaries: tuple[str, ...]
    # the adapter's good config -> (an update it must refuse, the field the error names)
    bad: Callable[[dict[str, Any]], tuple[dict[str, Any], str]]

    @contextmanager
    def __call__(self, _tmp: Path) -> Iterator[Harness]:
        require_lab(*self.binaries, *RECEIVER_BINARIES)
        with running(self.make(), receivers=("bird",)) as topo:
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

            kwargs = node.adapter_config(f"contract-{self.adapter_type}")
            yield Harness(
                self.adapter_type,
                lambda: AdapterConfig(**kwargs),
                BGP_RULES,
                holds,
                broken,
                bad=[self.bad(kwargs.get("config", {}))],
                settle=30.0,
                speaker=topo,
            )


def _bad_endpoint(_config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return {"endpoint": "ftp://[nope"}, "endpoint"


SPEAKERS = (
    SpeakerKind("gobgp", GoBgpSpeaker, ("gobgpd", "gobgp"), _bad_endpoint),
    SpeakerKind("exabgp", ExaBgpSpeaker, ("exabgp",), _bad_endpoint),
    SpeakerKind(
        "bird2", BirdSpeaker, (), lambda c: ({"config": {**c, "socket": 7}}, "config.socket")
    ),
    SpeakerKind("frr", FrrSpeaker, (), lambda c: ({"config": {**c, "asn": -1}}, "config.asn")),
)

BGP_RULES = [
    {"kind": "blackhole", "prefix": "203.0.113.1/32", "communities": ["blackhole"]},
    {"kind": "blackhole", "prefix": "203.0.113.2/32", "communities": ["blackhole"]},
]


# ---------------------------------------------------------------- HTTP vendors


@contextmanager
def vendor_down(srv: FakeVendorServer) -> Iterator[None]:
    """Every request is dropped without an answer (the vendor is unreachable)."""
    srv.faults.add(Fault.drop(), times=1_000_000)
    try:
        yield
    finally:
        srv.faults.clear()


S = TypeVar("S", bound=FakeVendorServer)
BAD_ENDPOINT: tuple[dict[str, Any], str] = ({"endpoint": "ftp://example.net"}, "endpoint")


@dataclass(frozen=True)
class Vendor(Generic[S]):
    """An HTTP integration against its fake vendor server on loopback."""

    adapter_type: str
    server: Callable[[], AbstractContextManager[S]]
    config: Callable[[S, bool], AdapterConfig]  # (server, good credentials?) -> config
    rules: list[dict[str, Any]]
    holds: Callable[[S, RuleRef], bool]  # whether the fake vendor holds the rule now
    secrets: tuple[str, ...]
    bad: tuple[tuple[dict[str, Any], str], ...] = (BAD_ENDPOINT,)
    readback: bool = True
    announces: bool = True
    # (the good config) -> what read-back from a fresh instance must show, if not ``rules``
    readback_rules: Callable[[AdapterConfig], list[dict[str, Any]]] | None = None

    @contextmanager
    def __call__(self, _tmp: Path) -> Iterator[Harness]:
        with self.server() as srv:
            good = self.config(srv, True)
            yield Harness(
                self.adapter_type,
                lambda: self.config(srv, True),
                self.rules,
                lambda ref: self.holds(srv, ref),
                lambda: vendor_down(srv),
                bad=list(self.bad),
                wrong_credentials=self.config(srv, False),
                secrets=self.secrets,
                readback=self.readback,
                announces=self.announces,
                readback_rules=self.readback_rules(good) if self.readback_rules else None,
            )


def bearer(
    adapter_type: str,
    secrets: tuple[str, str],
    config: dict[str, Any],
    endpoint: Callable[[S], str] = lambda srv: srv.url,
) -> Callable[[S, bool], AdapterConfig]:
    """A config with the good or the wrong one of ``secrets`` as the adapter's token."""

    def make(srv: S, good: bool) -> AdapterConfig:
        return cfg(
            adapter_type,
            endpoint=endpoint(srv),
            auth_token=secrets[0] if good else secrets[1],
            config={**config, **FAST},
        )

    return make


def scrubbing_vendor(case: Case) -> Vendor[FakeVendorServer]:
    # A provider holds units (target prefixes), not Sluice's intents: a fresh instance
    # reads back the target's own prefix, and an intent narrower than its target is seen
    # again only once reconciliation re-announces it (see adapters/scrubbing/common.py).
    # The fresh-instance read-back is therefore checked with the target prefix itself.
    def covering(good: AdapterConfig) -> list[dict[str, Any]]:
        targets = good.config.get("targets") or good.config.get("prefixes") or []
        inside = [str(t["prefix"]) for t in targets if _inside(case.prefix, t["prefix"])]
        return [{"kind": "scrubbing", "prefix": p} for p in inside[:1]]

    return Vendor(
        case.adapter_type,
        case.server,
        case.config,
        [{"kind": "scrubbing", "prefix": case.prefix}],
        lambda srv, _ref: bool(case.diverting(srv)),
        case.secrets,
        bad=(BAD_ENDPOINT, ({"auth_token": None}, "auth_token")),
        readback_rules=covering,
    )


def _inside(prefix: str, target: str) -> bool:
    import ipaddress

    net, outer = ipaddress.ip_network(prefix), ipaddress.ip_network(target)
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


RADWARE = Vendor(
    "radware",
    RadwareServer,
    bearer("radware", ("radware-pw", "wrong-radware-pw"), {"username": "radware"}),
    [
        {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
        {"kind": "scrubbing", "prefix": "2001:db8::/64"},
    ],
    lambda srv, ref: f"sluice-{ref.key}" in srv.attacks,
    ("radware-pw", "wrong-radware-pw"),
    readback=False,  # DefensePro's public API lists no attacks to read back
)

F5_LIST = "sluice_blocked_sources"


def _f5_holds(srv: F5Server, ref: RuleRef) -> bool:
    if ref.intent.kind == "blackhole":
        return f"/Common/{route_name(ref.key)}" in srv.routes
    names = [a["name"] for a in srv.address_lists[f"/Common/{F5_LIST}"]["addresses"]]
    return str(ref.intent.source) in names  # type: ignore[union-attr]


F5 = Vendor(
    "f5",
    F5Server,
    bearer("f5", ("admin-pw", "wrong-f5-pw"), {"username": "admin", "afm_address_list": F5_LIST}),
    [
        {"kind": "blackhole", "prefix": "192.0.2.7/32"},
        {"kind": "flowspec", "destination": "192.0.2.1/32", "source": "198.51.100.0/24"},
    ],
    _f5_holds,
    ("admin-pw", "wrong-f5-pw"),
)


def _cloudflare_holds(srv: CloudflareServer, ref: RuleRef) -> bool:
    if ref.intent.kind == "scrubbing":
        return bool(srv.prefixes["pfx1"]["advertised"])
    source = str(ref.intent.source).removesuffix("/32")  # type: ignore[union-attr]
    return any(source in str(item.get("ip", "")) for item in srv.lists["list1"])


CLOUDFLARE = Vendor(
    "cloudflare",
    CloudflareServer,
    bearer(
        "cloudflare",
        ("cf-test-token", "bad-cf-token"),
        {
            "account_id": "acc1",
            "prefixes": [{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
            "block_list_id": "list1",
            "zones": [{"zone_id": "zone1"}],
            "list_poll_interval": 0.01,
        },
    ),
    [
        {"kind": "scrubbing", "prefix": "203.0.113.0/24"},
        {"kind": "flowspec", "destination": "203.0.113.10/32", "source": "198.51.100.7/32"},
    ],
    _cloudflare_holds,
    ("cf-test-token", "bad-cf-token"),
)

WEBHOOK_SECRETS = (
    "whsec_Y29udHJhY3QtdGVzdC1zZWNyZXQtMTIzNDU2Nzg5MA==",
    "whsec_d3Jvbmctc2VjcmV0LWZvci10aGUtY29udHJhY3Qtc3VpdGU=",  # the wrong one
)


def _webhook_holds(rx: WebhookReceiver, ref: RuleRef) -> bool:  # the rule's last event
    last = [t for t, rid in rx.events() if rid == ref.rule_id]
    return bool(last) and last[-1].startswith("rule.announce")


WEBHOOK = Vendor(
    "webhook",
    lambda: WebhookReceiver(secret=WEBHOOK_SECRETS[0]),
    bearer(
        "webhook",
        WEBHOOK_SECRETS,
        {"allowed_targets": ["127.0.0.1"]},
        endpoint=lambda rx: rx.hook_url,
    ),
    [
        {"kind": "blackhole", "prefix": "192.0.2.1/32"},
        {"kind": "scrubbing", "prefix": "192.0.2.0/24"},
    ],
    _webhook_holds,
    WEBHOOK_SECRETS,
    readback=False,
)


def _ovh_config(srv: OvhServer, good: bool) -> AdapterConfig:
    return cfg(
        "ovh_mitigation",
        endpoint=srv.url + "/1.0",
        auth_token="as-test-secret",
        config={
            "application_key": "ak-test",
            "consumer_key": "ck-test-consumer" if good else "ck-wrong-consumer",
            "targets": [{"prefix": "203.0.113.0/28"}],
            "timeout": 0.5,
            "retries": 0,
        },
    )


OVH = Vendor(
    "ovh_mitigation",
    lambda: OvhServer(clock_offset=3600),
    _ovh_config,
    [{"kind": "scrubbing", "prefix": "203.0.113.0/28"}],
    lambda srv, _ref: any(srv.blocks["203.0.113.0/28"].values()),
    ("as-test-secret", "ck-test-consumer", "ck-wrong-consumer"),
    announces=False,  # the integration refuses announce by design
)


HARNESSES: dict[str, Callable[[Path], AbstractContextManager[Harness]]] = {
    "fake": fake_harness,
    "log": log_harness,
    **{k.adapter_type: k for k in SPEAKERS},
    **{v.adapter_type: v for v in (RADWARE, F5, CLOUDFLARE, WEBHOOK, OVH)},
    **{c.adapter_type: scrubbing_vendor(c) for c in CASES},
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
