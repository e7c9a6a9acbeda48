"""The ExaBGP adapter: send rendered API commands to our bridge and map ExaBGP's acks.

ExaBGP runs :mod:`adapters.exabgp.bridge` as its ``process``; this adapter reaches the
bridge over its unix socket (``unix:///path``) or HTTP (``http://host:5000``; ``IP:port``
and a bare IP, meaning port 5000, are accepted too; optional bearer token). Each FlowSpec
rule becomes one command (see :mod:`adapters.exabgp.render`); blackholes that share peers
and attributes share one ``attributes ... nlri`` command (up to ``group`` prefixes: ExaBGP
parses a command far slower than a prefix). A batch is one request, and every command gets
its own ack:

* ``done`` -> success (ExaBGP took it into its RIB; delivery to peers follows);
* ``error`` -> refused, not retryable, with the command ExaBGP refused (a refused shared
  command is re-sent one rule per command to tell which rule it was);
* ``shutdown`` / ``timeout`` / bridge unreachable -> retryable.

Throughput: ExaBGP's reactor sleeps ``reactor.speed``/100 seconds per loop turn while
commands are still being applied (50 routes per turn), so with the default speed of 1.0 a
burst of 10,000 routes spends about 2 s asleep. ``exabgp_reactor_speed=0.1`` (env or
``[exabgp.reactor] speed``) took a 10,000-route burst here from ~2.9 s to ~1.2 s at the
cost of ~5% of a core while idle.

ExaBGP, like any BGP speaker, holds one route per NLRI and neighbour selection: a second
intent for the same prefix (or flow match) replaces the first; the bridge's list follows.

``active()`` reads the announcements the bridge saw acknowledged and parses each back into
its intent. That list is ExaBGP's RIB as changed through the bridge since ExaBGP started:
routes added another way (ExaBGP's own config, its CLI, another process) are not in it.
With ``verify_rib`` (default) each listed route must also be in ExaBGP's own ``show
adj-rib out`` (matched by prefix, or flow destination and source, and peer): ExaBGP answers
``done`` even for a route it then drops as invalid, and such a route is not active. The
adj-rib-out text (per neighbour, ExaBGP's names for values) is not parsed into intents
itself: it does not map back reliably. Listing 20,000 adj-rib-out lines took ~2 s here.

Per-peer selection (``peers``) becomes ExaBGP's ``neighbor A, neighbor B`` prefix; a peer
ExaBGP has no session with makes it answer ``error``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationInfo, field_validator

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
    resolve_capabilities,
    session_states,
    validate_settings,
)
from adapters.exabgp.client import BridgeClient, HttpClient, UnixClient
from adapters.exabgp.render import (
    SELF,
    Op,
    RenderOptions,
    RibKey,
    group_key,
    in_rib,
    parse,
    render,
    render_group,
    rib_entries,
)
from policies.errors import (
    AdapterConfigInvalid,
    AdapterRefused,
    AdapterUnavailable,
    CapabilityMissing,
)
from policies.intents import AnyIntent, BlackholeIntent, Community, LargeCommunity, intent_key


def _dying(reply: dict[str, Any]) -> bool:
    """Whether a bridge reply comes from a bridge whose ExaBGP has gone away."""
    results = reply.get("results")
    listed = results if isinstance(results, list) else []
    acks = [r.get("ack") for r in listed if isinstance(r, dict)]
    return bool(reply.get("shutting_down")) or reply.get("ack") == "shutdown" or "shutdown" in acks


WATCH_WAIT_S = 10.0  # how long one neighbours long poll waits for a change
WATCH_RETRY_S = 1.0
_HTTP = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$")
DEFAULT_HTTP_PORT = 5000  # the bridge's HTTP listener (``--http HOST:PORT``)


def _host_port(text: str) -> str | None:
    """``IP:port``, ``[IPv6]:port``, a bare IP, or ``name:port`` as an http URL."""
    try:
        bare = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:  # a bare address (an IPv6 one cannot carry a port without brackets)
        host = f"[{bare}]" if bare.version == 6 else str(bare)
        return f"http://{host}:{DEFAULT_HTTP_PORT}"
    m = _HOST_PORT.match(text)
    if m is None:
        return None
    host, port = m.group(1), m.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    elif port is None:
        return None  # a name without a port is too easy to mistype: say which
    return f"http://{host}:{port or DEFAULT_HTTP_PORT}"


def parse_endpoint(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            "endpoint is required: unix:///path/to/bridge.sock, http://host:5000 or IP:port"
        )
    text = original = value.strip()
    if "://" not in text and not text.startswith("unix:"):
        url = _host_port(text)
        if url is None:
            raise ValueError(
                f"{original!r} is neither unix:///path, http(s)://host:port nor IP:port"
            )
        text = url
    if text.startswith("unix:"):
        path = text.removeprefix("unix://") if text.startswith("unix://") else text[5:]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a unix endpoint needs an absolute path (unix:///...)")
        return f"unix://{path}"
    m = _HTTP.match(text)
    if not m or (m.group(2) and not 0 < int(m.group(2)[1:]) < 65536):
        raise ValueError(f"{original!r} is neither unix:///path, http(s)://host:port nor IP:port")
    return text.rstrip("/")


def parse_next_hop(value: object, version: int) -> str:
    if value is None or value == SELF:
        return SELF
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv{version} address or 'self'") from None
    if addr.version != version:
        raise ValueError(f"expected an IPv{version} address or 'self', got {value!r}")
    return str(addr)


class ExaBgpSettings(AdapterSettings):
    """``endpoint``: the bridge. Next hops default to ``self`` (ExaBGP's local address
    on each session); the communities are added to every blackhole route."""

    endpoint: str
    auth_token: SecretStr | None = None
    next_hop_v4: str = SELF
    next_hop_v6: str = SELF
    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    timeout: float = 10.0
    batch: int = 5000
    group: int = 100
    verify_rib: bool = True

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint(cls, v: object) -> str:
        return parse_endpoint(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_allowed(cls, v: str, info: ValidationInfo) -> str:
        """A unix socket inside the allowed directories; an HTTP host the egress policy allows."""
        access = access_of(info)
        if v.startswith("unix://"):
            return f"unix://{access.check_path(v.removeprefix('unix://'), 'socket')}"
        why = access.egress.check_host(urlsplit(v).hostname or "")
        if why is not None:
            raise ValueError(why)
        return v

    @field_validator("next_hop_v4", mode="before")
    @classmethod
    def _nh4(cls, v: object) -> str:
        return parse_next_hop(v, 4)

    @field_validator("next_hop_v6", mode="before")
    @classmethod
    def _nh6(cls, v: object) -> str:
        return parse_next_hop(v, 6)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 300:
            raise ValueError("timeout must be between 0 and 300 seconds")
        return v

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: int) -> int:
        if not 1 <= v <= 100_000:
            raise ValueError("batch must be between 1 and 100000 commands")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError("group must be between 1 and 1000 prefixes per command")
        return v

    def render_options(self) -> RenderOptions:
        return RenderOptions(
            self.next_hop_v4, self.next_hop_v6, self.communities, self.large_communities
        )


class ExaBgpAdapter:
    adapter_type: ClassVar[str] = "exabgp"
    # a BGP speaker: the dispatcher checks a session is up before calling a rule active
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.BLACKHOLE, Capability.FLOWSPEC}
    )
    # adapters.base.LargeBatches: the cost is per bridge round trip, not per rule
    batch_limit: ClassVar[int] = 5000

    def __init__(
        self,
        name: str,
        settings: ExaBgpSettings,
        capabilities: frozenset[Capability] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities if capabilities is not None else self.supported
        self._options = settings.render_options()
        self._client: BridgeClient | None = None
        self._keys: dict[str, str] = {}  # announce command -> intent key
        self._parsed: dict[str, tuple[str, AnyIntent]] = {}  # command -> (key, intent)

    @classmethod
    def from_config(cls, config: AdapterConfig) -> ExaBgpAdapter:
        settings = validate_settings(ExaBgpSettings, config)
        if settings.auth_token is not None and settings.endpoint.startswith("unix:"):
            raise AdapterConfigInvalid(
                f"exabgp adapter {config.name!r}: auth_token: only used with an http endpoint",
                field="auth_token",
            )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def __repr__(self) -> str:
        return f"ExaBgpAdapter(name={self.name!r}, endpoint={self.settings.endpoint!r})"

    def _bridge(self) -> BridgeClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    async def _request(self, body: dict[str, Any], extra: float = 0.0) -> dict[str, Any]:
        reply = await self._bridge().request(body, self.settings.timeout + extra)
        if _dying(reply) and self._client is not None:
            # this bridge's ExaBGP is gone: connect afresh next time (to its successor)
            client, self._client = self._client, None
            await client.close()
        return reply

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return await self._send(rules, "announce")

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return await self._send(rules, "withdraw")

    async def _send(self, rules: Sequence[RuleRef], op: Op) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(rules)
        singles: list[tuple[list[int], str]] = []
        groups: dict[tuple[str, int], list[int]] = {}
        for i, ref in enumerate(rules):
            try:
                command = self._render(ref, op)
            except CapabilityMissing as exc:
                outcomes[i] = Outcome.failure(ref, exc.message, retryable=False)
                continue
            if isinstance(ref.intent, BlackholeIntent) and self.settings.group > 1:
                groups.setdefault(group_key(ref.intent, self._options), []).append(i)
            else:
                singles.append(([i], command))
        units = list(singles)
        for members in groups.values():
            for n in range(0, len(members), self.settings.group):
                part = members[n : n + self.settings.group]
                units.append((part, self._render_units(rules, part, op)))
        retry = await self._run_units(rules, units, op, outcomes)
        if retry:  # a shared command was refused: find out which rule it was
            units = [([i], self._render(rules[i], op)) for i in retry]
            await self._run_units(rules, units, op, outcomes)
        return [o for o in outcomes if o is not None]

    def _render_units(self, rules: Sequence[RuleRef], part: list[int], op: Op) -> str:
        if len(part) == 1:
            return self._render(rules[part[0]], op)
        intents = [rules[i].intent for i in part]
        return render_group(
            [i for i in intents if isinstance(i, BlackholeIntent)], op, self._options
        )

    async def _run_units(
        self,
        rules: Sequence[RuleRef],
        units: list[tuple[list[int], str]],
        op: Op,
        outcomes: list[Outcome | None],
    ) -> list[int]:
        """Send the commands; fill ``outcomes``; return rules of refused shared commands."""
        retry: list[int] = []
        size = self.settings.batch
        for n in range(0, len(units), size):
            chunk = units[n : n + size]
            try:
                results = await self._submit([c for _, c in chunk])
            except (AdapterUnavailable, AdapterRefused) as exc:
                for members, _ in chunk:
                    for i in members:
                        outcomes[i] = Outcome.failure(
                            rules[i], exc.message, retryable=exc.retryable
                        )
                continue
            for (members, command), result in zip(chunk, results, strict=True):
                if result.get("ack") == "error" and len(members) > 1:
                    retry.extend(members)
                    continue
                for i in members:
                    outcomes[i] = self._outcome(rules[i], op, command, result)
        return retry

    def _render(self, ref: RuleRef, op: Op) -> str:
        if Capability(ref.intent.kind) not in self.capabilities:
            raise CapabilityMissing(
                f"adapter {self.name!r} (exabgp) cannot carry {ref.intent.kind} intents"
            )
        return render(ref.intent, op, self._options)

    async def _submit(self, commands: list[str]) -> list[dict[str, Any]]:
        reply = await self._request({"commands": commands}, extra=len(commands) / 1000)
        results = reply.get("results")
        if not isinstance(results, list) or len(results) != len(commands):
            raise AdapterRefused("ExaBGP bridge answered a different number of results")
        return results

    def _outcome(self, ref: RuleRef, op: Op, command: str, result: dict[str, Any]) -> Outcome:
        ack = result.get("ack")
        if ack == "done":
            announce = render(ref.intent, "announce", self._options)
            if op == "announce":
                self._keys[announce] = ref.key
            else:
                self._keys.pop(announce, None)
            return Outcome.success(ref)
        if ack == "error":
            return Outcome.failure(
                ref, f"ExaBGP answered error to: {command} (see ExaBGP's log)", retryable=False
            )
        if ack == "shutdown":
            return Outcome.failure(ref, "ExaBGP is shutting down", retryable=True)
        return Outcome.failure(
            ref, f"ExaBGP did not acknowledge within the bridge's timeout ({ack})", retryable=True
        )

    async def active(self) -> frozenset[str] | None:
        reply = await self._request({"op": "routes"}, extra=5.0)
        held: list[tuple[str, AnyIntent]] = []
        for command in reply.get("routes", []):
            known = self._parsed.get(command)
            if known is None:
                intent = parse(command, self._options)
                if intent is None:
                    continue
                known = self._parsed[command] = (intent_key(intent), intent)
            # the key of the intent we announced wins over the parsed one (same text)
            held.append((self._keys.get(command, known[0]), known[1]))
        if len(self._parsed) > 200_000:
            self._parsed.clear()
        if not self.settings.verify_rib:
            return frozenset(key for key, _ in held)
        entries = await self._adj_rib_out(len(held))
        return frozenset(key for key, intent in held if in_rib(intent, entries))

    async def _adj_rib_out(self, expected: int) -> set[tuple[str, RibKey]]:
        """ExaBGP's own adj-rib-out: a route it acknowledged but dropped (``done`` is
        answered even for a route it then finds invalid) is not active."""
        rib = await self._request({"op": "adj-rib-out"}, extra=30.0 + expected / 2000)
        if rib.get("ack") != "done":
            raise AdapterUnavailable(
                f"ExaBGP did not list its adj-rib-out ({rib.get('ack')}); read-back unavailable"
            )
        return rib_entries([str(line) for line in rib.get("lines", [])])

    async def check(self) -> Health:
        start = monotonic_ms()
        try:
            status = await self._request({"op": "status"})
        except (AdapterUnavailable, AdapterRefused) as exc:
            return Health(False, None, exc.message)
        latency = monotonic_ms() - start
        # ExaBGP's neighbor-changes words, in the BGP FSM terms the other adapters use
        sessions = session_states(status.get("neighbors", {}))
        if status.get("shutting_down"):
            return Health(False, latency, "ExaBGP is shutting down", sessions)
        up = sum(1 for s in sessions.values() if s == SessionState.ESTABLISHED)
        detail = (
            f"bridge pid {status.get('pid')} answers; ExaBGP holds {status.get('routes', 0)} "
            f"acknowledged routes; {up} of {len(sessions)} sessions up"
        )
        return Health(up > 0 or not sessions, latency, detail, sessions)

    async def session_states(self) -> dict[str, SessionState]:
        status = await self._request({"op": "status"})
        return session_states(status.get("neighbors", {}))

    def _new_client(self) -> BridgeClient:
        ep = self.settings.endpoint
        if ep.startswith("unix://"):
            # checked against the allowed directories again at each use
            path = self.settings.local(Path(ep.removeprefix("unix://")), "socket")
            return UnixClient(str(path))
        return HttpClient(ep, self.settings.auth_token, self.settings.access.egress)

    async def _poll_neighbors(self, client: BridgeClient, version: int) -> dict[str, Any] | None:
        """One ``neighbors`` long poll; None when the bridge is unreachable or shutting down
        (its ExaBGP is gone, so its states are stale)."""
        try:
            reply = await client.request(
                {"op": "neighbors", "after": version, "wait": WATCH_WAIT_S},
                WATCH_WAIT_S + self.settings.timeout,
            )
        except (AdapterUnavailable, AdapterRefused):
            return None
        if reply.get("shutting_down") or not isinstance(reply.get("version"), int):
            return None
        return reply

    async def watch_sessions(self) -> AsyncGenerator[SessionChange, None]:
        """ExaBGP's ``neighbor X up|down`` messages, pushed through the bridge.

        The bridge answers a ``neighbors`` long poll as soon as a neighbour changes state;
        the watch holds its own connection so announces are never queued behind it. When
        the bridge cannot be reached (ExaBGP is gone) every known peer is reported unknown
        and the watch tries again every :data:`WATCH_RETRY_S` seconds.
        """
        known: dict[str, SessionState] = {}
        client = self._new_client()
        version = -1
        try:
            while True:
                reply = await self._poll_neighbors(client, version)
                if reply is None:  # unreachable or shutting down: reconnect after a pause
                    now = dict.fromkeys(known, SessionState.UNKNOWN)
                    version, pause = -1, WATCH_RETRY_S
                    await client.close()  # the next bridge listens on a new socket
                    client = self._new_client()
                else:
                    version = int(reply.get("version", -1))
                    now = session_states(reply.get("neighbors", {}))
                    pause = 0.0
                for peer, state in now.items():
                    before = known.get(peer)
                    if before != state:
                        known[peer] = state
                        yield SessionChange(peer, state, before)
                if pause:
                    await asyncio.sleep(pause)
        finally:
            await client.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None
