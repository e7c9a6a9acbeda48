"""The bird2 adapter: an include file of static routes, ``configure``, read-back.

I/O around the pure renderer (:mod:`adapters.bird2.render`):

* every batch rewrites the include file once (temporary file + fsync + rename) and asks
  BIRD to ``configure`` once; BIRD answers ``0003 Reconfigured`` or refuses with its
  parser's message, in which case the previous file is put back and every rule of the
  batch fails with that message (not retryable). An unreachable socket restores the
  file too and fails the batch as retryable. One lock serialises batches.
* the file is the adapter's memory: it is read when the adapter starts and again whenever
  it changed behind the adapter's back (another instance, an operator), so a batch never
  resurrects rules someone else withdrew.
* ``active()`` reads what BIRD holds in the adapter's four static protocols
  (``show route table T protocol P``) and returns the keys of the rules whose network is
  there; a protocol BIRD does not know (the file is not included, or BIRD restarted
  without it) holds nothing. An unreachable BIRD raises AdapterUnavailable: "unknown" is
  not "empty".
* ``check()`` runs ``show protocols``: reachability, latency and BGP session states.

Next hops: a blackhole's ``next_hop`` (or the configured default) is set as
``bgp_next_hop`` on the static route. BIRD sends it unchanged only when the BGP channel
has ``next hop keep;`` (``ipv4 { export ...; next hop keep; };``); without it BIRD
replaces it with its own address as soon as the route carries other attributes (seen
with BIRD 2.0.12), so operators who use RTBH discard next hops must set that option.

The file starts with a header line; a non-empty file without it is not ours and is never
overwritten. Intents with per-peer selection are refused (BIRD exports the static
protocols to every BGP neighbour of the speaker's config).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from adapters.access import LocalFile, LocalSocket
from adapters.base import (
    AdapterConfig,
    AdapterSettings,
    Capability,
    Health,
    Outcome,
    RuleRef,
    SessionChange,
    SessionState,
    poll_sessions,
    require_capability,
    resolve_capabilities,
    validate_settings,
)
from adapters.bird2 import control
from adapters.bird2.render import (
    HEADER,
    SLOTS,
    Defaults,
    Names,
    display_network,
    networks_in,
    parse_file,
    render_file,
    render_route,
    slot_of,
)
from policies.errors import AdapterError, AdapterRefused, AdapterUnavailable, SluiceError
from policies.intents import AnyIntent, BlackholeIntent, Community, LargeCommunity, canonical

Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,40}$")]


class Bird2Settings(AdapterSettings):
    """Where BIRD listens and which file it includes; defaults added to every blackhole."""

    endpoint: str = ""
    socket: LocalSocket
    include_file: LocalFile
    protocol_prefix: Name = "sluice"
    ipv4_table: Name = "master4"
    ipv6_table: Name = "master6"
    flow4_table: Name = "flowtab4"
    flow6_table: Name = "flowtab6"
    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    next_hop_v4: ipaddress.IPv4Address | None = None
    next_hop_v6: ipaddress.IPv6Address | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0

    @model_validator(mode="before")
    @classmethod
    def _socket_from_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("socket") and data.get("endpoint"):
            return {**data, "socket": str(data["endpoint"]).removeprefix("unix://")}
        return data

    @field_validator("include_file")
    @classmethod
    def _include(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError(f"{v} must be an absolute path")
        if not v.parent.is_dir():
            raise ValueError(f"directory {v.parent} does not exist")
        return v

    @property
    def control_socket(self) -> Path:
        """The control socket, checked against the allowed directories again before use."""
        return self.local(self.socket, "socket")

    @property
    def include_path(self) -> Path:
        """The include file, checked against the allowed directories again before use."""
        return self.local(self.include_file, "file")

    def names(self) -> Names:
        return Names(
            self.protocol_prefix,
            self.ipv4_table,
            self.ipv6_table,
            self.flow4_table,
            self.flow6_table,
        )

    def defaults(self) -> Defaults:
        return Defaults(
            self.communities,
            self.large_communities,
            None if self.next_hop_v4 is None else str(self.next_hop_v4),
            None if self.next_hop_v6 is None else str(self.next_hop_v6),
        )


SESSION_POLL_S = 1.0


def _refused(adapter: Any, ref: RuleRef) -> Outcome | None:
    """A withdrawal of an intent this adapter cannot carry is refused like its announce."""
    try:
        require_capability(adapter, ref.intent)
    except AdapterError as exc:
        return Outcome.failure(ref, str(exc), retryable=False)
    return None


def parse_protocols_all(codes: Sequence[str], lines: Sequence[str]) -> dict[str, SessionState]:
    """``{neighbour address: state}`` of the BGP protocols in a ``show protocols all`` reply.

    A protocol's block starts with its summary line (code 1002: name, ``BGP``, table,
    up/down, since, info) and carries ``BGP state:`` and ``Neighbor address:`` lines.
    A protocol that is down (disabled, or its session closed) reports ``Down``/``Idle``.
    """
    out: dict[str, SessionState] = {}
    in_bgp = False
    state: SessionState = SessionState.UNKNOWN
    for code, line in zip(codes, lines, strict=True):
        parts = line.split()
        if code == "1002" and parts:
            in_bgp = len(parts) > 1 and parts[1] == "BGP"
            info = parts[5] if len(parts) > 5 else (parts[3] if len(parts) > 3 else "")
            state = SessionState.parse(info)
            continue
        if not in_bgp:
            continue
        text = line.strip()
        if text.startswith("BGP state:"):
            state = SessionState.parse(text.removeprefix("BGP state:"))
        elif text.startswith("Neighbor address:"):
            address = text.removeprefix("Neighbor address:").strip().split("%")[0]
            out[address] = state
    return out


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename (then fsync the dir)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Bird2Adapter:
    adapter_type: ClassVar[str] = "bird2"
    # a BGP speaker: the dispatcher checks a session is up before calling a rule active
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.BLACKHOLE, Capability.FLOWSPEC}
    )

    def __init__(
        self, name: str, settings: Bird2Settings, capabilities: frozenset[Capability]
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities
        self._names = settings.names()
        self._defaults = settings.defaults()
        self._lock = asyncio.Lock()
        self._entries: dict[str, AnyIntent] | None = None
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file we know
        self._nets: dict[str, tuple[str, str]] = {}  # key -> (slot, network as BIRD shows it)

    @classmethod
    def from_config(cls, config: AdapterConfig) -> Bird2Adapter:
        settings = validate_settings(Bird2Settings, config)
        return cls(config.name, settings, resolve_capabilities(cls, config))

    # ------------------------------------------------------------ state

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.settings.include_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, AnyIntent]:
        """The rules in the include file; re-read whenever the file changed behind our back."""
        if self._entries is None or self._file_stamp() != self._stamp:
            path = self.settings.include_path
            text = path.read_text() if path.exists() else ""
            if text.strip() and not text.startswith(HEADER):
                raise AdapterRefused(
                    f"include file {path} exists and was not written by Sluice; "
                    "refusing to overwrite it (point include_file at a file of its own)",
                    field="config.include_file",
                )
            try:
                entries = parse_file(text)
            except SluiceError as exc:
                raise AdapterRefused(f"include file {path} is damaged: {exc}") from None
            self._entries = entries
            self._nets = {k: (slot_of(i), display_network(i)) for k, i in entries.items()}
            self._stamp = self._file_stamp()
        return self._entries

    async def _apply(self, entries: dict[str, AnyIntent]) -> None:
        """Write the file for ``entries`` and reconfigure; on failure put the old file back."""
        path = self.settings.include_path
        old = path.read_text() if path.exists() else None
        write_atomically(path, render_file(entries, self._names, self._defaults))
        try:
            reply = await control.command(
                self.settings.control_socket, "configure", limit_s=self.settings.timeout_s
            )
        except AdapterUnavailable:
            self._restore(path, old)
            raise
        if reply.code not in control.OK_CONFIGURE:
            self._restore(path, old)
            raise AdapterRefused(f"BIRD refused the configuration: {reply.errors()}")

    @staticmethod
    def _restore(path: Path, old: str | None) -> None:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_atomically(path, old)

    # ------------------------------------------------------------ contract

    def _refusal(self, ref: RuleRef) -> str | None:
        try:
            require_capability(self, ref.intent)
        except AdapterError as exc:
            return str(exc)
        if isinstance(ref.intent, BlackholeIntent) and ref.intent.peers:
            return (
                f"adapter {self.name!r} (bird2) cannot select peers: the static routes go to "
                "every BGP neighbour of the speaker; leave peers empty"
            )
        try:
            render_route(ref.intent, self._defaults)
        except SluiceError as exc:
            return f"cannot render for BIRD: {exc}"
        return None

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        async with self._lock:
            try:
                entries = self._load()
            except AdapterError as exc:
                return [Outcome.failure(r, str(exc), retryable=exc.retryable) for r in rules]
            outcomes: list[Outcome | None] = [None] * len(rules)
            new = dict(entries)
            nets = dict(self._nets)
            by_net = {v: k for k, v in nets.items()}
            accepted: list[int] = []
            for i, ref in enumerate(rules):
                why = self._refusal(ref)
                if why is not None:
                    outcomes[i] = Outcome.failure(ref, why, retryable=False)
                    continue
                net = (slot_of(ref.intent), display_network(ref.intent))
                holder = by_net.get(net)
                if holder is not None and holder != ref.key:
                    outcomes[i] = Outcome.failure(
                        ref,
                        f"BIRD holds one route per network and {net[1]} already carries rule "
                        f"key {holder} ({self._describe(new[holder])}); withdraw it first",
                        retryable=False,
                    )
                    continue
                if ref.key in nets and nets[ref.key] != net:  # pragma: no cover - key = intent
                    by_net.pop(nets[ref.key], None)
                new[ref.key] = ref.intent
                nets[ref.key] = net
                by_net[net] = ref.key
                accepted.append(i)
            if accepted:
                try:
                    await self._apply(new)
                except AdapterError as exc:
                    for i in accepted:
                        outcomes[i] = Outcome.failure(rules[i], str(exc), retryable=exc.retryable)
                else:
                    self._entries, self._nets = new, nets
                    self._stamp = self._file_stamp()
                    for i in accepted:
                        outcomes[i] = Outcome.success(rules[i], network=nets[rules[i].key][1])
            return [o for o in outcomes if o is not None]

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        async with self._lock:
            try:
                entries = self._load()
            except AdapterError as exc:
                return [Outcome.failure(r, str(exc), retryable=exc.retryable) for r in rules]
            gone = {r.key for r in rules}
            new = {k: v for k, v in entries.items() if k not in gone}
            if len(new) != len(entries):
                try:
                    await self._apply(new)
                except AdapterError as exc:
                    return [Outcome.failure(r, str(exc), retryable=exc.retryable) for r in rules]
                self._entries = new
                self._nets = {k: v for k, v in self._nets.items() if k in new}
                self._stamp = self._file_stamp()
            return [_refused(self, r) or Outcome.success(r, held=r.key in entries) for r in rules]

    async def active(self) -> frozenset[str] | None:
        async with self._lock:
            entries = self._load()
            tables = {
                "bh4": self._names.ipv4_table,
                "bh6": self._names.ipv6_table,
                "fs4": self._names.flow4_table,
                "fs6": self._names.flow6_table,
            }
            held: set[str] = set()
            for slot in SLOTS:
                mine = [k for k in entries if self._nets[k][0] == slot]
                if not mine:
                    continue
                proto = self._names.protocol(slot)
                reply = await control.command(
                    self.settings.control_socket,
                    f"show route table {tables[slot]} protocol {proto}",
                    limit_s=self.settings.timeout_s,
                )
                if not reply.ok:
                    continue  # BIRD does not know the protocol: nothing of it is loaded
                shown = [t for c, t in zip(reply.codes, reply.lines, strict=True) if c == "1007"]
                present = set(networks_in(shown))
                if len(present) == len(mine):
                    held.update(mine)  # BIRD holds exactly as many routes as the file
                else:
                    held.update(k for k in mine if self._nets[k][1] in present)
            return frozenset(held)

    async def check(self) -> Health:
        start = time.monotonic()
        try:
            reply = await control.command(
                self.settings.control_socket, "show protocols", limit_s=self.settings.timeout_s
            )
        except AdapterError as exc:
            return Health(False, None, str(exc))
        latency = (time.monotonic() - start) * 1000
        sessions: dict[str, str] = {}
        ours: set[str] = set()
        for code, line in zip(reply.codes, reply.lines, strict=True):
            parts = line.split()
            if code != "1002" or len(parts) < 4:
                continue
            if parts[1] == "BGP":
                sessions[parts[0]] = parts[5] if len(parts) > 5 else parts[3]
            if parts[0].startswith(f"{self._names.prefix}_"):
                ours.add(parts[0])
        missing = [self._names.protocol(s) for s in SLOTS if self._names.protocol(s) not in ours]
        try:  # by peer address, as the other speakers report them
            states: dict[str, SessionState] = dict(await self.session_states())
        except AdapterUnavailable:
            states = {}
        if not states:  # no address found: the protocol names will do
            states = {k: SessionState.parse(v) for k, v in sessions.items()}
        up = sum(1 for s in states.values() if s == SessionState.ESTABLISHED)
        detail = f"BIRD reachable; {up}/{len(states)} BGP sessions Established"
        if missing:
            detail += (
                f"; protocols {', '.join(missing)} not loaded (no rule announced yet, or "
                f'bird.conf lacks include "{self.settings.include_file}";)'
            )
        return Health(reply.ok and (up > 0 or not states), latency, detail, states)

    async def session_states(self) -> dict[str, SessionState]:
        """Every BGP protocol's session, keyed by its neighbour address (``show protocols all``)."""
        reply = await control.command(
            self.settings.control_socket, "show protocols all", limit_s=self.settings.timeout_s
        )
        if not reply.ok:
            raise AdapterUnavailable(f"BIRD refused show protocols all: {reply.errors()}")
        return parse_protocols_all(reply.codes, reply.lines)

    async def watch_sessions(self) -> AsyncGenerator[SessionChange, None]:
        """Polls ``show protocols all`` once a second (one short control-socket exchange)."""
        async for change in poll_sessions(self.session_states, SESSION_POLL_S):
            yield change

    async def close(self) -> None:
        return None

    @staticmethod
    def _describe(intent: AnyIntent) -> str:
        return canonical(intent)
