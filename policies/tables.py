"""The two large policy tables: per-host thresholds and the allowlist.

Both may hold 100,000s of entries, so they are validated in bulk (plain loops over
dicts, integer prefixes) rather than one pydantic model per entry, and indexed for
longest-prefix match. A bad entry raises :class:`EntryInvalid` naming its position
(``allowlist.1234.ip_address``); the loader turns that into ``file:line``.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from policies.errors import PolicyInvalid
from policies.netindex import (
    LpmIndex,
    Net,
    first_overlap,
    net_text,
    parse_net,
    span,
    to_network,
)
from policies.prefixes import PrefixSet
from policies.tiers import Escalation, parse_rate

Loc = tuple[int | str, ...]
Ladder = tuple[tuple[int | None, int | None], ...]  # per tier: (bps, pps)


class EntryInvalid(PolicyInvalid):
    """A table entry is wrong; ``loc`` is its path (section, index, field)."""

    def __init__(self, loc: Loc, message: str) -> None:
        field = ".".join(str(p) for p in loc)
        super().__init__(f"{field}: {message}", field=field)
        self.loc = loc


def _mapping(item: object, loc: Loc, keys: frozenset[str]) -> Mapping[str, Any]:
    if type(item) is dict and keys.issuperset(item):  # the fast path for 100k entries
        return item
    if not isinstance(item, Mapping):
        raise EntryInvalid(loc, "each entry must be a mapping")
    unknown = [k for k in item if k not in keys]
    if unknown:
        raise EntryInvalid(
            (*loc, str(unknown[0])),
            f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(keys))})",
        )
    return item


def _net(item: Mapping[str, Any], key: str, loc: Loc) -> Net:
    if key not in item:
        raise EntryInvalid((*loc, key), "field required")
    try:
        return parse_net(item[key])
    except ValueError as exc:
        raise EntryInvalid((*loc, key), str(exc)) from None


def _label(item: Mapping[str, Any], loc: Loc) -> str:
    label = item.get("label", "")
    if label is None:
        return ""
    if not isinstance(label, str) or len(label) > 200:
        raise EntryInvalid((*loc, "label"), "label must be text of at most 200 characters")
    return label


# ---------------------------------------------------------------- per-host thresholds


def _increasing(values: list[int | None]) -> bool:
    previous = 0
    for v in values:
        if v is not None:
            if v <= previous:
                return False
            previous = v
    return True


def _check_increasing(ladder: Ladder, escalation: Escalation, loc: Loc, net: Net) -> None:
    bps = [s[0] for s in ladder if s[0] is not None]
    pps = [s[1] for s in ladder if s[1] is not None]
    if all(a < b for a, b in itertools.pairwise(bps)) and all(
        a < b for a, b in itertools.pairwise(pps)
    ):
        return
    for metric in (0, 1):
        previous = -1
        prev_index = -1
        for j, step in enumerate(ladder):
            value = step[metric]
            if value is None:
                continue
            if value <= previous:
                unit = ("bps", "pps")[metric]
                tiers = escalation.tiers
                raise EntryInvalid(
                    (*loc, "thresholds"),
                    f"{net_text(net)}: {tiers[j].name}_{unit} {value} must be higher than "
                    f"{tiers[prev_index].name}_{unit} {previous} (thresholds increase with "
                    "the tier; values not written here come from the escalation tiers)",
                )
            previous, prev_index = value, j


class HostThreshold(NamedTuple):
    """Thresholds for every address inside ``net``; ``values`` as written, per tier."""

    net: Net
    label: str
    values: tuple[tuple[str, int], ...]  # as written: ("tier1_bps", 1000000), ...
    ladder: Ladder = ()

    @property
    def prefix(self) -> str:
        return net_text(self.net)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target_ip": self.prefix, "thresholds": dict(self.values)}
        if self.label:
            out["label"] = self.label
        return out


_THRESHOLD_KEYS = frozenset({"target_ip", "label", "thresholds"})


class HostThresholds:
    """Per-host threshold overrides, matched by longest prefix (IPv4 and IPv6).

    Each entry's ``ladder`` is the workspace tiers with the entry's values written over
    them; it must still increase with the tier.
    """

    def __init__(self, entries: Sequence[HostThreshold] = ()) -> None:
        self.entries: tuple[HostThreshold, ...] = tuple(entries)
        self._index: LpmIndex[HostThreshold] = LpmIndex()
        self._index.add_many((e.net, e) for e in self.entries)
        if len(self._index) == len(self.entries):
            return
        seen: set[Net] = set()  # a duplicate: find the first one, for the message
        for i, entry in enumerate(self.entries):
            if entry.net in seen:
                raise EntryInvalid(
                    ("thresholds", i, "target_ip"),
                    f"{entry.prefix} already has thresholds; one entry per prefix "
                    "(more specific prefixes override less specific ones)",
                )
            seen.add(entry.net)

    @classmethod
    def build(cls, raw: object, escalation: Escalation) -> HostThresholds:
        """Validate raw entries against the tiers of ``escalation``, in one pass."""
        if isinstance(raw, HostThresholds):
            return raw.bind(escalation)
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise EntryInvalid(("thresholds",), "expected a list of entries")
        names = {t.name: i for i, t in enumerate(escalation.tiers)}
        base = [(t.bps, t.pps) for t in escalation.tiers]
        keys: dict[str, tuple[int, int]] = {}
        for name, index in names.items():
            keys[f"{name}_bps"] = (index, 0)
            keys[f"{name}_pps"] = (index, 1)
        entries: list[HostThreshold] = []
        base_bps = [b for b, _ in base]
        base_pps = [p for _, p in base]
        keyset = _THRESHOLD_KEYS
        for i, item in enumerate(raw):
            if type(item) is dict and keyset.issuperset(item) and "target_ip" in item:
                m: Mapping[str, Any] = item
                try:
                    net = parse_net(item["target_ip"])
                except ValueError as exc:
                    raise EntryInvalid(("thresholds", i, "target_ip"), str(exc)) from None
            else:
                m = _mapping(item, ("thresholds", i), keyset)
                net = _net(m, "target_ip", ("thresholds", i))
            values = m.get("thresholds")
            if type(values) is not dict or not values:
                raise EntryInvalid(
                    ("thresholds", i, "thresholds"),
                    "expected a mapping such as {tier1_bps: 1000000, tier2_bps: 5000000}",
                )
            bps = base_bps.copy()
            pps = base_pps.copy()
            parsed: dict[str, int] | None = None
            for key, value in values.items():
                slot = keys.get(key)
                rate = value
                if slot is None or type(rate) is not int or rate <= 0:
                    slot, rate = cls._slot(key, value, keys, ("thresholds", i, "thresholds", key))
                    parsed = parsed or {}
                    parsed[key] = rate
                if slot[1]:
                    pps[slot[0]] = rate
                else:
                    bps[slot[0]] = rate
            final = tuple(zip(bps, pps, strict=True))
            if not (_increasing(bps) and _increasing(pps)):
                _check_increasing(final, escalation, ("thresholds", i), net)
            label = m.get("label") or ""
            if type(label) is not str or len(label) > 200:
                label = _label(m, ("thresholds", i))
            written = {**values, **parsed} if parsed else values  # rates as integers
            entries.append(HostThreshold(net, label, tuple(written.items()), final))
        return cls(entries)

    @staticmethod
    def _slot(
        key: object, value: object, keys: dict[str, tuple[int, int]], loc: Loc
    ) -> tuple[tuple[int, int], int]:
        slot = keys.get(str(key))
        if slot is None:
            tier, _, metric = str(key).rpartition("_")
            if metric not in ("bps", "pps") or not tier:
                raise EntryInvalid(loc, f"{key!r} is not <tier>_bps or <tier>_pps")
            known = ", ".join(k.rpartition("_")[0] for k in keys if k.endswith("_bps"))
            raise EntryInvalid(loc, f"unknown tier {tier!r} (tiers: {known or 'none defined'})")
        try:
            rate = parse_rate(value)
        except ValueError as exc:
            raise EntryInvalid(loc, str(exc)) from None
        if rate == 0:
            raise EntryInvalid(loc, "a threshold of 0 fires on no traffic")
        return slot, rate

    def bind(self, escalation: Escalation) -> HostThresholds:
        """Re-check entries built for other tiers against ``escalation``."""
        return HostThresholds.build(self.to_list(), escalation)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, version: int, value: int) -> HostThreshold | None:
        hit = self._index.lookup(version, value)
        return None if hit is None else hit[1]

    def to_list(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.entries]


# ---------------------------------------------------------------- allowlist


class AllowEntry(NamedTuple):
    """One allowlist entry (a named tuple: cheap to build by the 100,000)."""

    net: Net
    label: str
    scope: Literal["workspace", "node"]
    node: str | None

    @property
    def prefix(self) -> str:
        return net_text(self.net)

    def describe(self) -> str:
        where = f"node {self.node}" if self.scope == "node" else "workspace"
        label = f" ({self.label!r})" if self.label else ""
        return f"allowlist entry {self.prefix}{label}, {where}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ip_address": self.prefix, "scope": self.scope}
        if self.label:
            out["label"] = self.label
        if self.node is not None:
            out["node"] = self.node
        return out


_ALLOW_KEYS = frozenset({"ip_address", "label", "scope", "node"})


class _Spans:
    """Sorted disjoint intervals per family, for overlap tests."""

    def __init__(self, nets: Sequence[Net]) -> None:
        self.starts: dict[int, list[int]] = {4: [], 6: []}
        self.ends: dict[int, list[int]] = {4: [], 6: []}
        self.nets: dict[int, list[Net]] = {4: [], 6: []}
        for net in sorted(nets):
            lo, hi = span(net)
            self.starts[net[0]].append(lo)
            self.ends[net[0]].append(hi)
            self.nets[net[0]].append(net)

    def overlapping(self, net: Net) -> Net | None:
        lo, hi = span(net)
        i = bisect.bisect_right(self.starts[net[0]], hi) - 1
        if i >= 0 and self.ends[net[0]][i] >= lo:
            return self.nets[net[0]][i]
        return None


class Allowlist:
    """Addresses never mitigated as targets and never used as FlowSpec sources."""

    def __init__(self, entries: Sequence[AllowEntry] = ()) -> None:
        self.entries: tuple[AllowEntry, ...] = tuple(entries)
        self._workspace: LpmIndex[AllowEntry] = LpmIndex()
        self._nodes: dict[str, LpmIndex[AllowEntry]] = {}
        ws = [(i, e) for i, e in enumerate(self.entries) if e.scope == "workspace"]
        self._check_overlaps(ws, None)
        self._workspace.add_many((e.net, e) for _, e in ws)
        by_node: dict[str, list[tuple[int, AllowEntry]]] = {}
        for i, e in enumerate(self.entries):
            if e.node is not None:
                by_node.setdefault(e.node, []).append((i, e))
        spans = _Spans([e.net for _, e in ws]) if by_node else None
        for node, items in by_node.items():
            assert spans is not None  # noqa: S101 - built whenever by_node has entries
            self._check_overlaps(items, node)
            index: LpmIndex[AllowEntry] = LpmIndex()
            for i, e in items:
                hit = spans.overlapping(e.net)
                if hit is not None:
                    raise EntryInvalid(
                        ("allowlist", i, "ip_address"),
                        f"{e.prefix} (node {node}) overlaps workspace entry "
                        f"{net_text(hit)}, which already applies to every node",
                    )
                index.add(e.net, e)
            self._nodes[node] = index
        self._sets: dict[str | None, PrefixSet] = {}

    def _check_overlaps(self, items: list[tuple[int, AllowEntry]], node: str | None) -> None:
        clash = first_overlap([e.net for _, e in items])
        if clash is None:
            return
        (i, a), (j, b) = items[clash[0]], items[clash[1]]
        first, second = (i, a), (j, b)
        if j < i:
            first, second = second, first
        what = "duplicates" if a.net == b.net else "overlaps"
        scope = f"node {node}" if node else "workspace"
        raise EntryInvalid(
            ("allowlist", second[0], "ip_address"),
            f"{second[1].prefix} {what} entry {first[0]} ({first[1].prefix}) in the same "
            f"scope ({scope}); keep one",
        )

    @classmethod
    def build(cls, raw: object) -> Allowlist:
        if isinstance(raw, Allowlist):
            return raw
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise EntryInvalid(("allowlist",), "expected a list of entries")
        entries: list[AllowEntry] = []
        keyset = _ALLOW_KEYS
        for i, item in enumerate(raw):
            if (
                type(item) is dict
                and "ip_address" in item
                and "node" not in item
                and "scope" not in item
                and keyset.issuperset(item)
            ):  # the common case, kept cheap for 100,000 entries
                try:
                    net = parse_net(item["ip_address"])
                except ValueError as exc:
                    raise EntryInvalid(("allowlist", i, "ip_address"), str(exc)) from None
                label = item.get("label") or ""
                if type(label) is not str or len(label) > 200:
                    label = _label(item, ("allowlist", i))
                entries.append(AllowEntry(net, label, "workspace", None))
                continue
            loc: Loc = ("allowlist", i)
            m = _mapping(item, loc, keyset)
            net = _net(m, "ip_address", loc)
            scope = m.get("scope", "workspace")
            node = m.get("node")
            if scope not in ("workspace", "node"):
                raise EntryInvalid((*loc, "scope"), f"scope {scope!r} is not workspace or node")
            if node is not None and (not isinstance(node, str) or not node.strip()):
                raise EntryInvalid((*loc, "node"), "node must be a node id (text)")
            if scope == "node" and node is None:
                raise EntryInvalid((*loc, "node"), "a node-scoped entry needs node")
            if scope == "workspace" and node is not None:
                raise EntryInvalid((*loc, "scope"), "an entry with node must have scope: node")
            entries.append(AllowEntry(net, _label(m, loc), scope, node))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, version: int, value: int, node: str | None = None) -> AllowEntry | None:
        """The entry covering the address (workspace-wide, or scoped to ``node``)."""
        hit = self._workspace.lookup(version, value)
        if hit is not None:
            return hit[1]
        if node is not None and node in self._nodes:
            hit = self._nodes[node].lookup(version, value)
            if hit is not None:
                return hit[1]
        return None

    def nets(self, node: str | None = None) -> list[Net]:
        """The prefixes in force for ``node`` (workspace-wide plus that node's)."""
        return [e.net for e in self.entries if e.scope == "workspace" or e.node == node]

    def prefix_set(self, node: str | None = None) -> PrefixSet:
        """A :class:`PrefixSet` for guardrails (built once per node and cached)."""
        if node not in self._sets:
            self._sets[node] = PrefixSet(to_network(n) for n in self.nets(node))
        return self._sets[node]

    def to_list(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.entries]
