"""Pure rendering of intents into F5 BIG-IP iControl REST bodies.

Mapping (what BIG-IP can express, and what it cannot):

* ``blackhole`` -> a ``net route`` with ``blackhole: true`` for the prefix, named
  ``sluice-<intent key>`` in the configured partition, its canonical intent text as the
  description. A BIG-IP route carries no BGP attributes: the RFC 7999 community is
  expected to be set by the route-map that redistributes these routes (ZebOS), so an
  intent with other communities, large communities, a next hop or a peer selection is
  refused rather than announced without them.
* ``flowspec`` -> an entry in an AFM address list (configured by name) that an AFM rule,
  written by the operator, uses as its *source* with action drop. So only the
  "drop everything from this source" subset of FlowSpec maps: a ``source`` prefix,
  action ``discard``, and no other match component. Ports, protocols, flags, lengths,
  rate limits, redirects and marks are refused. The entry blocks the source towards every
  destination the operator's AFM rule covers (the intent's destination is recorded in the
  rule's description but does not narrow the block).
* ``scrubbing`` -> not supported.

Several rules may block the same source; the entry's description lists the keys of the
rules that hold it (``sluice:<key>,<key>``) so a withdraw removes the entry only when the
last of them goes, and read-back finds every rule. Entries without that prefix belong to
the operator and are never changed or removed.

An AFM address list may not be empty: F5's own SDK (f5-common-python,
``f5/bigip/tm/security/firewall.py``, ``Address_List``) requires at least one of
``addresses``, ``addressLists``, ``geo`` or ``fqdns``. When removing Sluice's last entry
would leave the list with no member at all, the entry :data:`PLACEHOLDER` stays instead:
``100::/128``, inside RFC 6666's discard-only block, which no real source ever uses.
The placeholder is never removed by Sluice, so a list the operator created holding only
the placeholder returns exactly to that after announce and withdraw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from policies.errors import CapabilityMissing
from policies.intents import BLACKHOLE, BlackholeIntent, Discard, FlowSpecIntent, canonical

ROUTE_PREFIX = "sluice-"
DESC_PREFIX = "sluice:"
PLACEHOLDER_NAME = "100::/128"  # RFC 6666 discard-only space: never a real source
PLACEHOLDER = {
    "name": PLACEHOLDER_NAME,
    "description": "placeholder: an AFM address list may not be empty",
}
OTHER_MEMBERS = ("addressLists", "geo", "fqdns")  # the other kinds of address-list member


def route_name(key: str) -> str:
    return f"{ROUTE_PREFIX}{key}"


def key_of_route(name: str) -> str | None:
    return name.removeprefix(ROUTE_PREFIX) if name.startswith(ROUTE_PREFIX) else None


def object_path(partition: str, name: str) -> str:
    """The iControl REST form of ``/partition/name`` in a URL: ``~partition~name``."""
    return f"~{partition}~{name}"


def render_route(intent: BlackholeIntent, key: str, partition: str) -> dict[str, Any]:
    """The ``POST /mgmt/tm/net/route`` body for a blackhole intent, or CapabilityMissing."""
    problems = []
    if intent.communities != (BLACKHOLE,):
        problems.append(f"communities {' '.join(intent.communities) or 'none'}")
    if intent.large_communities:
        problems.append("large communities")
    if intent.next_hop is not None:
        problems.append("a next hop")
    if intent.peers:
        problems.append("a peer selection")
    if problems:
        raise CapabilityMissing(
            "a BIG-IP blackhole route carries no BGP attributes, so this intent's "
            f"{', '.join(problems)} cannot be expressed; set them in the route-map that "
            "redistributes blackhole routes and send the plain intent",
            field="intent",
        )
    return {
        "name": route_name(key),
        "partition": partition,
        "network": intent.prefix.with_prefixlen,
        "blackhole": True,
        "description": canonical(intent),
    }


def afm_source(intent: FlowSpecIntent) -> str:
    """The source prefix an AFM block entry stands for, or CapabilityMissing."""
    extra = [attr for attr, _, _ in intent.components() if attr not in ("destination", "source")]
    problems = []
    if intent.source is None:
        problems.append("it has no source prefix")
    if extra:
        problems.append(f"it matches on {', '.join(extra)}")
    if not isinstance(intent.action, Discard):
        problems.append(f"its action is {intent.action}, not discard")
    if problems or intent.source is None:
        raise CapabilityMissing(
            "F5 AFM address-list blocking carries only 'discard all traffic from a source "
            f"prefix'; {'; '.join(problems)}",
            field="intent",
        )
    return intent.source.with_prefixlen


def _keys(entry: dict[str, Any]) -> list[str] | None:
    desc = entry.get("description")
    if not isinstance(desc, str) or not desc.startswith(DESC_PREFIX):
        return None
    return [k for k in desc.removeprefix(DESC_PREFIX).split(",") if k]


def _describe(keys: Iterable[str]) -> str:
    return DESC_PREFIX + ",".join(sorted(set(keys)))


def add_entries(
    addresses: Sequence[dict[str, Any]], wanted: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """``addresses`` with each ``(source, key)`` held; operator entries are untouched."""
    out = [dict(a) for a in addresses]
    by_name = {a["name"]: a for a in out}
    for source, key in wanted:
        entry = by_name.get(source)
        if entry is None:
            entry = {"name": source, "description": _describe([key])}
            out.append(entry)
            by_name[source] = entry
            continue
        keys = _keys(entry)
        if keys is not None:  # ours: add the key; an operator's entry already blocks it
            entry["description"] = _describe([*keys, key])
    return out


def is_placeholder(entry: dict[str, Any]) -> bool:
    return entry.get("name") == PLACEHOLDER_NAME


def remove_entries(
    addresses: Sequence[dict[str, Any]], keys: Iterable[str], *, other_members: bool = False
) -> list[dict[str, Any]]:
    """``addresses`` without ``keys``; an entry of ours goes when no key holds it.

    The result is never empty unless ``other_members`` (the list also holds address
    lists, geo locations or FQDNs): then :data:`PLACEHOLDER` is left in it.
    """
    gone = set(keys)
    out = []
    for entry in addresses:
        held = _keys(entry)
        if held is None:
            out.append(dict(entry))
            continue
        left = [k for k in held if k not in gone]
        if left:
            out.append({**entry, "description": _describe(left)})
    if not out and not other_members:
        out.append(dict(PLACEHOLDER))
    return out


def has_other_members(address_list: dict[str, Any]) -> bool:
    """Whether an address-list object holds members besides ``addresses``."""
    return any(address_list.get(kind) for kind in OTHER_MEMBERS)


def keys_in(addresses: Sequence[dict[str, Any]]) -> set[str]:
    """Keys of the rules an address list holds (from our entries' descriptions)."""
    found: set[str] = set()
    for entry in addresses:
        found.update(_keys(entry) or ())
    return found


def version_of(body: Any) -> str:
    """``"BIG-IP 17.1.1 build 0.0.4"`` from a ``/mgmt/tm/sys/version`` answer."""
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ValueError("no entries in the version answer")
    nested = next(iter(entries.values())).get("nestedStats", {}).get("entries", {})

    def field(name: str) -> str:
        value = nested.get(name, {}).get("description")
        if not isinstance(value, str):
            raise ValueError(f"no {name} in the version answer")
        return value

    return f"{field('Product')} {field('Version')} build {field('Build')}"
