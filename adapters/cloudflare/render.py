"""Pure request rendering for the Cloudflare adapter (no I/O; golden-tested).

* Magic Transit on-demand advertisement of a BYOIP prefix, through its BGP prefixes
  (the whole-prefix ``.../bgp/status`` endpoint is deprecated in their favour):
  ``GET /accounts/{account}/addressing/prefixes/{prefix}/bgp/prefixes`` lists them (each
  ``{"id", "cidr", "on_demand": {"advertised", ...}}``) and
  ``PATCH .../bgp/prefixes/{bgp_prefix}`` with ``{"on_demand": {"advertised": true|false}}``
  switches one; the answer's ``result`` is the BGP prefix.
* Under Attack Mode: ``PATCH /zones/{zone}/settings/security_level`` with
  ``{"value": "under_attack"}`` (and back to the zone's normal level).
* WAF source blocking: items of an account IP list (``/accounts/{account}/rules/lists/
  {list}/items``), which a WAF custom rule of the operator (``ip.src in $<list name>``,
  action block) turns into blocks. Each item Sluice adds carries the comment
  ``sluice <key>[,<key>...]`` so that read-back knows which intents it stands for;
  other items are the operator's and are never touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policies.errors import CapabilityMissing
from policies.intents import Discard, FlowSpecIntent

SECURITY_LEVELS = ("off", "essentially_off", "low", "medium", "high", "under_attack")
COMMENT_PREFIX = "sluice "


def bgp_prefixes_path(account_id: str, prefix_id: str) -> str:
    return f"/accounts/{account_id}/addressing/prefixes/{prefix_id}/bgp/prefixes"


def bgp_prefix_path(account_id: str, prefix_id: str, bgp_prefix_id: str) -> str:
    return f"{bgp_prefixes_path(account_id, prefix_id)}/{bgp_prefix_id}"


def advertise_body(advertised: bool) -> dict[str, Any]:
    return {"on_demand": {"advertised": advertised}}


def advertised_of(bgp_prefix: Any) -> bool | None:
    """``on_demand.advertised`` of a BGP prefix object, or None when it has none."""
    on_demand = bgp_prefix.get("on_demand") if isinstance(bgp_prefix, dict) else None
    value = on_demand.get("advertised") if isinstance(on_demand, dict) else None
    return value if isinstance(value, bool) else None


def security_level_path(zone_id: str) -> str:
    return f"/zones/{zone_id}/settings/security_level"


def security_level_body(level: str) -> dict[str, Any]:
    if level not in SECURITY_LEVELS:
        raise ValueError(
            f"{level!r} is not a Cloudflare security level ({', '.join(SECURITY_LEVELS)})"
        )
    return {"value": level}


def list_items_path(account_id: str, list_id: str) -> str:
    return f"/accounts/{account_id}/rules/lists/{list_id}/items"


def bulk_operation_path(account_id: str, operation_id: str) -> str:
    return f"/accounts/{account_id}/rules/lists/bulk_operations/{operation_id}"


def waf_source(intent: FlowSpecIntent) -> str:
    """The IP list value that blocks ``intent``'s source, or CapabilityMissing.

    Only "discard everything from a source prefix" maps honestly onto a list-driven block
    rule: other match components (ports, protocol, ...) cannot be expressed by a list item
    and the rule's scope is the zones the operator's custom rule covers, not the flow's
    destination. Cloudflare lists hold IPv4 addresses or /8-/32 ranges and IPv6 /12-/64
    ranges (an IPv6 source longer than /64 is refused rather than widened).
    """
    extra = [attr for attr, _, _ in intent.components() if attr not in ("destination", "source")]
    problems = []
    if intent.source is None:
        problems.append("it has no source prefix")
    if extra:
        problems.append(f"it matches on {', '.join(extra)}")
    if not isinstance(intent.action, Discard):
        problems.append(f"its action is {intent.action}, not discard")
    src = intent.source
    if src is not None:
        lo, hi = (8, 32) if src.version == 4 else (12, 64)
        if not lo <= src.prefixlen <= hi:
            problems.append(
                f"Cloudflare IP lists hold IPv{src.version} /{lo}-/{hi}, not /{src.prefixlen}"
            )
    if problems or src is None:
        raise CapabilityMissing(
            "Cloudflare WAF list blocking carries only 'discard all traffic from a source "
            f"prefix'; {'; '.join(problems)}",
            field="intent",
        )
    if src.prefixlen == src.max_prefixlen:
        return str(src.network_address)
    return src.with_prefixlen


def item_keys(item: Mapping[str, Any]) -> list[str] | None:
    """The intent keys a list item stands for, or None when the item is not ours."""
    comment = item.get("comment")
    if not isinstance(comment, str) or not comment.startswith(COMMENT_PREFIX):
        return None
    return [k for k in comment.removeprefix(COMMENT_PREFIX).split(",") if k]


def item_comment(keys: Iterable[str]) -> str:
    return COMMENT_PREFIX + ",".join(sorted(set(keys)))


def same_ip(a: str, b: str) -> bool:
    """List values compare as networks (``192.0.2.1`` equals ``192.0.2.1/32``)."""
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return a == b


def plan_add(
    items: Sequence[Mapping[str, Any]], wanted: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Items to POST so that each ``(ip, key)`` is held; empty when nothing changes.

    A source already listed by the operator is blocked already and is left alone; one
    of ours gets the key added to its comment (POST of an existing value replaces the
    item's comment).
    """
    post: dict[str, set[str]] = {}
    for ip, key in wanted:
        found = next((it for it in items if same_ip(str(it.get("ip", "")), ip)), None)
        if found is None:
            post.setdefault(ip, set()).add(key)
            continue
        keys = item_keys(found)
        if keys is None or key in keys:
            continue
        post.setdefault(ip, set(keys)).add(key)
    return [{"ip": ip, "comment": item_comment(keys)} for ip, keys in sorted(post.items())]


def plan_remove(
    items: Sequence[Mapping[str, Any]], gone: Iterable[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(delete, update)``: item ids to DELETE and items to re-POST with fewer keys."""
    remaining: dict[str, tuple[Mapping[str, Any], set[str]]] = {}
    for ip, key in gone:
        found = next((it for it in items if same_ip(str(it.get("ip", "")), ip)), None)
        if found is None:
            continue
        keys = item_keys(found)
        if keys is None:
            continue
        _, left = remaining.setdefault(str(found["id"]), (found, set(keys)))
        left.discard(key)
    delete = [{"id": iid} for iid, (_, left) in sorted(remaining.items()) if not left]
    update = [
        {"ip": str(item["ip"]), "comment": item_comment(left)}
        for _, (item, left) in sorted(remaining.items())
        if left and set(left) != set(item_keys(item) or [])
    ]
    return delete, update


def held_keys(items: Iterable[Mapping[str, Any]]) -> set[str]:
    return {k for it in items for k in (item_keys(it) or [])}
