"""Pure rendering of scrubbing intents into DefenseFlow attack start/stop bodies.

DefenseFlow protects the networks of its *protected objects*: an external detector (here
Sluice) reports an attack on some of those networks with ``attackstart`` and DefenseFlow
diverts them through its scrubbing (DefensePro) workflow; ``attackstop`` with the same
``externalAttackId`` ends it. So a ``scrubbing`` intent maps one to one:

* ``externalAttackId`` = ``<prefix>-<intent key>``: stable, so repeating an announce
  updates the same attack and a withdraw stops it even after a restart;
* ``networksDetails.networks`` = the intent's prefix as ``{"ip", "prefix"}``;
* baselines, when the rule's context carries the attack's ``bps`` (bits/s) and ``pps``:
  DefenseFlow takes them per protocol in bytes and packets per second, in
  ``baselinesIpv4`` or ``baselinesIpv6`` after the prefix's family. With a known
  ``protocol`` (tcp, udp, icmp or their numbers) only that protocol's fields are set;
  without one the total goes in every protocol's fields (an upper bound, so no protocol
  gets a baseline below its real traffic).

Blackhole and FlowSpec intents are not carried: DefenseFlow's attack API takes networks
to protect, not routes or match rules. DefenseFlow may itself answer an attack with RTBH
or FlowSpec, but that choice belongs to its own workflow configuration, so Sluice cannot
ask for it per rule and refuses those intents instead of sending them as scrubbing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.intents import ScrubbingIntent

PROTOCOLS = {"tcp": "Tcp", "6": "Tcp", "udp": "Udp", "17": "Udp", "icmp": "Icmp", "1": "Icmp"}


def attack_id(prefix: str, key: str) -> str:
    return f"{prefix}-{key}"


def _rate(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def baselines(context: Mapping[str, Any]) -> dict[str, int] | None:
    """Per-protocol baseline fields from ``bps``/``pps`` (and ``protocol``), if any."""
    bps, pps = _rate(context.get("bps")), _rate(context.get("pps"))
    if bps is None and pps is None:
        return None
    proto = PROTOCOLS.get(str(context.get("protocol", "")).lower())
    protos = [proto] if proto else ["Tcp", "Udp", "Icmp"]
    out: dict[str, int] = {}
    for p in protos:
        if bps is not None:
            out[f"baseline{p}BytesPerSecond"] = round(bps / 8)
        if pps is not None:
            out[f"baseline{p}PacketsPerSecond"] = round(pps)
    return out


def render_start(
    intent: ScrubbingIntent, key: str, rule_id: int, id_prefix: str, context: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``attackstart`` body for one scrubbing intent."""
    net = intent.prefix
    reason = context.get("reason")
    info = f"sluice rule {rule_id}: divert {net}" + (f" ({reason})" if reason else "")
    body: dict[str, Any] = {
        "externalAttackId": attack_id(id_prefix, key),
        "alertInfo": info[:255],
        "networksDetails": {
            "networks": [{"ip": str(net.network_address), "prefix": net.prefixlen}]
        },
    }
    rates = baselines(context)
    if rates is not None:
        body["baselinesIpv4" if net.version == 4 else "baselinesIpv6"] = rates
    return body


def render_stop(key: str, id_prefix: str) -> dict[str, Any]:
    return {"externalAttackId": attack_id(id_prefix, key)}


def protected_objects_summary(body: Any) -> list[str]:
    """The names of the protected objects in the list answer.

    Only ``ProtectedObjects`` and each object's ``name`` are confirmed by a public client;
    no other field (an attack state, say) is read, because none is documented.
    """
    items = body.get("ProtectedObjects") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ValueError("the answer has no ProtectedObjects list")
    return [str(po.get("name")) for po in items if isinstance(po, dict) and "name" in po]
