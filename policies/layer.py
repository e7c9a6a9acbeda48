"""The API's layer over the policy files: what is in force is files + layer.

The files (in git) stay the truth for everything they declare; objects created through
the API live in a *layer*, a partial policy document kept in the store, and fill in only
what the files leave out:

* ``settings``, ``guardrails``, ``baseline``, ``escalation``: key by key (the tier ladder,
  ``escalation.tiers``, is one key: its tiers are ordered and checked together);
* ``geo_lockdown``, ``carpet_bombing``: the whole section;
* ``thresholds`` and ``allowlist``: entry by entry (an entry the files declare for the same
  prefix wins).

Where neither declares tiers, the four default tiers below are in force (the reference
engine's defaults); they have no adapters until some are given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from policies.errors import PolicyInvalid
from policies.netindex import net_text, parse_net
from policies.schema import AdapterDecl, Policy
from policies.tables import EntryInvalid

ManagedBy = Literal["policy", "api"]
KEYED_SECTIONS = ("settings", "guardrails", "baseline", "escalation")
WHOLE_SECTIONS = ("geo_lockdown", "carpet_bombing")  # set or removed as a whole
TIMING = (
    "hold_down_seconds",
    "hysteresis",
    "deescalate_after_seconds",
    "episode_timeout_seconds",
    "escalate_during_cooldown",
)

# The reference engine's escalation levels: rate-limit above 100 Mbps, drop the attacking
# protocol/ports above 500 Mbps, RTBH (65535:666) above 2 Gbps, scrubbing above 5 Gbps.
DEFAULT_TIERS: list[dict[str, Any]] = [
    {
        "name": "tier1",
        "description": "rate-limit the attack signature (FlowSpec)",
        "bps": 100_000_000,
        "ttl": 300,
        "intents": [{"type": "flowspec_rate_limit", "rate": 10_000_000}],
        "adapters": [],
    },
    {
        "name": "tier2",
        "description": "drop the attacking protocol and ports (FlowSpec)",
        "bps": 500_000_000,
        "ttl": 300,
        "intents": [{"type": "flowspec_drop"}],
        "adapters": [],
    },
    {
        "name": "tier3",
        "description": "remote-triggered blackhole of the target",
        "bps": 2_000_000_000,
        "ttl": 300,
        "intents": [{"type": "blackhole", "communities": ["65535:666"]}],
        "adapters": [],
    },
    {
        "name": "tier4",
        "description": "divert the prefix to cloud scrubbing",
        "bps": 5_000_000_000,
        "ttl": 300,
        "intents": [{"type": "scrubbing"}],
        "adapters": [],
    },
]


def threshold_key(entry: Mapping[str, Any]) -> str:
    return net_text(parse_net(entry["target_ip"]))


def allow_key(entry: Mapping[str, Any]) -> tuple[str, str, str | None]:
    return (
        net_text(parse_net(entry["ip_address"])),
        str(entry.get("scope") or "workspace"),
        entry.get("node"),
    )


TABLES: dict[str, Callable[[Mapping[str, Any]], object]] = {
    "thresholds": threshold_key,
    "allowlist": allow_key,
}


def declared(files: Policy, section: str, key: str | None = None) -> bool:
    """Whether the files declare ``section`` (or its ``key``)."""
    if section not in files.model_fields_set:
        return False
    if key is None:
        return True
    value = getattr(files, section)
    return isinstance(value, BaseModel) and key in value.model_fields_set


def owner(files: Policy, section: str, key: str | None = None) -> ManagedBy:
    return "policy" if declared(files, section, key) else "api"


def file_keys(files: Policy, section: str) -> set[object]:
    """The keys of the table entries the files declare (prefix, or prefix+scope+node)."""
    key = TABLES[section]
    return {key(e) for e in getattr(files, section).to_list()}


def _safe_key(key: Callable[[Mapping[str, Any]], object], entry: object) -> object:
    try:
        return key(entry) if isinstance(entry, Mapping) else None
    except (KeyError, TypeError, ValueError):
        return None  # a malformed entry: validation of the whole policy reports it


def merged_document(
    files: Policy, layer: Mapping[str, Any], extra_adapters: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The raw policy document of files + layer (not validated)."""
    doc: dict[str, Any] = files.model_dump(mode="json", exclude_unset=True)
    for section in KEYED_SECTIONS:
        extra = layer.get(section)
        if not isinstance(extra, Mapping) or not extra:
            continue
        own = getattr(files, section).model_fields_set if declared(files, section) else set()
        target = doc.setdefault(section, {})
        for k, v in extra.items():
            if k not in own:
                target[k] = copy.deepcopy(v)
    esc = doc.setdefault("escalation", {})
    if "tiers" not in esc:
        esc["tiers"] = copy.deepcopy(DEFAULT_TIERS)
    for section in WHOLE_SECTIONS:
        if layer.get(section) is not None and not declared(files, section):
            doc[section] = copy.deepcopy(layer[section])
    for section, key in TABLES.items():
        mine = layer.get(section) or []
        if not isinstance(mine, list) or not mine:
            continue
        base = list(doc.get(section) or [])
        seen = {_safe_key(key, e) for e in base}
        doc[section] = base + [copy.deepcopy(e) for e in mine if _safe_key(key, e) not in seen]
    names = {a.name for a in files.adapters}
    doc["adapters"] = [
        *doc.get("adapters", []),
        *(a for a in extra_adapters if a["name"] not in names),
    ]
    return doc


def compose(
    files: Policy, layer: Mapping[str, Any], extra_adapters: Iterable[dict[str, Any]] = ()
) -> Policy:
    """The policy in force: ``files`` with ``layer`` over what they leave out.

    ``extra_adapters`` (``{"name", "adapter_type"}``, created through the API) may be
    named by tiers of the layer; the policy returned declares only the files' adapters.
    Raises :class:`PolicyInvalid` naming the field when the result is not a valid policy.
    """
    doc = merged_document(files, layer, extra_adapters)
    try:
        policy = Policy.model_validate(doc)
    except EntryInvalid as exc:
        raise PolicyInvalid(exc.message, field=exc.field) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise PolicyInvalid(f"{field}: {msg}", field=field) from None
    return policy.model_copy(update={"adapters": list(files.adapters)})


def effective_layer(files: Policy, layer: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``layer`` in force (what the files do not declare), for export."""
    out: dict[str, Any] = {}
    for section in KEYED_SECTIONS:
        extra = layer.get(section)
        if isinstance(extra, Mapping):
            kept = {k: v for k, v in extra.items() if not declared(files, section, k)}
            if kept:
                out[section] = kept
    if not declared(files, "escalation", "tiers") and "tiers" not in out.get("escalation", {}):
        # the default tiers are in force: written out, so the export reproduces them
        out.setdefault("escalation", {})["tiers"] = copy.deepcopy(DEFAULT_TIERS)
    for section in WHOLE_SECTIONS:
        if layer.get(section) is not None and not declared(files, section):
            out[section] = layer[section]
    for section, key in TABLES.items():
        theirs = file_keys(files, section)
        kept_entries = [e for e in layer.get(section) or [] if _safe_key(key, e) not in theirs]
        if kept_entries:
            out[section] = kept_entries
    return out


def adapter_decl(name: str, adapter_type: str) -> dict[str, Any]:
    """A declaration for an adapter that lives in the store (for reference checks only)."""
    return AdapterDecl(name=name, adapter_type=adapter_type).model_dump(
        mode="json", exclude_defaults=True
    )
