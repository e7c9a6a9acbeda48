"""The GoBGP adapter: announce intents to a running ``gobgpd`` over its gRPC API.

I/O only; rendering lives in :mod:`adapters.gobgp.render`.

* ``announce``: one ``AddPath`` per rule (concurrently, bounded; the uuid is returned in
  the outcome's detail), or one ``AddPathStream`` for batches of ``stream_threshold``
  rules and more.
* ``withdraw``: ``DeletePath`` by the exact rendered path (with ``is_withdraw``), or the
  same paths over ``AddPathStream`` for large batches. A ``DeletePath`` naming nothing
  would delete every local path in gobgpd, so :func:`_delete_request` refuses to build one.
* ``active``: ``ListPath`` over the four families, locally originated paths only, each
  parsed back into an intent and keyed, so read-back works after an orchestrator restart.
* ``check``: ``ListPeer`` session states and the round-trip time.

Per-peer selection (``peers`` on a blackhole) is refused: gobgpd's global RIB goes to every
neighbour, and doing it with per-neighbour export policies would mean rewriting the
operator's policy configuration at run time. Run one adapter per gobgpd (or per peer group).

gRPC errors: ``UNAVAILABLE``/``DEADLINE_EXCEEDED`` (and the like) are retryable; any
other error is gobgpd refusing the request, reported with its message, not retryable.

Where the channel goes is the service's decision (:mod:`adapters.access`): a unix socket
must lie in ``SLUICE_ADAPTER_DIRS``, a ``host:port`` must be a speaker endpoint the
service allows (:mod:`adapters.speakers`, ``SLUICE_SPEAKER_ENDPOINTS``, default loopback
port 50051). Both are checked when the settings are validated and again when a channel
is made: the socket path resolved, the host name resolved and every address checked, the
channel opened to the checked addresses (no second resolution by gRPC) with gRPC's proxy
support off (``grpc_proxy``/``http_proxy`` from the environment would otherwise make the
connection). A refused endpoint fails every rule, not retryable, with code
``endpoint_not_allowed`` (``path_not_allowed`` for a socket); a name that does not resolve
is retryable. After an ``UNAVAILABLE`` answer on a named ``host:port`` the channel is
replaced, so the name is resolved, and checked, again.

gobgpd holds one local path per NLRI: two intents for the same prefix (or the same flow
match) with different attributes replace each other, and read-back shows the later one.
Withdrawing either removes the NLRI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc
import grpc.aio
from pydantic import ValidationInfo, field_validator

from adapters.access import access_of
from adapters.base import (
    AdapterConfig,
    AdapterSettings,
    Capability,
    Health,
    Outcome,
    RuleRef,
    SessionChange,
    SessionState,
    monotonic_ms,
    poll_sessions,
    resolve_capabilities,
    validate_settings,
)
from adapters.egress import literal_address
from adapters.gobgp.proto import api, grpc_api
from adapters.gobgp.render import (
    UNSPECIFIED,
    RenderOptions,
    family,
    nlri_fingerprint,
    parse_path,
    render_path,
    withdraw_path,
)
from adapters.speakers import EndpointRefused, Unresolved, grpc_target
from policies.errors import AdapterRefused, AdapterUnavailable, CapabilityMissing
from policies.intents import AnyIntent, Community, LargeCommunity, intent_key

T = TypeVar("T")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
FAMILIES = ((4, False), (6, False), (4, True), (6, True))


def parse_endpoint(value: object) -> str:
    """``unix:///abs/path`` or ``host:port`` (``[v6]:port``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("endpoint is required: unix:///path/to/gobgp.sock or host:port")
    text = value.strip()
    if text.startswith("unix:"):
        path = text.removeprefix("unix://") if text.startswith("unix://") else text[5:]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a unix endpoint needs an absolute path (unix:///...)")
        return f"unix://{path}"
    m = _HOST_PORT.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{text!r} is neither unix:///path nor host:port")
    return text


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of a ``host:port`` endpoint (an IPv6 host without its brackets)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class GoBgpSettings(AdapterSettings):
    """``endpoint``: gobgpd's API (``--api-hosts``). Next hops default to the session's
    local address (GoBGP replaces ``0.0.0.0``/``::``); the communities are added to every
    blackhole route."""

    endpoint: str
    next_hop_v4: ipaddress.IPv4Address | None = None
    next_hop_v6: ipaddress.IPv6Address | None = None
    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    timeout: float = 5.0
    concurrency: int = 128
    stream_threshold: int = 32
    stream_chunk: int = 1000

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint(cls, v: object) -> str:
        return parse_endpoint(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_allowed(cls, v: str, info: ValidationInfo) -> str:
        """A unix socket inside the directories the service allows; a ``host:port`` the
        service allows as a speaker endpoint (a name: checked when it is resolved)."""
        access = access_of(info)
        if v.startswith("unix://"):
            return f"unix://{access.check_path(v.removeprefix('unix://'), 'socket')}"
        why = access.speakers.check_host(*split_endpoint(v))
        if why is not None:
            raise EndpointRefused(why)
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 300:
            raise ValueError("timeout must be between 0 and 300 seconds")
        return v

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: int) -> int:
        if not 1 <= v <= 4096:
            raise ValueError("concurrency must be between 1 and 4096")
        return v

    def render_options(self) -> RenderOptions:
        return RenderOptions(
            next_hop_v4=str(self.next_hop_v4 or UNSPECIFIED[4]),
            next_hop_v6=str(self.next_hop_v6 or UNSPECIFIED[6]),
            communities=self.communities,
            large_communities=self.large_communities,
        )


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"gobgpd: {exc.details() or exc.code().name} ({exc.code().name})"


def _delete_request(path: Any | None) -> Any:
    """A ``DeletePathRequest`` naming exactly one path; never the empty, delete-all one.

    Deleting by uuid is not used: gobgpd looks a uuid up by scanning its whole RIB per
    request (10,000 withdrawals took about a minute here), while a path names the NLRI.
    """
    if path is None or not path.HasField("nlri"):
        raise ValueError("refusing an empty DeletePath: it would delete every local path")
    return api.DeletePathRequest(
        table_type=api.TableType.GLOBAL, family=path.family, path=withdraw_path(path)
    )


WATCH_RETRY_S = 1.0
_PEER_STATE_EVENT = api.WatchEventResponse.PeerEvent.Type.Value("STATE")


def _peer_state(peer: Any) -> tuple[str, SessionState]:
    """(neighbour address, state) of a gobgp ``Peer`` message."""
    address = peer.conf.neighbor_address or peer.state.neighbor_address
    name = api.PeerState.SessionState.Name(peer.state.session_state)
    return str(address), SessionState.parse(name)


class GoBgpAdapter:
    adapter_type: ClassVar[str] = "gobgp"
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.BLACKHOLE, Capability.FLOWSPEC}
    )
    # adapters.base.LargeBatches: a bulk storm handed over in batches of 1,000 reached
    # BIRD 22 s after the last answer, in batches of 5,000 2.3 s after it
    batch_limit: ClassVar[int] = 5000

    def __init__(
        self,
        name: str,
        settings: GoBgpSettings,
        capabilities: frozenset[Capability] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities if capabilities is not None else self.supported
        self._options = settings.render_options()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._connecting = asyncio.Lock()
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}
        self._by_nlri: dict[bytes, AnyIntent] = {}
        self._parsed: dict[bytes, AnyIntent | None] = {}

    @classmethod
    def from_config(cls, config: AdapterConfig) -> GoBgpAdapter:
        settings = validate_settings(GoBgpSettings, config)
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def __repr__(self) -> str:
        return f"GoBgpAdapter(name={self.name!r}, endpoint={self.settings.endpoint!r})"

    # ------------------------------------------------------------ plumbing

    async def _api(self) -> Any:
        """The stub, on a channel to the endpoint checked when it was made (see the module
        docstring). Taken afresh for each RPC: after :meth:`_renew`, new RPCs go to the
        new channel while the old one finishes what it carries."""
        if self._stub is not None:
            return self._stub
        async with self._connecting:  # one channel, however many RPCs ask at once
            if self._stub is None:
                target, options = await self._target()
                self._channel = grpc.aio.insecure_channel(target, options=options)
                self._stub = grpc_api.GobgpApiStub(self._channel)
            return self._stub

    async def _target(self) -> tuple[str, list[tuple[str, Any]]]:
        endpoint = self.settings.endpoint
        options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
        if endpoint.startswith("unix://"):  # checked again: a symlink may have moved
            return f"unix://{self.settings.local(Path(endpoint[7:]), 'socket')}", options
        host, port = split_endpoint(endpoint)
        try:
            addrs = await self.settings.access.speakers.resolve(
                host, port, limit_s=self.settings.timeout
            )
        except EndpointRefused as exc:
            raise AdapterRefused(f"endpoint {exc}", code=exc.code) from None
        except Unresolved as exc:
            raise AdapterUnavailable(f"gobgpd at {endpoint}: {exc}") from None
        options.append(("grpc.default_authority", endpoint))  # the name, not the address
        return grpc_target(addrs, port), options

    def _renew(self, channel: grpc.aio.Channel | None) -> None:
        """Drop ``channel`` after UNAVAILABLE so the next call resolves and checks the name
        again (a literal address or a socket keeps its channel: nothing to resolve)."""
        if channel is None or channel is not self._channel:
            return
        endpoint = self.settings.endpoint
        if endpoint.startswith("unix://") or literal_address(split_endpoint(endpoint)[0]):
            return
        self._channel = None
        self._stub = None
        # RPCs still on it get the adapter's timeout to finish, then it is closed
        task = asyncio.get_running_loop().create_task(channel.close(self.settings.timeout))
        self._retired[channel] = task
        task.add_done_callback(lambda _: self._retired.pop(channel, None))

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC; gRPC errors become AdapterUnavailable / AdapterRefused."""
        channel = self._channel
        try:
            return await fn()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._renew(channel)
                raise AdapterUnavailable(
                    f"{_describe(exc)} at {self.settings.endpoint}", code="adapter_unavailable"
                ) from None
            raise AdapterRefused(_describe(exc)) from None

    async def _stub_or_failures(self, rules: Sequence[RuleRef]) -> tuple[Any, list[Outcome]]:
        """The stub, or one failure per rule when no channel can be made (a refused or
        unresolvable endpoint)."""
        try:
            return await self._api(), []
        except (AdapterUnavailable, AdapterRefused) as exc:
            return None, [Outcome.failure(r, exc.message, retryable=exc.retryable) for r in rules]

    async def _bounded(
        self, rules: Sequence[RuleRef], one: Callable[[RuleRef], Awaitable[Outcome]]
    ) -> list[Outcome]:
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def run(ref: RuleRef) -> Outcome:
            async with gate:
                try:
                    return await one(ref)
                except (AdapterUnavailable, AdapterRefused, CapabilityMissing) as exc:
                    return Outcome.failure(ref, exc.message, retryable=exc.retryable)

        return list(await asyncio.gather(*(run(r) for r in rules)))

    def _render(self, ref: RuleRef) -> Any:
        if Capability(ref.intent.kind) not in self.capabilities:
            raise CapabilityMissing(
                f"adapter {self.name!r} (gobgp) cannot carry {ref.intent.kind} intents"
            )
        return render_path(ref.intent, self._options)

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        stub, failed = await self._stub_or_failures(rules)
        if failed:
            return failed
        timeout = self.settings.timeout

        async def one(ref: RuleRef) -> Outcome:
            path = self._render(ref)
            req = api.AddPathRequest(table_type=api.TableType.GLOBAL, path=path)
            rpc = await self._api()
            reply = await self._call(lambda: rpc.AddPath(req, timeout=timeout))
            self._remember(ref, path)
            return Outcome.success(ref, uuid=bytes(reply.uuid).hex())

        if len(rules) >= self.settings.stream_threshold:
            streamed = await self._stream(stub, rules, withdraw=False)
            if streamed is not None:
                return streamed
        return await self._bounded(rules, one)

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        stub, failed = await self._stub_or_failures(rules)
        if failed:
            return failed
        timeout = self.settings.timeout

        async def one(ref: RuleRef) -> Outcome:
            path = self._render(ref)
            req = _delete_request(path)
            rpc = await self._api()
            await self._call(lambda: rpc.DeletePath(req, timeout=timeout))
            self._forget(ref, path)
            return Outcome.success(ref)

        if len(rules) >= self.settings.stream_threshold:
            streamed = await self._stream(stub, rules, withdraw=True)
            if streamed is not None:
                return streamed
        return await self._bounded(rules, one)

    def _remember(self, ref: RuleRef, path: Any) -> None:
        self._by_nlri[nlri_fingerprint(path)] = ref.intent

    def _forget(self, ref: RuleRef, path: Any) -> None:
        fp = nlri_fingerprint(path)
        if self._by_nlri.get(fp) == ref.intent:
            del self._by_nlri[fp]

    async def _stream(
        self, stub: Any, rules: Sequence[RuleRef], *, withdraw: bool
    ) -> list[Outcome] | None:
        """Send a large batch over one ``AddPathStream`` (withdrawals as ``is_withdraw``).

        gobgpd applies each message whole or stops the stream at the first bad path, so
        on a refusal this returns ``None`` and the caller redoes the batch one rule at a
        time (both operations are idempotent) to tell which rule was refused.
        """
        outcomes: dict[int, Outcome] = {}
        paths: list[tuple[RuleRef, Any]] = []
        chunk = self.settings.stream_chunk

        def requests() -> Iterator[Any]:
            # rendered while gRPC sends: gobgpd digests one message while we build the next
            batch: list[Any] = []
            for i, ref in enumerate(rules):
                try:
                    path = self._render(ref)
                except CapabilityMissing as exc:
                    outcomes[i] = Outcome.failure(ref, exc.message, retryable=False)
                    continue
                path.is_withdraw = withdraw  # a fresh message: marking it is safe
                paths.append((ref, path))
                batch.append(path)
                if len(batch) >= chunk:
                    yield api.AddPathStreamRequest(table_type=api.TableType.GLOBAL, paths=batch)
                    batch = []
            if batch:
                yield api.AddPathStreamRequest(table_type=api.TableType.GLOBAL, paths=batch)

        timeout = self.settings.timeout + len(rules) / 1000

        async def send() -> Any:
            return await stub.AddPathStream(requests(), timeout=timeout)

        try:
            await self._call(send)
        except AdapterUnavailable as exc:
            return [
                outcomes.get(i) or Outcome.failure(ref, exc.message, retryable=True)
                for i, ref in enumerate(rules)
            ]
        except AdapterRefused:
            return None
        for ref, path in paths:
            if withdraw:
                self._forget(ref, path)
            else:
                self._remember(ref, path)
        return [outcomes.get(i) or Outcome.success(ref) for i, ref in enumerate(rules)]

    async def list_local_paths(self) -> list[Any]:
        """Every locally originated path in gobgpd's global RIB, in the four families."""
        stub = await self._api()
        out: list[Any] = []
        for version, flowspec in FAMILIES:
            req = api.ListPathRequest(
                table_type=api.TableType.GLOBAL, family=family(version, flowspec)
            )

            async def collect(req: Any = req) -> list[Any]:
                return [d async for d in stub.ListPath(req, timeout=self.settings.timeout)]

            for reply in await self._call(collect):
                for path in reply.destination.paths:
                    if path.neighbor_ip in ("", "<nil>") and not path.is_from_external:
                        out.append(path)
        return out

    async def active(self) -> frozenset[str] | None:
        keys: set[str] = set()
        for path in await self.list_local_paths():
            raw = path.nlri.value + b"".join(a.value for a in path.pattrs)
            if raw in self._parsed:
                parsed = self._parsed[raw]
            else:
                parsed = parse_path(path, self._options)
                if len(self._parsed) > 500_000:
                    self._parsed.clear()
                self._parsed[raw] = parsed
            if parsed is None:
                continue
            known = self._by_nlri.get(nlri_fingerprint(path))
            if known is not None and (
                known == parsed or parse_path(render_path(known, self._options)) == parsed
            ):
                keys.add(intent_key(known))
            else:
                keys.add(intent_key(parsed))
        return frozenset(keys)

    async def check(self) -> Health:
        start = monotonic_ms()
        try:
            stub = await self._api()
        except (AdapterUnavailable, AdapterRefused) as exc:
            return Health(False, None, exc.message)

        async def peers() -> list[Any]:
            req = api.ListPeerRequest()
            return [r async for r in stub.ListPeer(req, timeout=self.settings.timeout)]

        try:
            replies = await self._call(peers)
        except (AdapterUnavailable, AdapterRefused) as exc:
            return Health(False, None, exc.message)
        latency = monotonic_ms() - start
        sessions = dict(_peer_state(r.peer) for r in replies)
        up = sum(1 for s in sessions.values() if s == SessionState.ESTABLISHED)
        if not sessions:
            return Health(False, latency, "gobgpd answers but has no neighbours configured")
        detail = f"gobgpd answers; {up} of {len(sessions)} sessions established"
        return Health(up > 0, latency, detail, sessions)

    async def session_states(self) -> dict[str, SessionState]:
        stub = await self._api()

        async def peers() -> list[Any]:
            req = api.ListPeerRequest()
            return [r async for r in stub.ListPeer(req, timeout=self.settings.timeout)]

        return dict(_peer_state(r.peer) for r in await self._call(peers))

    async def watch_sessions(self) -> AsyncGenerator[SessionChange, None]:
        """Peer state changes from gobgpd's ``WatchEvent`` stream, pushed as they happen.

        The stream is opened first and the peers listed after, so no change falls
        between the baseline and the stream. When gobgpd goes away every known peer is
        reported unknown, and the watch reconnects every :data:`WATCH_RETRY_S` seconds.
        """
        known: dict[str, SessionState] = {}

        def change(peer: str, state: SessionState) -> SessionChange | None:
            before = known.get(peer)
            if before == state:
                return None
            known[peer] = state
            return SessionChange(peer, state, before)

        while True:
            call = None
            try:
                call = (await self._api()).WatchEvent(
                    api.WatchEventRequest(peer=api.WatchEventRequest.Peer())
                )
                for peer, state in (await self.session_states()).items():
                    if (c := change(peer, state)) is not None:
                        yield c
                async for event in call:
                    if not event.HasField("peer") or event.peer.type != _PEER_STATE_EVENT:
                        continue
                    peer, state = _peer_state(event.peer.peer)
                    if peer and (c := change(peer, state)) is not None:
                        yield c
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a gobgpd without the stream
                    async for polled in poll_sessions(self.session_states, WATCH_RETRY_S):
                        if (c := change(polled.peer, polled.state)) is not None:
                            yield c
            except (AdapterUnavailable, AdapterRefused):
                pass
            finally:
                if call is not None:
                    call.cancel()
            for peer in list(known):
                if (c := change(peer, SessionState.UNKNOWN)) is not None:
                    yield c
            await asyncio.sleep(WATCH_RETRY_S)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
        self._channel = None
        self._stub = None
        for channel, task in list(self._retired.items()):
            task.cancel()
            await channel.close(None)  # the grace cut short: closed now
        self._retired.clear()
